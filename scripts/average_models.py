#!/usr/bin/env python3
"""The weighted average of model directories' weights ("model soup", Wortsman et al. 2022).

  python scripts/average_models.py A_DIR B_DIR [...] --out DIR [--weights 0.5 0.5] [--name N]

Meant for models fine-tuned from one start (phase 2 runs of one teacher that differ in a loss
setting, say): those usually lie in one basin, where the averaged weights work as a model.
Every input must have the same architecture and classes; the output is a model directory like
theirs (model.yaml from the first input, its recipe naming the inputs and weights). Floating
tensors are averaged; integer ones must agree and are copied, but for BatchNorm's step counter
(num_batches_tracked), which takes the largest.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch


def check_weights(weights: list[float], n: int) -> list[float]:
    """The mixing weights, one per model, finite and non-negative, normalised to sum to 1."""
    if len(weights) != n:
        raise ValueError(f'{n} models but {len(weights)} weights')
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f'weights must be finite, non-negative and not all zero: {weights}')
    s = sum(weights)
    return [w / s for w in weights]


def average_state(states: list[dict[str, torch.Tensor]], weights: list[float]
                  ) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i for floating tensors, in float64 and back to each tensor's dtype."""
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            diff = sorted(keys ^ set(s))[:5]
            raise ValueError(f'model {i} has other tensors than model 0: {diff}')
    out = {}
    for k, t0 in states[0].items():
        if any(s[k].shape != t0.shape for s in states):
            raise ValueError(f'{k}: shapes differ between the models')
        if t0.is_floating_point():
            acc = sum(w * s[k].double() for w, s in zip(weights, states))
            out[k] = acc.to(t0.dtype)
        elif all(torch.equal(s[k], t0) for s in states):
            out[k] = t0.clone()
        elif k.endswith('num_batches_tracked'):   # a step counter, not a weight: the largest
            out[k] = torch.stack([s[k] for s in states]).amax(0)
        else:
            raise ValueError(f'{k}: integer tensor differs between the models')
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('models', nargs='+', type=Path, help='model directories (two or more)')
    ap.add_argument('--out', type=Path, required=True, help='output model directory')
    ap.add_argument('--weights', type=float, nargs='+', help='one per model (default: equal)')
    ap.add_argument('--name', help="the output's name in model.yaml (default: the folder's)")
    a = ap.parse_args(argv)
    from dovit_ros.runtime.artifacts import ModelLoadError, load_model, save_model_dir
    if len(a.models) < 2:
        ap.error('give two or more model directories')
    if a.out.exists() and (not a.out.is_dir() or any(a.out.iterdir())):
        # never over an input or another model: the average goes to a new or empty folder
        print(f'average_models: {a.out} exists and is not an empty folder', file=sys.stderr)
        return 2
    try:
        weights = check_weights(a.weights or [1.0] * len(a.models), len(a.models))
        loaded = [load_model(p) for p in a.models]
    except (ValueError, ModelLoadError) as e:
        print(f'average_models: {e}', file=sys.stderr)
        return 2
    meta0 = loaded[0][1]
    for p, (_, meta) in zip(a.models[1:], loaded[1:]):
        if meta.architecture != meta0.architecture or meta.classes != meta0.classes:
            print(f'average_models: {p} has another architecture or classes than '
                  f'{a.models[0]}', file=sys.stderr)
            return 2
    model = loaded[0][0]
    try:
        model.load_state_dict(average_state([m.state_dict() for m, _ in loaded], weights))
    except ValueError as e:
        print(f'average_models: {e}', file=sys.stderr)
        return 2
    recipe = {'average_of': [{'model': str(p), 'weight': w, 'sha256': meta.weights_sha256}
                             for p, w, (_, meta) in zip(a.models, weights, loaded)]}
    meta = dataclasses.replace(meta0, name=a.name or a.out.name, recipe=recipe, metrics={})
    save_model_dir(a.out, model, meta)
    print(f'average_models: {a.out} = ' + ' + '.join(
        f'{w:.3g} x {p}' for p, w in zip(a.models, weights)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
