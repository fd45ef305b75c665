"""Eager vs compiled stages (dynamic token count vs token buckets) on random weights: the
measurement behind the choices in docs/backends.md.

  python -m dovit_ros.runtime.backends.measure --preset tiny --height 360 --width 480 \\
      --keep 0.5,0.3,0.2 --frames 12 --threads 1

Frames use coherent exit plans whose kept fractions vary by +-20 % around --keep, so that each
frame has different token counts; variants run interleaved frame by frame, so that load from
other processes falls on all of them alike. A first pass over all frames compiles every graph
(buckets compile one per bucket as frames reach it); its first call and its total are reported
(set TORCHINDUCTOR_CACHE_DIR to an empty folder for a cold compile), then a second pass is timed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ...model import FULL, DoViTSegmenter, ViTConfig
from ...model.plans import coherent_plan
from ...model.vit import grid_size
from .compile import CompiledRunner, CompileOptions

VARIANTS = ('eager', 'dynamic', 'buckets')


def frame_plans(h: int, w: int, keep: list[float], frames: int) -> list[list[torch.Tensor]]:
    plans = []
    for i in range(frames):
        f = 0.8 + 0.4 * ((i * 7) % frames) / max(1, frames - 1)   # a spread of scales
        plans.append([m[None] for m in coherent_plan(h, w, [min(1.0, k * f) for k in keep],
                                                     seed=i)])
    return plans


@torch.no_grad()
def measure(preset: str, H: int, W: int, keep: list[float], frames: int,
            variants=VARIANTS, buckets: int = 4, num_classes: int = 11) -> dict:
    torch.manual_seed(0)
    cfg = ViTConfig.preset(preset, num_classes=num_classes, img_size=(H, W), conv_stem=True)
    model = DoViTSegmenter(cfg).eval()
    x = torch.randn(1, 3, H, W)
    h, w = grid_size(H, W, cfg.patch_size)
    plans = frame_plans(h, w, keep, frames)
    runners = {'eager': lambda x, e, p: model(x, e, p)}
    for v in variants:
        if v != 'eager':
            runners[v] = CompiledRunner(model, CompileOptions(token_mode=v, buckets=buckets))
    res = {v: {'ms': [], 'first_s': None, 'pass_s': None, 'max_abs_diff': 0.0}
           for v in runners}
    for v, run in runners.items():   # compile (or just warm up, for eager)
        t0 = time.perf_counter()
        run(x, FULL, plans[0])
        res[v]['first_s'] = round(time.perf_counter() - t0, 2)
        for p in plans[1:]:
            run(x, FULL, p)
        res[v]['pass_s'] = round(time.perf_counter() - t0, 2)
    counts = []
    for p in plans:
        ref = None
        for v, run in runners.items():
            t0 = time.perf_counter()
            out = run(x, FULL, p)
            res[v]['ms'].append((time.perf_counter() - t0) * 1e3)
            if ref is None:
                ref = out
                counts.append(out.tokens_per_stage[0].tolist())
            else:
                d = float((out.logits - ref.logits).abs().max())
                res[v]['max_abs_diff'] = max(res[v]['max_abs_diff'], d)
    summary = {'preset': preset, 'size': [H, W], 'keep': keep, 'frames': frames,
               'threads': torch.get_num_threads(), 'tokens_per_stage': counts, 'variants': {}}
    for v, r in res.items():
        summary['variants'][v] = {
            'median_ms': round(statistics.median(r['ms']), 1),
            'min_ms': round(min(r['ms']), 1), 'first_call_s': r['first_s'],
            'first_pass_s': r['pass_s'],
            'max_abs_diff_vs_eager': r['max_abs_diff'],
            'graphs_per_stage': dict(runners[v].graphs.per_stage) if v != 'eager' else None}
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--preset', default='tiny')
    ap.add_argument('--height', type=int, default=360)
    ap.add_argument('--width', type=int, default=480)
    ap.add_argument('--keep', default='0.5,0.3,0.2')
    ap.add_argument('--frames', type=int, default=12)
    ap.add_argument('--buckets', type=int, default=4)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--variants', default=','.join(VARIANTS))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = measure(a.preset, a.height, a.width, [float(k) for k in a.keep.split(',')], a.frames,
                  [v for v in a.variants.split(',') if v], a.buckets)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
