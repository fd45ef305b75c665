"""The analytic FLOP count against torch's FlopCounterMode on the forward actually executed.

On CPU the fused scaled_dot_product_attention kernel is invisible to FlopCounterMode, so the
count runs under the MATH backend, where attention decomposes into counted bmm calls; each
test asserts that those attention matmuls were counted.
"""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig, full_flops, segmenter_flops
from dovit_ros.model.flops import aux_macs, block_macs
from dovit_ros.model.plans import coherent_plan

H, W = 128, 256
h, w = H // 16, W // 16
N = h * w
REL = 0.02


pytestmark = pytest.mark.usefixtures('one_thread')


def model(**kw) -> DoViTSegmenter:
    torch.manual_seed(0)
    m = DoViTSegmenter(ViTConfig.preset('tiny', img_size=(H, W), **kw)).eval()
    with torch.no_grad():   # spread aux confidences so that a threshold splits the tokens
        for head in m.aux_heads:
            head.proj.weight.mul_(40)
    return m


def counted(m, x, **kw):
    """(output, {'Global' | module name: flops}) of one forward under the MATH attention."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        out = m(x, **kw)
    return out, {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}, \
        fc.get_flop_counts()['Global']


def attention_flops(cfg: ViTConfig, tokens_per_stage) -> float:
    """QK^T and AV of every block: 2 matmuls of n^2 C MACs, n with the class token."""
    nc = int(cfg.class_token)
    return sum(2.0 * 2 * (n + nc) ** 2 * cfg.dim * (b - a)
               for n, (a, b) in zip(tokens_per_stage, cfg.stage_blocks()) if n > 0)


def check(m, out, by_module, by_op, full=False, decoded=None):
    """Total and per-part agreement for a batch of one (`full`: the plain forward, which
    runs no aux head)."""
    cfg = m.cfg
    tps = out.tokens_per_stage[0].tolist()
    total = by_module['Global']
    bmm = sum(v for k, v in by_op.items() if 'bmm' in str(k))
    # the attention matmuls were counted, and they are exactly the analytic QK^T + AV
    assert bmm > 0 and bmm == attention_flops(cfg, tps)
    assert total > total - bmm
    fb = segmenter_flops(cfg, h, w, None if full else tps, decoded)
    assert float(out.flops[0]) == pytest.approx(fb.total, rel=1e-9)
    assert float(out.flops[0]) == pytest.approx(total, rel=REL)
    assert out.flops_full == full_flops(cfg, h, w)
    name = type(m).__name__
    assert fb.embed == pytest.approx(by_module[f'{name}.patch_embed'], rel=REL)
    dec = by_module.get(f'{name}.decoder', 0) + by_module.get(f'{name}.refine', 0)
    assert fb.decoder == pytest.approx(dec, rel=REL, abs=1)
    assert (by_module.get(f'{name}.refine', 0) > 0) == (cfg.decoder == 'refine')
    for s, (a, b) in enumerate(cfg.stage_blocks()):
        got = sum(by_module.get(f'{name}.blocks.{i}', 0) for i in range(a, b))
        aux = by_module.get(f'{name}.aux_heads.{s}', 0)
        assert fb.stages[s] == pytest.approx(got + aux, rel=REL, abs=1), s
        # the aux heads are < 1 % of a stage: check that the stage figure includes them
        ran_aux = not full and s < cfg.num_stages - 1
        blocks = 2.0 * (b - a) * block_macs(cfg, tps[s] + int(cfg.class_token)) * (tps[s] > 0)
        assert aux == pytest.approx(2 * aux_macs(cfg, tps[s]) if ran_aux else 0, rel=REL), s
        assert fb.stages[s] - blocks == pytest.approx(aux, rel=REL, abs=1), s


VARIANTS = [{}, {'conv_stem': True}, {'class_token': True},
            {'class_token': True, 'merge_exited': True}, {'exit_semantics': 'predictions'},
            {'conv_stem': True, 'decoder': 'refine'},
            {'conv_stem': True, 'decoder': 'refine', 'exit_semantics': 'predictions'},
            {'conv_stem': True, 'decoder': 'refine', 'refine_blocks': (2, 1)},
            {'conv_stem': True, 'decoder': 'refine', 'refine_blocks': (1, 1),
             'refine_strip': (5, 7)}]


@pytest.mark.parametrize('variant', VARIANTS)
def test_full_model(variant):
    m = model(**variant)
    out, by_module, by_op = counted(m, torch.randn(1, 3, H, W))
    check(m, out, by_module, by_op, full=True)
    assert out.flops_full == pytest.approx(by_module['Global'], rel=REL)


@pytest.mark.parametrize('variant', VARIANTS)
def test_with_plan(variant):
    m = model(**variant)
    plan = [p[None] for p in coherent_plan(h, w, [0.5, 0.3, 0.2], seed=1)]
    out, by_module, by_op = counted(m, torch.randn(1, 3, H, W), plan=plan)
    assert out.tokens_per_stage[0].tolist() == [N, 64, 38, 26]
    pred = m.cfg.exit_semantics == 'predictions'
    check(m, out, by_module, by_op, decoded=26 if pred else None)
    assert float(out.flops[0]) < out.flops_full


# the deep refine paths (blocks, strips) cost the same at any xi (test_with_plan covers them
# under exits); with their random weights all tokens exit at this xi, leaving nothing to check
@pytest.mark.parametrize('variant', VARIANTS[:-2])
@pytest.mark.parametrize('policy', ['threshold', 'dtop'])
def test_with_threshold(variant, policy):
    m = model(**variant)
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():   # xi = the median aux confidence at the first decision point
        aux = m.forward_train(x).aux_logits[0]
    xi = float(aux.softmax(1).amax(1).median())
    out, by_module, by_op = counted(m, x, exits=ExitConfig(policy, xi, topk_per_class=2))
    tps = out.tokens_per_stage[0].tolist()
    assert N > tps[1] and tps[-1] > 0, tps   # some tokens left, some reached the end
    pred = m.cfg.exit_semantics == 'predictions'
    check(m, out, by_module, by_op, decoded=tps[-1] if pred else None)


def test_batch_flops_are_per_image():
    """A batch's counted total is the sum of its per-image figures."""
    m = model()
    x = torch.randn(2, 3, H, W)
    plan = [torch.stack([p, q]) for p, q in zip(coherent_plan(h, w, [0.6, 0.4, 0.1], 2),
                                                coherent_plan(h, w, [0.9, 0.9, 0.8], 3))]
    out, by_module, _ = counted(m, x, plan=plan)
    assert out.flops[0] < out.flops[1]
    assert float(out.flops.sum()) == pytest.approx(by_module['Global'], rel=REL)


def test_block_macs_by_hand():
    # ViT-B block on 197 tokens: 4 C^2 n (qkv, proj) + 2 n^2 C + 8 C^2 n (MLP, ratio 4)
    cfg = ViTConfig.preset('base')
    n, C = 197, 768
    assert block_macs(cfg, n) == 12 * C * C * n + 2 * n * n * C
    assert segmenter_flops(cfg, 14, 14, [0, 0, 0, 0]).stages == [0.0] * 4


def test_refine_macs_by_hand():
    """ViT-tiny at 360x480 (23x30 tokens): stem widths 24/48/96/192, refine dims (64, 32), 11
    classes; the default model's whole frame stays within the 15 GFLOPs the node can afford."""
    from dovit_ros.model.flops import refine_macs
    cfg = ViTConfig.preset('tiny', num_classes=11, conv_stem=True, decoder='refine')
    n8, n4 = 46 * 60, 92 * 120
    want = n8 * (96 * 32 + (11 + 32) * 64 * 9) + n4 * (48 * 16 + (64 + 16) * 32 * 9 + 32 * 11)
    assert refine_macs(cfg, 23, 30) == want
    assert refine_macs(ViTConfig.preset('tiny', num_classes=11, conv_stem=True), 23, 30) == 0
    assert full_flops(cfg, 23, 30) < 15e9
    deep = ViTConfig.preset('tiny', num_classes=11, conv_stem=True, decoder='refine',
                            refine_blocks=(2, 1))   # + two 3x3 per block: 2 at stride 8, 1 at 4
    deep_macs = want + 2 * 2 * n8 * 64 * 64 * 9 + 2 * n4 * 32 * 32 * 9
    assert refine_macs(deep, 23, 30) == deep_macs
    assert full_flops(deep, 23, 30) < 15e9
    strip = ViTConfig.preset('tiny', num_classes=11, conv_stem=True, decoder='refine',
                             refine_blocks=(2, 2), refine_strip=(11, 15))
    # + per pixel: two depthwise strips of k taps and a 1x1, 64 channels at stride 8, 32 at 4
    assert refine_macs(strip, 23, 30) == (deep_macs + n4 * 2 * 32 * 32 * 9
                                          + n8 * (2 * 11 * 64 + 64 * 64)
                                          + n4 * (2 * 15 * 32 + 32 * 32))
    assert full_flops(strip, 23, 30) < 15e9
