"""torch.export of the stage modules with a symbolic token count: the input of TensorRT builds.

Every block stage and the decoder get `Dim('tokens', min=2, max=full)` on the token axis. The
minimum is 2 because torch.export (like dynamo) specialises a size of 0 or 1: a length-1 axis
broadcasts, so the tracer cannot treat it as a general symbol, and a range that includes 1
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

import torch
from torch.export import Dim, ExportedProgram

from ...model import DoViTSegmenter
from .stages import MIN_TOKENS, build_stages, full_tokens, min_tokens


def stage_names(model: DoViTSegmenter) -> list[str]:
    """'embed', 'stage_0' .. 'stage_{S-1}', 'decoder': the keys of export_stages, in run order."""
    return ['embed'] + [f'stage_{s}' for s in range(model.cfg.num_stages)] + ['decoder']


def example_tokens(low: int, full: int) -> int:
    """A token count to trace with, strictly inside [low, full] where possible, so that
    neither bound is mistaken for a constant."""
    return min(full, max(low + 1, full // 2 + 1)) if full > low else low


@torch.no_grad()
def export_stages(model: DoViTSegmenter, out_dir: str | Path | None = None,
                  example_hw: tuple[int, int] = (360, 480), key_mask: bool = False
                  ) -> dict[str, ExportedProgram]:
    """Export every stage of `model` (eval, on its device and dtype) for (H, W) images.

    key_mask: also give block stages a (1, n) bool key-mask input (for padded token buckets).
    Returns {name: ExportedProgram}; with `out_dir`, also writes `out_dir/<name>.pt2`.
    """
    model.eval()
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    H, W = int(example_hw[0]), int(example_hw[1])
    stages = build_stages(model, (H, W))
    full, N = full_tokens(model, (H, W))
    C = model.cfg.dim
    if N < MIN_TOKENS + 1:
        raise ValueError(f'a {H}x{W} image has {N} patch token(s); exporting a symbolic token '
                         f'count needs at least {MIN_TOKENS + 1}')
    progs = {'embed': torch.export.export(stages.embed, (torch.zeros(1, 3, H, W, device=dev,
                                                                     dtype=dt),))}
    for s, blk in enumerate(stages.blocks):
        low = min_tokens(model, s)
        tokens = Dim('tokens', min=low, max=full)
        n = example_tokens(low, full)
        t = torch.zeros(1, n, C, device=dev, dtype=dt)
        if key_mask:
            args = (t, torch.ones(1, n, dtype=torch.bool, device=dev))
            dyn = ({1: tokens}, {1: tokens})
        else:
            args, dyn = (t,), ({1: tokens},)
        progs[f'stage_{s}'] = torch.export.export(blk, args, dynamic_shapes=dyn)
    dec_tokens = Dim('tokens', min=MIN_TOKENS, max=N)
    f = torch.zeros(1, example_tokens(MIN_TOKENS, N), C, device=dev, dtype=dt)
    progs['decoder'] = torch.export.export(stages.decoder, (f,),
                                           dynamic_shapes=({1: dec_tokens},))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, ep in progs.items():
            torch.export.save(ep, str(out / f'{name}.pt2'))
    return progs


__all__ = ['export_stages', 'stage_names', 'example_tokens']
