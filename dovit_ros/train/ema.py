"""Exponential moving average of the weights (Polyak averaging).

Training is unchanged; the averaged copy is what gets evaluated, kept as `best/` and exported.
On 367 training images the val curve swings by points between evaluations of the raw weights
(docs/training.md); an average over the last few hundred steps is a steadier model to pick.
BatchNorm running statistics are averaged like the weights; integer buffers (the BN step
counters) are copied.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from ..runtime.artifacts import load_tensors

EMA_FILE = 'ema.safetensors'   # beside a checkpoint's model weights (checkpoint.py)


class WeightEMA:
    """`model` <- decay * model + (1 - decay) * trained, after every optimiser step."""

    def __init__(self, trained: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f'ema decay must lie in (0, 1), got {decay}')
        self.decay = decay
        self.model = copy.deepcopy(trained).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, trained: nn.Module) -> None:
        # state_dict() tensors share storage with the modules: in-place updates land in them
        own, new = self.model.state_dict(), trained.state_dict()
        for k, e in own.items():
            if e.dtype.is_floating_point:
                e.lerp_(new[k], 1 - self.decay)
            else:
                e.copy_(new[k])

    def load(self, ckpt_dir: Path) -> bool:
        """Restore from a checkpoint folder; False when it has none (a run that enables the
        average on resume starts it from the checkpoint's weights)."""
        f = Path(ckpt_dir) / EMA_FILE
        if not f.is_file():
            return False
        self.model.load_state_dict(load_tensors(f))
        return True
