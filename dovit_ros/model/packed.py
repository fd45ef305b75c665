"""Token exits for several frames in one forward: every frame keeps exactly its own tokens.

The kept tokens of all frames are packed into one sequence (1, M, C), frame after frame, each
frame's class token first. Token-wise layers (norms, QKV, projection, MLP, heads) run once on
the whole pack - one large matrix product instead of one small one per frame - while attention
stays within each frame (`segments`: the frames' lengths; see vit.Attention). After each
decision point the exited tokens of every frame are written to their frame's grid and the rest
gathered, so frames of different sizes and exit patterns share every dense op.

One frame is the special case F = 1 (the node's path): the same code, one segment.
Stage functions (compiled / TensorRT stages) see one dense frame at a time, so with `stages`
the frames go through one by one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from .config import ExitConfig
from .exit import decide_exits
from .flops import full_flops, segmenter_flops
from .types import SegmentationOutput, StageFns
from .vit import grid_size

if TYPE_CHECKING:
    from .segmenter import DoViTSegmenter


@dataclass
class Pack:
    """Row bookkeeping of the packed sequence: which frame each row belongs to and its grid
    position in that frame (-1 for a class token)."""
    frame: torch.Tensor   # (M,) int64
    pos: torch.Tensor     # (M,) int64

    def segments(self, num_frames: int) -> list[int]:
        """Row counts of the frames present, in pack order (frames are contiguous)."""
        n = torch.bincount(self.frame, minlength=num_frames)
        return [int(v) for v in n if v > 0]

    def select(self, rows: torch.Tensor) -> 'Pack':
        return Pack(self.frame[rows], self.pos[rows])


def forward_packed(m: 'DoViTSegmenter', xs: Sequence[torch.Tensor], exits: ExitConfig,
                   plans: Sequence[Sequence[torch.Tensor]] | None = None,
                   stages: StageFns | None = None) -> list[SegmentationOutput]:
    """Segment frames xs[i] (1, 3, H_i, W_i) with real token removal; one output per frame.

    plans[i]: optional forced exit pattern of frame i (one (N_i,) bool mask of the tokens still
    active per decision point)."""
    if stages is not None and len(xs) > 1:
        return [forward_packed(m, [x], exits, None if plans is None else [plans[i]], stages)[0]
                for i, x in enumerate(xs)]
    cfg, dev = m.cfg, xs[0].device
    nc, last, S, F = int(cfg.class_token), cfg.num_stages - 1, cfg.num_stages, len(xs)
    xis = exits.thresholds(len(cfg.decision_points))
    embed = stages.embed if stages is not None else m.embed_parts
    toks, skips, grids = [], [], []
    for x in xs:
        t, sk = embed(x)  # (1, nc+N_i, C)
        toks.append(t[0])
        skips.append(sk)
        grids.append(grid_size(*x.shape[-2:], cfg.patch_size))
    Ns = [h * w for h, w in grids]
    off = torch.tensor([0] + Ns[:-1], device=dev).cumsum(0)  # frame -> first global position
    t = torch.cat(toks)[None]  # (1, M, C)
    pack = Pack(torch.cat([torch.full((nc + n,), i, device=dev) for i, n in enumerate(Ns)]),
                torch.cat([torch.arange(-nc, n, device=dev) for n in Ns]))
    total = sum(Ns)
    stage = torch.zeros(total, dtype=torch.uint8, device=dev)
    feats = t.new_empty(total, cfg.dim)
    pred = cfg.exit_semantics == 'predictions'
    tok_logits = t.new_empty(total, cfg.num_classes) if pred else None
    counts = [[0] * S for _ in range(F)]
    for s in range(S):
        patch = (pack.pos >= 0).nonzero().squeeze(1)  # rows of patch tokens
        per_frame = torch.bincount(pack.frame[patch], minlength=F).tolist()
        for i in range(F):
            counts[i][s] = per_frame[i]
        if patch.numel() == 0:
            break
        t, lg = run_stage(m, stages, s, t, patch, pack.segments(F))
        if s == last:
            break
        if plans is not None:
            out = ~torch.cat([plans[i][s].to(dev)[pack.pos[patch][pack.frame[patch] == i]]
                              for i in range(F)])
        else:
            out = decide_exits(lg[0], exits.policy, xis[s], exits.topk_per_class,
                               pack.frame[patch], F)
        ex = patch[out]  # rows leaving now
        if ex.numel() == 0:
            continue
        gi = off[pack.frame[ex]] + pack.pos[ex]
        stage[gi] = s + 1
        feats.index_copy_(0, gi, t[0, ex])
        if pred:
            tok_logits.index_copy_(0, gi, lg[0, out].to(tok_logits.dtype))
        if cfg.merge_exited:
            merge_class_tokens(t, pack, ex, F)
        t, pack = drop_rows(t, pack, ex)
    patch = (pack.pos >= 0).nonzero().squeeze(1)
    if patch.numel():
        feats.index_copy_(0, off[pack.frame[patch]] + pack.pos[patch], t[0, patch])
    decoder = stages.decoder if stages is not None else m.decoder
    if pred:
        if patch.numel():
            gi = off[pack.frame[patch]] + pack.pos[patch]
            tok_logits.index_copy_(0, gi, decoder(t[:, patch])[0].to(tok_logits.dtype))
        grid_all, decoded = tok_logits, [c[last] for c in counts]
    else:
        grid_all, decoded = decoder(feats[None])[0], Ns  # (total, K)
    refine = stages.refine if stages is not None else None
    outs = []
    for i, ((h, w), x) in enumerate(zip(grids, xs)):
        a, b = int(off[i]), int(off[i]) + Ns[i]
        H, W = x.shape[-2:]
        logits = m.to_pixels(grid_all[a:b].t().reshape(1, -1, h, w), skips[i], H, W, refine)
        spent = segmenter_flops(cfg, h, w, counts[i], decoded[i]).total
        outs.append(_output(logits, stage[a:b].reshape(1, h, w), counts[i], spent,
                            full_flops(cfg, h, w), feats[a:b][None]))
    return outs


def run_stage(m: 'DoViTSegmenter', stages: StageFns | None, s: int, t: torch.Tensor,
              patch: torch.Tensor, segments: list[int]):
    """Stage s on the pack: (1, M, C) -> tokens, aux logits of the patch rows (1, n, K)."""
    if stages is not None:   # one dense frame: the stage's own aux head on t[:, nc:]
        return stages.blocks[s](t)
    return m.run_stage(s, t, segments=segments, patch=patch)


def merge_class_tokens(t: torch.Tensor, pack: Pack, ex: torch.Tensor, F: int) -> None:
    """DoViT eq. 8 for every frame with leavers: T0 <- (T0 + mean of its leavers) / 2."""
    fr = pack.frame[ex]
    n = torch.bincount(fr, minlength=F)  # (F,)
    sums = t.new_zeros(F, t.shape[-1]).index_add_(0, fr, t[0, ex])
    cls = (pack.pos < 0).nonzero().squeeze(1)  # class-token rows, one per frame present
    f = pack.frame[cls]
    has = n[f] > 0
    mean = sums[f] / n[f].clamp(min=1)[:, None].to(t.dtype)
    rows = cls[has]
    t[0, rows] = 0.5 * (t[0, rows] + mean[has])


def drop_rows(t: torch.Tensor, pack: Pack, ex: torch.Tensor) -> tuple[torch.Tensor, Pack]:
    """The pack without the exited rows, and without the class token of a frame that has no
    patch token left (it would attend to nothing of its frame; single-frame inference stops
    such a frame there too)."""
    keep = torch.ones(t.shape[1], dtype=torch.bool, device=t.device)
    keep[ex] = False
    alive = torch.zeros(int(pack.frame.max()) + 1, dtype=torch.bool, device=t.device)
    alive[pack.frame[keep & (pack.pos >= 0)]] = True
    keep &= alive[pack.frame]
    rows = keep.nonzero().squeeze(1)
    return t.index_select(1, rows), pack.select(rows)


def _output(logits, exit_stage, counts, spent, full, features) -> SegmentationOutput:
    return SegmentationOutput(
        logits=logits, exit_stage=exit_stage, tokens_per_stage=torch.tensor([counts]),
        flops=torch.tensor([spent], dtype=torch.float64), flops_full=full, features=features)


__all__ = ['forward_packed', 'Pack']
