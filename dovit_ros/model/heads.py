"""Token-wise heads. Both act on (B, n, C) token sequences, so they run on any subset of tokens:
a 1x1 convolution on a token grid is a Linear on its tokens."""
from __future__ import annotations

import torch
import torch.nn as nn


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
