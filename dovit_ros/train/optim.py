"""Optimiser and schedules: AdamW/SGD with decay groups, warm-up + poly learning rate, the
annealed exit threshold of phase 2."""
from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn as nn


def lr_factor(step: int, total: int, warmup: int, power: float) -> float:
    """Linear warm-up, then poly decay to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** power


def anneal_threshold(step: int, total: int, cfg) -> float:
    """xi from `anneal_from` down to the target over the first `anneal_fraction` of the run
    (linear), then held: exits start rare and grow as the aux heads become reliable."""
    span = max(1, int(total * cfg.anneal_fraction))
    f = min(1.0, step / span)
    return cfg.anneal_from + (cfg.threshold - cfg.anneal_from) * f


def build_optimizer(model: nn.Module, cfg, fresh: Collection[str] = ()) -> torch.optim.Optimizer:
    """Decay and no-decay groups; the parameters named in `fresh` (those a warm start did not
    supply) in groups of their own whose learning rate is `cfg.fresh_lr_scale` times the
    schedule's (each group's `lr_scale`): a block added to a trained model, starting as the
    identity, otherwise barely moves at a fine-tune's rate (docs/training.md item 17)."""
    members: dict[tuple[bool, bool], list] = {}   # (fresh, no decay) -> parameters
    for name, p in model.named_parameters():
        no_decay = p.ndim <= 1 or name.endswith(('pos_embed', 'cls_token'))
        members.setdefault((name in fresh, no_decay), []).append(p)
    groups = [{'params': ps, 'weight_decay': 0.0 if no_decay else cfg.weight_decay,
               'lr_scale': cfg.fresh_lr_scale if is_fresh else 1.0}
              for (is_fresh, no_decay), ps in sorted(members.items(), key=lambda kv: kv[0])]
    if cfg.name == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
