"""Plain ViT pieces: patch embedding (linear or conv stem), resizable position embedding, Block.

Blocks take an optional key mask so that a full-length sequence can emulate a pruned one
(training with exits active, and the reference in tests): masked keys receive no attention.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import stem_widths


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> dim, as one strided conv."""

    def __init__(self, dim: int, patch_size: int = 16, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, C, h, w)


class ConvStem(nn.Module):
    """Four 3x3 stride-2 convs then a 1x1 (Xiao et al. 2021, "Early convolutions help
    transformers see better"): a better inductive bias when training from scratch on small
    data, at a few % of the backbone's FLOPs. Output stride 16, like the patch projection.

    With `skips=True` it also returns its stride-4 and stride-8 activations, which the refine
    decoder fuses to draw thin structures at their own resolution (no extra compute here)."""

    SKIP_AFTER = (5, 8)   # indices in `layers` of the ReLUs ending the stride-4 and -8 convs

    def __init__(self, dim: int, in_chans: int = 3):
        super().__init__()
        layers, c = [], in_chans
        for w in stem_widths(dim):
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, dim, 1))
        self.layers = nn.Sequential(*layers)   # one Sequential: state-dict keys of old models

    def forward(self, x: torch.Tensor, skips: bool = False):
        if self.layers[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)   # the weights' layout
        if not skips:
            return self.layers(x)  # (B, C, h, w)
        feats = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.SKIP_AFTER:
                feats.append(x)
        return x, tuple(feats)  # (B, C, h, w), ((B, c4, 4h, 4w), (B, c8, 2h, 2w))


def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]
                     ) -> torch.Tensor:
    """(1, hs*ws, C) learned grid -> (1, hd*wd, C), bicubic."""
    if tuple(src) == tuple(dst):
        return pos
    C = pos.shape[-1]
    g = pos.reshape(1, src[0], src[1], C).permute(0, 3, 1, 2)  # (1, C, hs, ws)
    g = F.interpolate(g, size=dst, mode='bicubic', align_corners=False)
    return g.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], C)


PACKED_ATTENTION = ('split', 'mask')


def attend(x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, heads: int,
           key_mask: torch.Tensor | None = None, segments: list[int] | None = None,
           packed_mode: str = 'split', core_dtype: torch.dtype | None = None,
           core: str = 'sdpa') -> torch.Tensor:
    """Multi-head self-attention on (B, N, C) tokens: the one implementation behind `Attention`
    and the TensorRT fp16 recipe's fp32-core variant. key_mask (B, N) bool: False keys receive
    no attention. segments / packed_mode: packed frames (Attention). core_dtype: compute
    softmax(QK^T)V in this dtype (None: the input's); the projections stay in the input's.
    core: how softmax(QK^T)V is computed (`attention_core`)."""
    core_fn = ATTENTION_CORES[core]
    B, N, C = x.shape
    q, k, v = qkv(x).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if core_dtype is not None:   # (B, H, N, d) each
        q, k, v = q.to(core_dtype), k.to(core_dtype), v.to(core_dtype)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
    if segments is None or len(segments) < 2:
        y = core_fn(q, k, v, attn_mask=mask)
    elif packed_mode == 'mask':
        y = core_fn(q, k, v, attn_mask=block_diagonal(segments, x))
    else:
        y = torch.cat([core_fn(qi, ki, vi) for qi, ki, vi in zip(
            q.split(segments, 2), k.split(segments, 2), v.split(segments, 2))], 2)
    return proj(y.to(x.dtype).transpose(1, 2).reshape(B, N, C))


MATMUL_MAX_SCORES = 3 * 2048 ** 2   # 25 MB in bf16: 3 heads at 2048 tokens


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V with the (B, H, N, N) scores written out: two batched
    matmuls and a softmax, the same result as F.scaled_dot_product_attention. On some CPUs this
    beats the fused kernel in bf16 at a few hundred tokens (runtime/attention.py measures
    which). Its memory grows with N^2: above MATMUL_MAX_SCORES scores (a frame far larger than
    the model's own size) it hands over to the fused kernel, which never holds them."""
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] > MATMUL_MAX_SCORES:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    a = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))  # (B, H, N, N)
    if attn_mask is not None:
        a = a.masked_fill(~attn_mask, float('-inf'))
    return torch.matmul(a.softmax(-1), v)  # (B, H, N, d)


# How softmax(QK^T)V is computed: the fused kernel (flash / memory-efficient / math, chosen by
# PyTorch) or written out as matmuls.
ATTENTION_CORES = {'sdpa': F.scaled_dot_product_attention, 'matmul': matmul_attention}


class Attention(nn.Module):
    """Multi-head self-attention (`attend`). `segments` (packed frames, see model/packed.py):
    lengths of consecutive parts of the sequence that attend only within themselves, computed
    as one attention call per part ('split') or one call with a block-diagonal mask ('mask'),
    switchable through `packed_mode` (chosen by measurement, scripts/multicam_bench.py)."""

    packed_mode = 'split'

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.core = 'sdpa'   # ATTENTION_CORES key; set per model (DoViTSegmenter.attention_core)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                segments: list[int] | None = None) -> torch.Tensor:
        return attend(x, self.qkv, self.proj, self.heads, key_mask, segments, self.packed_mode,
                      core=self.core)


def block_diagonal(segments: list[int], like: torch.Tensor) -> torch.Tensor:
    """(1, 1, M, M) bool mask: True where row and column lie in the same segment."""
    seg = torch.repeat_interleave(torch.arange(len(segments), device=like.device),
                                  torch.tensor(segments, device=like.device))
    return (seg[:, None] == seg[None, :])[None, None]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016, as DeiT trains ViTs from scratch): a residual
    branch (B, ...) is dropped for whole samples with probability p and the kept ones are
    scaled by 1 / (1 - p); the identity outside training."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1.0 - p)  # (B, 1, 1)
    return x * keep / (1.0 - p)


class Block(nn.Module):
    """Pre-norm transformer block; `drop_path`: its stochastic-depth rate in training
    (`drop_rate`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_rate = drop_path

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                segments: list[int] | None = None) -> torch.Tensor:
        p, train = self.drop_rate, self.training
        x = x + drop_path(self.attn(self.norm1(x), key_mask, segments), p, train)
        return x + drop_path(self.mlp(self.norm2(x)), p, train)


def init_weights(m: nn.Module) -> None:
    """ViT init: truncated-normal linears, zero biases, unit norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def grid_size(h: int, w: int, p: int) -> tuple[int, int]:
    return math.ceil(h / p), math.ceil(w / p)
