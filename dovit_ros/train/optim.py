"""Optimiser and schedules: AdamW/SGD with decay groups, warm-up + poly learning rate, the
annealed exit threshold of phase 2."""
from __future__ import annotations

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


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(('pos_embed', 'cls_token')) else decay).append(p)
    groups = [{'params': decay, 'weight_decay': cfg.weight_decay},
              {'params': no_decay, 'weight_decay': 0.0}]
    if cfg.name == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
