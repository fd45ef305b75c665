"""fp16 for the TensorRT engines (tensorrt.py): an fp16 copy of the model with LayerNorms (and
optionally the attention core) in fp32 for explicit typing, and the rule that accepts fp16 only
when its labels agree with fp32's (TensorRT 10.3 has a known FP16 accuracy failure on ViT
segmentation, NVIDIA/TensorRT#4723)."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...model import DoViTSegmenter
from ...model.vit import Attention, attend

FP16_MAX_DISAGREEMENT = 0.005   # fraction of pixels whose label may change in fp16


def label_disagreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fraction of pixels whose class labels differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f'label maps differ in shape: {a.shape} vs {b.shape}')
    return float((a != b).mean()) if a.size else 0.0


def choose_precision(disagreement: dict[str, float],
                     limit: float = FP16_MAX_DISAGREEMENT) -> str:
    """The first of 'fp16', 'fp16-attn32' whose measured disagreement with fp32 is within
    the limit, else 'fp32'."""
    for p in ('fp16', 'fp16-attn32'):
        if p in disagreement and disagreement[p] <= limit:
            return p
    return 'fp32'


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 on fp16 activations (fp32 weights): the mean and variance of
    a 768-wide fp16 row can overflow or lose the small variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                         self.bias.float(), self.eps)
        return y.to(x.dtype)


class FP32Attention(nn.Module):
    """The model's attention (`vit.attend`, same weights) with its softmax(QK^T)V core in fp32;
    projections stay in fp16."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.heads, self.qkv, self.proj = attn.heads, attn.qkv, attn.proj

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                segments: list[int] | None = None) -> torch.Tensor:
        return attend(x, self.qkv, self.proj, self.heads, key_mask, segments,
                      core_dtype=torch.float32)


def mixed_precision_copy(model: DoViTSegmenter, attention_fp32: bool = False
                         ) -> DoViTSegmenter:
    """An fp16 copy of `model` for export with explicit typing: LayerNorms (and optionally the
    attention core) in fp32. The original is left untouched."""
    m = copy.deepcopy(model).half().eval()

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            if isinstance(child, nn.LayerNorm):
                ln = FP32LayerNorm(child.normalized_shape, eps=child.eps,
                                   device=child.weight.device)
                ln.load_state_dict({k: v.float() for k, v in child.state_dict().items()})
                setattr(parent, name, ln)
            elif attention_fp32 and isinstance(child, Attention):
                setattr(parent, name, FP32Attention(child))
            else:
                swap(child)
    swap(m)
    return m
