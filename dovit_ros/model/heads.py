"""Token-wise heads. Both act on (B, n, C) token sequences, so they run on any subset of tokens:
a 1x1 convolution on a token grid is a Linear on its tokens."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AuxHead(nn.Module):
    """DoViT's decision head: norm + one 1x1 projection to class logits."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))  # (B, n, K)


class DecoderHead(nn.Module):
    """SETR-naive: norm -> 1x1 conv -> BN -> ReLU -> 1x1 conv to classes (bilinear upsampling
    to the input size happens in the segmenter, after the token grid is reconstructed)."""

    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, _ = x.shape
        y = self.fc1(self.norm(x))  # (B, n, D)
        y = self.bn(y.reshape(B * n, -1)).reshape(B, n, -1).relu()
        return self.fc2(y)  # (B, n, K)


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up2(x: torch.Tensor) -> torch.Tensor:
    # contiguous: CPU bilinear is ~3x slower on channels-last input
    return F.interpolate(x.contiguous(), scale_factor=2.0, mode='bilinear', align_corners=False)


class RefineDecoder(nn.Module):
    """High-resolution path after the token head (a light U-Net-style refinement).

    The token-grid logits (stride 16) are what exits produce, whatever their semantics; this
    module draws them at stride 4 with the conv stem's own stride-8 and stride-4 features:
      s8 = fuse8([up2(logits), lat8(stem_s8)])        3x3, d8 channels
      s4 = fuse4([up2(s8),     lat4(stem_s4)])        3x3, d4 channels
      out = up4(logits) + cls(s4)                    residual on the coarse prediction
    so a class the tokens see faintly (a pole in a token) can be drawn at its own width.
    """

    def __init__(self, num_classes: int, stem_channels: tuple[int, int],
                 dims: tuple[int, int] = (64, 32)):
        super().__init__()
        c4, c8 = stem_channels
        d8, d4 = dims
        K = num_classes
        self.lat8 = conv_bn_relu(c8, d8 // 2, 1)
        self.fuse8 = conv_bn_relu(K + d8 // 2, d8, 3)
        self.lat4 = conv_bn_relu(c4, d4 // 2, 1)
        self.fuse4 = conv_bn_relu(d8 + d4 // 2, d4, 3)
        self.cls = nn.Conv2d(d4, K, 1)
        nn.init.zeros_(self.cls.weight)   # starts as plain upsampling of the token logits
        nn.init.zeros_(self.cls.bias)

    def forward(self, logits: torch.Tensor, s4: torch.Tensor, s8: torch.Tensor) -> torch.Tensor:
        """logits (B, K, h, w), s4 (B, c4, 4h, 4w), s8 (B, c8, 2h, 2w) -> (B, K, 4h, 4w)."""
        y = up2(logits)  # (B, K, 2h, 2w)
        z = self.fuse8(torch.cat([y, self.lat8(s8)], 1))  # (B, d8, 2h, 2w)
        z = self.fuse4(torch.cat([up2(z), self.lat4(s4)], 1))  # (B, d4, 4h, 4w)
        return up2(y) + self.cls(z)
