#!/usr/bin/env python3
"""Where a frame's model time goes: wall time inside each of the model's own pieces.

  python scripts/frame_parts.py [--model DIR] [--image FRAME] [--precision fp32] [--threads 2]

Times Pipeline.infer on one real frame at full tokens and at the model's default exits, with
timers wrapped around the model's own modules and methods (embed_parts = conv stem, the
transformer blocks, the aux heads, the token head, the refine decoder, the upsampling) and
around labels + confidence; "other" is the rest (exit decisions, gather, scatter,
pre-processing).
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='models/camvid-dovit-tiny')
    ap.add_argument('--image', default='../shared/data/camvid/val/images/0016E5_07959.jpg')
    ap.add_argument('--precision', default='fp32')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--frames', type=int, default=10)
    a = ap.parse_args(argv)
    import torch

    from dovit_ros.data.base import read_image
    from dovit_ros.model import FULL, types
    from dovit_ros.runtime.pipeline import Pipeline
    torch.set_num_threads(a.threads)
    pipe = Pipeline.from_path(a.model, 'cpu', a.precision)
    m, img = pipe.model, read_image(a.image)
    print(f'{a.precision}, {a.threads} thread(s), attention core {pipe.attention} '
          f'(runtime/attention.py)')
    acc: dict[str, float] = collections.defaultdict(float)

    def timed(fn, key):
        def run(*args, **kw):
            t = time.perf_counter()
            out = fn(*args, **kw)
            acc[key] += time.perf_counter() - t
            return out
        return run

    m.embed_parts = timed(m.embed_parts, 'stem')
    for blk in m.blocks:
        blk.forward = timed(blk.forward, 'blocks')
    for head in m.aux_heads:
        head.forward = timed(head.forward, 'aux heads')
    m.decoder.forward = timed(m.decoder.forward, 'token head')
    m.upsample = timed(m.upsample, 'upsample')
    if m.refine is not None:
        m.refine.forward = timed(m.refine.forward, 'refine')
    types.SegmentationOutput.labels_confidence = timed(
        types.SegmentationOutput.labels_confidence, 'labels+confidence')
    for exits in (FULL, pipe.meta.exits):
        for _ in range(3):
            pipe.infer(img, exits)
        acc.clear()
        t = time.perf_counter()
        for _ in range(a.frames):
            pipe.infer(img, exits)
        total = (time.perf_counter() - t) / a.frames * 1e3
        parts = {k: v / a.frames * 1e3 for k, v in acc.items()}
        parts['other'] = total - sum(parts.values())
        print(f'{exits.policy:9s} total {total:6.1f} ms: ' + ', '.join(
            f'{k} {v:.1f} ({100 * v / total:.0f} %)' for k, v in parts.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
