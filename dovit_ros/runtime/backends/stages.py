"""The segmenter split at its decision points into dense stage modules, and the runner that
drives (possibly compiled) versions of them.

  EmbedStage     (1, 3, H, W) image       -> (1, nc+N, C) tokens [, stem skips]   static shape
  BlockStage s   (1, nc+n, C) [key mask]  -> tokens, aux logits (1, n, K)   n varies per frame
  DecoderStage   (1, n, C)                -> (1, n, K) token logits
  RefineStage    (1, K, h, w), skips      -> (1, K, 4h, 4w)   'refine' decoders; static shape

Each module holds the model's own submodules, so it shares its weights (no copy). The
data-dependent work between stages (confidence, choosing the kept tokens, gather, scatter,
DToP top-k) is the segmenter's `_forward_pruned`, run eagerly by `StagedRunner`: one code path for
the eager model and every backend.

Two ways to feed a varying token count to a compiled stage:
  'dynamic' - the stage sees the exact count and is compiled for a symbolic length. Compilers
              specialise lengths 0 and 1 (a length-1 axis broadcasts), so the symbol starts at 2,
              and at 2 + nc for a stage with an aux head (its head sees the nc+n tokens minus
              the class token). The rare call below that minimum (one surviving token) runs the
              eager stage, which is exact and costs next to nothing.
  'buckets' - the count is padded up to the next of a few fixed lengths and a key mask hides the
              padding from attention, so every call has one of a few static shapes (CUDA graphs).
              Padding rows are copies of a real token so that they stay finite in fp16: a NaN or
              Inf in a masked value row would still poison the output through 0 * Inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ...model import DoViTSegmenter, ExitConfig, SegmentationOutput
from ...model.segmenter import StageFns, embed_tokens
from ...model.vit import grid_size

MIN_TOKENS = 2   # torch.export / dynamo specialise sizes 0 and 1; symbolic lengths start at 2
TOKEN_MODES = ('dynamic', 'buckets')


class EmbedStage(nn.Module):
    """The model's embedding (`embed_tokens`: padding, patch projection or conv stem, position
    embedding, class token) for one image size. The position embedding is resized once, at
    construction (bicubic resizing then needs no support in the compiled graph); build the
    stages after the weights are loaded and the model is on its device and dtype. Returns the
    tokens, followed by the stem's skip features for a 'refine' decoder (flat: no nested
    tuples in exported graphs)."""

    def __init__(self, model: DoViTSegmenter, image_hw: tuple[int, int]):
        super().__init__()
        self.patch = model.cfg.patch_size
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.grid = grid_size(*self.image_hw, self.patch)
        self.patch_embed = model.patch_embed
        self.cls_token = model.cls_token
        self.skips = model.refine is not None
        with torch.no_grad():
            pos = model.pos_for(*self.grid).detach().clone()
        self.register_buffer('pos', pos, persistent=False)  # (1, N, C)

    def forward(self, x: torch.Tensor):
        t, skips = embed_tokens(self.patch_embed, self.cls_token, x, self.patch, self.pos,
                                self.skips)
        return (t, *skips) if skips else t


class BlockStage(nn.Module):
    """The blocks of stage s, then its aux head on the patch tokens. Returns (tokens, aux
    logits), or the tokens alone for the last stage (no aux head; no None in exported graphs).
    key_mask (1, n) bool: False marks padding that no token may attend to."""

    def __init__(self, model: DoViTSegmenter, s: int):
        super().__init__()
        a, b = model.cfg.stage_blocks()[s]
        self.index, self.nc = s, int(model.cfg.class_token)
        self.blocks = nn.ModuleList(model.blocks[a:b])
        self.aux = model.aux_heads[s] if s < model.cfg.num_stages - 1 else None

    def forward(self, t: torch.Tensor, key_mask: torch.Tensor | None = None):
        for blk in self.blocks:
            t = blk(t, key_mask)
        if self.aux is None:
            return t
        return t, self.aux(t[:, self.nc:])  # (1, nc+n, C), (1, n, K)


class DecoderStage(nn.Module):
    """Token-wise decoder: (1, n, C) features -> (1, n, K) logits."""

    def __init__(self, model: DoViTSegmenter):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(f)


class RefineStage(nn.Module):
    """The refine decoder: (1, K, h, w) token logits, stride-4 and stride-8 stem features ->
    (1, K, 4h, 4w)."""

    def __init__(self, model: DoViTSegmenter):
        super().__init__()
        self.refine = model.refine

    def forward(self, g: torch.Tensor, s4: torch.Tensor, s8: torch.Tensor) -> torch.Tensor:
        return self.refine(g, s4, s8)


@dataclass
class StageSet:
    """One callable per stage (eager modules, compiled modules, TensorRT engines), for one
    image size. The callables return what the stage modules return; `refine` is None for
    'linear' decoders."""
    embed: Callable
    blocks: list[Callable]
    decoder: Callable
    image_hw: tuple[int, int]
    refine: Callable | None = None


def build_stages(model: DoViTSegmenter, image_hw: tuple[int, int]) -> StageSet:
    """The eager stage modules of `model` for (H, W) images (eval mode, sharing its weights)."""
    S = model.cfg.num_stages
    return StageSet(embed=EmbedStage(model, image_hw).eval(),
                    blocks=[BlockStage(model, s).eval() for s in range(S)],
                    decoder=DecoderStage(model).eval(), image_hw=tuple(image_hw),
                    refine=RefineStage(model).eval() if model.refine is not None else None)


def full_tokens(model: DoViTSegmenter, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(nc + N, N): the longest block-stage input and the patch-token count at (H, W)."""
    h, w = grid_size(*image_hw, model.cfg.patch_size)
    return int(model.cfg.class_token) + h * w, h * w


def min_tokens(model: DoViTSegmenter, s: int | None) -> int:
    """Smallest symbolic token count of block stage s (None: the decoder): 2, plus the class
    token where an aux head sees the patch tokens alone."""
    has_aux = s is not None and s < model.cfg.num_stages - 1
    return MIN_TOKENS + (int(model.cfg.class_token) if has_aux else 0)


def bucket_sizes(full: int, count: int, low: int = MIN_TOKENS) -> tuple[int, ...]:
    """`count` static lengths evenly spread over (0, full], the last one `full`, each >= low."""
    if count < 1:
        raise ValueError(f'bucket count must be >= 1, got {count}')
    return tuple(sorted({max(low, math.ceil(full * (i + 1) / count)) for i in range(count)}))


def pad_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    """(1, n, C) -> (1, length, C), padded with copies of the last token (finite, in-range)."""
    n = t.shape[1]
    if n == length:
        return t
    return torch.cat([t, t[:, -1:].expand(t.shape[0], length - n, t.shape[2])], 1)


class _Block:
    """One block stage behind the StageFns interface: pads the token count to a bucket, or
    sends a count below the compiled minimum to the eager stage; crops the outputs back."""

    def __init__(self, fn: Callable, eager: Callable, nc: int, last: bool, low: int,
                 buckets: Sequence[int] | None):
        self.fn, self.eager, self.nc, self.last = fn, eager, nc, last
        self.low, self.buckets = low, buckets

    def __call__(self, t: torch.Tensor):
        n = t.shape[1]
        if self.buckets:
            m = next(b for b in self.buckets if b >= n)
            key_mask = (torch.arange(m, device=t.device) < n)[None]  # (1, m)
            out = self.fn(pad_tokens(t, m), key_mask)
        elif n < self.low:
            return self.eager(t)
        else:
            out = self.fn(t)
        t2, lg = (out, None) if self.last else out
        if t2.shape[1] == n:
            return t2, lg
        return t2[:, :n], None if lg is None else lg[:, :n - self.nc]


def _embed(fn: Callable) -> Callable:
    """EmbedStage's flat output -> (tokens, skips), the StageFns interface."""
    def run(x: torch.Tensor):
        out = fn(x)
        return (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, ())
    return run


class _Decoder:
    def __init__(self, fn: Callable, eager: Callable, buckets: Sequence[int] | None):
        self.fn, self.eager, self.buckets = fn, eager, buckets

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        n = f.shape[1]
        if self.buckets:
            m = next(b for b in self.buckets if b >= n)
            return self.fn(pad_tokens(f, m))[:, :n]
        return self.eager(f) if n < MIN_TOKENS else self.fn(f)


def wrap_stages(model: DoViTSegmenter, stages: StageSet, token_mode: str = 'dynamic',
                buckets: int = 4) -> StageFns:
    """StageSet -> the segmenter's StageFns, with the padding or fallback `token_mode` needs."""
    if token_mode not in TOKEN_MODES:
        raise ValueError(f'token_mode must be one of {TOKEN_MODES}, got {token_mode!r}')
    full, N = full_tokens(model, stages.image_hw)
    use = token_mode == 'buckets'
    nc, S = int(model.cfg.class_token), model.cfg.num_stages
    eager = model.eager_stages()
    blocks = [_Block(fn, eager.blocks[s], nc, s == S - 1, min_tokens(model, s),
                     bucket_sizes(full, buckets) if use else None)
              for s, fn in enumerate(stages.blocks)]
    return StageFns(embed=_embed(stages.embed), blocks=blocks,
                    decoder=_Decoder(stages.decoder, eager.decoder,
                                     bucket_sizes(N, buckets) if use else None),
                    refine=stages.refine)


class StagedRunner:
    """A Pipeline runner `(x, exits) -> SegmentationOutput` that runs the segmenter's own
    bookkeeping (`forward` with `stages=`) over per-stage callables.

    stage_fns: a StageSet for one image size, or a factory (H, W) -> StageSet called once per
    new image size (compiled backends build lazily, on the first frame of a size).
    """

    def __init__(self, model: DoViTSegmenter,
                 stage_fns: StageSet | Callable[[tuple[int, int]], StageSet],
                 token_mode: str = 'dynamic', buckets: int = 4):
        if token_mode not in TOKEN_MODES:
            raise ValueError(f'token_mode must be one of {TOKEN_MODES}, got {token_mode!r}')
        self.model, self.token_mode, self.buckets = model, token_mode, buckets
        self._factory = None if isinstance(stage_fns, StageSet) else stage_fns
        self._by_size: dict[tuple[int, int], StageFns] = {}
        if self._factory is None:
            self._by_size[tuple(stage_fns.image_hw)] = wrap_stages(model, stage_fns, token_mode,
                                                                   buckets)

    def stages_for(self, image_hw: tuple[int, int]) -> StageFns:
        key = (int(image_hw[0]), int(image_hw[1]))
        if key not in self._by_size:
            if self._factory is None:
                known = ', '.join(f'{h}x{w}' for h, w in self._by_size)
                raise ValueError(f'this runner was built for {known} images, got '
                                 f'{key[0]}x{key[1]}')
            self._by_size[key] = wrap_stages(self.model, self._factory(key), self.token_mode,
                                             self.buckets)
        return self._by_size[key]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, exits: ExitConfig,
                 plan: Sequence[torch.Tensor] | None = None) -> SegmentationOutput:
        return self.model(x, exits, plan, stages=self.stages_for(tuple(x.shape[-2:])))


__all__ = ['EmbedStage', 'BlockStage', 'DecoderStage', 'RefineStage', 'StageSet', 'StagedRunner',
           'build_stages', 'wrap_stages', 'bucket_sizes', 'full_tokens', 'min_tokens',
           'pad_tokens',
           'MIN_TOKENS', 'TOKEN_MODES']
