"""Resumable training checkpoints, without pickle.

A checkpoint is a folder `ckpt-NNNNNNN/` holding a loadable model directory (model.safetensors
+ model.yaml) plus train_state.safetensors (optimiser tensors, RNG states) and train_state.yaml
(step, optimiser hyper-parameters). Every file is written atomically and the folder is only
named in `latest` (itself replaced atomically) once complete, so a kill at any moment leaves
the previous checkpoint loadable.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import torch
import yaml

from .determinism import cuda_rng_to_restore
from .ema import EMA_FILE
from ..runtime.artifacts import (ModelLoadError, ModelMeta, atomic_write_bytes, load_tensors,
                                 save_model_dir, save_tensors)

STATE_T, STATE_Y, LATEST = 'train_state.safetensors', 'train_state.yaml', 'latest'


def _split_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state dict -> (tensors, YAML-safe rest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd['state'].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f'opt.{pid}.{k}'] = v
            elif v is not None:
                scalars[f'{pid}.{k}'] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd['param_groups']]
    return tensors, {'param_groups': groups, 'scalars': scalars}


def _join_optimizer(tensors: dict, rest: dict) -> dict:
    state: dict = {}
    for name, v in tensors.items():
        if name.startswith('opt.'):
            _, pid, k = name.split('.', 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in rest.get('scalars', {}).items():
        pid, k = key.split('.', 1)
        state.setdefault(int(pid), {})[k] = v
    groups = []
    for g in rest['param_groups']:
        g = dict(g)
        if 'betas' in g:
            g['betas'] = tuple(g['betas'])
        groups.append(g)
    return {'state': state, 'param_groups': groups}


def save_checkpoint(run_dir, step: int, model: torch.nn.Module, meta: ModelMeta,
                    opt: torch.optim.Optimizer, extra: dict | None = None,
                    keep: int = 2, ema: torch.nn.Module | None = None) -> Path:
    """Write ckpt-NNNNNNN/ (with the weight average `ema`, if any) and name it in `latest`."""
    run_dir = Path(run_dir)
    ck = run_dir / f'ckpt-{step:07d}'
    if ck.exists():
        shutil.rmtree(ck)
    ck.mkdir(parents=True)
    save_model_dir(ck, model, meta)
    tensors, rest = _split_optimizer(opt)
    tensors['rng.cpu'] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'rng.cuda.{i}'] = s
    save_tensors(ck / STATE_T, tensors)
    if ema is not None:
        save_tensors(ck / EMA_FILE, ema.state_dict())
    rest.update({'step': int(step), 'extra': extra or {}})
    atomic_write_bytes(ck / STATE_Y, yaml.safe_dump(rest, sort_keys=False).encode())
    atomic_write_bytes(run_dir / LATEST, ck.name.encode())
    old = sorted(p for p in run_dir.glob('ckpt-*') if p.is_dir() and p != ck)
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return ck


def latest_checkpoint(run_dir) -> Path | None:
    f = Path(run_dir) / LATEST
    if not f.is_file():
        return None
    ck = Path(run_dir) / f.read_text().strip()
    if not (ck / STATE_Y).is_file():
        raise ModelLoadError(f'{f}: names {ck.name}, which is incomplete or missing')
    return ck


def load_train_state(ck, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Fill model and optimiser from a checkpoint folder; returns the YAML state (step...)."""
    ck = Path(ck)
    state = load_tensors(ck / 'model.safetensors')
    model.load_state_dict(state)
    tensors = load_tensors(ck / STATE_T)
    try:
        rest = yaml.safe_load((ck / STATE_Y).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ModelLoadError(f'{ck / STATE_Y}: unreadable ({e})') from None
    # Optimizer.load_state_dict moves state to each parameter's device itself.
    opt.load_state_dict(_join_optimizer(tensors, rest))
    torch.set_rng_state(tensors['rng.cpu'])
    cuda = [tensors[f'rng.cuda.{i}'] for i in range(len(tensors))
            if f'rng.cuda.{i}' in tensors]   # by index: sorted names put 10 before 2
    if cuda and torch.cuda.is_available():
        for i, st in cuda_rng_to_restore(cuda, torch.cuda.device_count(),
                                         torch.cuda.current_device()).items():
            torch.cuda.set_rng_state(st, i)
    return rest


def copy_matching(model: torch.nn.Module, source: dict[str, torch.Tensor],
                  drop: Sequence[str] = ()) -> list[str]:
    """Start `model` from `source` where it can: every tensor whose name and shape match is
    copied; the model's other tensors keep their fresh initialisation (a decoder deepened with
    new blocks, warm-started from the model it extends). Returns the names that start fresh.
    A source tensor the model has under another shape, or one the model lacks, is an error:
    that is a different architecture, not an extension of it — unless its name starts with
    one of `drop`, the parts of the source the caller leaves behind on purpose (a block
    removed). A `drop` prefix that matches no source tensor the model lacks is an error too:
    it names nothing to leave behind (a typo, or a block the model still has)."""
    own = model.state_dict()
    unused = [d for d in drop if not any(k.startswith(d) and k not in own for k in source)]
    if unused:
        raise ValueError(f'init_drop: {", ".join(unused)} match(es) no tensor of the source '
                         'model that this model lacks')
    source = {k: v for k, v in source.items() if not any(k.startswith(d) for d in drop)}
    dropped = sorted(set(source) - set(own))
    reshaped = sorted(k for k in set(source) & set(own) if source[k].shape != own[k].shape)
    if dropped or reshaped:
        raise ValueError('init_from: the source model is not contained in this one: '
                         + '; '.join(filter(None, [
                             dropped and f'not in this model: {", ".join(dropped[:5])}',
                             reshaped and f'other shapes: {", ".join(reshaped[:5])}'])))
    model.load_state_dict(source, strict=False)
    return sorted(set(own) - set(source))
