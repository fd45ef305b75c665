"""DoViT's objective (eq. 10-12): CE on the main output, alpha x CE on every aux head (logits
upsampled to the label size), beta x a KL distillation term on the main output.

The KL term is the usual distillation direction, sum_k p_teacher (log p_teacher - log p_student)
per pixel (what the papers write as KL(student || teacher) in the sense "student towards
teacher"); the teacher is the phase-1 full-token model."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import TrainOutput


def seg_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel CE; (B, K, h, w) logits are upsampled to the (B, H, W) target first."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode='bilinear',
                               align_corners=False)
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index)


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-pixel KL between teacher and student class distributions (both (B, K, H, W))."""
    s = F.log_softmax(student.float() / tau, 1)
    t = F.log_softmax(teacher.float() / tau, 1)
    return F.kl_div(s, t, log_target=True, reduction='none').sum(1).mean() * tau * tau


def dovit_loss(out: TrainOutput, target: torch.Tensor, aux_weight: float = 1.0,
               teacher_logits: torch.Tensor | None = None, distill_weight: float = 0.0,
               ignore_index: int = 255) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats, for logging)."""
    main = seg_ce(out.logits, target, ignore_index)
    parts = {'ce': main.item()}
    total = main
    if aux_weight and out.aux_logits:
        aux = sum(seg_ce(a, target, ignore_index) for a in out.aux_logits)
        total = total + aux_weight * aux
        parts['aux'] = aux.item()
    if distill_weight and teacher_logits is not None:
        kl = distill_kl(out.logits, teacher_logits)
        total = total + distill_weight * kl
        parts['kl'] = kl.item()
    parts['loss'] = total.item()
    return total, parts
