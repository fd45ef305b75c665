"""TensorRT backend (Torch-TensorRT): one engine per stage, built from the torch.export programs
with a dynamic token profile; the exit bookkeeping between engines stays in eager PyTorch.

Why the data-dependent work stays outside the engines: with Torch-TensorRT 2.8 / TensorRT 10.3
the index / index_put converters lacked dynamic-shape support (pytorch/TensorRT#3647; added
only in 2026, #4143), scatter had static shapes only (#4050), and nonzero-style ops have
data-dependent output sizes, which need TensorRT's output allocator and rule out CUDA graphs.
Each block-stage engine therefore has one input whose token axis is a (min, opt, max) profile:
min 2 (3 with a class token before an aux head, see stages.min_tokens), max the full count,
opt the median kept count of that stage measured on validation data (model.yaml
metrics.tokens_active), so the kernels are tuned for the typical frame; the embedding, the
first stage, a 'features' decoder and the refine decoder are static. Torch-TensorRT takes these
profiles from the exported programs (profiles.py), which are traced to carry them and checked
before each build.

Engines exist per image size: TensorRTRunner builds them on the first frame of each size the
stream sends (from the disk cache after the first time); in fp16 that frame is the real image
the fp16 engines are checked on.

Precision: 'fp32', or 'fp16' built with explicit typing: weights and activations fp16,
LayerNorm computed in fp32 (cast in the graph, fp32 weights), matmuls accumulating in fp32
(use_fp32_acc), optionally the attention core in fp32 too. The fp16 engines are accepted only if
their labels on a real image differ from the fp32 engines' on <= 0.5 % of pixels (TensorRT 10.3
has a known FP16 accuracy failure on ViT segmentation, NVIDIA/TensorRT#4723); otherwise fp16
with fp32 attention is tried, then fp32 is used.

Engines are cached on disk, pickle-free: the raw serialized engine plus a JSON sidecar (binding
names, profile), keyed by the model hash, GPU, TensorRT / Torch-TensorRT / torch versions and
the shape profile, in ~/.cache/dovit_ros/engines (DOVIT_ENGINE_CACHE or `cache_dir` overrides).
Only this module imports torch_tensorrt, lazily; everything up to the build is unit-tested on CPU.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...model import FULL, DoViTSegmenter, ExitConfig
from ..artifacts import atomic_write_bytes
from .engine_cache import (_spec_json, engine_cache_dir, engine_cache_key, engine_cache_paths,
                           gpu_name, runtime_versions)
from .export import export_stages
from .profiles import (DTYPES, PRECISIONS, opt_tokens, program_profile, same_profile,
                       stage_names, stage_profiles, token_stats_from_metrics, trt_input_specs)
from .stages import StagedRunner, StageSet, full_tokens
from .trt_precision import (FP16_MAX_DISAGREEMENT, choose_precision, label_disagreement,
                            mixed_precision_copy)

log = logging.getLogger(__name__)


def tensorrt_missing(device: str | torch.device = 'cuda') -> list[str]:
    """What the TensorRT backend lacks here, as phrases; empty when it can run."""
    missing = []
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError from missing TensorRT libs
        missing.append(f'the torch_tensorrt package (import failed: {type(e).__name__}; '
                       f'install the `tensorrt` extra, or the JetPack wheel on Jetson)')
    dev = torch.device(device)
    if not torch.cuda.is_available():
        missing.append('a CUDA GPU (CUDA is not available here)')
    elif dev.type != 'cuda':
        missing.append(f'a CUDA device (asked for {dev})')
    return missing


def tensorrt_available(device: str | torch.device = 'cuda') -> tuple[bool, str]:
    """(usable, reason) for building and running Torch-TensorRT engines on `device`."""
    missing = tensorrt_missing(device)
    if missing:
        return False, 'needs ' + ' and '.join(missing)
    import torch_tensorrt
    return True, f'torch_tensorrt {torch_tensorrt.__version__}'


# ------------------------------------------------------------------ build and load
@dataclass
class EngineBuild:
    """What build_engines did, for the runner's info dict."""
    precision: str
    engines: dict[str, str] = field(default_factory=dict)     # stage -> engine file
    built_s: dict[str, float] = field(default_factory=dict)   # stage -> seconds (fresh builds)
    cached: list[str] = field(default_factory=list)
    disagreement: dict[str, float] = field(default_factory=dict)


class _Engine:
    """A stage engine behind the stage-callable interface: casts the input to the engine's
    dtype and the outputs back."""

    def __init__(self, module, dtype: torch.dtype):
        self.module, self.dtype = module, dtype

    def __call__(self, *args: torch.Tensor):
        dt = args[0].dtype
        out = self.module(*(a if a.dtype == torch.bool else a.to(self.dtype).contiguous()
                            for a in args))
        if isinstance(out, (tuple, list)):
            return tuple(o.to(dt) for o in out)
        return out.to(dt)


def _compile_kwargs(fn, precision: str, device: torch.device) -> dict:
    """Keyword arguments of torch_tensorrt.dynamo.compile for a precision recipe, keeping
    only those this Torch-TensorRT version knows (2.8 and later)."""
    kw = dict(device=device, require_full_compilation=True, min_block_size=1,
              use_explicit_typing=True, enabled_precisions={torch.float32},
              use_fp32_acc=precision != 'fp32', immutable_weights=True,
              cache_built_engines=False, reuse_cached_engines=False)
    known = set(inspect.signature(fn).parameters)
    dropped = sorted(k for k in kw if k not in known)
    if dropped:
        log.warning('torch_tensorrt.dynamo.compile has no %s; building without', dropped)
    return {k: v for k, v in kw.items() if k in known}


def _engine_module(gm):
    """The single TensorRT submodule of a fully compiled graph module."""
    trt = [m for _, m in gm.named_modules() if hasattr(m, 'serialized_engine')]
    if len(trt) != 1:
        raise RuntimeError(f'expected the stage to compile into one TensorRT engine, got '
                           f'{len(trt)}; a converter is missing for one of its operators')
    return trt[0]


def _load_engine(engine_path: Path, meta: dict, device: torch.device):
    """Raw engine bytes -> a runnable module; TensorRT deserialises them, nothing unpickles."""
    import torch_tensorrt
    from torch_tensorrt.dynamo import CompilationSettings
    from torch_tensorrt.dynamo.runtime import TorchTensorRTModule
    settings = CompilationSettings(device=torch_tensorrt.Device(f'cuda:{device.index or 0}'))
    return TorchTensorRTModule(serialized_engine=engine_path.read_bytes(),
                               input_binding_names=meta['inputs'],
                               output_binding_names=meta['outputs'], name=meta['stage'],
                               settings=settings)


def _build_set(model: DoViTSegmenter, model_hash: str, image_hw, precision: str,
               token_stats, cache: Path, device: torch.device, build: EngineBuild
               ) -> StageSet:
    """Engines for one precision recipe ('fp32', 'fp16', 'fp16-attn32'), from the cache where
    it holds a valid one, else built (and cached)."""
    dtype = DTYPES['fp16' if precision.startswith('fp16') else 'fp32']
    specs = stage_profiles(model, image_hw, 'fp16' if dtype == torch.float16 else 'fp32',
                           token_stats)
    gpu, versions = gpu_name(device), runtime_versions()
    progs: dict = {}

    def programs():
        if not progs:   # export only when some engine must be built
            if dtype == torch.float16:
                src = mixed_precision_copy(model, precision == 'fp16-attn32')
            elif next(model.parameters()).dtype != torch.float32:
                src = copy.deepcopy(model).float().eval()
            else:
                src = model
            progs.update(export_stages(src, example_hw=image_hw, token_stats=token_stats))
        return progs

    modules = {}
    for name in stage_names(model):
        key = engine_cache_key(model_hash, name, specs[name], precision, gpu, versions)
        eng, side = engine_cache_paths(cache, model_hash, name, key)
        mod = None
        if side.is_file() and eng.is_file():
            try:
                meta = json.loads(side.read_text())
                if meta.get('key') == key:
                    mod = _load_engine(eng, meta, device)
                    build.cached.append(f'{precision}/{name}')
            except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt
                log.warning('cached engine %s unusable (%s); rebuilding', eng, e)
        if mod is None:
            meta = _build_engine(programs()[name], specs[name], precision, device)
            meta.update(key=key, stage=name, gpu=gpu, versions=versions)
            engine_bytes = meta.pop('engine')
            build.built_s[f'{precision}/{name}'] = meta['build_s']
            eng.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(eng, engine_bytes)
            atomic_write_bytes(side, json.dumps(meta, indent=1).encode())
            mod = _load_engine(eng, meta, device)
        modules[name] = _Engine(mod, dtype)
        build.engines[f'{precision}/{name}'] = str(eng)
    S = model.cfg.num_stages
    return StageSet(embed=modules['embed'], blocks=[modules[f'stage_{s}'] for s in range(S)],
                    decoder=modules['decoder'], image_hw=tuple(image_hw),
                    refine=modules.get('refine'))


class ProfileMismatch(RuntimeError):
    """An exported program does not carry the shape profile its engine is meant to have."""


def _build_engine(program, specs: list[dict], precision: str, device: torch.device) -> dict:
    """torch_tensorrt.dynamo.compile of one exported stage -> {'engine': bytes, binding
    names, profile, build seconds}. The profile comes from the program (Torch-TensorRT reads
    its symbolic ranges and trace-time example), so the program is checked against `specs`
    first; the same specs are passed as `arg_inputs` for versions that read those."""
    import torch_tensorrt
    got = program_profile(program)
    if not same_profile(got, specs):
        raise ProfileMismatch(f'exported program profile {_spec_json(got)} is not the intended '
                              f'{_spec_json(specs)}')
    inputs = [torch_tensorrt.Input(min_shape=s['min_shape'], opt_shape=s['opt_shape'],
                                   max_shape=s['max_shape'], dtype=g['dtype'], name=s['name'])
              for s, g in zip(specs, got)]
    fn = torch_tensorrt.dynamo.compile
    t0 = time.perf_counter()
    gm = fn(program, arg_inputs=inputs, **_compile_kwargs(fn, precision, device))
    trt_mod = _engine_module(gm)
    secs = round(time.perf_counter() - t0, 1)
    log.info('built TensorRT engine (%s, profile %s) in %.1f s', precision, _spec_json(specs),
             secs)
    return {'engine': bytes(trt_mod.serialized_engine), 'precision': precision,
            'specs': _spec_json(specs), 'build_s': secs,
            'inputs': list(getattr(trt_mod, 'input_binding_names', None) or trt_mod.input_names),
            'outputs': list(getattr(trt_mod, 'output_binding_names', None)
                            or trt_mod.output_names)}


def build_engines(model: DoViTSegmenter, model_hash: str, image_hw: tuple[int, int],
                  precision: str = 'fp16', device: str | torch.device = 'cuda',
                  token_stats: Sequence[Sequence[float] | None] | None = None,
                  check_image: torch.Tensor | None = None, exits: ExitConfig = FULL,
                  cache_dir: str | Path | None = None) -> tuple[StageSet, EngineBuild]:
    """TensorRT engines of every stage of `model` for (H, W) images on `device`.

    model_hash: artifacts.model_hash(model dir) or weights_hash(model), the cache key of the
    weights. token_stats: per stage, observed kept patch-token counts (token_stats_from_metrics).
    precision 'fp16': fp32 engines are built too and both run on `check_image` (a real image,
    normalised (1, 3, H, W)) with `exits`; fp16 is kept only if <= 0.5 % of pixel labels
    change, else fp16 with fp32 attention is tried, else fp32 is used.
    """
    ok, why = tensorrt_available(device)
    if not ok:
        raise RuntimeError(f'TensorRT backend unavailable: it {why}')
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    dev = torch.device(device)
    if dev.type != 'cuda':
        raise ValueError(f'TensorRT engines run on CUDA devices, got {dev}')
    if precision == 'fp16' and check_image is None:
        raise ValueError('fp16 engines need check_image (a real normalised image) to compare '
                         'their labels with fp32 engines; pass one, or use TensorRTRunner, '
                         'which checks on the first frame of each size')
    return _build_all(model.to(dev).eval(), model_hash, tuple(image_hw), precision, dev,
                      token_stats, check_image, exits, engine_cache_dir(cache_dir))


def _build_all(model, model_hash, image_hw, precision, dev, token_stats, check_image, exits,
               cache: Path) -> tuple[StageSet, EngineBuild]:
    """build_engines after its checks (TensorRTRunner and the CPU tests call this)."""
    build = EngineBuild(precision='fp32')
    t0 = time.perf_counter()
    sets = {'fp32': _build_set(model, model_hash, image_hw, 'fp32', token_stats, cache, dev,
                               build)}
    if precision == 'fp16':
        x = check_image.to(dev, next(model.parameters()).dtype)
        ref = _labels(model, sets['fp32'], x, exits)
        for recipe in ('fp16', 'fp16-attn32'):
            sets[recipe] = _build_set(model, model_hash, image_hw, recipe, token_stats, cache,
                                      dev, build)
            build.disagreement[recipe] = label_disagreement(
                ref, _labels(model, sets[recipe], x, exits))
            log.info('%s vs fp32 engines: %.3f %% of pixel labels differ', recipe,
                     100 * build.disagreement[recipe])
            if build.disagreement[recipe] <= FP16_MAX_DISAGREEMENT:
                break
        build.precision = choose_precision(build.disagreement)
        if build.precision == 'fp32':
            log.warning('fp16 engines change %s of pixel labels (limit %.1f %%): using fp32',
                        {k: f'{100 * v:.2f} %' for k, v in build.disagreement.items()},
                        100 * FP16_MAX_DISAGREEMENT)
    log.info('TensorRT engines for %dx%d ready in %.1f s (%s; built %d, %d from %s)',
             image_hw[0], image_hw[1], time.perf_counter() - t0, build.precision,
             len(build.built_s), len(build.cached), cache)
    return sets[build.precision], build


class TensorRTRunner(StagedRunner):
    """A Pipeline runner over TensorRT engines, built for each image size the stream sends, on
    its first frame of that size (from the disk cache after the first time), so a camera at
    any resolution runs. In fp16 the frame that triggers a build is the image the fp16 engines'
    labels are checked on, unless `check_image` of that size was given.

    `builds` maps each (H, W) to its EngineBuild (live: it fills as sizes arrive)."""

    def __init__(self, model: DoViTSegmenter, model_hash: str, precision: str,
                 device: torch.device, cache_dir: str | Path | None = None,
                 metrics: dict | None = None, exits: ExitConfig = FULL,
                 check_image: torch.Tensor | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        super().__init__(model, self._build_for)
        self.model_hash, self.precision, self.device = model_hash, precision, device
        self.cache, self.metrics, self.exits = engine_cache_dir(cache_dir), metrics, exits
        self.check_image = check_image
        self.builds: dict[tuple[int, int], EngineBuild] = {}
        self.failed: dict[tuple[int, int], str] = {}   # sizes whose build failed, and why
        self._frame: torch.Tensor | None = None

    def needs_real_frame(self, image_hw: tuple[int, int]) -> bool:
        """True when building for (H, W) would check fp16 on whatever frame comes: a
        synthetic warm-up image must not be that frame."""
        hw = (int(image_hw[0]), int(image_hw[1]))
        return (self.precision == 'fp16' and hw not in self._by_size
                and self._check_for(hw) is None)

    def _check_for(self, hw: tuple[int, int]) -> torch.Tensor | None:
        c = self.check_image
        return c if c is not None and tuple(c.shape[-2:]) == hw else None

    def _build_for(self, hw: tuple[int, int]) -> StageSet:
        if hw in self.failed:   # not minutes of rebuilding on every frame of a failed size
            raise RuntimeError(self.failed[hw])
        try:
            return self._build(hw)
        except Exception as e:
            self.failed[hw] = (f'TensorRT engines for {hw[0]}x{hw[1]} images failed to build: '
                               f'{type(e).__name__}: {e}')
            raise

    def _build(self, hw: tuple[int, int]) -> StageSet:
        N = full_tokens(self.model, hw)[1]
        stats = token_stats_from_metrics(self.metrics, self.model.cfg.num_stages, N, self.exits)
        check = self._check_for(hw)
        stages, build = _build_all(self.model, self.model_hash, hw, self.precision, self.device,
                                   stats, self._frame if check is None else check, self.exits,
                                   self.cache)
        self.builds[hw] = build
        return stages

    def __call__(self, x: torch.Tensor, exits: ExitConfig, plan=None):
        self._frame = x[:1]   # the first frame of a new size checks the fp16 engines
        try:
            return super().__call__(x, exits, plan)
        finally:
            self._frame = None


def _labels(model: DoViTSegmenter, stages: StageSet, x: torch.Tensor, exits: ExitConfig
            ) -> np.ndarray:
    run = StagedRunner(model, stages)
    return run(x, exits).logits.argmax(1)[0].cpu().numpy()


__all__ = ['tensorrt_available', 'tensorrt_missing', 'trt_input_specs', 'opt_tokens',
           'TensorRTRunner', 'ProfileMismatch', 'token_stats_from_metrics', 'stage_profiles',
           'build_engines', 'EngineBuild']
