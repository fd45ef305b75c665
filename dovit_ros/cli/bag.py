"""dovit-bag: make, play and process camera bags (rosbag2: MCAP or SQLite 3) without a ROS install.

  dovit-bag make frames/ clip.mcap --rate 15            # images in name order -> Image rgb8
  dovit-bag make drive.mp4 clip.mcap --compressed       # video -> CompressedImage JPEG
  dovit-bag play clip.mcap --clock --loop --decompress  # live topics with rclpy (+ /clock)
  dovit-bag process clip.mcap out.mcap --model camvid-dovit-tiny --threshold 0.95
      # offline: input + the node's outputs under /dovit_segmenter/ + /diagnostics

An output path ending in .mcap or .db3 is one self-contained file; any other is a rosbag2
folder. A bag that cannot be used exits with status 2 and a message naming the file.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..bag.storage import STORAGES, BagError
from ..runtime.budget import THRESHOLD_MIN

PROG = 'dovit-bag'
DEFAULT_MODEL = 'camvid-dovit-tiny'   # the node's default `model` parameter


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(',') if t.strip()]


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--storage', choices=sorted(STORAGES),
                   help='storage plugin (default: from the suffix, else mcap)')
    p.add_argument('--no-chunk-compression', action='store_true',
                   help='write MCAP chunks uncompressed (default: zstd, except for '
                   'JPEG frames from make --compressed)')
    p.add_argument('--overwrite', action='store_true', help='replace OUT_BAG if it exists')


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('-q', '--quiet', action='store_true', help='no progress bar')
    sub = ap.add_subparsers(dest='command', required=True)

    mk = sub.add_parser('make', parents=[common],
                        help='folder of images or video -> bag of camera images')
    mk.add_argument('source', metavar='IMAGES_DIR_OR_VIDEO')
    mk.add_argument('out', metavar='OUT_BAG')
    mk.add_argument('--rate', type=float, help='Hz (default: the video\'s rate, 15 for images)')
    mk.add_argument('--topic', help='default /camera/image_raw (+ /compressed with '
                    '--compressed)')
    mk.add_argument('--frame-id', default='camera')
    mk.add_argument('--compressed', action='store_true',
                    help='sensor_msgs/CompressedImage JPEG instead of Image rgb8')
    mk.add_argument('--jpeg-quality', type=int, help='re-encode at this quality (default: '
                    'JPEG files kept byte for byte, others encoded at 90)')
    mk.add_argument('--limit', type=int, metavar='N', help='at most N frames')
    mk.add_argument('--start-time', type=float, metavar='SEC',
                    help='stamp of the first frame, s since the epoch (default: now)')
    _add_output_args(mk)

    pl = sub.add_parser('play', parents=[common],
                        help='publish a bag\'s image topics live (needs rclpy)')
    pl.add_argument('bag', metavar='BAG')
    pl.add_argument('--rate', type=float, default=1.0, help='speed factor (default 1)')
    pl.add_argument('--loop', action='store_true', help='start over at the end, until Ctrl-C')
    pl.add_argument('--clock', type=float, nargs='?', const=40.0, metavar='HZ',
                    help='publish /clock (rosgraph_msgs/Clock) for use_sim_time, at HZ '
                    '(default 40) and with every message')
    pl.add_argument('--topics', nargs='+', metavar='TOPIC', help='default: every image topic')
    pl.add_argument('--reliability', choices=('reliable', 'best_effort'), default='reliable')
    pl.add_argument('--decompress', action='store_true',
                    help='publish CompressedImage topics as Image rgb8 (without /compressed)')
    pl.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='SEC',
                    help='wait up to SEC for every topic to have a subscriber before starting')

    pr = sub.add_parser('process', parents=[common],
                        help='run the segmenter over a bag into a new bag')
    pr.add_argument('in_bag', metavar='IN_BAG')
    pr.add_argument('out_bag', metavar='OUT_BAG')
    pr.add_argument('--model', default=DEFAULT_MODEL, metavar='NAME_OR_DIR',
                    help=f'installed model name or model directory (default {DEFAULT_MODEL}, '
                    'as the node)')
    pr.add_argument('--topic', help='image topic (default: the bag\'s only one)')
    pr.add_argument('--threshold', type=float, help='exit threshold xi (default: the model\'s)')
    pr.add_argument('--policy', choices=('none', 'threshold', 'dtop'))
    pr.add_argument('--topk', type=int, metavar='K', help='dtop: tokens kept per class')
    pr.add_argument('--outputs', type=_csv, metavar='A,B,...',
                    help='labels,confidence,color,overlay,exit_stage,exit_stage_color,'
                    'frame_stats (default: all)')
    pr.add_argument('--overlay-alpha', type=float, default=0.5)
    pr.add_argument('--namespace', default='/dovit_segmenter', help='of the output topics')
    pr.add_argument('--diagnostics-period', type=float, default=1.0, metavar='SEC',
                    help='bag time between /diagnostics messages; 0: one per frame')
    pr.add_argument('--target-gflops', type=float, default=0.0, metavar='G',
                    help='compute budget: steer xi per frame to hold G GFLOPs (as the node)')
    pr.add_argument('--target-latency-ms', type=float, default=0.0, metavar='MS',
                    help='compute budget: steer xi per frame to hold MS ms per frame')
    pr.add_argument('--threshold-min', type=float, default=THRESHOLD_MIN,
                    help=f'lower bound of the steered xi (default {THRESHOLD_MIN})')
    pr.add_argument('--threshold-max', type=float, default=1.0,
                    help='upper bound of the steered xi (default 1.0)')
    pr.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    pr.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'fp16', 'bf16'),
                    help='auto: bf16 on CPUs with bf16 matrix units, else fp32')
    pr.add_argument('--input-scale', type=float, default=1.0, metavar='S',
                    help='segment each frame resized by S; the outputs keep its size (as the '
                         'node\'s input_scale; default 1)')
    pr.add_argument('--threads', type=int, default=0,
                    help='torch CPU threads (default 0: torch default, one per core)')
    pr.add_argument('--json', action='store_true', help='print the summary as JSON')
    _add_output_args(pr)
    return ap


def _make(a) -> int:
    from ..bag.make import MakeConfig, make_bag
    cfg = MakeConfig(a.source, a.out, rate=a.rate, topic=a.topic, frame_id=a.frame_id,
                     compressed=a.compressed, jpeg_quality=a.jpeg_quality, storage=a.storage,
                     limit=a.limit, start_time=a.start_time,
                     chunk_compression=not a.no_chunk_compression, overwrite=a.overwrite,
                     progress=not a.quiet)
    print('\n'.join(make_bag(cfg).lines()))
    return 0


def _play(a) -> int:
    from ..bag.play import PlayConfig, play_bag
    cfg = PlayConfig(a.bag, rate=a.rate, loops=0 if a.loop else 1, clock_hz=a.clock,
                     topics=a.topics, reliability=a.reliability, decompress=a.decompress,
                     wait_for_subscribers=a.wait_for_subscribers)
    print('\n'.join(play_bag(cfg).lines()))
    return 0


def _process(a) -> int:
    from ..bag.process import ProcessConfig, process_bag
    from ..runtime.outputs import ALL_OUTPUTS
    if a.threads < 0:
        raise ValueError(f'--threads must be >= 0, got {a.threads}')
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    cfg = ProcessConfig(a.in_bag, a.out_bag, model=a.model, topic=a.topic,
                        threshold=a.threshold, policy=a.policy, topk=a.topk,
                        outputs=a.outputs or ALL_OUTPUTS, overlay_alpha=a.overlay_alpha,
                        namespace=a.namespace, diagnostics_period=a.diagnostics_period,
                        target_gflops=a.target_gflops, target_latency_ms=a.target_latency_ms,
                        threshold_min=a.threshold_min, threshold_max=a.threshold_max,
                        device=a.device, precision=a.precision, input_scale=a.input_scale,
                        storage=a.storage,
                        chunk_compression=not a.no_chunk_compression, overwrite=a.overwrite,
                        progress=not a.quiet)
    summary = process_bag(cfg)
    print(json.dumps(summary.to_dict()) if a.json else '\n'.join(summary.lines()))
    return 0


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f'{PROG}: %(levelname)s: %(message)s')
    try:
        return {'make': _make, 'play': _play, 'process': _process}[a.command](a)
    except (BagError, ValueError) as e:   # ValueError includes ModelLoadError
        print(f'{PROG} {a.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{PROG} {a.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
