#!/usr/bin/env python3
"""Compute-budget benchmark: does the xi controller hold a GFLOPs or latency target?

Streams real CamVid frames through the same Pipeline + BudgetChooser the node uses, in
blocks that alternate scenes of different difficulty (the shipped 0016E5 clip's frames,
then frames of the other sequences in the train split), and reports:
  * target_gflops between the stream's cost at threshold_min and at threshold_max: mean GFLOPs
    after 10 frames of settling, per block and overall, against the target (goal: within 10 %);
    crossings of the target per 10 frames;
  * an unreachable target (below the cost at threshold_min): xi must fall monotonically;
  * target_latency_ms (optional): p95 of the per-frame latency (model + output rendering) over
    the stream in a loop, against the target (goal: within 15 %).

  python scripts/budget_bench.py --model models/camvid-dovit-tiny --json out/budget.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def stream(data_root: Path, frames: int, block: int):
    """Alternating blocks of `block` frames: val 0016E5 (one drive) / train (other drives)."""
    from dovit_ros.data import load_dataset
    val = load_dataset('camvid', data_root, 'val')
    train = load_dataset('camvid', data_root, 'train')
    other = [i for i in range(len(train)) if not train.image_path(i).name.startswith('0016E5')]
    out, vi, ti = [], 0, 0
    while len(out) < frames:
        for _ in range(block):
            out.append(('easy', val[vi % len(val)][0]))
            vi += 1
        for _ in range(block):
            out.append(('other', train[other[(ti * 7) % len(other)]][0]))
            ti += 1
    return out[:frames]


def run(pipe, frames, chooser, render: bool):
    from dovit_ros.runtime.outputs import OUTPUTS, render_outputs
    xis, gf, ms = [], [], []
    for _, img in frames:
        ex = chooser()
        t0 = time.perf_counter()
        r = pipe.infer(img, ex)
        if render:
            render_outputs(pipe, img, r, OUTPUTS)
        dt = (time.perf_counter() - t0) * 1e3
        chooser.observe(r, dt)
        xis.append(float(ex.threshold))
        gf.append(r.gflops)
        ms.append(dt)
    return np.array(xis), np.array(gf), np.array(ms)


def crossings(cost, target, window=10):
    s = np.sign(cost - target)
    flips = np.count_nonzero(s[1:] != s[:-1])
    return flips / max(1, len(cost) / window)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=str(ROOT / 'models' / 'camvid-dovit-tiny'))
    ap.add_argument('--data-root', default=str(ROOT.parent / 'shared' / 'data' / 'camvid'))
    ap.add_argument('--frames', type=int, default=200)
    ap.add_argument('--block', type=int, default=20, help='frames per scene block')
    ap.add_argument('--threshold-min', type=float, default=0.90)
    ap.add_argument('--threshold-max', type=float, default=1.0)
    ap.add_argument('--target-gflops', type=float,
                    help='default: halfway between the stream\'s cost at the two bounds')
    ap.add_argument('--target-latency-ms', type=float,
                    help='also run a latency target (model + rendering of every output)')
    ap.add_argument('--threads', type=int)
    ap.add_argument('--json', type=Path)
    a = ap.parse_args(argv)
    import torch

    from dovit_ros.runtime.budget import BudgetChooser, BudgetConfig
    from dovit_ros.runtime.pipeline import Pipeline
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = Pipeline.from_path(a.model)
    base = pipe.meta.exits if pipe.meta.exits.policy != 'none' else \
        pipe.meta.exits.with_(policy='threshold')
    frames = stream(Path(a.data_root), a.frames, a.block)
    pipe.warmup(*frames[0][1].shape[:2])

    class Fixed:
        def __init__(self, xi):
            self.ex = base.with_(threshold=xi)

        def __call__(self):
            return self.ex

        def observe(self, r, ms):
            pass

    _, g_lo, _ = run(pipe, frames, Fixed(a.threshold_min), False)
    _, g_hi, _ = run(pipe, frames, Fixed(a.threshold_max), False)
    target = a.target_gflops or float(0.5 * (g_lo.mean() + g_hi.mean()))
    report = {'model': a.model, 'frames': len(frames), 'block': a.block,
              'machine': f'{platform.processor() or platform.machine()}, '
                         f'{torch.get_num_threads()} threads',
              'gflops_at_threshold_min': float(g_lo.mean()),
              'gflops_at_threshold_max': float(g_hi.mean()), 'target_gflops': target}
    ch = BudgetChooser(base, BudgetConfig(target, 'gflops', a.threshold_min, a.threshold_max))
    xis, gf, _ = run(pipe, frames, ch, False)
    blocks = [gf[i + 10:i + a.block].mean() / target for i in range(0, len(gf), a.block)
              if len(gf[i + 10:i + a.block])]
    report['gflops_run'] = {
        'mean_after_settling_vs_target': float(gf[10:].mean() / target),
        'block_means_vs_target': [round(float(b), 4) for b in blocks],
        'crossings_per_10_frames': crossings(gf[10:], target),
        'xi_min': float(xis.min()), 'xi_max': float(xis.max()),
        'within_10pct': bool(abs(gf[10:].mean() / target - 1) <= 0.10)}
    low = float(g_lo.min()) * 0.5   # below the cheapest frame: unreachable; start at the top
    ch = BudgetChooser(base.with_(threshold=a.threshold_max),
                       BudgetConfig(low, 'gflops', a.threshold_min, a.threshold_max))
    xis_u, _, _ = run(pipe, frames[:40], ch, False)
    report['unreachable_run'] = {
        'target_gflops': low, 'xi_first': float(xis_u[0]), 'xi_last': float(xis_u[-1]),
        'monotonic': bool(all(b <= x + 1e-12 for x, b in zip(xis_u, xis_u[1:]))),
        'frames_over_at_threshold_min': ch.ctrl.over_at_min}
    if a.target_latency_ms:
        loop = (frames * (200 // len(frames) + 1))[:200]
        ch = BudgetChooser(base, BudgetConfig(a.target_latency_ms, 'latency_ms',
                                              a.threshold_min, a.threshold_max))
        _, _, ms = run(pipe, loop, ch, True)
        p95 = float(np.percentile(ms[10:], 95))
        report['latency_run'] = {'target_ms': a.target_latency_ms, 'p50_ms':
                                 float(np.percentile(ms[10:], 50)), 'p95_ms': p95,
                                 'p95_vs_target': p95 / a.target_latency_ms,
                                 'within_15pct': bool(abs(p95 / a.target_latency_ms - 1) <= 0.15)}
    text = json.dumps(report, indent=1)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
