"""The TensorRT engine cache (tensorrt.py): where engines live and the keys that name them —
everything an engine depends on (weights, GPU, TensorRT / Torch-TensorRT / torch versions,
stage, shape profile, precision recipe), so that a stale engine is never loaded."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

CACHE_FORMAT = 2                # 2: profiles carried by the programs, refine stage


def engine_cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(os.path.expanduser(str(cache_dir)))
    if os.environ.get('DOVIT_ENGINE_CACHE'):
        return Path(os.path.expanduser(os.environ['DOVIT_ENGINE_CACHE']))
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'dovit_ros' / 'engines'


def _spec_json(specs: list[dict]) -> list[dict]:
    return [{k: (str(v).replace('torch.', '') if k == 'dtype' else
                 list(v) if isinstance(v, tuple) else v) for k, v in s.items()} for s in specs]


def engine_cache_key(model_hash: str, stage: str, specs: list[dict], precision: str,
                     gpu: str, versions: dict[str, str]) -> str:
    """sha256 over everything an engine depends on: weights + metadata (model hash), the GPU,
    the TensorRT / Torch-TensorRT / torch versions, the stage, its shape profile and the
    precision recipe."""
    blob = json.dumps({'format': CACHE_FORMAT, 'model': model_hash, 'stage': stage,
                       'specs': _spec_json(specs), 'precision': precision, 'gpu': gpu,
                       'versions': dict(sorted(versions.items()))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def engine_cache_paths(cache_dir: Path, model_hash: str, stage: str, key: str
                       ) -> tuple[Path, Path]:
    """(engine, sidecar JSON) paths: <dir>/<model hash[:16]>/<stage>-<key[:16]>.engine|.json"""
    d = Path(cache_dir) / model_hash[:16]
    return d / f'{stage}-{key[:16]}.engine', d / f'{stage}-{key[:16]}.json'


def runtime_versions() -> dict[str, str]:
    import tensorrt
    import torch_tensorrt
    return {'tensorrt': tensorrt.__version__, 'torch_tensorrt': torch_tensorrt.__version__,
            'torch': torch.__version__}


def gpu_name(device: torch.device) -> str:
    p = torch.cuda.get_device_properties(device)
    return f'{p.name} sm_{p.major}{p.minor}'


def weights_hash(model: nn.Module) -> str:
    """sha256 of a model's architecture and every parameter and buffer (names, dtypes, shapes,
    bytes): the engine-cache key of weights that have no model directory (random presets in
    dovit-bench, models built in code)."""
    h = hashlib.sha256(repr(getattr(model, 'cfg', type(model).__name__)).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)}'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
