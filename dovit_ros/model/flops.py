"""Analytic compute of one frame, per stage.

Counts multiply-accumulates (MACs) of every matrix product the forward executes: convolutions
of the stem / patch projection, the QKV, projection and MLP linears, the attention matmuls
QK^T and AV, the aux heads and the decoder's 1x1 convolutions. Element-wise work (norms,
softmax, GELU, BN, bilinear upsampling, gather/scatter) is not counted, which is also what
`torch.utils.flop_counter.FlopCounterMode` does; the tests check the two agree.
Reported figures are FLOPs = 2 x MACs unless a name says `macs`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .config import ViTConfig, stem_widths


def embed_macs(cfg: ViTConfig, h: int, w: int) -> int:
    """Patch projection or conv stem on a (16h, 16w) padded image -> h*w tokens."""
    n, C, p = h * w, cfg.dim, cfg.patch_size
    if not cfg.conv_stem:
        return n * 3 * p * p * C
    macs, cin = 0, 3
    for i, cout in enumerate(stem_widths(C)):
        s = 2 ** (3 - i)  # output side of layer i, in units of the token grid
        macs += (h * s) * (w * s) * cin * cout * 9
        cin = cout
    return macs + n * C * C  # final 1x1


def block_macs(cfg: ViTConfig, n: int) -> int:
    """One transformer block on n tokens (class token included in n)."""
    C = cfg.dim
    hidden = int(C * cfg.mlp_ratio)
    return n * C * 3 * C + 2 * n * n * C + n * C * C + 2 * n * C * hidden


def aux_macs(cfg: ViTConfig, n: int) -> int:
    return n * cfg.dim * cfg.num_classes


def decoder_macs(cfg: ViTConfig, n: int) -> int:
    return n * (cfg.dim * cfg.decoder_dim + cfg.decoder_dim * cfg.num_classes)


def refine_macs(cfg: ViTConfig, h: int, w: int) -> int:
    """The refine decoder's convolutions on an (h, w) token grid (0 for 'linear' decoders):
    lateral 1x1 and fusing 3x3 at stride 8 (2h x 2w) and stride 4 (4h x 4w), two 3x3 per
    residual block at each, two k-tap depthwise strips and a 1x1 per strip block,
    classifier 1x1."""
    if cfg.decoder != 'refine':
        return 0
    K, (d8, d4), (b8, b4) = cfg.num_classes, cfg.refine_dims, cfg.refine_blocks
    k8, k4 = cfg.refine_strip
    _, c4, c8, _ = stem_widths(cfg.dim)
    n8, n4 = 4 * h * w, 16 * h * w
    return (n8 * (c8 * (d8 // 2) + (K + d8 // 2) * d8 * 9 + b8 * 2 * d8 * d8 * 9
                  + strip_macs(d8, k8))
            + n4 * (c4 * (d4 // 2) + (d8 + d4 // 2) * d4 * 9 + b4 * 2 * d4 * d4 * 9 + d4 * K
                    + strip_macs(d4, k4)))


def strip_macs(d: int, k: int) -> int:
    """Per pixel: a StripBlock of k-tap strips on d channels (0 when there is none)."""
    return (2 * k * d + d * d) if k else 0


@dataclass
class FlopsBreakdown:
    """FLOPs of one frame: embedding, each stage's blocks (+ its aux head), decoder (token head
    plus, for 'refine' decoders, the high-resolution path)."""
    embed: float
    stages: list[float]
    decoder: float

    @property
    def total(self) -> float:
        return self.embed + sum(self.stages) + self.decoder


def segmenter_flops(cfg: ViTConfig, h: int, w: int, tokens_per_stage: Sequence[int] | None = None,
                    decoded_tokens: int | None = None, aux: bool = True) -> FlopsBreakdown:
    """FLOPs of a frame with an (h, w) token grid.

    tokens_per_stage: patch tokens the blocks of each stage ran on (default: all, the full
    model, which then runs no aux head). decoded_tokens: tokens the decoder ran on (default:
    all; with 'predictions' exits only the tokens that reached the end).
    """
    N = h * w
    full = tokens_per_stage is None
    counts = [N] * cfg.num_stages if full else list(tokens_per_stage)
    if len(counts) != cfg.num_stages:
        raise ValueError(f'{len(counts)} stage counts for {cfg.num_stages} stages')
    nc = int(cfg.class_token)
    stages = []
    for s, (a, b) in enumerate(cfg.stage_blocks()):
        n = counts[s]
        macs = (b - a) * block_macs(cfg, n + nc) if n > 0 else 0
        if aux and not full and s < cfg.num_stages - 1:
            macs += aux_macs(cfg, n)
        stages.append(2.0 * macs)
    dec = N if decoded_tokens is None else decoded_tokens
    return FlopsBreakdown(embed=2.0 * embed_macs(cfg, h, w), stages=stages,
                          decoder=2.0 * (decoder_macs(cfg, dec) + refine_macs(cfg, h, w)))


def full_flops(cfg: ViTConfig, h: int, w: int) -> float:
    """FLOPs of the plain model (no exits, no aux heads) on an (h, w) token grid."""
    return segmenter_flops(cfg, h, w).total
