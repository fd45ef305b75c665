"""Inference backends: the same segmenter bookkeeping over eager, torch.compile'd or TensorRT
stage functions (docs/backends.md).

    runner, info = make_runner(model, 'auto', device='cuda', precision='fp16',
                               model_path=path, meta=meta)
    pipe = Pipeline(model, meta, 'cuda', 'fp16', runner=runner)

Nothing here imports torch_tensorrt unless the TensorRT backend is asked for.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..device import resolve_device, resolve_precision
from ...model import DoViTSegmenter, ExitConfig, SegmentationOutput
from .compile import CompiledRunner, CompileOptions, compile_available
from .stages import StagedRunner
from .tensorrt import tensorrt_missing

BACKENDS = ('auto', 'eager', 'compile', 'tensorrt')
PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
# On CPU, compiled stages measured no faster than eager (docs/backends.md) and cost a minute of
# compilation at start-up, so 'auto' runs eager there.
AUTO_COMPILE_ON_CPU = False
Runner = Callable[[torch.Tensor, ExitConfig], SegmentationOutput]


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run here; the message names what is missing."""


def _device(device: str | torch.device) -> torch.device:
    return resolve_device(device, check=False)


def make_runner(model: DoViTSegmenter, backend: str = 'auto', device: str = 'cpu',
                precision: str = 'fp32', **opts) -> tuple[Runner, dict]:
    """A Pipeline runner for `model` on `device` in `precision` (the model is moved there).

    backend: 'eager', 'compile' (torch.compile per stage), 'tensorrt' (one engine per stage)
    or 'auto' (tensorrt, then compile, then eager, by availability; eager on CPU).
    opts:
      compile  - token_mode ('dynamic' | 'buckets'), buckets, mode (CompileOptions)
      tensorrt - engines are built for each image size on its first frame (TensorRTRunner);
                 image_hw (H, W): build for this size now, unless fp16 has no check_image
                 of that size (then its first frame is the fp16 check image); model_hash or
                 model_path (cache key; default: the hash of the weights themselves);
                 meta (ModelMeta: token statistics and default exits), check_image (a real
                 normalised (1, 3, H, W) image), cache_dir
    Returns (runner, info): info says which backend runs and why.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
    dev = _device(device)
    precision = resolve_precision(precision, dev)   # 'auto' -> bf16 on bf16-capable CPUs
    if dev.type == 'cuda' and not torch.cuda.is_available() and backend != 'tensorrt':
        raise BackendUnavailable(f'device {dev} asked for, but CUDA is not available here')
    info = {'backend': backend, 'device': str(dev), 'precision': precision}
    if backend == 'auto':
        backend, info['reason'] = _choose(dev, precision)
        info['backend'] = backend
    if backend == 'tensorrt':
        missing = tensorrt_missing(dev)
        if missing:
            raise BackendUnavailable(f"backend 'tensorrt' needs {' and '.join(missing)}.")
        if precision == 'bf16':
            raise ValueError("backend 'tensorrt' builds fp32 or fp16 engines, not bf16")
    model = model.to(dev, PRECISIONS[precision]).eval()
    if backend == 'eager':
        return model, info
    if backend == 'compile':
        ok, why = compile_available(dev)
        if not ok:
            raise BackendUnavailable(f"backend 'compile' cannot run here: {why}.")
        keys = ('token_mode', 'buckets', 'mode')
        co = CompileOptions(**{k: opts[k] for k in keys if k in opts})
        info.update(compiler=why, token_mode=co.token_mode, buckets=co.buckets, mode=co.mode)
        runner = CompiledRunner(model, co)
        info['graphs_per_stage'] = runner.graphs.per_stage   # live: fills as stages compile
        return runner, info
    return _tensorrt_runner(model, dev, precision, opts, info)


def _choose(dev: torch.device, precision: str) -> tuple[str, str]:
    if dev.type == 'cuda':
        missing = tensorrt_missing(dev)
        if not missing and precision != 'bf16':
            return 'tensorrt', 'torch_tensorrt and CUDA are available'
        why = (f'tensorrt skipped: needs {" and ".join(missing)}' if missing else
               'tensorrt skipped: it builds fp32 or fp16 engines, not bf16')
        ok, how = compile_available(dev)
        return ('compile', f'{why}; compile: {how}') if ok else ('eager', f'{why}; {how}')
    ok, how = compile_available(dev)
    if dev.type == 'cpu' and not AUTO_COMPILE_ON_CPU:
        return 'eager', 'on CPU, compiled stages measured no faster than eager'
    return ('compile', how) if ok else ('eager', how)


def _tensorrt_runner(model, dev, precision, opts, info) -> tuple[Runner, dict]:
    from ..artifacts import model_hash as hash_of
    from .engine_cache import weights_hash
    from .tensorrt import TensorRTRunner
    if 'model_hash' in opts:
        mh = str(opts['model_hash'])
    elif 'model_path' in opts:
        mh = hash_of(opts['model_path'])
    else:   # weights built in code (dovit-bench presets): key the cache on the weights
        mh = weights_hash(model)
    meta = opts.get('meta')
    exits = opts.get('exits') or getattr(meta, 'exits', None) or ExitConfig()
    runner = TensorRTRunner(model, mh, precision, dev, opts.get('cache_dir'),
                            getattr(meta, 'metrics', None), exits, opts.get('check_image'))
    info.update(model_hash=mh, builds=runner.builds)   # live: one entry per image size
    hw = opts.get('image_hw')
    if hw is not None and not runner.needs_real_frame(hw):
        hw = (int(hw[0]), int(hw[1]))
        runner.stages_for(hw)   # build now, not on the first frame
        b = runner.builds[hw]
        info.update(engine_precision=b.precision, engines=b.engines, build_s=b.built_s,
                    cached=b.cached, fp16_label_disagreement=b.disagreement, image_hw=hw)
    return runner, info


__all__ = ['make_runner', 'BACKENDS', 'BackendUnavailable', 'StagedRunner', 'CompiledRunner',
           'CompileOptions', 'tensorrt_missing', 'AUTO_COMPILE_ON_CPU']
