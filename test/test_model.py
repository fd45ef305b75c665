"""DoViT segmenter: shapes, equivalence of the pruned path to plain and masked references,
exit policies, batching and configuration checks.

The references below are written from the model's submodules only (embedding, blocks, heads),
independently of `_forward_full`, `_forward_pruned` and `forward_train`.
"""
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.model.config import FULL, PRESETS
from dovit_ros.model.exit import dtop_exits, topk_per_group

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-4, atol=1e-4)
K = 5


pytestmark = pytest.mark.usefixtures('one_thread')
REFINE = {'conv_stem': True, 'decoder': 'refine', 'refine_dims': (12, 8)}
DEEP = {**REFINE, 'refine_blocks': (2, 1)}   # residual blocks in the high-resolution path
STRIP = {**DEEP, 'refine_strip': (5, 7)}     # and a strip-convolution block after each


def small_cfg(**kw) -> ViTConfig:
    base = dict(num_classes=K, dim=32, depth=6, heads=2, decoder_dim=16, img_size=(64, 96),
                decision_points=(2, 3, 5))
    return ViTConfig(**{**base, **kw})


def make_model(cfg: ViTConfig, seed: int = 0, aux_scale: float = 30.0) -> DoViTSegmenter:
    """Random model in eval mode with non-trivial norms and BN statistics. The aux heads are
    scaled up so that confidences spread over (1/K, 1) and thresholds split the tokens."""
    torch.manual_seed(seed)
    m = DoViTSegmenter(cfg).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.LayerNorm, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
        if m.refine is not None:   # a trained refine path, not the zero-initialised one
            m.refine.cls.weight.normal_(0, 0.5)
            m.refine.cls.bias.normal_(0, 0.1)
        for head in m.aux_heads:
            head.proj.weight.mul_(aux_scale)
            head.proj.bias.normal_(0, 1.0)
        if m.cls_token is not None:
            m.cls_token.normal_(0, 1.0)
    return m


def image(B: int, H: int, W: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, H, W, generator=g)


def pick_xi(conf: torch.Tensor, q: float) -> float:
    """A threshold near quantile q that sits in a gap of the confidences, so that float
    differences of 1e-6 between implementations cannot flip a decision."""
    c = conf.flatten().sort().values
    n = c.numel()
    lo, hi = max(1, int(q * n) - n // 8), min(n - 1, int(q * n) + n // 8)
    gaps = c[lo:hi + 1] - c[lo - 1:hi]
    i = lo + int(gaps.argmax())
    assert c[i] - c[i - 1] > 1e-4, 'confidences too dense to place a threshold safely'
    return float((c[i] + c[i - 1]) / 2)


# ------------------------------------------------------------------ references
def plain_vit(m: DoViTSegmenter, x: torch.Tensor) -> torch.Tensor:
    """embed -> blocks -> decoder -> upsample, written out from the submodules."""
    cfg, (B, _, H, W) = m.cfg, x.shape
    p = cfg.patch_size
    h, w = -(-H // p), -(-W // p)
    xp = F.pad(x, (0, w * p - W, 0, h * p - H))
    t = m.patch_embed(xp).flatten(2).transpose(1, 2)  # (B, N, C)
    skips = stem_skips(m, xp)
    gh, gw = m.grid
    pos = m.pos_embed.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    if (gh, gw) != (h, w):
        pos = F.interpolate(pos, size=(h, w), mode='bicubic', align_corners=False)
    t = t + pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)
    if cfg.class_token:
        t = torch.cat([m.cls_token.expand(B, -1, -1), t], 1)
    for blk in m.blocks:
        t = blk(t)
    g = m.decoder(t[:, int(cfg.class_token):])  # (B, N, K)
    return to_pixels(m, g.transpose(1, 2).reshape(B, -1, h, w), skips, H, W)


def stem_skips(m: DoViTSegmenter, xp: torch.Tensor):
    """The conv stem's stride-4 and stride-8 activations, run layer by layer."""
    if m.refine is None:
        return None
    y, out = xp, []
    for i, layer in enumerate(m.patch_embed.layers):
        y = layer(y)
        if i in (5, 8):
            out.append(y)
    return out


def blocks(res_blocks, z: torch.Tensor) -> torch.Tensor:
    """The refine decoder's residual blocks, written out."""
    for b in res_blocks:
        z = (z + b.bn2(b.conv2(b.conv1[2](b.conv1[1](b.conv1[0](z)))))).relu()
    return z


def strip(block, z: torch.Tensor) -> torch.Tensor:
    """A refine decoder's strip block, written out: depthwise 1xk and kx1 as k-tap sums of
    shifted copies (zero padding), each with its BN, then ReLU, the 1x1 and the residual."""
    if isinstance(block, torch.nn.Identity):
        return z
    k = block.h[0].kernel_size[1]
    zp = F.pad(z, (k // 2, k // 2, k // 2, k // 2))
    H, W = z.shape[-2:]
    wh, wv = block.h[0].weight[:, 0, 0], block.v[0].weight[:, 0, :, 0]  # (C, k) each
    sh = sum(wh[:, i, None, None] * zp[:, :, k // 2:k // 2 + H, i:i + W] for i in range(k))
    sv = sum(wv[:, i, None, None] * zp[:, :, i:i + H, k // 2:k // 2 + W] for i in range(k))
    s = (block.h[1](sh) + block.v[1](sv)).relu()
    return (z + block.bn2(F.conv2d(s, block.pw.weight))).relu()


def to_pixels(m: DoViTSegmenter, g: torch.Tensor, skips, H: int, W: int) -> torch.Tensor:
    """Token-grid logits -> refine decoder (written out) -> bilinear to the padded size, crop."""
    p = m.cfg.patch_size
    h, w = g.shape[-2:]
    if skips is not None:
        r = m.refine
        up = partial(F.interpolate, scale_factor=2.0, mode='bilinear', align_corners=False)
        y = up(g)
        z = strip(r.strip8, blocks(r.blocks8, r.fuse8(torch.cat([y, r.lat8(skips[1])], 1))))
        z = strip(r.strip4, blocks(r.blocks4, r.fuse4(torch.cat([up(z), r.lat4(skips[0])], 1))))
        g = up(y) + r.cls(z)
    y = F.interpolate(g, size=(h * p, w * p), mode='bilinear', align_corners=False)
    return y[..., :H, :W]


def masked_reference(m: DoViTSegmenter, x: torch.Tensor, decide):
    """Full-length sequence; exited tokens leave the attention keys and stop updating.

    decide(s, aux_logits (B, N, K), active (B, N)) -> (B, N) bool exits at decision point s.
    Returns features (B, N, C), exit stage (B, N), logits (B, K, H, W), and per decision point
    the aux logits and the active mask before the decision.
    """
    cfg, (B, _, H, W) = m.cfg, x.shape
    nc = int(cfg.class_token)
    t, h, w = m.embed(x)
    p = cfg.patch_size
    skips = stem_skips(m, F.pad(x, (0, w * p - W, 0, h * p - H)))
    N = h * w
    active = torch.ones(B, N, dtype=torch.bool)
    stage = torch.zeros(B, N, dtype=torch.long)
    at_exit = torch.zeros(B, N, cfg.dim)
    exit_logits = torch.zeros(B, N, K)
    trace = []
    for s, (a, b) in enumerate(cfg.stage_blocks()):
        keys = torch.cat([torch.ones(B, nc, dtype=torch.bool), active], 1)  # (B, nc+N)
        for blk in m.blocks[a:b]:
            t = torch.where(keys[..., None], blk(t, keys), t)
        if s == cfg.num_stages - 1:
            break
        lg = m.aux_heads[s](t[:, nc:])  # (B, N, K)
        trace.append((lg, active.clone()))
        ex = decide(s, lg, active) & active
        stage[ex] = s + 1
        at_exit[ex] = t[:, nc:][ex]
        exit_logits[ex] = lg[ex]
        if cfg.merge_exited:
            for i in range(B):
                if ex[i].any():
                    t[i, 0] = 0.5 * (t[i, 0] + t[i, nc:][ex[i]].mean(0))   # DoViT eq. 8
        active = active & ~ex
    f = t[:, nc:]
    assert torch.equal(f[stage > 0], at_exit[stage > 0])   # frozen since exit
    g = m.decoder(f)
    if cfg.exit_semantics == 'predictions':
        g = torch.where((stage > 0)[..., None], exit_logits, g)
    return f, stage, to_pixels(m, g.transpose(1, 2).reshape(B, -1, h, w), skips, H, W), trace


def random_plan(B: int, N: int, S: int, seed: int) -> list[torch.Tensor]:
    """Nested random masks: token i of image b survives decision point s iff u < keep_s."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, N, generator=g)
    keeps = sorted(torch.rand(S, generator=g).tolist(), reverse=True)
    return [u < k for k in keeps]


def stage_from_plan(plan: list[torch.Tensor]) -> torch.Tensor:
    """(B, N) 1-based decision point at which each token leaves; 0 = never."""
    stage = torch.zeros(plan[0].shape, dtype=torch.long)
    alive = torch.ones(plan[0].shape, dtype=torch.bool)
    for s, p in enumerate(plan):
        out = alive & ~p
        stage[out] = s + 1
        alive &= p
    return stage


def xi_chooser(q: float, policy: str = 'threshold', k: int = 2):
    """A `decide` for masked_reference that picks a safe xi at each point and records it."""
    xis = []

    def decide(s, lg, active):
        conf, cls = lg.softmax(-1).max(-1)  # (B, N)
        xis.append(pick_xi(conf[active], q))
        if policy == 'threshold':
            return conf > xis[-1]
        B, N = conf.shape
        image = torch.arange(B).repeat_interleave(N)
        return dtop_exits(conf.flatten(), cls.flatten(), xis[-1], k, K, image, B,
                          active.flatten()).reshape(B, N)
    return decide, xis


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize('size', [(360, 480), (257, 511), (10, 100), (40, 7)])
@pytest.mark.parametrize('policy', ['none', 'threshold', 'dtop'])
@pytest.mark.parametrize('variant', [{}, REFINE, DEEP, STRIP])
def test_output_shapes_at_odd_sizes(size, policy, variant):
    m = make_model(small_cfg(**variant))
    H, W = size
    h, w = -(-H // 16), -(-W // 16)
    x = image(2, H, W)
    out = m(x, ExitConfig(policy, threshold=0.5, topk_per_class=3))
    assert out.logits.shape == (2, K, H, W)
    assert out.exit_stage.shape == (2, h, w) and out.exit_stage.dtype == torch.uint8
    assert out.tokens_per_stage.shape == (2, m.cfg.num_stages)
    assert out.features.shape == (2, h * w, m.cfg.dim)
    assert out.flops.shape == (2,)
    labels, conf = out.labels_confidence()
    assert labels.shape == (2, H, W) and conf.shape == (2, H, W)
    assert torch.equal(labels, out.logits.argmax(1))
    assert bool(((conf > 0) & (conf <= 1)).all())
    torch.testing.assert_close(conf, out.logits.softmax(1).max(1).values)
    assert torch.isfinite(out.logits).all()


# ------------------------------------------------------------------ policy none
@pytest.mark.parametrize('variant', [{}, {'class_token': True}, {'conv_stem': True},
                                     {'class_token': True, 'merge_exited': True}, REFINE,
                                     DEEP, STRIP])
@pytest.mark.parametrize('size', [(64, 96), (70, 130)])
def test_none_equals_plain_vit(variant, size):
    m = make_model(small_cfg(**variant))
    x = image(2, *size)
    with torch.no_grad():
        ref = plain_vit(m, x)
    out = m(x, FULL)
    torch.testing.assert_close(out.logits, ref, **TOL)
    assert int(out.exit_stage.max()) == 0
    assert bool((out.tokens_per_stage == out.features.shape[1]).all())
    assert bool((out.flops == out.flops_full).all())


@pytest.mark.parametrize('policy', ['threshold', 'dtop'])
@pytest.mark.parametrize('xi', [1.0, 1.5, (1.0, 2.0, 1.0)])
def test_xi_at_or_above_one_matches_none(policy, xi):
    """xi >= 1 must run the pruned code path without a single exit. A huge aux bias makes
    confidences round to exactly 1.0 in float32, the edge case of `conf > xi`."""
    m = make_model(small_cfg(class_token=True))
    with torch.no_grad():
        for head in m.aux_heads:
            head.proj.bias[0] = 1e4
    x = image(2, 70, 130)
    conf = m.aux_heads[0](m.embed(x)[0][:, 1:]).softmax(-1).max(-1).values
    assert bool((conf == 1.0).all())
    out = m(x, ExitConfig(policy, threshold=xi, topk_per_class=0))
    ref = m(x, FULL)
    torch.testing.assert_close(out.logits, ref.logits, **TOL)
    torch.testing.assert_close(out.features, ref.features, **TOL)
    assert bool((out.tokens_per_stage == 5 * 9).all())
    assert int(out.exit_stage.max()) == 0


# ------------------------------------------------------------------ pruned == masked reference
VARIANTS = [{}, {'class_token': True}, {'class_token': True, 'merge_exited': True},
            {'exit_semantics': 'predictions'}, {'conv_stem': True}, REFINE,
            {**REFINE, 'exit_semantics': 'predictions'}, DEEP,
            {**DEEP, 'exit_semantics': 'predictions'}, STRIP,
            {**STRIP, 'exit_semantics': 'predictions'}]


@pytest.mark.parametrize('variant', VARIANTS)
def test_plan_matches_masked_reference(variant):
    m = make_model(small_cfg(**variant))
    x = image(2, 70, 130)
    N = 5 * 9
    plan = random_plan(2, N, 3, seed=3)
    out = m(x, FULL, plan=plan)
    with torch.no_grad():
        f, stage, logits, _ = masked_reference(m, x, lambda s, lg, act: ~plan[s])
    assert torch.equal(stage, stage_from_plan(plan))
    assert torch.equal(out.exit_stage.reshape(2, N).long(), stage)
    torch.testing.assert_close(out.features, f, **TOL)
    torch.testing.assert_close(out.logits, logits, **TOL)
    check_cumulative(out, m.cfg.num_stages)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('policy', ['threshold', 'dtop'])
def test_real_exits_match_masked_reference_and_forward_train(variant, policy):
    m = make_model(small_cfg(**variant))
    x = image(2, 70, 130, seed=5)
    N = 5 * 9
    decide, xis = xi_chooser(0.6, policy, k=2)
    with torch.no_grad():
        f, stage, logits, trace = masked_reference(m, x, decide)
    assert 0 < int((stage > 0).sum()) < 2 * N, 'the test needs some exits and some survivors'
    ex = ExitConfig(policy, threshold=tuple(xis), topk_per_class=2)
    out = m(x, ex)
    assert torch.equal(out.exit_stage.reshape(2, N).long(), stage)
    torch.testing.assert_close(out.features, f, **TOL)   # kept and exited positions alike
    torch.testing.assert_close(out.logits, logits, **TOL)
    check_cumulative(out, m.cfg.num_stages)
    with torch.no_grad():
        tr = m.forward_train(x, ex)
    assert torch.equal(tr.exit_stage, out.exit_stage)
    torch.testing.assert_close(tr.logits, out.logits, **TOL)
    if policy == 'dtop':   # exactly min(k, candidates) of each class stay, per image
        for s, (lg, active) in enumerate(trace):
            conf, cls = lg.softmax(-1).max(-1)
            cand = (conf > xis[s]) & active
            for i in range(2):
                for c in range(K):
                    mine = cand[i] & (cls[i] == c)
                    stayed = int((stage[i][mine] == 0).sum() + (stage[i][mine] > s + 1).sum())
                    assert stayed == min(2, int(mine.sum()))


def check_cumulative(out, S: int) -> None:
    """A token with exit stage e ran the stages 0 .. e-1 (all if e == 0), so stage s ran
    on exactly the tokens with e == 0 or e > s; counts never grow."""
    e = out.exit_stage.flatten(1).long()  # (B, N)
    assert int(e.max()) <= S - 1
    for s in range(S):
        want = ((e == 0) | (e > s)).sum(1)
        assert torch.equal(out.tokens_per_stage[:, s], want)
    assert bool((out.tokens_per_stage[:, 1:] <= out.tokens_per_stage[:, :-1]).all())


def test_forward_train_without_exits_matches_forward():
    m = make_model(small_cfg(class_token=True))
    x = image(2, 64, 96)
    with torch.no_grad():
        tr = m.forward_train(x)
        tr_none = m.forward_train(x, FULL)
    out = m(x)
    torch.testing.assert_close(tr.logits, out.logits, **TOL)
    torch.testing.assert_close(tr_none.logits, out.logits, **TOL)
    assert len(tr.aux_logits) == 3 and tr.aux_logits[0].shape == (2, K, 4, 6)
    assert int(tr.exit_stage.max()) == 0


def test_drop_path_is_training_only_and_per_sample():
    """Stochastic depth: rates rise linearly to cfg.drop_path; at inference (eval) the model
    is exactly the model without it; in training whole samples lose a branch, reproducibly
    from the seed; out-of-range rates are refused."""
    m = make_model(small_cfg(drop_path=0.5))
    plain = make_model(small_cfg())
    assert [b.drop_rate for b in m.blocks] == pytest.approx([0.5 * i / 5 for i in range(6)])
    x = image(4, 64, 96)
    torch.testing.assert_close(m(x).logits, plain(x).logits)
    m.train()
    with torch.no_grad():
        torch.manual_seed(3)
        a = m.forward_train(x).logits
        torch.manual_seed(3)
        b = m.forward_train(x).logits
        torch.manual_seed(4)
        c = m.forward_train(x).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    from dovit_ros.model.vit import drop_path
    torch.manual_seed(0)
    y = drop_path(torch.ones(2000, 3, 2), 0.25, True)
    per_sample = y.reshape(2000, -1)
    assert bool((per_sample == per_sample[:, :1]).all())  # one decision per sample
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert abs(float((per_sample[:, 0] == 0).float().mean()) - 0.25) < 0.04
    for bad in (1.0, -0.1, True, 'x'):
        with pytest.raises(ValueError, match='drop_path'):
            small_cfg(drop_path=bad)


# ------------------------------------------------------------------ exit functions
def test_topk_per_group_hand_made():
    conf = torch.tensor([0.9, 0.8, 0.95, 0.7, 0.6, 0.85])
    group = torch.tensor([0, 0, 1, 1, 0, 1])
    every = torch.ones(6, dtype=torch.bool)

    def kept(k, cand=every, c=conf, g=group):
        return topk_per_group(c, g, cand, k, 2).nonzero().flatten().tolist()

    assert kept(0) == []
    assert kept(1) == [0, 2]
    assert kept(2) == [0, 1, 2, 5]
    assert kept(10) == [0, 1, 2, 3, 4, 5]   # k larger than every group: all candidates
    part = torch.tensor([False, True, True, True, True, False])
    assert kept(1, part) == [1, 2]
    assert kept(5, part) == [1, 2, 3, 4]
    assert kept(1, torch.zeros(6, dtype=torch.bool)) == []
    # ties: lower index first
    assert kept(2, every, torch.full((6,), 0.5), torch.zeros(6, dtype=torch.long)) == [0, 1]
    tie = torch.tensor([0.4, 0.5, 0.5, 0.5, 0.9, 0.9])
    assert kept(2, every, tie, torch.tensor([0, 0, 0, 0, 1, 1])) == [1, 2, 4, 5]


def test_dtop_exits_hand_made():
    conf = torch.tensor([0.99, 0.97, 0.95, 0.5, 0.98, 0.96])
    cls = torch.tensor([0, 0, 0, 0, 1, 1])

    def exits(k, **kw):
        return dtop_exits(conf, cls, 0.9, k, 2, **kw).nonzero().flatten().tolist()

    assert exits(0) == [0, 1, 2, 4, 5]   # k = 0: plain threshold
    assert exits(1) == [1, 2, 5]         # the most confident of each class stays
    assert exits(2) == [2]
    assert exits(3) == []                # k >= candidates: nobody exits
    active = torch.tensor([False, True, True, True, True, True])
    assert exits(1, active=active) == [2, 5]   # token 0 already left; 1 is now class 0's best
    # two images of three tokens: classes are counted per image
    image = torch.tensor([0, 0, 0, 1, 1, 1])
    cls2 = torch.tensor([0, 0, 0, 0, 0, 0])
    conf2 = torch.tensor([0.99, 0.97, 0.95, 0.98, 0.96, 0.5])
    got = dtop_exits(conf2, cls2, 0.9, 1, 2, image=image, num_images=2)
    assert got.nonzero().flatten().tolist() == [1, 2, 4]


def test_topk_per_group_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        M, G = int(torch.randint(1, 60, (1,), generator=g)), 4
        conf = torch.randint(0, 6, (M,), generator=g).float() / 5   # many ties
        group = torch.randint(0, G, (M,), generator=g)
        cand = torch.rand(M, generator=g) < 0.7
        k = trial % 5
        got = topk_per_group(conf, group, cand, k, G)
        want = torch.zeros(M, dtype=torch.bool)
        for c in range(G):
            idx = [i for i in range(M) if cand[i] and group[i] == c]
            idx.sort(key=lambda i: (-float(conf[i]), i))
            want[idx[:k]] = True
        assert torch.equal(got, want), (trial, conf, group, cand, k)


# ------------------------------------------------------------------ batches
@pytest.mark.parametrize('policy', ['threshold', 'dtop'])
def test_batch_images_keep_their_own_tokens(policy):
    m = make_model(small_cfg())
    x = torch.cat([image(1, 70, 130, seed=7), torch.full((1, 3, 70, 130), 0.3)])
    ex = ExitConfig(policy, threshold=0.6, topk_per_class=2)
    both = m(x, ex)
    one = [m(x[i:i + 1], ex) for i in range(2)]
    assert not torch.equal(both.tokens_per_stage[0], both.tokens_per_stage[1])
    for i in range(2):
        assert torch.equal(both.tokens_per_stage[i], one[i].tokens_per_stage[0])
        assert torch.equal(both.exit_stage[i], one[i].exit_stage[0])
        torch.testing.assert_close(both.logits[i], one[i].logits[0], **TOL)
        assert float(both.flops[i]) == float(one[i].flops[0])
    with torch.no_grad():
        tr = m.forward_train(x, ex)
    assert torch.equal(tr.exit_stage, both.exit_stage)


def test_batch_plan_is_per_image():
    m = make_model(small_cfg())
    x = image(2, 64, 96)
    N = 4 * 6
    plan = random_plan(2, N, 3, seed=11)
    both = m(x, FULL, plan=plan)
    for i in range(2):
        alone = m(x[i:i + 1], FULL, plan=[p[i:i + 1] for p in plan])
        assert torch.equal(both.tokens_per_stage[i], alone.tokens_per_stage[0])
        assert both.tokens_per_stage[i].tolist() == [N] + [int(p[i].sum()) for p in plan]


# ------------------------------------------------------------------ configuration
def test_config_validation_messages():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ViTConfig.preset('huge')
    for dps in [(0, 3), (3, 3), (6, 3), (3, 12), (-1,)]:
        with pytest.raises(ValueError, match='decision_points'):
            ViTConfig(decision_points=dps)
    with pytest.raises(ValueError, match='exit_semantics'):
        ViTConfig(exit_semantics='logits')
    with pytest.raises(ValueError, match='merge_exited'):
        ViTConfig(merge_exited=True)
    with pytest.raises(ValueError, match='dim'):
        ViTConfig(dim=100, heads=3)
    with pytest.raises(ValueError, match='depth'):
        ViTConfig(depth=0)
    with pytest.raises(ValueError, match='conv_stem'):
        ViTConfig(conv_stem=True, patch_size=8)
    with pytest.raises(ValueError, match='img_size'):
        ViTConfig(img_size=(8, 512))
    for ratio in (-1.0, 0.0, 0.001, float('nan'), float('inf'), '4', True):
        with pytest.raises(ValueError, match='mlp_ratio'):
            ViTConfig(mlp_ratio=ratio)
    with pytest.raises(ValueError, match='ViTConfig.class_token: must be true or false'):
        ViTConfig(class_token='no')
    for blocks in ((1,), (-1, 0), (1.5, 0), 2):
        with pytest.raises(ValueError, match='refine_blocks'):
            ViTConfig(conv_stem=True, decoder='refine', refine_blocks=blocks)
    with pytest.raises(ValueError, match="refine_blocks: .* needs decoder: 'refine'"):
        ViTConfig(refine_blocks=(1, 0))
    for strip in ((1, 0), (0, 4), (-3, 0), (3,), (3.0, 0)):
        with pytest.raises(ValueError, match='refine_strip'):
            ViTConfig(conv_stem=True, decoder='refine', refine_strip=strip)
    with pytest.raises(ValueError, match="refine_strip: .* needs decoder: 'refine'"):
        ViTConfig(refine_strip=(3, 0))
    with pytest.raises(ValueError, match='unknown architecture field'):
        ViTConfig.from_dict({'dimension': 10})
    with pytest.raises(ValueError, match='architecture.dim'):
        ViTConfig.from_dict({'dim': '192'})
    with pytest.raises(ValueError, match='architecture.class_token'):
        ViTConfig.from_dict({'class_token': 1})
    with pytest.raises(ValueError, match='policy'):
        ExitConfig(policy='always')
    for bad in (-0.1, float('nan'), True, '0.9'):
        with pytest.raises(ValueError, match='threshold'):
            ExitConfig(threshold=bad)
    for k in (-1, True, 2.0):
        with pytest.raises(ValueError, match='topk_per_class'):
            ExitConfig(topk_per_class=k)
    with pytest.raises(ValueError, match='2 thresholds given for 3 decision points'):
        ExitConfig(threshold=[0.9, 0.8]).thresholds(3)


def test_config_round_trip_and_defaults():
    for cfg in [ViTConfig(), ViTConfig.preset('large', num_classes=11, img_size=[384, 768]),
                small_cfg(class_token=True, merge_exited=True, exit_semantics='predictions'),
                ViTConfig.preset('small', conv_stem=True, decision_points=[4, 8])]:
        assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    for name in ('tiny', 'small', 'base'):
        assert ViTConfig.preset(name).decision_points == (3, 6, 9)
    assert ViTConfig.preset('large').decision_points == (6, 12, 18)
    assert ViTConfig.preset('large').num_stages == 4
    assert set(PRESETS) == {'tiny', 'small', 'base', 'large'}


def test_model_package_imports_no_ros():
    code = ('import sys, dovit_ros.model; '
            'bad = [m for m in sys.modules '
            'if m.split(".")[0].startswith(("rclpy", "rcl_interfaces", "sensor_msgs"))]; '
            'sys.exit(str(bad) if bad else 0)')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------ fidelity to the papers
def test_class_token_merge_is_doviT_eq8():
    """DoViT eq. 8: T0 <- (T0 + mean of the tokens exiting now) / 2, checked on the pruned
    path and on forward_train against the formula applied to the stage's own outputs."""
    m = make_model(small_cfg(class_token=True, merge_exited=True))
    x = image(1, 64, 96)
    t, h, w = m.embed(x)
    N = h * w
    leave = torch.zeros(N, dtype=torch.bool)
    leave[::3] = True
    plan = [~leave[None], ~leave[None], ~leave[None]]  # all leavers go at the first point
    with torch.no_grad():
        t1, _ = m.run_stage(0, t)
        want = 0.5 * (t1[0, 0] + t1[0, 1:][leave].mean(0))
        kept = torch.cat([t1[:, :1], t1[:, 1:][:, ~leave]], 1)
        kept[0, 0] = want
        seen = {}
        orig = m.run_stage

        def spy(s, tt, *args, **kw):
            seen.setdefault(s, tt.clone())
            return orig(s, tt, *args, **kw)
        m.run_stage = spy
        m(x, FULL, plan=plan)
        m.run_stage = orig
    torch.testing.assert_close(seen[1][0, 0], want, **TOL)
    torch.testing.assert_close(seen[1], kept, **TOL)


@pytest.mark.parametrize('variant', [{}, {'class_token': True}, REFINE])
def test_forward_train_all_tokens_exit_gives_finite_gradients(variant):
    """Every token of both frames leaves at the first decision point: no attention row may be
    fully masked (SDPA gives NaN gradients for one on torch < 2.5 and on some CUDA kernels;
    torch 2.13's CPU kernels return zeros, so the masks themselves are checked), and every
    gradient is finite."""
    m = make_model(small_cfg(**variant)).train()
    x = image(2, 64, 96)
    with torch.no_grad():
        m.aux_heads[0].proj.bias[0] = 1e3   # confidence ~1 for every token at point 1
    masks = []
    hooks = [blk.register_forward_pre_hook(lambda mod, args: masks.append(args[1]))
             for blk in m.blocks]
    out = m.forward_train(x, ExitConfig('threshold', threshold=0.5))
    for hk in hooks:
        hk.remove()
    assert int((out.exit_stage == 1).sum()) == out.exit_stage.numel()
    assert len(masks) == m.cfg.depth
    for km in masks:
        assert bool(km.any(1).all()), 'a frame with no visible key'
    loss = out.logits.square().mean() + sum(a.square().mean() for a in out.aux_logits)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_labels_confidence_in_bf16_reads_fp32_logits():
    """A bf16 model's full-resolution logits come out in fp32 (the grid is cast before the
    upsampling) and the confidence is the softmax maximum of those logits."""
    m = make_model(small_cfg(**REFINE)).to(torch.bfloat16)
    out = m(image(1, 70, 130).to(torch.bfloat16), ExitConfig('threshold', threshold=0.5))
    assert out.logits.dtype == torch.float32 and out.logits.shape[-2:] == (70, 130)
    labels, conf = out.labels_confidence()
    assert torch.equal(labels, out.logits.argmax(1))
    torch.testing.assert_close(conf, out.logits.softmax(1).max(1).values)


# ------------------------------------------------------------------ BatchNorm folding
@pytest.mark.parametrize('extra', [{}, DEEP, {**DEEP, 'exit_semantics': 'predictions'}, STRIP])
def test_folded_batchnorm_gives_the_same_outputs(extra):
    from dovit_ros.model import fold_batchnorm
    m = make_model(small_cfg(**extra))
    x = image(1, 61, 90)
    bns = sum(isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
              for mod in m.modules())
    exits = ExitConfig('threshold', 0.6)
    ref_full, ref_ex = m(x), m(x, exits)
    assert fold_batchnorm(m) == bns > 0
    assert not any(isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                   for mod in m.modules())
    assert fold_batchnorm(m) == 0   # nothing left: folding twice changes nothing
    full, ex = m(x), m(x, exits)
    torch.testing.assert_close(full.logits, ref_full.logits, **TOL)
    assert torch.equal(ex.exit_stage, ref_ex.exit_stage)
    torch.testing.assert_close(ex.logits, ref_ex.logits, **TOL)


def test_fold_pair_on_each_layer_kind():
    from dovit_ros.model.fold import fold_batchnorm
    torch.manual_seed(0)
    for layer, bn, x in (
            (torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
             torch.randn(2, 3, 5, 6)),
            (torch.nn.ConvTranspose2d(3, 4, 2, 2), torch.nn.BatchNorm2d(4),
             torch.randn(2, 3, 5, 6)),
            (torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.randn(7, 3))):
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
        seq = torch.nn.Sequential(layer, bn, torch.nn.ReLU()).eval()
        ref = seq(x)
        assert fold_batchnorm(seq) == 1 and isinstance(seq[1], torch.nn.Identity)
        torch.testing.assert_close(seq(x), ref, rtol=1e-5, atol=1e-5)
    # a BN that does not follow a layer (ENet's after a concatenation) stays
    seq = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(3))
    assert fold_batchnorm(seq) == 0


def test_a_folded_model_is_neither_saved_nor_trained(tmp_path):
    from dovit_ros.data import ClassInfo
    from dovit_ros.model import fold_batchnorm
    from dovit_ros.runtime.artifacts import ModelMeta, save_model_dir
    m = make_model(small_cfg(**DEEP))
    fold_batchnorm(m)
    classes = ClassInfo.from_dict({'names': [f'c{i}' for i in range(K)],
                                   'palette': [[i, i, i] for i in range(K)]})
    with pytest.raises(ValueError, match='folded'):
        save_model_dir(tmp_path / 'm', m, ModelMeta(architecture=m.cfg, classes=classes))
    assert not (tmp_path / 'm').exists()
    with pytest.raises(RuntimeError, match='folded'):
        m.forward_train(image(1, 64, 96))
