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

    FOLD_PAIRS = (('fc1', 'bn'),)   # model/fold.py: the BN folds into fc1 at inference

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


def up2(x: torch.Tensor, keep_layout: bool = False) -> torch.Tensor:
    """Bilinear x2. Class-logit planes go NCHW first: the final upsample to full size
    (DoViTSegmenter.upsample) is fastest on NCHW, and the sum that feeds it takes this layout.
    Feature maps keep theirs (`keep_layout`): the refine path runs channels-last on CPU, where
    converting its 64-channel map to NCHW made the decoder ~20 % slower."""
    return F.interpolate(x if keep_layout else x.contiguous(), scale_factor=2.0,
                         mode='bilinear', align_corners=False)


class ResBlock(nn.Module):
    """ResNet basic block: x + BN(conv3x3(ReLU(BN(conv3x3(x))))), then ReLU. The second BN's
    scale starts at zero, so a new block is the identity on the (post-ReLU) input: a decoder
    deepened with blocks starts as the decoder it was trained as."""

    FOLD_PAIRS = (('conv2', 'bn2'),)   # model/fold.py

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = conv_bn_relu(dim, dim, 3)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def zero_init(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.bn2(self.conv2(self.conv1(x)))).relu()


class StripBlock(nn.Module):
    """Residual strip convolutions: x + BN(conv1x1(ReLU(DW_1xk(x) + DW_kx1(x)))), then ReLU.

    Depthwise 1xk and kx1 kernels see a whole row and column segment of k pixels at the cost
    of 2k multiply-adds per channel: the shape of a pole or a sign post, which stacked 3x3
    convolutions span only after (k - 1) / 2 of them (SegNeXt's strip convolutions, Guo et
    al. 2022, for the same reason). The last BN's scale starts at zero, as in ResBlock."""

    FOLD_PAIRS = (('pw', 'bn2'),)   # model/fold.py; h and v fold as (conv, BN) Sequentials

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.h = nn.Sequential(nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim,
                                         bias=False), nn.BatchNorm2d(dim))
        self.v = nn.Sequential(nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim,
                                         bias=False), nn.BatchNorm2d(dim))
        self.pw = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def zero_init(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (self.h(x) + self.v(x)).relu()  # (B, C, H, W)
        return (x + self.bn2(self.pw(s))).relu()


def strip_or_identity(dim: int, k: int) -> nn.Module:
    return StripBlock(dim, k) if k else nn.Identity()


class RefineDecoder(nn.Module):
    """High-resolution path after the token head (a light U-Net-style refinement).

    The token-grid logits (stride 16) are what exits produce, whatever their semantics; this
    module draws them at stride 4 with the conv stem's own stride-8 and stride-4 features:
      s8 = blocks8(fuse8([up2(logits), lat8(stem_s8)]))   3x3, d8 channels
      s4 = blocks4(fuse4([up2(s8),     lat4(stem_s4)]))   3x3, d4 channels
      out = up4(logits) + cls(s4)                        residual on the coarse prediction
    so a class the tokens see faintly (a pole in a token) can be drawn at its own width.
    `blocks` = (n8, n4) residual blocks after each fusion (0: none, every model made before
    they existed): each widens the receptive field of the high-resolution path by 32 (stride
    8) or 16 (stride 4) pixels, context the stem's shallow features lack. `strip` = (k8, k4):
    a StripBlock with k-pixel strips after each stride's blocks (0: none, nn.Identity).
    """

    def __init__(self, num_classes: int, stem_channels: tuple[int, int],
                 dims: tuple[int, int] = (64, 32), blocks: tuple[int, int] = (0, 0),
                 strip: tuple[int, int] = (0, 0)):
        super().__init__()
        c4, c8 = stem_channels
        d8, d4 = dims
        K = num_classes
        self.lat8 = conv_bn_relu(c8, d8 // 2, 1)
        self.fuse8 = conv_bn_relu(K + d8 // 2, d8, 3)
        self.blocks8 = nn.Sequential(*(ResBlock(d8) for _ in range(blocks[0])))
        self.strip8 = strip_or_identity(d8, strip[0])
        self.lat4 = conv_bn_relu(c4, d4 // 2, 1)
        self.fuse4 = conv_bn_relu(d8 + d4 // 2, d4, 3)
        self.blocks4 = nn.Sequential(*(ResBlock(d4) for _ in range(blocks[1])))
        self.strip4 = strip_or_identity(d4, strip[1])
        self.cls = nn.Conv2d(d4, K, 1)
        self.zero_init()

    def zero_init(self) -> None:
        """The path's residuals at zero: it starts as plain upsampling of the token logits, and
        its blocks as the identity (call again after a generic weight init)."""
        nn.init.zeros_(self.cls.weight)
        nn.init.zeros_(self.cls.bias)
        for b in [*self.blocks8, *self.blocks4, self.strip8, self.strip4]:
            if not isinstance(b, nn.Identity):
                b.zero_init()

    def forward(self, logits: torch.Tensor, s4: torch.Tensor, s8: torch.Tensor) -> torch.Tensor:
        """logits (B, K, h, w), s4 (B, c4, 4h, 4w), s8 (B, c8, 2h, 2w) -> (B, K, 4h, 4w)."""
        y = up2(logits)  # (B, K, 2h, 2w)
        z = self.fuse8(torch.cat([y, self.lat8(s8)], 1))  # (B, d8, 2h, 2w)
        z = self.strip8(self.blocks8(z))
        z = up2(z, keep_layout=True)  # (B, d8, 4h, 4w)
        z = self.fuse4(torch.cat([z, self.lat4(s4)], 1))  # (B, d4, 4h, 4w)
        z = self.strip4(self.blocks4(z))
        return up2(y) + self.cls(z)
