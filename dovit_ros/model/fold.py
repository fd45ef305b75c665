"""Fold inference-mode BatchNorm into the convolution or linear layer before it.

At inference a BN is a per-channel affine map, y = s * (x - mean) + beta with
s = gamma / sqrt(var + eps), so `BN(conv(x))` equals one convolution with weights scaled by s
and bias s * (b - mean) + beta. On a CPU frame the 17 BNs of the conv stem, the token head and
the refine decoder are separate passes over feature maps; folded, they cost nothing (measured:
a pruned 360x480 frame 9-14 % faster in fp32, 3-4 % in bf16, docs/benchmarks.md). Training
needs the BNs, so only inference loaders fold (Pipeline, the node's start-up, dovit-eval,
dovit-bench), and a folded model refuses to be saved (runtime/artifacts.py).

Pairs are found structurally: (layer, BN) neighbours inside an `nn.Sequential`, plus the pairs
a module names in `FOLD_PAIRS` (attribute names, for layers used in `forward` code).
"""
from __future__ import annotations

import torch
import torch.nn as nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def foldable(layer: nn.Module, bn: nn.Module) -> bool:
    """A layer whose output channels a following BN (with running statistics) normalises."""
    if not (isinstance(layer, _LAYERS) and isinstance(bn, _BN) and bn.track_running_stats
            and bn.running_mean is not None):
        return False
    if isinstance(layer, nn.ConvTranspose2d) and layer.groups != 1:
        return False
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return out == bn.num_features


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    """Scale `layer`'s weights and set its bias so that it computes bn(layer(x)) (eval BN)."""
    w = layer.weight
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)  # (out,)
    # output channels: dim 0 of Conv2d / Linear weights, dim 1 of ConvTranspose2d's
    shape = [1] * w.dim()
    shape[1 if isinstance(layer, nn.ConvTranspose2d) else 0] = -1
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
    layer.weight.copy_((w.double() * s.view(shape)).to(w.dtype))
    bias = ((b - mean) * s + beta).to(w.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    else:
        layer.bias.copy_(bias)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable BN of `model` in place (each replaced by nn.Identity); returns how
    many. Marks the model `bn_folded` so that it is never saved or trained as if whole."""
    n = 0
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if foldable(m[i], m[i + 1]):
                    fold_pair(m[i], m[i + 1])
                    m[i + 1] = nn.Identity()
                    n += 1
        for a, b in getattr(m, 'FOLD_PAIRS', ()):
            if foldable(getattr(m, a), getattr(m, b)):
                fold_pair(getattr(m, a), getattr(m, b))
                setattr(m, b, nn.Identity())
                n += 1
    if n:
        model.bn_folded = True
    return n
