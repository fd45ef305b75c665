"""Model directory <-> (model, metadata): `model.safetensors` + `model.yaml`, never pickle.

model.yaml holds everything needed to rebuild and use the network: the architecture, the
classes and palette, input normalisation, the default exit settings, how it was trained and
what it measured, and the sha256 of model.safetensors (`weights_sha256`, written by
save_model_dir). Loading validates types and shapes, checks the weights against that sha256
when model.yaml has one (a flipped bit in the tensor data is otherwise a valid float), and
names the file and field at fault.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.classes import ClassInfo
from ..model import DoViTSegmenter, ExitConfig, ViTConfig
from .files import atomic_path, atomic_write_bytes, sha256_files  # noqa: F401 - re-exported

WEIGHTS, META = 'model.safetensors', 'model.yaml'
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_KEYS = ('format_version', 'name', 'architecture', 'classes', 'normalization', 'input_size',
             'exits', 'recipe', 'metrics', 'weights_sha256')


class ModelLoadError(ValueError):
    """A model directory that cannot be used; the message names the file and the field."""


@dataclass
class ModelMeta:
    architecture: ViTConfig
    classes: ClassInfo
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] | None = None   # (H, W) the model was trained/evaluated at
    exits: ExitConfig = field(default_factory=ExitConfig)   # default policy, xi, k
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    name: str = ''
    # As read from model.yaml (None: not given). Not part of to_dict(): it describes the file
    # next to model.yaml, and write_meta computes it afresh for the weights it sits beside.
    weights_sha256: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        ex = self.exits
        thr = list(ex.threshold) if isinstance(ex.threshold, tuple) else float(ex.threshold)
        return {
            'format_version': FORMAT_VERSION,
            'name': self.name,
            'architecture': self.architecture.to_dict(),
            'classes': self.classes.to_dict(),
            'normalization': {'mean': list(self.mean), 'std': list(self.std)},
            'input_size': None if self.input_size is None else list(self.input_size),
            'exits': {'policy': ex.policy, 'threshold': thr, 'topk_per_class': ex.topk_per_class},
            'recipe': self.recipe,
            'metrics': self.metrics,
        }

    @classmethod
    def from_dict(cls, d, where: str = META) -> 'ModelMeta':
        def need(key, kind):
            if key not in d:
                raise ModelLoadError(f'{where}: missing field {key!r}')
            if not isinstance(d[key], kind):
                raise ModelLoadError(f'{where}: field {key!r} must be a {kind.__name__}, '
                                     f'got {type(d[key]).__name__}')
            return d[key]

        def no_unknown(m, allowed, prefix=''):
            unknown = sorted(set(m) - set(allowed), key=str)
            if unknown:   # a typo (`exit:`) must not silently fall back to defaults
                raise ModelLoadError(f'{where}: unknown field(s) '
                                     f'{", ".join(prefix + str(k) for k in unknown)}')

        if not isinstance(d, dict):
            raise ModelLoadError(f'{where}: expected a mapping at top level')
        no_unknown(d, META_KEYS)
        if d.get('format_version', FORMAT_VERSION) != FORMAT_VERSION:
            raise ModelLoadError(f'{where}: unsupported format_version {d["format_version"]!r}')
        try:
            arch = ViTConfig.from_dict(need('architecture', dict))
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f'{where}: field architecture: {e}') from None
        try:
            classes = ClassInfo.from_dict(need('classes', dict))
        except (TypeError, ValueError, KeyError) as e:
            raise ModelLoadError(f'{where}: field classes: {e}') from None
        if classes.num_classes != arch.num_classes:
            raise ModelLoadError(f'{where}: classes lists {classes.num_classes} names but '
                                 f'architecture.num_classes is {arch.num_classes}')
        norm = d.get('normalization') or {}
        if not isinstance(norm, dict):
            raise ModelLoadError(f'{where}: field normalization must be a mapping')
        no_unknown(norm, ('mean', 'std'), 'normalization.')
        mean, std = norm.get('mean', IMAGENET_MEAN), norm.get('std', IMAGENET_STD)
        for key, v in (('normalization.mean', mean), ('normalization.std', std)):
            if not (isinstance(v, (list, tuple)) and len(v) == 3
                    and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in v)):
                raise ModelLoadError(f'{where}: field {key} must be 3 numbers, got {v!r}')
        if any(s <= 0 for s in std):
            raise ModelLoadError(f'{where}: field normalization.std must be > 0')
        size = d.get('input_size')
        if size is not None and not (isinstance(size, list) and len(size) == 2
                                     and all(isinstance(v, int) and v > 0 for v in size)):
            raise ModelLoadError(f'{where}: field input_size must be [H, W], got {size!r}')
        ex = d.get('exits') or {}
        if not isinstance(ex, dict):
            raise ModelLoadError(f'{where}: field exits must be a mapping')
        no_unknown(ex, ('policy', 'threshold', 'topk_per_class'), 'exits.')
        try:
            exits = ExitConfig(policy=ex.get('policy', 'threshold'),
                               threshold=ex.get('threshold', 0.95),
                               topk_per_class=ex.get('topk_per_class', 5))
            exits.thresholds(len(arch.decision_points))
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f'{where}: field exits: {e}') from None
        for key in ('recipe', 'metrics'):
            if not isinstance(d.get(key) or {}, dict):
                raise ModelLoadError(f'{where}: field {key} must be a mapping')
        digest = d.get('weights_sha256')
        if digest is not None and not (isinstance(digest, str)
                                       and re.fullmatch(r'[0-9a-f]{64}', digest)):
            raise ModelLoadError(f'{where}: field weights_sha256 must be 64 lowercase hex '
                                 f'digits, got {digest!r}')
        return cls(architecture=arch, classes=classes, mean=tuple(mean), std=tuple(std),
                   input_size=None if size is None else tuple(size), exits=exits,
                   recipe=d.get('recipe') or {}, metrics=d.get('metrics') or {},
                   name=str(d.get('name') or ''), weights_sha256=digest)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """safetensors file written atomically (contiguous CPU copies, shared storage split)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, tmp,
                  metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f'{path}: file not found')
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f'{path}: not a readable safetensors file ({e})') from None


def file_sha256(path) -> str:
    return sha256_files(path)


def write_meta(path, meta: ModelMeta) -> None:
    """model.yaml (atomically) for the model.safetensors already in `path`, with its sha256."""
    path = Path(path)
    d = {**meta.to_dict(), 'weights_sha256': file_sha256(path / WEIGHTS)}
    text = yaml.safe_dump(d, sort_keys=False, default_flow_style=None)
    atomic_write_bytes(path / META, text.encode())


def save_model_dir(path, model: DoViTSegmenter, meta: ModelMeta) -> Path:
    """Write weights then metadata, each atomically."""
    if getattr(model, 'bn_folded', False):   # its BN tensors are gone: it would not load
        raise ValueError('this model has its BatchNorms folded for inference (model/fold.py) '
                         'and cannot be saved; save the model as loaded or trained')
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS, model.state_dict(), metadata={'format': 'pt'})
    write_meta(path, meta)
    return path


def read_meta(path) -> ModelMeta:
    f = Path(path) / META
    if not f.is_file():
        raise ModelLoadError(f'{f}: file not found (a model directory holds {WEIGHTS} and '
                             f'{META})')
    try:
        d = yaml.safe_load(f.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ModelLoadError(f'{f}: not valid YAML ({e})') from None
    return ModelMeta.from_dict(d, where=str(f))


def load_model(path, device: str | torch.device = 'cpu') -> tuple[DoViTSegmenter, ModelMeta]:
    """Rebuild the network from model.yaml and fill it from model.safetensors (eval mode)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f'{path}: model directory not found')
    meta = read_meta(path)
    model = DoViTSegmenter(meta.architecture)
    state = load_tensors(path / WEIGHTS)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelLoadError(f'{path / WEIGHTS}: tensors do not match {META} architecture '
                             f'(missing: {missing[:5]}, unexpected: {unexpected[:5]})')
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ModelLoadError(f'{path / WEIGHTS}: tensor {k!r} has shape {tuple(v.shape)}, '
                                 f'{META} architecture needs {tuple(own[k].shape)}')
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelLoadError(f'{path / WEIGHTS}: tensor {k!r} holds NaN or Inf values')
    if meta.weights_sha256 is not None:
        digest = file_sha256(path / WEIGHTS)
        if digest != meta.weights_sha256:
            raise ModelLoadError(f'{path / WEIGHTS}: sha256 {digest[:16]}... differs from '
                                 f'weights_sha256 {meta.weights_sha256[:16]}... in {META}: '
                                 'the weights are corrupt or not the ones this model.yaml '
                                 'describes')
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def model_hash(path) -> str:
    """sha256 of the weights and metadata: a cache key for compiled engines."""
    return sha256_files(Path(path) / WEIGHTS, Path(path) / META)
