"""Several cameras, one model: frames per second of the packed forward (one pass over all
cameras' frames, model/packed.py) against the per-frame loop, on real CamVid frames.

  python scripts/multicam_bench.py --model models/camvid-dovit-tiny --cameras 1,2,4 \
      --threads 1,2 --json out.json

Camera c shows the val clip offset by 25 frames per camera, so the frames of one batch differ
(different exit patterns). Timed: the model forward plus labels/confidence per frame
(Pipeline's work without decoding and rendering), median over `--rounds`. Both attention modes
of the pack ('split': one attention call per frame; 'mask': one call with a block-diagonal
mask) are measured; the faster is Attention.packed_mode's default.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dovit_ros.data.base import read_image
from dovit_ros.model.vit import Attention
from dovit_ros.runtime.device import cpu_model_name
from dovit_ros.runtime.pipeline import Pipeline


def timed(fn, rounds: int, dev: torch.device) -> float:
    def sync():
        if dev.type == 'cuda':   # kernels run asynchronously: wait for them
            torch.cuda.synchronize(dev)
    fn()
    ts = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='models/camvid-dovit-tiny')
    ap.add_argument('--data', default='../shared/data/camvid/val/images')
    ap.add_argument('--cameras', default='1,2,4')
    ap.add_argument('--threads', default='1,2')
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--device', default='cpu', help='cpu | cuda')
    ap.add_argument('--json')
    a = ap.parse_args()
    pipe = Pipeline.from_path(a.model, device=a.device)
    dev = torch.device(a.device)
    m, ex = pipe.model, pipe.meta.exits
    paths = sorted(Path(a.data).glob('*.jpg'))
    rows = []
    for threads in map(int, a.threads.split(',')):
        torch.set_num_threads(threads)
        for n in map(int, a.cameras.split(',')):
            xs = [pipe.preprocess(read_image(paths[(25 * c) % len(paths)])) for c in range(n)]

            def loop():
                for x in xs:
                    m(x, ex).labels_confidence()

            def packed():
                for o in m.forward_frames(xs, ex):
                    o.labels_confidence()
            row = {'threads': threads, 'cameras': n, 'loop_fps': n / timed(loop, a.rounds, dev)}
            for mode in ('split', 'mask'):
                Attention.packed_mode = mode
                row[f'packed_{mode}_fps'] = n / timed(packed, a.rounds, dev)
            Attention.packed_mode = 'split'
            best = max(row['packed_split_fps'], row['packed_mask_fps'])
            row['speedup'] = best / row['loop_fps']
            rows.append(row)
            print(f"threads {threads} cameras {n}: loop {row['loop_fps']:.2f} fps, packed "
                  f"split {row['packed_split_fps']:.2f} / mask {row['packed_mask_fps']:.2f} fps"
                  f" -> {row['speedup']:.2f}x", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({'cpu': cpu_model_name(), 'device': device_name(dev),
                                            'model': a.model,
                                            'exits': str(ex), 'torch': torch.__version__,
                                            'rows': rows}, indent=1))


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == 'cuda' else cpu_model_name()


if __name__ == '__main__':
    main()
