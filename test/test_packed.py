"""Several frames in one packed forward (model/packed.py): every frame keeps exactly its own
tokens, so each output equals the frame run alone (labels, exit stages, counts, FLOPs
identical; logits allclose), with frames of different sizes, a frame whose tokens all leave at
the first decision point and one where none leave, in both attention modes."""
import pytest
import torch

from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.model.vit import Attention, block_diagonal

pytestmark = pytest.mark.usefixtures('one_thread')
TOL = dict(rtol=1e-4, atol=1e-4)
K = 5
VARIANTS = [{}, {'class_token': True, 'merge_exited': True}, {'exit_semantics': 'predictions'},
            {'conv_stem': True, 'decoder': 'refine', 'refine_dims': (12, 8)},
            {'conv_stem': True, 'decoder': 'refine', 'refine_dims': (12, 8),
             'refine_blocks': (1, 1)},
            {'conv_stem': True, 'decoder': 'refine', 'refine_dims': (12, 8),
             'refine_blocks': (1, 1), 'refine_strip': (3, 5)}]


def make_model(**kw) -> DoViTSegmenter:
    torch.manual_seed(0)
    cfg = ViTConfig(num_classes=K, dim=32, depth=6, heads=2, decoder_dim=16, img_size=(64, 96),
                    decision_points=(2, 3, 5), **kw)
    m = DoViTSegmenter(cfg).eval()
    with torch.no_grad():
        for head in m.aux_heads:   # confidences spread over (1/K, 1)
            head.proj.weight.mul_(30)
            head.proj.bias.normal_(0, 1.0)
        if m.refine is not None:
            m.refine.cls.weight.normal_(0, 0.5)
    return m


def frames(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(64, 96), (70, 130), (48, 48), (64, 96)]
    xs = [torch.randn(1, 3, h, w, generator=g) for h, w in sizes]
    xs[2] = torch.full_like(xs[2], 0.5)   # a flat frame: confident everywhere
    return xs


def same(a, b):
    assert torch.equal(a.exit_stage, b.exit_stage)
    assert torch.equal(a.tokens_per_stage, b.tokens_per_stage)
    assert torch.equal(a.flops, b.flops) and a.flops_full == b.flops_full
    assert torch.equal(a.logits.argmax(1), b.logits.argmax(1))
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.features, b.features, **TOL)


@pytest.mark.parametrize('mode', ['split', 'mask'])
@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('policy', ['threshold', 'dtop'])
def test_packed_frames_equal_single_frames(variant, policy, mode, monkeypatch):
    monkeypatch.setattr(Attention, 'packed_mode', mode)
    m = make_model(**variant)
    xs = frames()
    ex = ExitConfig(policy, threshold=(0.6, 0.7, 0.8), topk_per_class=1)
    packed = m.forward_frames(xs, ex)
    for x, a in zip(xs, packed):
        same(a, m(x, ex))
    assert sum(int(o.exit_stage.gt(0).sum()) for o in packed) > 0


@pytest.mark.parametrize('mode', ['split', 'mask'])
@pytest.mark.parametrize('variant', VARIANTS)
def test_packed_plans_one_frame_all_out_one_none(variant, mode, monkeypatch):
    """Forced patterns in one pack: frame 2 loses every token at point 1, frame 3 keeps all,
    frames 0 and 1 something in between."""
    from dovit_ros.model.packed import forward_packed
    from dovit_ros.model.plans import coherent_plan
    monkeypatch.setattr(Attention, 'packed_mode', mode)
    m = make_model(**variant)
    xs = frames(1)
    grids = [(-(-x.shape[2] // 16), -(-x.shape[3] // 16)) for x in xs]
    keeps = [(0.6, 0.4, 0.1), (0.9, 0.5, 0.5), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)]
    plans = [coherent_plan(h, w, k, seed=i) for i, ((h, w), k) in enumerate(zip(grids, keeps))]
    with torch.no_grad():
        packed = forward_packed(m, xs, ExitConfig('threshold', 0.5), plans)
    for x, p, a in zip(xs, plans, packed):
        same(a, m(x, ExitConfig('none'), plan=[q[None] for q in p]))
    assert bool((packed[2].exit_stage == 1).all())
    assert int(packed[3].exit_stage.max()) == 0


def test_frame_with_every_token_leaving_early():
    m = make_model(class_token=True, merge_exited=True)
    with torch.no_grad():
        m.aux_heads[0].proj.bias[0] = 1e3
    xs = frames()[:2]
    ex = ExitConfig('threshold', threshold=0.5)
    outs = m.forward_frames(xs, ex)
    for o, x in zip(outs, xs):
        assert bool((o.exit_stage == 1).all())
        assert o.tokens_per_stage[0].tolist()[1:] == [0, 0, 0]
        same(o, m(x, ex))


def test_batch_tensor_uses_the_pack_and_matches_frames():
    m = make_model()
    x = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    ex = ExitConfig('threshold', threshold=0.7)
    out = m(x, ex)
    for i in range(3):
        one = m(x[i:i + 1], ex)
        assert torch.equal(out.exit_stage[i:i + 1], one.exit_stage)
        torch.testing.assert_close(out.logits[i:i + 1], one.logits, **TOL)


def test_block_diagonal_mask():
    mk = block_diagonal([2, 1, 3], torch.zeros(1))[0, 0]
    want = torch.zeros(6, 6, dtype=torch.bool)
    want[:2, :2] = want[2:3, 2:3] = want[3:, 3:] = True
    assert torch.equal(mk, want)
