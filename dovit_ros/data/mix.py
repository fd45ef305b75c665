"""ClassMix (Olsson et al., WACV 2021): paste the pixels of half the classes of one training
image onto another, image and label together.

A pole or a pedestrian then appears in front of walls, roads and skies of other drives, and
a frame's layout stops predicting its classes - a regulariser aimed at the drive gap (val
vs an unseen drive) and at the thin classes. It mixes a collated batch: image i receives
from its neighbour i + 1 (cyclically), drawn from a generator the caller seeds per step so
that a resumed run mixes exactly as the uninterrupted one.
"""
from __future__ import annotations

import torch


def class_mask(label: torch.Tensor, ignore_index: int, gen: torch.Generator) -> torch.Tensor:
    """(H, W) bool: the pixels of a random half (rounded up) of the classes in `label`;
    ignored pixels never belong to it."""
    present = label.unique()
    present = present[present != ignore_index]
    if present.numel() == 0:
        return torch.zeros_like(label, dtype=torch.bool)
    k = (present.numel() + 1) // 2
    chosen = present[torch.randperm(present.numel(), generator=gen)[:k]]
    return torch.isin(label, chosen)


def class_mix(images: torch.Tensor, labels: torch.Tensor, prob: float, ignore_index: int,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W), labels (B, H, W) -> mixed copies (the inputs are not changed).
    Each image is mixed with probability `prob`; sources are the unmixed batch."""
    B = images.shape[0]
    if B < 2 or prob <= 0:
        return images, labels
    draws = torch.rand(B, generator=gen)
    out_i, out_l = images.clone(), labels.clone()
    for i in range(B):
        if draws[i] >= prob:
            continue
        j = (i + 1) % B
        m = class_mask(labels[j], ignore_index, gen)  # (H, W)
        out_i[i] = torch.where(m, images[j], images[i])
        out_l[i] = torch.where(m, labels[j], labels[i])
    return out_i, out_l
