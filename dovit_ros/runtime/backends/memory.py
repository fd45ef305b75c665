"""Analytic memory budget of one inference stream: parameter bytes and peak activation bytes,
from the architecture alone (used for the Jetson sizing in docs/jetson.md).

Activations are counted at batch 1 with every token active (the worst frame: exits only make
later stages smaller), as the largest set of tensors alive at once in one of these phases:
  stem    - the image and the widest convolution input + output
  attn    - residual, normed input, QKV, attention output and, when attention is not fused
            (PyTorch's math path, or an engine without a fused MHA kernel), the H x n x n
            scores and probabilities
  mlp     - residual, normed input, the hidden layer before and after GELU
  decoder - features, normed, hidden before and after BN, token logits
  output  - upsampled logits, and the fp32 post-processing (max, exp, labels, confidence)
plus, during the blocks, the exit bookkeeping buffers (exited features, token logits).
Allocator slack, workspace of TensorRT tactics and the CUDA context are not included.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...model import ViTConfig
from ...model.config import stem_widths
from ...model.vit import grid_size


@dataclass
class MemoryBudget:
    params: int                   # parameters + float buffers (BN statistics), elements
    param_bytes: int
    peak_activation_bytes: int    # fused attention (no n x n matrices)
    peak_activation_bytes_unfused: int
    peak_phase: str               # the phase that sets the fused peak
    phases: dict                  # phase -> bytes (fused attention), 'attn_unfused' too
    tokens: int                   # nc + N at this image size

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.peak_activation_bytes


def param_count(cfg: ViTConfig) -> int:
    """Parameters and float buffers of DoViTSegmenter(cfg) (the tests check it against the
    module)."""
    C, K, D, p = cfg.dim, cfg.num_classes, cfg.decoder_dim, cfg.patch_size
    hid = int(C * cfg.mlp_ratio)
    if cfg.conv_stem:
        embed, cin = 0, 3
        for w in stem_widths(C):
            embed += cin * w * 9 + 4 * w   # conv without bias; BN weight, bias, mean, var
            cin = w
        embed += cin * C + C               # final 1x1
    else:
        embed = 3 * p * p * C + C
    gh, gw = grid_size(*cfg.img_size, p)
    pos = gh * gw * C + (C if cfg.class_token else 0)
    block = (2 * C + 3 * C * C + (3 * C if cfg.qkv_bias else 0) + C * C + C
             + 2 * C + C * hid + hid + hid * C + C)
    aux = len(cfg.decision_points) * (2 * C + C * K + K)
    refine = refine_param_count(cfg)
    dec = 2 * C + C * D + D + 4 * D + D * K + K
    return embed + pos + cfg.depth * block + aux + dec + refine


def memory_budget(cfg: ViTConfig, height: int, width: int, dtype_bytes: int = 4
                  ) -> MemoryBudget:
    """Budget of one (height, width) stream with weights and activations of `dtype_bytes`
    (4 fp32, 2 fp16); the post-processing after the logits is fp32."""
    b = int(dtype_bytes)
    C, K, D = cfg.dim, cfg.num_classes, cfg.decoder_dim
    hid = int(C * cfg.mlp_ratio)
    p = cfg.patch_size
    h, w = grid_size(height, width, p)
    N = h * w
    n = N + int(cfg.class_token)
    Hp, Wp = h * p, w * p
    image = 3 * Hp * Wp
    if cfg.conv_stem:
        stem, cin, side = 0, image, 2
        for c in stem_widths(C):
            out = (Hp // side) * (Wp // side) * c
            stem, cin, side = max(stem, cin + 2 * out), out, side * 2  # conv out, BN out
        stem = max(stem, cin + N * C)
    else:
        stem = image + N * C
    book = N * C + 2 * N * K          # exited features, token logits, aux logits
    attn = 6 * n * C                  # residual, norm, qkv (3), attention output
    scores = 2 * cfg.heads * n * n    # scores and softmax probabilities
    mlp = 2 * n * C + 2 * n * hid
    dec = 2 * N * C + 2 * N * D + N * K
    if cfg.decoder == 'refine':   # stride-4 fusion: its input concat, conv and BN outputs
        d8, d4 = cfg.refine_dims
        dec = max(dec, 16 * N * (d8 + d4 // 2 + 2 * d4 + K) + 4 * N * stem_widths(C)[2])
    out_model = K * Hp * Wp * b       # upsampled logits, model dtype
    post = (2 * K * height * width + 3 * height * width) * 4   # fp32 copy/exp, max, conf, labels
    phases = {'stem': stem * b, 'attn': (attn + book) * b, 'mlp': (mlp + book) * b,
              'decoder': dec * b, 'output': out_model + post}
    unfused = (attn + scores + book) * b
    peak_phase = max(phases, key=phases.get)
    params = param_count(cfg)
    phases['attn_unfused'] = unfused
    return MemoryBudget(params=params, param_bytes=params * b,
                        peak_activation_bytes=phases[peak_phase],
                        peak_activation_bytes_unfused=max(phases[peak_phase], unfused),
                        peak_phase=peak_phase, phases=phases, tokens=n)


def mib(nbytes: float) -> float:
    return round(nbytes / 2 ** 20, 1)


def refine_param_count(cfg: ViTConfig) -> int:
    """The refine decoder's weights and BN buffers (0 for 'linear' decoders)."""
    if cfg.decoder != 'refine':
        return 0
    K, (d8, d4) = cfg.num_classes, cfg.refine_dims
    _, c4, c8, _ = stem_widths(cfg.dim)

    def cbr(cin: int, cout: int, k: int) -> int:   # conv without bias; BN weight, bias, stats
        return cin * cout * k * k + 4 * cout
    return (cbr(c8, d8 // 2, 1) + cbr(K + d8 // 2, d8, 3) + cbr(c4, d4 // 2, 1)
            + cbr(d8 + d4 // 2, d4, 3) + d4 * K + K)


__all__ = ['MemoryBudget', 'refine_param_count', 'memory_budget', 'param_count', 'mib']
