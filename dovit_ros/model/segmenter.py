"""DoViT / DToP segmenter: a plain ViT whose confident tokens leave the network early.

Inference (`forward`), per frame:
  embed -> for each stage: run its blocks on the active tokens only -> aux head judges them ->
  exited tokens are written to their grid position (features or final logits) and the rest
  gathered into a shorter sequence -> ... -> scatter the survivors back -> decode -> upsample.
Exited tokens do no further work, so later blocks cost O(kept^2) attention and O(kept) MLP.

Training (`forward_train`) runs the full sequence and emulates exits with masks: exited tokens
are removed from the attention keys and their features frozen, which is numerically the same
computation as the pruned inference path (tests check this) while keeping batch shapes static.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import FULL, ExitConfig, ViTConfig, stem_widths
from .exit import decide_exits
from .flops import full_flops, segmenter_flops
from .heads import AuxHead, DecoderHead, RefineDecoder
from .packed import forward_packed
from .types import SegmentationOutput, Skips, StageFns, TrainOutput
from .vit import (ATTENTION_CORES, Block, ConvStem, PatchEmbed, grid_size, init_weights,
                  resize_pos_embed)


class DoViTSegmenter(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        C, K = cfg.dim, cfg.num_classes
        self.patch_embed = ConvStem(C) if cfg.conv_stem else PatchEmbed(C, cfg.patch_size)
        self.grid = grid_size(*cfg.img_size, cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], C))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C)) if cfg.class_token else None
        # stochastic depth rising linearly from 0 at the first block to cfg.drop_path
        self.blocks = nn.ModuleList(
            Block(C, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias,
                  cfg.drop_path * i / max(cfg.depth - 1, 1)) for i in range(cfg.depth))
        self.aux_heads = nn.ModuleList(AuxHead(C, K) for _ in cfg.decision_points)
        self.decoder = DecoderHead(C, cfg.decoder_dim, K)
        w = stem_widths(C)
        self.refine = (RefineDecoder(K, (w[1], w[2]), cfg.refine_dims, cfg.refine_blocks,
                                     cfg.refine_strip)
                       if cfg.decoder == 'refine' else None)
        self.apply(init_weights)
        if self.refine is not None:   # zero residuals: training starts from plain upsampling
            self.refine.zero_init()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self._pos_cache: dict = {}

    # ---------------------------------------------------------------- shared pieces
    def channels_last(self) -> 'DoViTSegmenter':
        """Convolutions (conv stem, refine decoder) in channels-last layout: oneDNN's fast
        path on CPU (measured ~20 % faster there, scripts/train_speed.py and
        docs/benchmarks.md). Numerically the same model; tokens are unaffected."""
        if self.cfg.conv_stem:
            self.patch_embed.to(memory_format=torch.channels_last)
        if self.refine is not None:
            self.refine.to(memory_format=torch.channels_last)
        return self

    def attention_core(self, core: str) -> 'DoViTSegmenter':
        """Compute every block's softmax(QK^T)V with `core` (vit.ATTENTION_CORES: 'sdpa' or
        'matmul'); the same function either way, only the kernels differ. The runtime picks it
        by measurement on the CPU it runs on (runtime/attention.py)."""
        if core not in ATTENTION_CORES:
            raise ValueError(f'attention core {core!r}: expected one of {sorted(ATTENTION_CORES)}')
        for blk in self.blocks:
            blk.attn.core = core
        return self

    def pos_for(self, h: int, w: int) -> torch.Tensor:
        """Position embedding resized to an (h, w) grid; cached outside training (keyed on the
        parameter's version so that loading new weights invalidates it)."""
        if self.training or torch.is_grad_enabled():
            return resize_pos_embed(self.pos_embed, self.grid, (h, w))
        key = (h, w, self.pos_embed._version, self.pos_embed.device, self.pos_embed.dtype)
        if key not in self._pos_cache:
            self._pos_cache.clear()
            self._pos_cache[key] = resize_pos_embed(self.pos_embed, self.grid, (h, w))
        return self._pos_cache[key]

    def embed_parts(self, x: torch.Tensor, pos: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, Skips]:
        """(B, 3, H, W) image -> (B, [1+]N, C) tokens and the stem features the refine decoder
        fuses (() without one). pos: the position embedding for this grid (stages pass a
        precomputed one; default: resized from the learned grid)."""
        h, w = grid_size(*x.shape[-2:], self.cfg.patch_size)
        return embed_tokens(self.patch_embed, self.cls_token, x, self.cfg.patch_size,
                            self.pos_for(h, w) if pos is None else pos, self.refine is not None)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(B, 3, H, W) image -> (B, [1+]N, C) tokens, h, w; padded to a patch multiple."""
        h, w = grid_size(*x.shape[-2:], self.cfg.patch_size)
        return self.embed_parts(x)[0], h, w

    def upsample(self, grid_logits: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, K, h', w') -> (B, K, H, W): bilinear to the padded size, then crop the padding
        (h' = h for token logits, 4h for the refine decoder's output)."""
        p = self.cfg.patch_size
        h, w = grid_size(H, W, p)
        # contiguous first: the grid arrives channels-last from the token transpose, and CPU
        # bilinear upsampling is ~3x slower on that layout (measured: 240 -> 78 ms at 512x1024);
        # fp32 first: the full-resolution logits are read in fp32 anyway (labels, confidence,
        # losses), and casting the small grid beats casting the full-size result (bf16 on CPU:
        # 6.5 ms of copies per 360x480 frame)
        y = F.interpolate(grid_logits.float().contiguous(), size=(h * p, w * p), mode='bilinear',
                          align_corners=False)
        return y[..., :H, :W]

    def to_pixels(self, grid_logits: torch.Tensor, skips: Skips, H: int, W: int,
                  refine: Callable | None = None) -> torch.Tensor:
        """Token-grid logits (B, K, h, w) -> (B, K, H, W): through the refine decoder when the
        model has one (`refine`: a compiled version of it), then bilinear upsampling."""
        if self.refine is not None:
            # `is None`, not `or`: a compiled module's truthiness calls len(), which raises
            grid_logits = (self.refine if refine is None else refine)(grid_logits, *skips)
        return self.upsample(grid_logits, H, W)

    def run_stage(self, s: int, t: torch.Tensor, key_mask: torch.Tensor | None = None,
                  segments: list[int] | None = None, patch: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage s on (B, nc+n, C) tokens: its blocks, then its aux head on the patch tokens
        (B, n, K); the last stage has no aux head (None). A pack of frames (model/packed.py)
        passes its `segments` and the rows of its patch tokens (`patch`)."""
        a, b = self.cfg.stage_blocks()[s]
        for blk in self.blocks[a:b]:
            t = blk(t, key_mask, segments)
        if s == self.cfg.num_stages - 1:
            return t, None
        nc = int(self.cfg.class_token)
        return t, self.aux_heads[s](t[:, nc:] if patch is None or not nc else t[:, patch])

    def eager_stages(self) -> StageFns:
        return StageFns(embed=self.embed_parts,
                        blocks=[partial(self.run_stage, s) for s in range(self.cfg.num_stages)],
                        decoder=self.decoder)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def forward(self, x: torch.Tensor, exits: ExitConfig = FULL,
                plan: Sequence[torch.Tensor] | None = None,
                stages: StageFns | None = None) -> SegmentationOutput:
        """Segment (B, 3, H, W) normalised images; each keeps exactly its own tokens.

        plan: optional forced exit pattern, one (B, N) bool mask per decision point of the
        tokens still active after it (nested); the aux heads still run, so the cost is that of
        a real frame. Used by the benchmark and tests.
        stages: run these (e.g. compiled) stage functions instead of the eager modules; the
        bookkeeping and the output are the same.
        """
        if exits.policy == 'none' and plan is None:
            return self._forward_full(x, stages)
        frames = [x[i:i + 1] for i in range(x.shape[0])]
        plans = None if plan is None else [[p[i] for p in plan] for i in range(len(frames))]
        outs = forward_packed(self, frames, exits, plans, stages)
        if len(outs) == 1:  # the node's fast path: no copy of full-resolution logits
            return outs[0]
        return SegmentationOutput(
            logits=torch.cat([o.logits for o in outs]),
            exit_stage=torch.cat([o.exit_stage for o in outs]),
            tokens_per_stage=torch.cat([o.tokens_per_stage for o in outs]),
            flops=torch.cat([o.flops for o in outs]), flops_full=outs[0].flops_full,
            features=torch.cat([o.features for o in outs]))

    @torch.no_grad()
    def forward_frames(self, frames: Sequence[torch.Tensor], exits: ExitConfig = FULL
                       ) -> list[SegmentationOutput]:
        """Segment frames of any sizes, (1, 3, H_i, W_i) each, as one packed forward (several
        cameras, one model); outputs equal those of one frame at a time."""
        if exits.policy == 'none':
            return [self._forward_full(f) for f in frames]
        return forward_packed(self, frames, exits)

    def _forward_full(self, x: torch.Tensor, stages: StageFns | None = None
                      ) -> SegmentationOutput:
        cfg, (B, _, H, W) = self.cfg, x.shape
        h, w = grid_size(H, W, cfg.patch_size)
        full = spent = full_flops(cfg, h, w)
        if stages is None:   # no aux heads at all: the plain model (what flops.py counts)
            t, skips = self.embed_parts(x)
            for blk in self.blocks:
                t = blk(t)
        else:   # stage functions run their aux heads (logits dropped here), so they count
            t, skips = stages.embed(x)
            for fn in stages.blocks:
                t = fn(t)[0]
            spent = segmenter_flops(cfg, h, w, [h * w] * cfg.num_stages).total
        f = t[:, int(cfg.class_token):]  # (B, N, C)
        decoder = self.decoder if stages is None else stages.decoder
        logits = decoder(f).transpose(1, 2).reshape(B, -1, h, w)
        return SegmentationOutput(
            logits=self.to_pixels(logits, skips, H, W,
                                  stages.refine if stages is not None else None),
            exit_stage=torch.zeros(B, h, w, dtype=torch.uint8, device=x.device),
            tokens_per_stage=torch.full((B, cfg.num_stages), h * w, dtype=torch.long),
            flops=torch.full((B,), spent, dtype=torch.float64), flops_full=full, features=f)

    # ---------------------------------------------------------------- training
    def forward_train(self, x: torch.Tensor, exits: ExitConfig | None = None) -> TrainOutput:
        """Full-token forward for training; every aux head sees every token.

        With `exits` (fine-tuning with exits active), exits are decided per image without
        gradient; an exited token is dropped from the attention keys and its features are
        frozen (it receives no updates from later blocks), exactly as at inference. With
        'predictions' semantics the exited tokens' final logits are their aux logits.
        """
        if getattr(self, 'bn_folded', False):
            raise RuntimeError('this model has its BatchNorms folded for inference '
                               '(model/fold.py): load it again to train it')
        cfg, (B, _, H, W) = self.cfg, x.shape
        nc, last = int(cfg.class_token), cfg.num_stages - 1
        on = exits is not None and exits.policy != 'none'
        xis = exits.thresholds(len(cfg.decision_points)) if on else None
        h, w = grid_size(H, W, cfg.patch_size)
        t, skips = self.embed_parts(x)
        N = h * w
        active = torch.ones(B, N, dtype=torch.bool, device=x.device)
        stage = torch.zeros(B, N, dtype=torch.uint8, device=x.device)
        image = torch.arange(B, device=x.device).repeat_interleave(N)
        aux, final_aux = [], None
        for s, (a, b) in enumerate(cfg.stage_blocks()):
            # a frame whose tokens have all left keeps every key visible: its outputs are
            # discarded below, and an all-masked attention row would put NaN in the gradients
            keys = active | ~active.any(1, keepdim=True)  # (B, N)
            km = torch.cat([active.new_ones(B, nc), keys], 1) if on else None
            upd = torch.cat([active.new_ones(B, nc), active], 1) if on else None
            for blk in self.blocks[a:b]:
                y = blk(t, km)
                t = torch.where(upd[..., None], y, t) if on else y
            if s == last:
                break
            lg = self.aux_heads[s](t[:, nc:])  # (B, N, K)
            aux.append(lg.transpose(1, 2).reshape(B, -1, h, w))
            if not on:
                continue
            with torch.no_grad():
                out = decide_exits(lg.detach().reshape(B * N, -1), exits.policy, xis[s],
                                   exits.topk_per_class, image, B,
                                   active.reshape(-1)).reshape(B, N)
            stage[out] = s + 1
            if cfg.exit_semantics == 'predictions':
                final_aux = lg if final_aux is None else torch.where(out[..., None], lg, final_aux)
            if cfg.merge_exited:
                m = out[..., None].to(t.dtype)  # (B, N, 1)
                mean = (t[:, nc:] * m).sum(1) / m.sum(1).clamp(min=1)  # (B, C)
                merged = torch.where(m.sum(1) > 0, 0.5 * (t[:, 0] + mean), t[:, 0])  # eq. 8
                t = torch.cat([merged[:, None], t[:, 1:]], 1)
            active = active & ~out
        g = self.decoder(t[:, nc:])  # (B, N, K)
        if on and final_aux is not None:
            g = torch.where((stage > 0)[..., None], final_aux.to(g.dtype), g)
        logits = self.to_pixels(g.transpose(1, 2).reshape(B, -1, h, w), skips, H, W)
        return TrainOutput(logits=logits, aux_logits=aux, exit_stage=stage.reshape(B, h, w))


def embed_tokens(patch_embed: nn.Module, cls_token: torch.Tensor | None, x: torch.Tensor,
                 patch: int, pos: torch.Tensor, skips: bool) -> tuple[torch.Tensor, Skips]:
    """The embedding, shared by the segmenter and its compiled stages: pad (B, 3, H, W) to a
    patch multiple, project (patch conv or conv stem), add `pos` (1, N, C), prepend the class
    token. Returns (B, nc+N, C) tokens and the stem's skip features (() unless `skips`)."""
    H, W = x.shape[-2:]
    h, w = grid_size(H, W, patch)
    if (h * patch, w * patch) != (H, W):
        x = F.pad(x, (0, w * patch - W, 0, h * patch - H))
    y, feats = patch_embed(x, skips=True) if skips else (patch_embed(x), ())
    t = y.flatten(2).transpose(1, 2) + pos  # (B, N, C)
    if cls_token is not None:
        t = torch.cat([cls_token.expand(t.shape[0], -1, -1), t], 1)
    return t, feats
