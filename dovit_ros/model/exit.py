"""Which tokens leave the network at a decision point: small pure functions on flat tensors.

All functions take flat (M,) tensors so that one code path serves a single frame (M = active
tokens) and a batch emulated with masks (M = B * N, groups offset by image).
"""
from __future__ import annotations

import torch


def confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max softmax probability and arg-max class of (..., K) logits."""
    return logits.float().softmax(-1).max(-1)


def threshold_exits(conf: torch.Tensor, xi: float) -> torch.Tensor:
    """DoViT: a token exits when its confidence is strictly above xi (xi >= 1: none do)."""
    return conf > xi


def topk_per_group(conf: torch.Tensor, group: torch.Tensor, cand: torch.Tensor, k: int,
                   num_groups: int) -> torch.Tensor:
    """Bool mask of the k most confident candidates of each group (ties: lower index first).

    conf, group, cand: (M,). Sorting by confidence, then stably by group, lays each group out
    contiguously in descending confidence; a token's rank is its offset from its group's start.
    """
    keep = torch.zeros_like(cand)
    ci = cand.nonzero().squeeze(1)  # (m,)
    if k <= 0 or ci.numel() == 0:
        return keep
    g = group[ci]
    o = torch.sort(conf[ci], descending=True, stable=True).indices
    o = o[torch.sort(g[o], stable=True).indices]  # grouped, confidence descending within
    go = g[o]
    counts = torch.bincount(go, minlength=num_groups)
    start = counts.cumsum(0) - counts
    rank = torch.arange(go.numel(), device=go.device) - start[go]
    keep[ci[o[rank < k]]] = True
    return keep


def dtop_exits(conf: torch.Tensor, cls: torch.Tensor, xi: float, k: int, num_classes: int,
               image: torch.Tensor | None = None, num_images: int = 1,
               active: torch.Tensor | None = None) -> torch.Tensor:
    """DToP: tokens above xi exit, except the k most confident of each predicted class, which
    stay to carry that class's context to later layers. `image` (M,) separates frames;
    `active` (M,) restricts the candidates to tokens that have not exited yet."""
    cand = conf > xi
    if active is not None:
        cand = cand & active
    group = cls if image is None else image * num_classes + cls
    return cand & ~topk_per_group(conf, group, cand, k, num_classes * num_images)


def decide_exits(logits: torch.Tensor, policy: str, xi: float, k: int,
                 image: torch.Tensor | None = None, num_images: int = 1,
                 active: torch.Tensor | None = None) -> torch.Tensor:
    """(M, K) aux logits -> (M,) bool: which of these tokens exit now (only active ones)."""
    conf, cls = confidence(logits)
    if policy == 'threshold':
        out = threshold_exits(conf, xi)
        return out if active is None else out & active
    if policy == 'dtop':
        return dtop_exits(conf, cls, xi, k, logits.shape[-1], image, num_images, active)
    if policy == 'none':
        return torch.zeros_like(conf, dtype=torch.bool)
    raise ValueError(f'unknown exit policy {policy!r}')
