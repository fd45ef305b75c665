#!/usr/bin/env python3
"""A frame's post-processing on this CPU: bilinear upsampling of the logits to full resolution,
then labels and confidence (model/segmenter.py `upsample`, model/types.py `labels_confidence`),
in each memory layout of the logits and with the class reduction over dim 1 or over the last
dim of a (B, H, W, K) view.

  python scripts/postprocess_bench.py [--threads 2] [--rounds 5] [--calls 20] [--json OUT]

Cases: the default model's refine-decoder output (11 classes, 92x120 -> 368x480, cropped to
360x480) and a Cityscapes-sized frame (19 classes, 128x256 -> 512x1024). The variants of a
case alternate call by call within each round, so that a drifting host hits all alike; the
figure is the median over rounds of each round's median. Every variant's labels and
confidence are checked against the first one's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dovit_ros.model.types import labels_confidence  # noqa: E402
from dovit_ros.runtime.device import cpu_model_name  # noqa: E402

CASES = {'camvid_refine': (11, (92, 120), (368, 480), (360, 480)),
         'cityscapes_refine': (19, (128, 256), (512, 1024), (512, 1024))}
LAYOUTS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}


def reduce_last(lg: torch.Tensor):
    """labels_confidence over the last dim of the (B, H, W, K) view (no copy) instead of dim 1
    of (B, K, H, W)."""
    v = lg.permute(0, 2, 3, 1)
    m, labels = v.max(-1)
    return labels, (v - m[..., None]).exp_().sum(-1).reciprocal_()


REDUCTIONS = {'dim1': labels_confidence, 'last': reduce_last}   # dim1: what the model does


def variant(grid: torch.Tensor, layout, reduce, size, crop):
    def run():
        y = F.interpolate(grid.contiguous(memory_format=layout), size=size, mode='bilinear',
                          align_corners=False)[..., :crop[0], :crop[1]]
        return reduce(y)
    return run


def time_case(fns: dict, rounds: int, calls: int) -> dict:
    per_round: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()   # warm-up
    for _ in range(rounds):
        ts: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(calls):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                ts[k].append((time.perf_counter() - t0) * 1e3)
        for k, v in ts.items():
            per_round[k].append(statistics.median(v))
    return {k: statistics.median(v) for k, v in per_round.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--calls', type=int, default=20)
    ap.add_argument('--json')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {'cpu': cpu_model_name(), 'threads': a.threads, 'torch': torch.__version__,
           'cases': {}}
    print(f'{out["cpu"]}, {a.threads} thread(s)')
    with torch.inference_mode():
        for name, (k, grid_hw, size, crop) in CASES.items():
            grid = torch.randn(1, k, *grid_hw) * 4
            fns = {f'{ln}+{rn}': variant(grid, lay, red, size, crop)
                   for ln, lay in LAYOUTS.items() for rn, red in REDUCTIONS.items()}
            ref = next(iter(fns.values()))()
            for key, fn in fns.items():
                labels, conf = fn()
                if not (torch.equal(labels, ref[0]) and torch.allclose(conf, ref[1])):
                    raise SystemExit(f'{name} {key}: not the same labels / confidence')
            ms = time_case(fns, a.rounds, a.calls)
            out['cases'][name] = ms
            print(f'{name} ({k} classes, {grid_hw} -> {crop}): '
                  + ', '.join(f'{key} {v:.2f} ms' for key, v in ms.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
