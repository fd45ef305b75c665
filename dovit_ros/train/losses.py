"""DoViT's objective (eq. 10-12): a segmentation loss on the main output, alpha x the same on
every aux head (logits upsampled to the label size), beta x a KL distillation term.

The segmentation loss aims at mIoU, which weighs every class alike while plain pixel CE
weighs them by area (a pole is ~1 % of CamVid's pixels, 1/11 of its mIoU). `LossConfig`
combines, as measured best for a dataset:
  class-weighted CE - weights from the training labels' class frequencies: median-frequency
                      balancing (Eigen & Fergus 2015, SegNet on CamVid), raised to `power`
                      (1: the classic weights, 0.5: softened, 0: plain CE);
  OHEM              - only the hardest `ohem_fraction` of labelled pixels count (1: all);
  Lovasz-softmax    - a convex surrogate of the per-class Jaccard loss (Berman et al. 2018),
                      `lovasz_weight` x its value added to the CE; on a uniform sample of at
                      most `lovasz_pixels` labelled pixels (0: all). The per-class sorts
                      dominate its cost on CPU (1.9 s a step at batch 8 x 320x320, one
                      thread); a uniform sample keeps each class's share and hence the
                      expected intersection/union ratios.

The KL term is the usual distillation direction, sum_k p_teacher (log p_teacher - log p_student)
per pixel (what the papers write as KL(student || teacher) in the sense "student towards
teacher"); the teacher is the phase-1 full-token model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..model import TrainOutput

CLASS_WEIGHTINGS = ('none', 'median_frequency')


@dataclass
class LossConfig:
    class_weights: str = 'none'      # none | median_frequency
    power: float = 1.0               # exponent applied to the class weights
    ohem_fraction: float = 1.0       # fraction of hardest labelled pixels kept (1 = all)
    lovasz_weight: float = 0.0
    lovasz_pixels: int = 0           # Lovasz on a random sample of this many pixels (0: all)

    def __post_init__(self):
        if self.class_weights not in CLASS_WEIGHTINGS:
            raise ValueError(f'loss.class_weights must be one of {CLASS_WEIGHTINGS}, '
                             f'got {self.class_weights!r}')
        if not 0 <= self.power <= 2:
            raise ValueError(f'loss.power must be in [0, 2], got {self.power}')
        if not 0 < self.ohem_fraction <= 1:
            raise ValueError(f'loss.ohem_fraction must be in (0, 1], got {self.ohem_fraction}')
        if self.lovasz_weight < 0:
            raise ValueError(f'loss.lovasz_weight must be >= 0, got {self.lovasz_weight}')
        if self.lovasz_pixels < 0:
            raise ValueError(f'loss.lovasz_pixels must be >= 0, got {self.lovasz_pixels}')


def median_frequency_weights(pixels: np.ndarray, image_pixels: np.ndarray,
                             power: float = 1.0) -> np.ndarray:
    """Per-class weights median(f) / f_c, f_c = pixels of class c / pixels of the images in
    which c appears. pixels, image_pixels: (K,) counts. A class never seen gets weight 0
    (it has no pixels to weigh)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    image_pixels = np.asarray(image_pixels, dtype=np.float64)
    seen = pixels > 0
    f = np.where(seen, pixels / np.maximum(image_pixels, 1), 0.0)
    w = np.where(seen, np.median(f[seen]) / np.where(seen, f, 1.0), 0.0)
    return w ** power * seen


def class_frequencies(labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels per class, pixels of the images containing each class) over label maps."""
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for lb in labels:
        counts = np.bincount(lb.ravel(), minlength=256)[:num_classes]
        pixels += counts
        valid = int(counts.sum())
        image_pixels[counts > 0] += valid
    return pixels, image_pixels


def seg_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
           weight: torch.Tensor | None = None, ohem_fraction: float = 1.0) -> torch.Tensor:
    """Pixel CE; (B, K, h, w) logits are upsampled to the (B, H, W) target first. With class
    weights the mean is over the weights (as F.cross_entropy does); with OHEM, over the
    hardest `ohem_fraction` of labelled pixels."""
    logits = to_label_size(logits, target)
    if ohem_fraction >= 1:
        return F.cross_entropy(logits.float(), target.long(), weight=weight,
                               ignore_index=ignore_index)
    px = F.cross_entropy(logits.float(), target.long(), weight=weight,
                         ignore_index=ignore_index, reduction='none').flatten()
    valid = (target != ignore_index).flatten()
    n = max(1, int(ohem_fraction * int(valid.sum())))
    return px[valid].topk(n, sorted=False).values.mean() if valid.any() else px.sum() * 0


def to_label_size(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode='bilinear',
                               align_corners=False)
    return logits


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman et
    al. 2018, alg. 1): the Jaccard loss after each prefix, differenced."""
    gts = gt_sorted.sum()
    inter = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jac = 1 - inter / union
    return torch.cat([jac[:1], jac[1:] - jac[:-1]])


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                   max_pixels: int = 0) -> torch.Tensor:
    """Mean over the classes present in `target` of the Lovasz hinge on softmax errors, over
    all labelled pixels or a uniform random sample of `max_pixels` of them."""
    logits = to_label_size(logits, target)
    K = logits.shape[1]
    p = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, K)  # (P, K)
    y = target.reshape(-1)
    idx = (y != ignore_index).nonzero().squeeze(1)
    if 0 < max_pixels < len(idx):
        idx = idx[torch.randperm(len(idx), device=idx.device)[:max_pixels]]
    p, y = p[idx], y[idx]
    losses = []
    for c in torch.unique(y).tolist():
        fg = (y == c).float()
        err = (fg - p[:, c]).abs()
        err, order = err.sort(descending=True)
        losses.append(torch.dot(err, lovasz_grad(fg[order])))
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def seg_loss(logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig,
             weight: torch.Tensor | None, ignore_index: int = 255) -> torch.Tensor:
    loss = seg_ce(logits, target, ignore_index, weight, cfg.ohem_fraction)
    if cfg.lovasz_weight:
        loss = loss + cfg.lovasz_weight * lovasz_softmax(logits, target, ignore_index,
                                                         cfg.lovasz_pixels)
    return loss


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-pixel KL between teacher and student class distributions (both (B, K, H, W))."""
    s = F.log_softmax(student.float() / tau, 1)
    t = F.log_softmax(teacher.float() / tau, 1)
    return F.kl_div(s, t, log_target=True, reduction='none').sum(1).mean() * tau * tau


def dovit_loss(out: TrainOutput, target: torch.Tensor, aux_weight: float = 1.0,
               teacher_logits: torch.Tensor | None = None, distill_weight: float = 0.0,
               ignore_index: int = 255, loss: LossConfig | None = None,
               class_weight: Sequence[float] | torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats, for logging). The aux heads get the same loss as
    the main output, minus Lovasz (their coarse logits only decide exits)."""
    cfg = loss or LossConfig()
    w = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32,
                                                          device=target.device)
    main = seg_loss(out.logits, target, cfg, w, ignore_index)
    parts = {'ce': main.item()}
    total = main
    if aux_weight and out.aux_logits:
        aux = sum(seg_ce(a, target, ignore_index, w, cfg.ohem_fraction) for a in out.aux_logits)
        total = total + aux_weight * aux
        parts['aux'] = aux.item()
    if distill_weight and teacher_logits is not None:
        kl = distill_kl(out.logits, teacher_logits)
        total = total + distill_weight * kl
        parts['kl'] = kl.item()
    parts['loss'] = total.item()
    return total, parts
