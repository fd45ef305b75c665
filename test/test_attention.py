"""The attention cores (model/vit.py ATTENTION_CORES) compute the same function, and the
runtime's choice between them (runtime/attention.py) follows its rule."""
import pytest
import torch
import torch.nn.functional as F

import dovit_ros.model.vit as vit
import dovit_ros.runtime.attention as attention
from dovit_ros.data import ClassInfo
from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.runtime.artifacts import ModelMeta
from dovit_ros.runtime.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures('one_thread')


def small_model(seed: int = 0) -> DoViTSegmenter:
    torch.manual_seed(seed)
    cfg = ViTConfig(num_classes=4, dim=32, depth=4, heads=2, decoder_dim=16, img_size=(48, 64),
                    decision_points=(1, 2, 3), conv_stem=True, decoder='refine',
                    refine_dims=(12, 8))
    m = DoViTSegmenter(cfg).eval()
    with torch.no_grad():   # confident aux heads, so that thresholds split the tokens
        for head in m.aux_heads:
            for p in head.parameters():
                p.mul_(3.0)
    return m


@pytest.mark.parametrize('masked', [False, True])
def test_matmul_core_equals_the_fused_kernel(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 16, generator=g) for _ in range(3))
    mask = None
    if masked:   # (B, 1, 1, N): some keys receive no attention, differently per frame
        mask = torch.rand(2, 1, 1, 37, generator=g) > 0.4
        mask[..., 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = vit.matmul_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if masked:   # a masked key changes nothing: moving it leaves the output alone
        k2 = torch.where(mask[:, :, 0, :, None], k, k + 5.0)
        torch.testing.assert_close(vit.matmul_attention(q, k2, v, attn_mask=mask), out)


def test_matmul_core_hands_large_sequences_to_the_fused_kernel(monkeypatch):
    q = torch.randn(1, 2, 20, 8)
    calls = []
    fused = F.scaled_dot_product_attention

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return fused(*args, **kw)

    monkeypatch.setattr(vit.F, 'scaled_dot_product_attention', spy)
    vit.matmul_attention(q, q, q)
    assert calls == []
    monkeypatch.setattr(vit, 'MATMUL_MAX_SCORES', 2 * 20 * 20 - 1)
    vit.matmul_attention(q, q, q)
    assert calls == [q.shape]


@pytest.mark.parametrize('exits', [
    ExitConfig('none'), ExitConfig('threshold', threshold=0.7),
    ExitConfig('dtop', threshold=0.7, topk_per_class=1)])
def test_model_outputs_do_not_depend_on_the_core(exits):
    m = small_model()
    x = torch.randn(2, 3, 48, 64)
    frames = [torch.randn(1, 3, 48, 64), torch.randn(1, 3, 32, 80)]   # a packed forward
    with torch.no_grad():
        ref = m(x, exits)
        ref_frames = m.forward_frames(frames, exits)
        m.attention_core('matmul')
        assert all(b.attn.core == 'matmul' for b in m.blocks)
        out = m(x, exits)
        out_frames = m.forward_frames(frames, exits)
    if exits.policy != 'none':   # the exits did split the tokens: the masks were exercised
        assert 0 < int(ref.tokens_per_stage[:, -1].min()) < int(ref.tokens_per_stage[0, 0])
    assert torch.equal(out.exit_stage, ref.exit_stage)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    for o, r in zip(out_frames, ref_frames):
        assert torch.equal(o.exit_stage, r.exit_stage)
        torch.testing.assert_close(o.logits, r.logits, rtol=1e-4, atol=1e-4)


def test_unknown_core_is_refused():
    with pytest.raises(ValueError, match='attention core'):
        small_model().attention_core('flash')
    with pytest.raises(ValueError, match='expected one of'):
        attention.resolve_attention('flash', small_model(), torch.device('cpu'), torch.float32)


def test_workload_follows_the_first_decision_point():
    m = small_model()   # 48x64 at patch 16: 3x4 = 12 tokens, first decision after block 1
    assert attention.attention_workload(m) == [(12, 1), (2, 3)]


@pytest.mark.parametrize('sdpa_ms, matmul_ms, expected', [
    (10.0, 8.9, 'matmul'), (10.0, 9.0, 'matmul'), (10.0, 9.5, 'sdpa'), (10.0, 12.0, 'sdpa')])
def test_auto_takes_matmul_only_when_it_wins_by_the_margin(
        monkeypatch, sdpa_ms, matmul_ms, expected):
    monkeypatch.setattr(attention, 'time_cores',
                        lambda *a, **k: {'sdpa': sdpa_ms, 'matmul': matmul_ms})
    attention._measured_choice.cache_clear()
    try:
        core, ms = attention.resolve_attention('auto', small_model(), torch.device('cpu'),
                                               torch.float32)
    finally:
        attention._measured_choice.cache_clear()
    assert core == expected and ms == {'sdpa': sdpa_ms, 'matmul': matmul_ms}


def test_auto_measures_both_cores_on_the_cpu_and_never_on_cuda(monkeypatch):
    attention._measured_choice.cache_clear()
    core, ms = attention.resolve_attention('auto', small_model(), torch.device('cpu'),
                                           torch.float32)
    assert core in vit.ATTENTION_CORES and set(ms) == set(vit.ATTENTION_CORES)
    assert all(t > 0 for t in ms.values())

    def no_timing(*a, **k):
        raise AssertionError('timed on CUDA')

    monkeypatch.setattr(attention, 'time_cores', no_timing)
    attention._measured_choice.cache_clear()
    assert attention.resolve_attention('auto', small_model(), torch.device('cuda'),
                                       torch.float16) == ('sdpa', {})


def test_environment_pins_the_core_and_an_explicit_choice_wins(monkeypatch):
    m, cpu = small_model(), torch.device('cpu')
    monkeypatch.setenv('DOVIT_ATTENTION', 'matmul')
    assert attention.resolve_attention(None, m, cpu, torch.float32) == ('matmul', {})
    assert attention.resolve_attention('sdpa', m, cpu, torch.float32) == ('sdpa', {})
    monkeypatch.setenv('DOVIT_ATTENTION', 'fastest')
    with pytest.raises(ValueError, match="'fastest'"):
        attention.resolve_attention(None, m, cpu, torch.float32)


def test_pipeline_sets_the_core_of_the_eager_model_only():
    classes = ClassInfo.from_dict({'names': list('abcd'), 'palette': [[0, 0, 0]] * 4})
    meta = ModelMeta(architecture=small_model().cfg, classes=classes)
    pipe = Pipeline(small_model(), meta, attention='matmul')
    assert pipe.attention == 'matmul'
    assert all(b.attn.core == 'matmul' for b in pipe.model.blocks)
    compiled = Pipeline(small_model(), meta, runner=lambda x, exits: None, attention='matmul')
    assert compiled.attention == 'sdpa'   # a compiled runner keeps the kernels it was built with
    assert all(b.attn.core == 'sdpa' for b in compiled.model.blocks)
