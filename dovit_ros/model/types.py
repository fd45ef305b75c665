"""What the segmenter returns and the stage functions it runs (shared by segmenter.py and
packed.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Skips = tuple  # the conv stem's (stride-4, stride-8) features for the refine decoder, or ()


@dataclass
class SegmentationOutput:
    """One forward's result. Token-grid fields are (B, h, w) with h, w = ceil(H/16), ceil(W/16).

    exit_stage: decision point (1-based) at which each token left, 0 = reached the last block.
    tokens_per_stage: (B, S) patch tokens the blocks of each stage ran on.
    flops: (B,) FLOPs spent on each image; flops_full: the plain model's FLOPs at this size.
    """
    logits: torch.Tensor            # (B, K, H, W)
    exit_stage: torch.Tensor        # (B, h, w) uint8
    tokens_per_stage: torch.Tensor  # (B, S) int64
    flops: torch.Tensor             # (B,) float64
    flops_full: float
    features: torch.Tensor          # (B, N, C) reconstructed token features fed to the decoder

    def labels_confidence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) arg-max class and its softmax probability (`labels_confidence`)."""
        return labels_confidence(self.logits)


def labels_confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) logits -> (B, H, W) arg-max class and its softmax probability
    1 / sum_k exp(l_k - max): one exp pass and one sum, ~30 % less than max + logsumexp (which
    subtracts and exps the whole (B, K, H, W) tensor twice over; 5.7 -> 4.0 ms at 360x480 on
    2 CPU threads). Also what scripts/enet_speed.py gives ENet: the same post-processing."""
    lg = logits.float()  # no copy when already fp32
    m, labels = lg.max(1)  # (B, H, W)
    return labels, (lg - m[:, None]).exp_().sum(1).reciprocal_()


@dataclass
class StageFns:
    """A frame's dense compute, split at the decision points (runtime/backends/stages.py builds
    compiled or TensorRT versions of these).

    embed: (B, 3, H, W) -> ((B, nc+N, C) tokens, skips). blocks[s]: (B, nc+n, C) -> (the tokens
    after the blocks of stage s, its aux-head logits (B, n, K); None for the last stage).
    decoder: (B, n, C) -> (B, n, K). refine: (grid logits (B, K, h, w), *skips) -> (B, K, 4h, 4w)
    for 'refine' decoders (None: the model's own module). The data-dependent work between them
    (exit decisions, gather, scatter) stays in the segmenter, so a block stage only ever sees a
    dense token sequence whose length varies.
    """
    embed: Callable[[torch.Tensor], tuple[torch.Tensor, Skips]]
    blocks: Sequence[Callable[[torch.Tensor], tuple]]
    decoder: Callable[[torch.Tensor], torch.Tensor]
    refine: Callable[..., torch.Tensor] | None = None


@dataclass
class TrainOutput:
    logits: torch.Tensor             # (B, K, H, W)
    aux_logits: list[torch.Tensor]   # per decision point, (B, K, h, w) on all tokens
    exit_stage: torch.Tensor         # (B, h, w) uint8, zeros without exits


__all__ = ['labels_confidence', 'SegmentationOutput', 'StageFns', 'TrainOutput', 'Skips']
