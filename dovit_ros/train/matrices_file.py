"""Per-image confusion matrices of an evaluation, kept in a file so that two evaluations of the
same images (two models, two precisions...) can be compared paired later (`dovit-compare`).

The file is safetensors: one (n, K, K) int64 tensor per result row (`row0`, `row1`, ...) and,
under the metadata key `dovit_eval`, JSON naming the rows (policy, xi, the budget controller's
target), the images in order, the class names and where the figures came from. Nothing in it
is executed when it is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KEY = 'dovit_eval'


class MatricesFileError(ValueError):
    pass


@dataclass
class EvalMatrices:
    rows: list[dict]               # per result: policy, threshold, controller, target_gflops
    matrices: list[np.ndarray]     # per result: (n, K, K) counts, rows = ground truth
    images: list[str]              # the n images, in the matrices' order
    class_names: list[str]
    source: dict = field(default_factory=dict)   # model, weights, dataset, split, precision


def row_label(row: dict) -> str:
    """How a result row is named and matched between two files."""
    if row.get('controller'):
        return f'budget {row["target_gflops"]:g} GFLOPs'
    return f'{row["policy"]} xi {row["threshold"]:g}'


def save_matrices(path: str | Path, em: EvalMatrices) -> None:
    from safetensors.numpy import save_file
    meta = {'rows': em.rows, 'images': em.images, 'class_names': em.class_names,
            'source': em.source}
    tensors = {f'row{i}': np.ascontiguousarray(m, dtype=np.int64)
               for i, m in enumerate(em.matrices)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={KEY: json.dumps(meta)})


def load_matrices(path: str | Path) -> EvalMatrices:
    """Read and check a matrices file; MatricesFileError says what is wrong with it."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework='np') as f:
            raw = (f.metadata() or {}).get(KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise MatricesFileError(f'{path}: not a readable safetensors file ({e})') from None
    if raw is None:
        raise MatricesFileError(f'{path}: no "{KEY}" metadata (not written by dovit-eval '
                                '--save-matrices)')
    try:
        meta = json.loads(raw)
        rows, images, names = meta['rows'], meta['images'], meta['class_names']
        labels = [row_label(r) for r in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise MatricesFileError(f'{path}: bad "{KEY}" metadata ({e!r})') from None
    n, k = len(images), len(names)
    matrices = []
    for i, label in enumerate(labels):
        m = tensors.get(f'row{i}')
        if m is None or m.shape != (n, k, k) or m.dtype != np.int64 or (m < 0).any():
            got = 'missing' if m is None else f'{m.dtype} {m.shape}'
            raise MatricesFileError(f'{path}: row{i} ({label}) must be int64 counts of shape '
                                    f'({n}, {k}, {k}), got {got}')
        matrices.append(m)
    return EvalMatrices(rows, matrices, list(images), list(names), meta.get('source', {}))
