"""Backends: stage split, torch.export with a symbolic token count, torch.compile graph counts,
TensorRT shape profiles / cache keys / precision choice (pure parts; no GPU here), make_runner.
"""
import pytest
import torch

from dovit_ros.model import FULL, DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.model.plans import coherent_plan
from dovit_ros.runtime.backends import BackendUnavailable, make_runner
from dovit_ros.runtime.backends.compile import CompiledRunner, CompileOptions, compile_available
from dovit_ros.runtime.backends.export import export_stages, stage_names
from dovit_ros.model import segmenter_flops
from dovit_ros.runtime.backends.memory import memory_budget, param_count
from dovit_ros.runtime.backends.stages import (StagedRunner, bucket_sizes, build_stages,
                                               min_tokens, pad_tokens)
from dovit_ros.runtime.backends.tensorrt import (FP16_MAX_DISAGREEMENT, FP32LayerNorm,
                                                 choose_precision, engine_cache_dir,
                                                 engine_cache_key, engine_cache_paths,
                                                 label_disagreement, mixed_precision_copy,
                                                 opt_tokens, stage_profiles, tensorrt_available,
                                                 token_stats_from_metrics, trt_input_specs)

K = 5
H, W = 64, 128            # a 4 x 8 token grid
N = 32
TOL = dict(rtol=1e-4, atol=1e-4)


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
@pytest.mark.parametrize('preset', ['tiny', 'small', 'base'])
def test_export_stages_match_eager(preset, tmp_path):
    extra = {'class_token': True, 'conv_stem': True} if preset == 'tiny' else {}
    cfg = ViTConfig.preset(preset, num_classes=K, img_size=(H, W), **extra)
    m = make_model(cfg)
    progs = export_stages(m, tmp_path if preset == 'tiny' else None, example_hw=(H, W))
    assert list(progs) == stage_names(m)
    eager = build_stages(m, (H, W))
    x = image()
    torch.testing.assert_close(progs['embed'].module()(x), eager.embed(x), rtol=1e-5, atol=1e-5)
    nc = int(cfg.class_token)
    gen = torch.Generator().manual_seed(0)
    for s in range(cfg.num_stages):
        low = min_tokens(m, s)
        for n in (low, 17, nc + N):   # three different kept counts, both ends included
            t = torch.randn(1, n, cfg.dim, generator=gen)
            got, want = progs[f'stage_{s}'].module()(t), eager.blocks[s](t)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for n in (2, 11, N):
        f = torch.randn(1, n, cfg.dim, generator=gen)
        torch.testing.assert_close(progs['decoder'].module()(f), eager.decoder(f),
                                   rtol=1e-5, atol=1e-5)
    ranges = {name: [(int(r.lower), int(r.upper)) for r in ep.range_constraints.values()]
              for name, ep in progs.items()}   # one symbolic token count per program
    assert ranges == {'embed': [], **{f'stage_{s}': [(min_tokens(m, s), nc + N)]
                                      for s in range(cfg.num_stages)}, 'decoder': [(2, N)]}
    if preset == 'tiny':
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            f'{n}.pt2' for n in stage_names(m))


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
    """A stand-in torch_tensorrt for the build / cache / precision logic on CPU: 'engines' are
    the exported programs, kept in a registry under the bytes that stand for them."""

    def __init__(self):
        import types
        self.registry, self.compiled = {}, []
        fake = self

        class Input:
            def __init__(self, **kw):
                self.kw = kw

        class CompilationSettings:
            def __init__(self, device=None):
                self.device = device

        class Engine(torch.nn.Module):   # what compile puts in the graph module
            def __init__(self, blob):
                super().__init__()
                self.serialized_engine = blob
                self.input_binding_names, self.output_binding_names = ['t'], ['output0']

        class TorchTensorRTModule:
            def __init__(self, serialized_engine, input_binding_names, output_binding_names,
                         name='', settings=None):
                self.run = fake.registry[bytes(serialized_engine)]
                assert input_binding_names == ['t'] and name

            def __call__(self, *args):
                return self.run(*args)

        def compile(exported_program, inputs=None, *, arg_inputs=None, device=None,
                    require_full_compilation=False, min_block_size=5, use_explicit_typing=False,
                    enabled_precisions=None, use_fp32_acc=False, immutable_weights=False,
                    cache_built_engines=False, reuse_cached_engines=False):
            assert require_full_compilation and use_explicit_typing and immutable_weights
            spec = arg_inputs[0].kw
            assert spec['min_shape'][1] <= spec['opt_shape'][1] <= spec['max_shape'][1]
            blob = f'engine-{len(fake.registry)}'.encode()
            fake.registry[blob] = exported_program.module()
            fake.compiled.append((spec['dtype'], use_fp32_acc))
            gm = torch.nn.Module()
            gm._run_on_acc_0 = Engine(blob)
            return gm

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

    def install(self, monkeypatch):
        import sys
        from dovit_ros.runtime.backends import tensorrt as trt_backend
        for name, mod in (('torch_tensorrt', self.torch_tensorrt), ('tensorrt', self.tensorrt),
                          ('torch_tensorrt.dynamo', self.dynamo),
                          ('torch_tensorrt.dynamo.runtime', self.runtime)):
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setattr(trt_backend, 'gpu_name', lambda dev: 'Fake GPU sm_87')
        return trt_backend


def test_engine_build_cache_and_fp16_fallback(tmp_path, monkeypatch):
    fake = FakeTRT()
    trt = fake.install(monkeypatch)
    m = make_model(small_cfg(class_token=True))
    x, dev = image(), torch.device('cpu')
    stats = [[32], [20], [12], [8]]
    stages, build = trt._build_all(m, 'ab' * 32, (H, W), 'fp32', dev, stats, None, FULL,
                                   tmp_path)
    n_stages = len(stage_names(m))
    assert build.precision == 'fp32' and len(build.built_s) == n_stages and not build.cached
    assert len(list((tmp_path / ('ab' * 8)).glob('*.engine'))) == n_stages
    p = plan((0.5, 0.3, 0.2))
    same_output(StagedRunner(m, stages)(x, FULL, p), m(x, FULL, p))
    # a second start reuses every engine; a changed profile rebuilds only what it touches
    _, again = trt._build_all(m, 'ab' * 32, (H, W), 'fp32', dev, stats, None, FULL, tmp_path)
    assert not again.built_s and len(again.cached) == n_stages
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
    assert set(fake.compiled) == {(torch.float16, True)}   # fp16 inputs, fp32 accumulation
    out16 = StagedRunner(m, stages16)(x, FULL, p)
    assert out16.logits.dtype == torch.float32
    # ... and fp32 is used when fp16 and fp16 with fp32 attention both change too many labels
    monkeypatch.setattr(trt, 'label_disagreement', lambda a, b: 0.02)
    _, bad = trt._build_all(m, 'ab' * 32, (H, W), 'fp16', dev, stats, x, FULL, tmp_path)
    assert bad.precision == 'fp32' and set(bad.disagreement) == {'fp16', 'fp16-attn32'}


def test_build_engines_checks_before_building(monkeypatch):
    m = make_model(small_cfg())
    with pytest.raises(RuntimeError, match='TensorRT backend unavailable'):
        from dovit_ros.runtime.backends.tensorrt import build_engines
        build_engines(m, '0' * 64, (H, W), 'fp32', 'cpu')
