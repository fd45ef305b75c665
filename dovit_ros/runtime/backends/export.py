"""torch.export of the stage modules, each traced with exactly the shape profile its TensorRT
engine should have (profiles.stage_profiles): the input of TensorRT builds.

Torch-TensorRT builds an engine's optimisation profile from the program's own symbolic ranges,
with the trace-time example as opt (profiles.py), so the programs carry the intended profile:
  embed, stage_0, a 'features' decoder, refine - static (they always see the same shape);
  stage_s (s > 0), a 'predictions' decoder     - Dim(min=low, max=full) on the token axis,
                                                 traced at opt (the median kept count).
The minimum is 2 because torch.export (like dynamo) specialises a size of 0 or 1: a length-1
axis broadcasts, so the tracer cannot treat it as a general symbol, and a range that includes 1
fails with "Constraints violated". With a class token, a stage with an aux head needs min=3: its
head sees the tokens minus the class token, which must itself stay >= 2 (`min_tokens`). The
runner sends a call below the minimum (one surviving token) to the eager stage instead.

Saved programs (`out_dir/<stage>.pt2`, torch.export.save) are a local, derived cache that the
user builds from the safetensors model, never a distributed artifact: loading a .pt2 with
torch.export.load unpickles part of it (see docs/backends.md), and our model directories must
never need pickle. Nothing in the runtime loads them; TensorRT engines are built from the
in-memory programs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.export import Dim, ExportedProgram

from ...model import DoViTSegmenter
from .profiles import stage_names, stage_profiles
from .stages import MIN_TOKENS, build_stages, full_tokens


def _example(spec: dict, dev: torch.device, dt: torch.dtype) -> torch.Tensor:
    """A zero input at the spec's opt shape: the model's dtype, bool for a key mask."""
    if spec['dtype'] == torch.bool:
        return torch.ones(spec['opt_shape'], dtype=torch.bool, device=dev)
    return torch.zeros(spec['opt_shape'], device=dev, dtype=dt)


def _dynamic(name: str, specs: list[dict]):
    """dynamic_shapes for one stage: one Dim per varying axis, shared by its inputs (the
    tokens and their key mask have one length); None where every input is static."""
    dims, out = {}, []
    for sp in specs:
        axes = {}
        for a, (lo, hi) in enumerate(zip(sp['min_shape'], sp['max_shape'])):
            if lo != hi:
                if (a, lo, hi) not in dims:
                    dims[(a, lo, hi)] = Dim(f'{name}_{a}', min=lo, max=hi)
                axes[a] = dims[(a, lo, hi)]
        out.append(axes or None)
    return tuple(out) if dims else None


@torch.no_grad()
def export_stages(model: DoViTSegmenter, out_dir: str | Path | None = None,
                  example_hw: tuple[int, int] = (360, 480), key_mask: bool = False,
                  token_stats: Sequence[Sequence[float] | None] | None = None
                  ) -> dict[str, ExportedProgram]:
    """Export every stage of `model` (eval, on its device and dtype) for (H, W) images, each
    with the profile `stage_profiles` gives (token_stats: per stage, observed kept patch-token
    counts, whose median is the traced opt; without them opt = the full count).

    key_mask: also give block stages a (1, n) bool key-mask input (for padded token buckets).
    Returns {name: ExportedProgram} in run order; with `out_dir`, also writes
    `out_dir/<name>.pt2`.
    """
    model.eval()
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    H, W = int(example_hw[0]), int(example_hw[1])
    stages = build_stages(model, (H, W))
    N = full_tokens(model, (H, W))[1]
    if N < MIN_TOKENS + 1:
        raise ValueError(f'a {H}x{W} image has {N} patch token(s); exporting a symbolic token '
                         f'count needs at least {MIN_TOKENS + 1}')
    specs = stage_profiles(model, (H, W), 'fp32', token_stats, key_mask)
    mods = {'embed': stages.embed, 'decoder': stages.decoder, 'refine': stages.refine,
            **{f'stage_{s}': b for s, b in enumerate(stages.blocks)}}
    progs = {}
    for name in stage_names(model):
        args = tuple(_example(sp, dev, dt) for sp in specs[name])
        progs[name] = torch.export.export(mods[name], args,
                                          dynamic_shapes=_dynamic(name, specs[name]))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, ep in progs.items():
            torch.export.save(ep, str(out / f'{name}.pt2'))
    return progs


__all__ = ['export_stages', 'stage_names']
