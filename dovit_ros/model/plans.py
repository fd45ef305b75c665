"""Synthetic exit patterns for benchmarks and tests (the `plan` argument of the segmenter).

Real exits are spatially coherent: whole regions of sky or road leave early, object boundaries
stay. A uniformly random choice of tokens would misrepresent the memory access pattern of the
gathers, so the pattern here keeps the tokens where a smooth random field is highest.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def smooth_field(h: int, w: int, seed: int, cell: int = 4) -> torch.Tensor:
    """(h, w) float32 random field, smooth over about `cell` tokens: seeded low-resolution
    Gaussian noise, bicubic-upsampled."""
    g = torch.Generator().manual_seed(int(seed))
    lh, lw = max(2, math.ceil(h / cell)), max(2, math.ceil(w / cell))
    noise = torch.randn(1, 1, lh, lw, generator=g)
    return F.interpolate(noise, size=(h, w), mode='bicubic', align_corners=False)[0, 0]


def coherent_plan(h: int, w: int, keep: Sequence[float], seed: int = 0) -> list[torch.Tensor]:
    """One (h*w,) bool mask per decision point of the tokens still active after it.

    keep: fraction of all h*w tokens active after each decision point (non-increasing, each
    in [0, 1]); round(keep * N) tokens are kept. Masks are in row-major token order and nested
    by construction (every mask keeps a prefix of the same ranking). For the segmenter's
    (B, N) plan, add a batch axis: `[m[None] for m in coherent_plan(...)]`.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f'coherent_plan: grid must be positive, got {h}x{w}')
    keep = [float(k) for k in keep]
    if any(not 0.0 <= k <= 1.0 for k in keep):
        raise ValueError(f'coherent_plan: keep fractions must be in [0, 1], got {keep}')
    if any(b > a for a, b in zip(keep, keep[1:])):
        raise ValueError(f'coherent_plan: keep fractions must be non-increasing, got {keep}')
    N = h * w
    order = torch.argsort(smooth_field(h, w, seed).flatten(), descending=True, stable=True)
    masks = []
    for k in keep:
        m = torch.zeros(N, dtype=torch.bool)
        m[order[:round(k * N)]] = True
        masks.append(m)
    return masks


__all__ = ['coherent_plan', 'smooth_field']
