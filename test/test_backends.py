"""Backends: stage split, torch.export with a symbolic token count, torch.compile graph counts,
TensorRT shape profiles / cache keys / precision choice (pure parts; no GPU here), make_runner.
"""
import json

import pytest
import torch

from dovit_ros.model import FULL, DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.model.plans import coherent_plan
from dovit_ros.runtime.backends import BackendUnavailable, make_runner
from dovit_ros.runtime.backends.compile import CompiledRunner, CompileOptions, compile_available
from dovit_ros.runtime.backends.export import export_stages, stage_names
from dovit_ros.model import segmenter_flops
from dovit_ros.runtime.backends.memory import memory_budget, param_count
from dovit_ros.runtime.backends.profiles import program_profile, same_profile
from dovit_ros.runtime.backends.stages import (StagedRunner, bucket_sizes, build_stages,
                                               min_tokens, pad_tokens)
from dovit_ros.runtime.backends.engine_cache import (engine_cache_dir, engine_cache_key,
                                                     engine_cache_paths, weights_hash)
from dovit_ros.runtime.backends.tensorrt import (opt_tokens, stage_profiles, tensorrt_available,
                                                 token_stats_from_metrics, trt_input_specs)
from dovit_ros.runtime.backends.trt_precision import (FP16_MAX_DISAGREEMENT, FP32Attention,
                                                      FP32LayerNorm, choose_precision,
                                                      label_disagreement, mixed_precision_copy)

K = 5
H, W = 64, 128            # a 4 x 8 token grid
N = 32
TOL = dict(rtol=1e-4, atol=1e-4)
REFINE = dict(conv_stem=True, decoder='refine')


pytestmark = pytest.mark.usefixtures('one_thread')


def small_cfg(**kw) -> ViTConfig:
    base = dict(num_classes=K, dim=32, depth=6, heads=2, decoder_dim=16, img_size=(H, W),
                decision_points=(2, 3, 5))
    return ViTConfig(**{**base, **kw})


def make_model(cfg: ViTConfig, seed: int = 0) -> DoViTSegmenter:
    """Random eval model with non-trivial norms and BN statistics and spread aux confidences."""
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
        for head in m.aux_heads:
            head.proj.weight.mul_(30)
        if m.cls_token is not None:
            m.cls_token.normal_(0, 1.0)
    return m


def image(seed: int = 1, h: int = H, w: int = W) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def plan(keep, seed=0, h=4, w=8):
    return [m[None] for m in coherent_plan(h, w, keep, seed=seed)]


def same_output(a, b, tol=TOL):
    assert torch.equal(a.exit_stage, b.exit_stage)
    assert torch.equal(a.tokens_per_stage, b.tokens_per_stage)
    assert torch.equal(a.flops, b.flops) and a.flops_full == b.flops_full
    torch.testing.assert_close(a.logits, b.logits, **tol)
    torch.testing.assert_close(a.features, b.features, **tol)


# ------------------------------------------------------------------ stages
VARIANTS = [{}, {'class_token': True}, {'class_token': True, 'merge_exited': True},
            {'exit_semantics': 'predictions'}, {'conv_stem': True},
            {'conv_stem': True, 'decoder': 'refine'}]


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('token_mode', ['dynamic', 'buckets'])
def test_staged_runner_eager_equals_model(variant, token_mode):
    m = make_model(small_cfg(**variant))
    run = StagedRunner(m, build_stages(m, (H, W)), token_mode=token_mode)
    x = image()
    for keep in [(0.5, 0.3, 0.2), (1 / N, 1 / N, 1 / N), (0.1, 0.0, 0.0), (1.0, 1.0, 1.0)]:
        same_output(run(x, FULL, plan(keep)), m(x, FULL, plan(keep)))
    # a full run through stages also runs the aux heads, and its FLOPs say so
    staged, eager = run(x, FULL), m(x, FULL)
    h, w = -(-H // 16), -(-W // 16)
    want = segmenter_flops(m.cfg, h, w, [h * w] * m.cfg.num_stages).total
    assert float(staged.flops[0]) == want > float(eager.flops[0]) == eager.flops_full
    staged.flops = eager.flops
    same_output(staged, eager)
    for policy in ('threshold', 'dtop'):
        ex = ExitConfig(policy, threshold=0.6, topk_per_class=2)
        same_output(run(x, ex), m(x, ex))


def test_staged_runner_other_sizes_and_batches():
    m = make_model(small_cfg(class_token=True))
    run = StagedRunner(m, lambda hw: build_stages(m, hw))
    x = torch.cat([image(2, 70, 130), image(3, 70, 130)])
    ex = ExitConfig('threshold', threshold=0.6)
    same_output(run(x, ex), m(x, ex))
    fixed = StagedRunner(m, build_stages(m, (H, W)))
    with pytest.raises(ValueError, match='built for 64x128 images, got 70x130'):
        fixed(x, ex)


def test_padding_helpers():
    assert bucket_sizes(33, 4) == (9, 17, 25, 33)
    assert bucket_sizes(3, 4) == (2, 3)
    assert bucket_sizes(10, 1) == (10,)
    t = torch.arange(6.).reshape(1, 2, 3)
    p = pad_tokens(t, 4)
    assert p.shape == (1, 4, 3) and torch.equal(p[0, 2:], t[0, 1:].expand(2, 3))
    m = make_model(small_cfg(class_token=True))
    assert [min_tokens(m, s) for s in range(4)] + [min_tokens(m, None)] == [3, 3, 3, 2, 2]


# ------------------------------------------------------------------ torch.export
@pytest.mark.parametrize('preset', ['tiny', 'small', 'base', 'refine'])
def test_export_stages_match_eager(preset, tmp_path):
    extra = {'class_token': True, 'conv_stem': True} if preset == 'tiny' else \
        {**REFINE, 'exit_semantics': 'predictions'} if preset == 'refine' else {}
    cfg = ViTConfig.preset('tiny' if preset == 'refine' else preset, num_classes=K,
                           img_size=(H, W), **extra)
    m = make_model(cfg)
    stats = [[N], [20], [12], [7]]
    progs = export_stages(m, tmp_path if preset == 'tiny' else None, example_hw=(H, W),
                          token_stats=stats)
    assert list(progs) == stage_names(m)
    eager = build_stages(m, (H, W))
    x = image()
    got_e, want_e = progs['embed'].module()(x), eager.embed(x)
    torch.testing.assert_close(got_e, want_e, rtol=1e-5, atol=1e-5)
    nc = int(cfg.class_token)
    gen = torch.Generator().manual_seed(0)
    for s in range(cfg.num_stages):
        low = min_tokens(m, s) if s else nc + N
        for n in sorted({low, 17 if s else low, nc + N}):   # both ends and a middle count
            t = torch.randn(1, n, cfg.dim, generator=gen)
            got, want = progs[f'stage_{s}'].module()(t), eager.blocks[s](t)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    pred = cfg.exit_semantics == 'predictions'
    for n in ((2, 11, N) if pred else (N,)):
        f = torch.randn(1, n, cfg.dim, generator=gen)
        torch.testing.assert_close(progs['decoder'].module()(f), eager.decoder(f),
                                   rtol=1e-5, atol=1e-5)
    if preset == 'refine':
        g = torch.randn(1, K, 4, 8, generator=gen)
        torch.testing.assert_close(progs['refine'].module()(g, *want_e[1:]),
                                   eager.refine(g, *want_e[1:]), rtol=1e-5, atol=1e-5)
    # each program's range constraints and trace-time example (Torch-TensorRT's min/max and
    # opt): stage 0 and a 'features' decoder static, the others min..full at the median count
    ranges = {name: [(int(r.lower), int(r.upper)) for r in ep.range_constraints.values()]
              for name, ep in progs.items()}
    full = nc + N
    want = {'embed': [], 'stage_0': [], 'decoder': [(2, N)] if pred else [],
            **{f'stage_{s}': [(min_tokens(m, s), full)] for s in range(1, cfg.num_stages)}}
    if preset == 'refine':
        want['refine'] = []
    assert ranges == want
    opts = {name: [tuple(a.shape) for a in ep.example_inputs[0]] for name, ep in progs.items()}
    assert opts['stage_0'] == [(1, full, cfg.dim)] and opts['stage_1'] == [(1, 8 * round(
        (nc + 20) / 8), cfg.dim)]
    assert opts['decoder'] == [(1, 8 if pred else N, cfg.dim)]
    for name, ep in progs.items():
        assert same_profile(program_profile(ep), stage_profiles(m, (H, W), 'fp32', stats)[name])
    if preset == 'tiny':
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            f'{n}.pt2' for n in stage_names(m))


def test_export_with_key_mask_shares_the_token_axis():
    """Bucket-mode programs: the key mask takes the same symbolic length as the tokens."""
    m = make_model(small_cfg(class_token=True))
    progs = export_stages(m, example_hw=(H, W), key_mask=True,
                          token_stats=[[32], [20], [12], [8]])
    got = {n: [(s['name'], s['min_shape'], s['opt_shape'], s['max_shape'])
               for s in program_profile(progs[n])] for n in ('stage_0', 'stage_1')}
    assert got['stage_0'][1] == ('key_mask', (1, 33), (1, 33), (1, 33))
    assert got['stage_1'][1] == ('key_mask', (1, 3), (1, 24), (1, 33))
    t, km = torch.randn(1, 10, 32), torch.arange(10)[None] < 7
    want = build_stages(m, (H, W)).blocks[1](t, km)
    torch.testing.assert_close(progs['stage_1'].module()(t, km), want, rtol=1e-5, atol=1e-5)


def test_fp32_attention_is_the_models_attention():
    """The fp16 recipe's fp32-core attention runs the model's own attention code (vit.attend):
    in fp32 it equals the model's Attention bit for bit, with and without a key mask."""
    from dovit_ros.model.vit import Attention
    torch.manual_seed(0)
    a = Attention(32, 2).eval()
    x = torch.randn(1, 9, 32)
    km = torch.arange(9)[None] < 6
    for mask in (None, km):
        assert torch.equal(FP32Attention(a)(x, mask), a(x, mask))
    h = Attention(32, 2).half().eval()
    h.load_state_dict(a.state_dict())
    y = FP32Attention(h)(x.half(), km)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), a(x, km), rtol=2e-2, atol=2e-2)


def test_fp16_mixed_precision_copy_exports():
    """The fp16 export recipe of the TensorRT backend: fp16 weights, LayerNorm in fp32."""
    m = make_model(small_cfg(class_token=True))
    half = mixed_precision_copy(m, attention_fp32=True)
    assert next(m.parameters()).dtype == torch.float32   # the original is untouched
    lns = [mod for mod in half.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert lns and all(isinstance(ln, FP32LayerNorm) and ln.weight.dtype == torch.float32
                       for ln in lns)
    progs = export_stages(half, example_hw=(H, W))
    t = torch.randn(1, 20, 32)
    got = progs['stage_1'].module()(t.half())
    want = build_stages(m, (H, W)).blocks[1](t)
    assert got[0].dtype == torch.float16
    torch.testing.assert_close(got[0].float(), want[0], rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ torch.compile
@pytest.mark.skipif(not compile_available('cpu')[0], reason=compile_available('cpu')[1])
def test_compile_twenty_token_counts_at_most_two_graphs_per_stage():
    """Inductor (C++) on CPU; a 1-block-per-stage model keeps the compile to ~5 small graphs."""
    cfg = small_cfg(depth=4, decision_points=(1, 2, 3), class_token=True,
                    exit_semantics='predictions')
    m = make_model(cfg)
    run = CompiledRunner(m, CompileOptions(token_mode='dynamic'))
    x = image()
    seen = set()
    for i in range(20):
        k = 1 - i / 21
        p = plan((k, 0.7 * k, 0.5 * k), seed=i)
        out = run(x, FULL, p)
        same_output(out, m(x, FULL, p))
        seen.add(tuple(out.tokens_per_stage[0].tolist()))
    assert len(seen) == 20
    graphs = run.graphs.per_stage
    assert set(graphs) == set(stage_names(m))
    assert all(v <= 2 for v in graphs.values()), graphs
    before = dict(graphs)
    run(x, FULL, plan((0.33, 0.2, 0.1), seed=99))   # after warm-up: nothing new compiles
    assert run.graphs.per_stage == before


@pytest.mark.skipif(not compile_available('cpu')[0], reason=compile_available('cpu')[1])
def test_compile_with_the_refine_decoder_and_its_blocks():
    """The default model's decoder (refine with residual blocks) compiles as its own stage and
    matches eager; graph counting must not test a compiled module's truthiness (its len()
    raises)."""
    cfg = small_cfg(depth=4, decision_points=(1, 2, 3), **REFINE, refine_dims=(8, 8),
                    refine_blocks=(1, 1), refine_strip=(3, 5))
    m = make_model(cfg)
    run = CompiledRunner(m, CompileOptions(token_mode='dynamic'))
    x = image()
    for i, keep in enumerate([(0.6, 0.4, 0.2), (0.5, 0.3, 0.1)]):
        p = plan(keep, seed=i)
        same_output(run(x, FULL, p), m(x, FULL, p))
    assert run.graphs.per_stage.get('refine') == 1, run.graphs.per_stage


def test_compile_options_validation():
    with pytest.raises(ValueError, match='token_mode'):
        CompileOptions(token_mode='static')
    with pytest.raises(ValueError, match="'reduce-overhead'.*buckets"):
        CompileOptions(mode='reduce-overhead')
    with pytest.raises(ValueError, match='buckets'):
        CompileOptions(token_mode='buckets', buckets=0)


# ------------------------------------------------------------------ TensorRT (pure parts)
def test_trt_input_specs_block_profile():
    specs = trt_input_specs('block', [100, 130, 120, 300], 691, 192, 'fp16', low=3, nc=1)
    assert specs == [dict(name='t', min_shape=(1, 3, 192), opt_shape=(1, 128, 192),
                          max_shape=(1, 691, 192), dtype=torch.float16)]
    # median 125 + class token = 126 -> nearest multiple of 8
    assert trt_input_specs('block', None, 691, 192, 'fp32')[0]['opt_shape'] == (1, 691, 192)
    assert trt_input_specs('block', [0, 0], 691, 192, 'fp32')[0]['opt_shape'] == (1, 2, 192)
    assert trt_input_specs('block', [5000], 691, 192, 'fp32')[0]['opt_shape'] == (1, 691, 192)
    dec = trt_input_specs('decoder', [40], 690, 192, 'fp32')[0]
    assert dec['name'] == 'f' and dec['min_shape'] == (1, 2, 192) and dec['dtype'] == torch.float32
    assert dec['opt_shape'] == (1, 40, 192)
    static = trt_input_specs('block', [690], 691, 192, 'fp16', low=691, nc=1)[0]
    assert static['min_shape'] == static['opt_shape'] == static['max_shape'] == (1, 691, 192)


def test_trt_input_specs_embed_and_errors():
    e = trt_input_specs('embed', None, 691, 192, 'fp16', image_hw=(360, 480))
    assert e == [dict(name='x', min_shape=(1, 3, 360, 480), opt_shape=(1, 3, 360, 480),
                      max_shape=(1, 3, 360, 480), dtype=torch.float16)]
    with pytest.raises(ValueError, match='image_hw'):
        trt_input_specs('embed', None, 691, 192, 'fp16')
    with pytest.raises(ValueError, match='stage_kind'):
        trt_input_specs('blocks', None, 691, 192, 'fp16')
    with pytest.raises(ValueError, match='precision'):
        trt_input_specs('block', None, 691, 192, 'int8')
    with pytest.raises(ValueError, match='low'):
        trt_input_specs('block', None, 691, 192, 'fp16', low=1)
    assert opt_tokens([float('nan'), 33], 2, 100) == 32


def test_stage_profiles_and_token_stats_from_metrics():
    m = make_model(small_cfg(class_token=True, exit_semantics='predictions'))
    metrics = {'val': {'miou': 0.5, 'tokens_active': [1.0, 0.5, 0.25, 0.125]}}
    stats = token_stats_from_metrics(metrics, 4, N)
    assert stats == [[32.0], [16.0], [8.0], [4.0]]
    assert token_stats_from_metrics({}, 4, N) == [None] * 4
    assert token_stats_from_metrics({'tokens_active': [1, 2, 0.5, 0.1]}, 4, N)[1] is None
    ev = {'eval': {'camvid/val': {'images': 10, 'results': [
        {'policy': 'threshold', 'threshold': 0.9, 'tokens_active': [1.0, 0.25, 0.25, 0.25]},
        {'policy': 'threshold', 'threshold': 0.95, 'tokens_active': [1.0, 0.75, 0.5, 0.5]}]}}}
    assert token_stats_from_metrics(ev, 4, N)[1] == [8.0]            # no exits given: first
    pick = token_stats_from_metrics(ev, 4, N, ExitConfig('threshold', threshold=0.95))
    assert pick == [[32.0], [24.0], [16.0], [16.0]]
    prof = stage_profiles(m, (H, W), 'fp16', stats)
    assert list(prof) == stage_names(m)
    s0, s1, s3 = prof['stage_0'][0], prof['stage_1'][0], prof['stage_3'][0]
    dec = prof['decoder'][0]
    assert s0['min_shape'] == s0['max_shape'] == (1, 33, 32)      # the first stage sees all
    assert s1['min_shape'] == (1, 3, 32) and s1['opt_shape'] == (1, 16, 32)   # 1 + 16 -> 16
    assert s3['min_shape'] == (1, 2, 32) and s3['max_shape'] == (1, 33, 32)
    assert dec['min_shape'] == (1, 2, 32) and dec['max_shape'] == (1, 32, 32)
    feats = stage_profiles(make_model(small_cfg()), (H, W), 'fp32')['decoder'][0]
    assert feats['min_shape'] == feats['max_shape'] == (1, 32, 32)   # decodes every token


def test_engine_cache_key_and_paths(tmp_path, monkeypatch):
    specs = trt_input_specs('block', [100], 691, 192, 'fp16', low=3, nc=1)
    v = {'tensorrt': '10.3.0', 'torch_tensorrt': '2.8.0', 'torch': '2.8.0'}
    base = engine_cache_key('ab' * 32, 'stage_1', specs, 'fp16', 'Orin sm_87', v)
    assert len(base) == 64
    assert base == engine_cache_key('ab' * 32, 'stage_1', specs, 'fp16', 'Orin sm_87', dict(v))
    changed = [
        engine_cache_key('cd' * 32, 'stage_1', specs, 'fp16', 'Orin sm_87', v),
        engine_cache_key('ab' * 32, 'stage_2', specs, 'fp16', 'Orin sm_87', v),
        engine_cache_key('ab' * 32, 'stage_1', trt_input_specs('block', [200], 691, 192, 'fp16',
                                                               low=3, nc=1),
                         'fp16', 'Orin sm_87', v),
        engine_cache_key('ab' * 32, 'stage_1', specs, 'fp16-attn32', 'Orin sm_87', v),
        engine_cache_key('ab' * 32, 'stage_1', specs, 'fp16', 'RTX 4090 sm_89', v),
        engine_cache_key('ab' * 32, 'stage_1', specs, 'fp16', 'Orin sm_87',
                         {**v, 'tensorrt': '10.3.1'}),
        engine_cache_key('ab' * 32, 'stage_1', specs, 'fp16', 'Orin sm_87',
                         {**v, 'torch_tensorrt': '2.9.0'}),
    ]
    assert len(set(changed + [base])) == len(changed) + 1
    eng, side = engine_cache_paths(tmp_path, 'ab' * 32, 'stage_1', base)
    assert eng.parent == side.parent == tmp_path / ('ab' * 8)
    assert eng.name == f'stage_1-{base[:16]}.engine' and side.suffix == '.json'
    monkeypatch.delenv('DOVIT_ENGINE_CACHE', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert engine_cache_dir() == tmp_path / 'dovit_ros' / 'engines'
    monkeypatch.setenv('DOVIT_ENGINE_CACHE', str(tmp_path / 'mine'))
    assert engine_cache_dir() == tmp_path / 'mine'
    assert engine_cache_dir(tmp_path / 'given') == tmp_path / 'given'


def test_fp16_precision_choice():
    a = torch.zeros(100, 100, dtype=torch.long)
    b = a.clone()
    b[0, :50] = 1
    assert label_disagreement(a, b) == 0.005
    with pytest.raises(ValueError, match='shape'):
        label_disagreement(a, b[:10])
    assert choose_precision({'fp16': 0.005}) == 'fp16'
    assert choose_precision({'fp16': 0.02, 'fp16-attn32': 0.001}) == 'fp16-attn32'
    assert choose_precision({'fp16': 0.02, 'fp16-attn32': 0.006}) == 'fp32'
    assert choose_precision({}) == 'fp32'
    assert FP16_MAX_DISAGREEMENT == 0.005


# ------------------------------------------------------------------ make_runner
def test_make_runner_tensorrt_unavailable_names_what_is_missing():
    ok, why = tensorrt_available()
    if ok:
        pytest.skip('torch_tensorrt and CUDA are available here')
    m = make_model(small_cfg())
    for device in ('cpu', 'cuda'):
        with pytest.raises(BackendUnavailable) as e:
            make_runner(m, 'tensorrt', device=device, image_hw=(H, W), model_hash='0' * 64)
        msg = str(e.value)
        assert msg.startswith("backend 'tensorrt' needs ") and msg.count('.') >= 1
        if not torch.cuda.is_available():
            assert 'CUDA' in msg
        try:
            import torch_tensorrt  # noqa: F401
        except Exception:  # noqa: BLE001
            assert 'torch_tensorrt' in msg


def test_make_runner_choices():
    m = make_model(small_cfg())
    with pytest.raises(ValueError, match='backend must be one of'):
        make_runner(m, 'onnx')
    with pytest.raises(ValueError, match='precision'):
        make_runner(m, 'eager', precision='int8')
    run, info = make_runner(m, 'eager')
    assert run is m and info['backend'] == 'eager'
    run, info = make_runner(m, 'auto', device='cpu')
    assert info['backend'] == 'eager' and 'CPU' in info['reason']
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match='CUDA is not available'):
            make_runner(m, 'compile', device='cuda')
    if compile_available('cpu')[0]:
        run, info = make_runner(m, 'compile', token_mode='buckets', buckets=3)
        assert isinstance(run, CompiledRunner) and info['token_mode'] == 'buckets'


# ------------------------------------------------------------------ memory budget
@pytest.mark.parametrize('variant', [{}, {'conv_stem': True}, {'class_token': True},
                                     {'qkv_bias': False},
                                     {'conv_stem': True, 'decoder': 'refine'}])
def test_param_count_matches_module(variant):
    cfg = small_cfg(**variant)
    m = DoViTSegmenter(cfg)
    real = sum(p.numel() for p in m.parameters()) + sum(
        b.numel() for b in m.buffers() if b.is_floating_point())
    assert param_count(cfg) == real


def test_memory_budget_scales():
    cfg = ViTConfig.preset('tiny', num_classes=11, img_size=(360, 480), conv_stem=True)
    b32, b16 = memory_budget(cfg, 360, 480, 4), memory_budget(cfg, 360, 480, 2)
    assert b32.param_bytes == 2 * b16.param_bytes == 4 * param_count(cfg)
    assert b32.tokens == 23 * 30
    assert b32.peak_activation_bytes == max(v for k, v in b32.phases.items()
                                            if k != 'attn_unfused')
    big = memory_budget(cfg, 720, 960, 4)
    assert big.phases['attn_unfused'] > 10 * b32.phases['attn_unfused']   # n^2 grows 16x


# ------------------------------------------------------------------ TensorRT build logic
class FakeTRT:
    """A stand-in torch_tensorrt for the build / cache / precision logic on CPU, mirroring the
    parts of the real API that the backend relies on:
    - `dynamo.compile(program, arg_inputs=...)` takes each engine's profile from the program
      itself, as Torch-TensorRT's partitioner does: min/max from its range constraints, opt
      from the example it was traced with (the `Input`s passed beside it do not set it);
    - engine input bindings are named after the program's user-input placeholders, outputs
      'output0', 'output1', ...;
    - `TorchTensorRTModule` fails on binding names other than the engine's, and a running
      engine rejects inputs outside its profile or of another dtype, as TensorRT does.
    'Engines' are the exported programs, kept in a registry under the bytes that stand for
    them."""

    def __init__(self):
        import types
        self.registry, self.compiled = {}, []
        fake = self

        class Input:
            def __init__(self, *args, **kw):
                dyn = [k for k in ('min_shape', 'opt_shape', 'max_shape') if k in kw]
                if args or 'shape' in kw:
                    assert not dyn, 'shape and min/opt/max_shape are exclusive'
                else:
                    assert len(dyn) == 3, 'min_shape, opt_shape and max_shape all needed'
                self.kw = kw

        class CompilationSettings:
            def __init__(self, device=None):
                self.device = device

        class Engine(torch.nn.Module):   # what compile puts in the graph module
            def __init__(self, blob, inputs, outputs):
                super().__init__()
                self.serialized_engine = blob
                self.input_binding_names, self.output_binding_names = inputs, outputs

        class TorchTensorRTModule:
            def __init__(self, serialized_engine, input_binding_names, output_binding_names,
                         name='', settings=None):
                e = fake.registry[bytes(serialized_engine)]
                if list(input_binding_names) != e['inputs'] or \
                        list(output_binding_names) != e['outputs']:
                    raise RuntimeError(f'no binding named {input_binding_names} / '
                                       f'{output_binding_names} in engine {e["inputs"]} / '
                                       f'{e["outputs"]}')
                assert name
                self.e = e

            def __call__(self, *args):
                e = self.e
                assert len(args) == len(e['profile']), 'wrong number of engine inputs'
                for a, (lo, hi, dt) in zip(args, e['profile']):
                    if a.dtype != dt or len(a.shape) != len(lo) or not all(
                            lo_ <= d <= hi_ for lo_, d, hi_ in zip(lo, a.shape, hi)):
                        raise RuntimeError(f'input {tuple(a.shape)} {a.dtype} outside the '
                                           f'engine profile {lo}..{hi} {dt}')
                fake.calls.append(e['stage_hint'])
                return e['run'](*args)

        def profile(program):
            """(min, opt, max, dtype) per user input: ranges from range_constraints, opt from
            the traced example."""
            from torch.export.graph_signature import InputKind
            names = [sp.arg.name for sp in program.graph_signature.input_specs
                     if sp.kind == InputKind.USER_INPUT]
            nodes = {n.name: n for n in program.graph.nodes if n.op == 'placeholder'}
            rng = {str(k): v for k, v in program.range_constraints.items()}
            examples = program.example_inputs[0]
            out = []
            for name, ex in zip(names, examples):
                val = nodes[name].meta['val']
                lo = tuple(int(rng[str(d)].lower) if isinstance(d, torch.SymInt) else int(d)
                           for d in val.shape)
                hi = tuple(int(rng[str(d)].upper) if isinstance(d, torch.SymInt) else int(d)
                           for d in val.shape)
                out.append((lo, tuple(ex.shape), hi, val.dtype))
            return names, out

        def compile(exported_program, inputs=None, *, arg_inputs=None, device=None,
                    require_full_compilation=False, min_block_size=5, use_explicit_typing=False,
                    enabled_precisions=None, use_fp32_acc=False, immutable_weights=False,
                    cache_built_engines=False, reuse_cached_engines=False):
            assert require_full_compilation and use_explicit_typing and immutable_weights
            names, prof = profile(exported_program)
            n_out = len(exported_program.graph_signature.user_outputs)
            blob = f'engine-{len(fake.registry)}'.encode()
            fake.registry[blob] = dict(
                run=exported_program.module(), inputs=names,
                outputs=[f'output{i}' for i in range(n_out)],
                profile=[(lo, hi, dt) for lo, _, hi, dt in prof], stage_hint=tuple(names))
            fake.compiled.append(dict(dtype=prof[0][3], fp32_acc=use_fp32_acc, inputs=names,
                                      profile=[(lo, opt, hi) for lo, opt, hi, _ in prof]))
            gm = torch.nn.Module()
            gm._run_on_acc_0 = Engine(blob, names, fake.registry[blob]['outputs'])
            return gm

        self.calls = []
        self.torch_tensorrt = types.ModuleType('torch_tensorrt')
        self.torch_tensorrt.__version__ = '2.8.0'
        self.torch_tensorrt.Input, self.torch_tensorrt.Device = Input, str
        self.dynamo = types.ModuleType('torch_tensorrt.dynamo')
        self.dynamo.compile, self.dynamo.CompilationSettings = compile, CompilationSettings
        self.runtime = types.ModuleType('torch_tensorrt.dynamo.runtime')
        self.runtime.TorchTensorRTModule = TorchTensorRTModule
        self.torch_tensorrt.dynamo, self.dynamo.runtime = self.dynamo, self.runtime
        self.tensorrt = types.ModuleType('tensorrt')
        self.tensorrt.__version__ = '10.3.0'

    def install(self, monkeypatch, gpu: bool = False):
        """Make torch_tensorrt importable; gpu=True also lets the backend's availability check
        pass on this CPU (the engines run on CPU)."""
        import sys
        from dovit_ros.runtime import backends
        from dovit_ros.runtime.backends import tensorrt as trt_backend
        for name, mod in (('torch_tensorrt', self.torch_tensorrt), ('tensorrt', self.tensorrt),
                          ('torch_tensorrt.dynamo', self.dynamo),
                          ('torch_tensorrt.dynamo.runtime', self.runtime)):
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setattr(trt_backend, 'gpu_name', lambda dev: 'Fake GPU sm_87')
        if gpu:
            monkeypatch.setattr(backends, 'tensorrt_missing', lambda dev: [])
        return trt_backend


@pytest.mark.parametrize('variant', [{'class_token': True}, REFINE])
def test_engine_build_cache_and_fp16_fallback(variant, tmp_path, monkeypatch):
    fake = FakeTRT()
    trt = fake.install(monkeypatch)
    m = make_model(small_cfg(**variant))
    x, dev = image(), torch.device('cpu')
    stats = [[32], [20], [12], [8]]
    stages, build = trt._build_all(m, 'ab' * 32, (H, W), 'fp32', dev, stats, None, FULL,
                                   tmp_path)
    names = stage_names(m)
    assert ('refine' in names) == ('decoder' in variant)
    assert build.precision == 'fp32' and len(build.built_s) == len(names) and not build.cached
    assert len(list((tmp_path / ('ab' * 8)).glob('*.engine'))) == len(names)
    # per-stage binding names, from the programs: what the sidecars store and the loads check
    side = {p.name.split('-')[0]: json.loads(p.read_text())
            for p in (tmp_path / ('ab' * 8)).glob('*.json')}
    assert side['embed']['inputs'] == ['x'] and side['decoder']['inputs'] == ['f']
    assert side['stage_1']['inputs'] == ['t']
    assert side['stage_1']['outputs'] == ['output0', 'output1']
    skips = ['output1', 'output2'] if 'decoder' in variant else []
    assert side['embed']['outputs'] == ['output0'] + skips
    if 'decoder' in variant:
        assert side['refine']['inputs'] == ['g', 's4', 's8']
    p = plan((0.5, 0.3, 0.2))
    fake.calls.clear()
    same_output(StagedRunner(m, stages)(x, FULL, p), m(x, FULL, p))
    assert fake.calls.count(('t',)) == 4 and (('g', 's4', 's8') in fake.calls) == \
        ('decoder' in variant)   # every block stage, and the refine decoder, ran as an engine
    ex = ExitConfig('threshold', threshold=0.6)
    same_output(StagedRunner(m, stages)(x, ex), m(x, ex))
    # a second start reuses every engine; a changed profile rebuilds only what it touches
    _, again = trt._build_all(m, 'ab' * 32, (H, W), 'fp32', dev, stats, None, FULL, tmp_path)
    assert not again.built_s and len(again.cached) == len(names)
    _, other = trt._build_all(m, 'ab' * 32, (H, W), 'fp32', dev, [[32], [20], [12], [30]],
                              None, FULL, tmp_path)
    assert list(other.built_s) == ['fp32/stage_3']
    side = next((tmp_path / ('ab' * 8)).glob('stage_1-*.json'))
    side.write_text('{"key": "stale"')   # damaged sidecar: rebuilt, not trusted
    _, fixed = trt._build_all(m, 'ab' * 32, (H, W), 'fp32', dev, stats, None, FULL, tmp_path)
    assert list(fixed.built_s) == ['fp32/stage_1']
    # fp16: kept when its labels agree with fp32 on the check image ...
    fake.compiled.clear()
    stages16, b16 = trt._build_all(m, 'ab' * 32, (H, W), 'fp16', dev, stats, x, FULL, tmp_path)
    assert b16.precision == 'fp16' and b16.disagreement['fp16'] <= FP16_MAX_DISAGREEMENT
    assert {(c['dtype'], c['fp32_acc']) for c in fake.compiled} == {(torch.float16, True)}
    out16 = StagedRunner(m, stages16)(x, FULL, p)
    assert out16.logits.dtype == torch.float32
    # ... and fp32 is used when fp16 and fp16 with fp32 attention both change too many labels
    monkeypatch.setattr(trt, 'label_disagreement', lambda a, b: 0.02)
    _, bad = trt._build_all(m, 'ab' * 32, (H, W), 'fp16', dev, stats, x, FULL, tmp_path)
    assert bad.precision == 'fp32' and set(bad.disagreement) == {'fp16', 'fp16-attn32'}


def test_engine_profiles_come_from_the_programs(tmp_path, monkeypatch):
    """The profile each engine gets is the one the exported program carries: stage 0 static at
    every token, later stages min..full with opt at the median kept count; a program traced
    the old way (stage 0 dynamic, example at full // 2 + 1) is refused before any build."""
    fake = FakeTRT()
    trt = fake.install(monkeypatch)
    m = make_model(small_cfg(class_token=True))
    trt._build_all(m, 'cd' * 32, (H, W), 'fp32', torch.device('cpu'),
                   [[32], [20], [12], [8]], None, FULL, tmp_path)
    prof = {tuple(c['inputs']): [] for c in fake.compiled}
    blocks = [c['profile'][0] for c in fake.compiled if c['inputs'] == ['t']]
    assert blocks == [((1, 33, 32), (1, 33, 32), (1, 33, 32)),     # stage 0: every token
                      ((1, 3, 32), (1, 24, 32), (1, 33, 32)),      # 1 + 20 -> 24 (x8)
                      ((1, 3, 32), (1, 16, 32), (1, 33, 32)),
                      ((1, 2, 32), (1, 8, 32), (1, 33, 32))]
    dec = [c['profile'][0] for c in fake.compiled if c['inputs'] == ['f']]
    assert dec == [((1, 32, 32), (1, 32, 32), (1, 32, 32))] and ('x',) in prof
    old = torch.export.export(build_stages(m, (H, W)).blocks[0], (torch.zeros(1, 17, 32),),
                              dynamic_shapes=({1: torch.export.Dim('n', min=3, max=33)},))
    specs = stage_profiles(m, (H, W), 'fp32', [[32], [20], [12], [8]])['stage_0']
    with pytest.raises(trt.ProfileMismatch, match='not the intended'):
        trt._build_engine(old, specs, 'fp32', torch.device('cpu'))
    # an engine refuses what its profile excludes (the stage-0 engine: fewer tokens)
    stages, _ = trt._build_all(m, 'cd' * 32, (H, W), 'fp32', torch.device('cpu'),
                               [[32], [20], [12], [8]], None, FULL, tmp_path)
    with pytest.raises(RuntimeError, match='outside the engine profile'):
        stages.blocks[0](torch.zeros(1, 20, 32))
    # binding names are per engine: loading the embed engine with a block's names fails
    side = next((tmp_path / ('cd' * 8)).glob('embed-*.json'))
    meta = json.loads(side.read_text())
    with pytest.raises(RuntimeError, match='no binding named'):
        trt._load_engine(side.with_suffix('.engine'), {**meta, 'inputs': ['t']},
                         torch.device('cpu'))


def test_tensorrt_runner_builds_per_image_size_and_checks_fp16_on_a_real_frame(
        tmp_path, monkeypatch):
    fake = FakeTRT()
    trt = fake.install(monkeypatch)
    m = make_model(small_cfg(**REFINE))
    run = trt.TensorRTRunner(m, 'ef' * 32, 'fp16', torch.device('cpu'), tmp_path,
                             exits=ExitConfig('threshold', threshold=0.6))
    assert run.needs_real_frame((H, W))   # no check image: a warm-up must not trigger it
    checked = []
    real = trt.label_disagreement
    monkeypatch.setattr(trt, 'label_disagreement',
                        lambda a, b: checked.append(a.shape) or real(a, b))
    ex = ExitConfig('threshold', threshold=0.6)
    for hw in [(H, W), (70, 130), (H, W)]:   # a second camera size, then the first again
        x = image(5, *hw)
        same_output(run(x, ex), m(x, ex), tol=dict(rtol=5e-2, atol=5e-2))
    assert set(run.builds) == {(H, W), (70, 130)} and not run.needs_real_frame((70, 130))
    assert checked[0] == (H, W) and (70, 130) in checked   # each size checked on its frame
    fixed = trt.TensorRTRunner(m, 'ef' * 32, 'fp32', torch.device('cpu'), tmp_path)
    assert not fixed.needs_real_frame((H, W))
    boom = trt.TensorRTRunner(m, 'ef' * 32, 'fp32', torch.device('cpu'), tmp_path)
    monkeypatch.setattr(trt, '_build_set', lambda *a: 1 / 0)
    for _ in range(2):   # a size whose build failed fails fast, with the reason
        with pytest.raises((ZeroDivisionError, RuntimeError), match='division|failed'):
            boom(image(1, 48, 48), ex)
    assert list(boom.failed) == [(48, 48)] and 'ZeroDivisionError' in boom.failed[(48, 48)]


def test_make_runner_tensorrt_without_model_path_or_size(tmp_path, monkeypatch):
    """dovit-bench's call (preset weights, no model directory) reaches the build: the cache is
    keyed by the weights themselves; with image_hw and fp32 the engines are built at once."""
    fake = FakeTRT()
    fake.install(monkeypatch, gpu=True)
    m = make_model(small_cfg())
    run, info = make_runner(m, 'tensorrt', 'cpu', 'fp32', image_hw=(H, W), cache_dir=tmp_path)
    assert info['model_hash'] == weights_hash(m) and info['engine_precision'] == 'fp32'
    assert (H, W) in info['builds'] and fake.compiled
    m2 = make_model(small_cfg(), seed=1)
    assert weights_hash(m2) != weights_hash(m)
    x, p = image(), plan((0.5, 0.3, 0.2))
    same_output(run(x, FULL, p), m(x, FULL, p))
    _, info16 = make_runner(m, 'tensorrt', 'cpu', 'fp16', image_hw=(H, W), cache_dir=tmp_path)
    assert 'engine_precision' not in info16 and not info16['builds']   # waits for a frame
    with pytest.raises(ValueError, match='bf16'):
        make_runner(m, 'tensorrt', 'cpu', 'bf16')


def test_bench_tensorrt_reaches_the_engines(tmp_path, monkeypatch, capsys):
    """`dovit-bench --backend tensorrt`: only the missing GPU stops it (one sentence), and with
    a GPU (the stand-in here) it times engines."""
    from dovit_ros.cli import bench
    fake = FakeTRT()
    fake.install(monkeypatch)
    args = ['--preset', 'tiny', '--height', '64', '--width', '128', '--runs', '1', '--warmup',
            '0', '--backend', 'tensorrt', '--json']
    if not torch.cuda.is_available():
        assert bench.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("dovit-bench: backend 'tensorrt' needs a CUDA GPU (CUDA is not "
                       "available here).")
    fake.install(monkeypatch, gpu=True)
    monkeypatch.setenv('DOVIT_ENGINE_CACHE', str(tmp_path))
    assert bench.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r['backend'] == 'tensorrt' and r['full_ms'] > 0 and fake.compiled
    # with --model, engines are keyed by the model directory, as the node keys them
    import cv2
    import numpy as np
    from dovit_ros.runtime.artifacts import model_hash
    d = model_dir(tmp_path / 'm')
    img = tmp_path / 'frame.png'
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8))
    assert bench.main(['--model', str(d), '--image', str(img), '--runs', '1', '--warmup', '0',
                       '--backend', 'tensorrt', '--threshold', '0.6', '--json']) == 0
    assert (tmp_path / model_hash(d)[:16]).is_dir()


def model_dir(path, input_size=(H, W)):
    from dovit_ros.data.classes import ClassInfo
    from dovit_ros.runtime.artifacts import ModelMeta, save_model_dir
    m = make_model(small_cfg())
    classes = ClassInfo(tuple(f'c{i}' for i in range(K)), tuple((i, i, i) for i in range(K)))
    save_model_dir(path, m, ModelMeta(architecture=m.cfg, classes=classes,
                                      input_size=input_size))
    return path


def test_node_make_pipeline_tensorrt_fp16_starts(tmp_path, monkeypatch):
    """segment_node's make_pipeline with backend tensorrt, precision fp16: starts (engines are
    built on the first frame, which checks fp16), and only the missing GPU stops it here."""
    pytest.importorskip('rclpy')
    import logging
    from dovit_ros.ros.startup import make_pipeline
    model_dir(tmp_path / 'm')
    log = logging.getLogger('test')
    fake = FakeTRT()
    fake.install(monkeypatch)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match=r"^backend 'tensorrt' needs a CUDA GPU"):
            make_pipeline(tmp_path / 'm', 'tensorrt', 'cpu', 'fp16', log)
    fake.install(monkeypatch, gpu=True)
    monkeypatch.setenv('DOVIT_ENGINE_CACHE', str(tmp_path / 'cache'))
    pipe, used = make_pipeline(tmp_path / 'm', 'tensorrt', 'cpu', 'fp16', log)
    assert used == 'tensorrt' and not fake.compiled
    assert pipe.warmup() is False and not fake.compiled   # no build on a synthetic image
    import numpy as np
    rgb = np.random.default_rng(0).integers(0, 255, (H + 6, W - 10, 3), dtype=np.uint8)
    res = pipe.infer(rgb)   # a camera at another size than the model's: built for it
    assert res.labels.shape == (H + 6, W - 10) and fake.compiled
    assert set(pipe.runner.builds) == {(H + 6, W - 10)}


def test_build_engines_checks_before_building(monkeypatch):
    m = make_model(small_cfg())
    with pytest.raises(RuntimeError, match='TensorRT backend unavailable'):
        from dovit_ros.runtime.backends.tensorrt import build_engines
        build_engines(m, '0' * 64, (H, W), 'fp32', 'cpu')


# ------------------------------------------------------------------ failed frames
def test_frame_failures_counted_and_said_once_per_run():
    from dovit_ros.runtime.failures import FrameFailures
    f = FrameFailures(limit=3)
    err = ValueError('this runner was built for 64x128 images, got 70x130')
    assert f.failed(err) is None and f.failed(err) is None and not f.stuck
    msg = f.failed(err)
    assert f.stuck and msg.startswith('the last 3 frames all failed') and '70x130' in msg
    assert f.failed(err) is None   # said once per run, not on every frame
    assert f.report() == {'frames failed': '4', 'frames failed in a row': '4',
                          'last failure': f'ValueError: {err}'}
    f.ok()
    assert not f.stuck and f.report()['frames failed'] == '4'
    assert [f.failed(err) for _ in range(3)][-1] is not None   # a new run is said again
    with pytest.raises(ValueError, match='limit'):
        FrameFailures(limit=0)
