"""Deterministic training kernels where PyTorch has them, and an exact statement of what a
resumed run then reproduces.

CPU: a resumed run is bit-identical to the uninterrupted one (test_train checks it); nothing
needs switching on.

CUDA: `configure_determinism` makes cuBLAS (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS creates
its workspace, so set before the first matmul) and cuDNN (deterministic algorithms, no
autotuning) deterministic and turns on `torch.use_deterministic_algorithms(warn_only=True)`.
Three operations of our training step have no deterministic CUDA kernel in PyTorch (its
`use_deterministic_algorithms` documentation lists them as throwing): the backward of bilinear
`F.interpolate` (logit upsampling, the refine decoder), `NLLLoss` (inside cross-entropy), and a
floating-point `cumsum` (the Lovasz loss). They accumulate with atomics in an order that can
change from run to run, so on CUDA a resumed run matches the uninterrupted one to rounding (the
device check measures the difference), not bit for bit; warn_only keeps them running rather
than raising. The training step draws no CUDA random numbers (no dropout; augmentation runs on
CPU with position-seeded generators), so the CUDA RNG state does not enter the result.
"""
from __future__ import annotations

import os

import torch

CUBLAS_CONFIG = ':4096:8'   # the setting cuBLAS documents for reproducible results
CUDA_NONDETERMINISTIC = ('bilinear interpolate backward', 'NLLLoss (cross-entropy)',
                         'floating-point cumsum (Lovasz loss)')


def configure_determinism(device_type: str, enabled: bool = True) -> dict:
    """Set deterministic kernels for training on `device_type` ('cpu' | 'cuda'); call before
    the first CUDA matmul. Returns what holds, for the run log and summary."""
    if device_type != 'cuda':   # CPU kernels used here are deterministic already (tested);
        # the global switch would only slow some of them and leak into the caller's process
        return {'deterministic': True, 'bit_exact_resume': True}
    if not enabled:
        return {'deterministic': False, 'bit_exact_resume': False}
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_CONFIG)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    return {'deterministic': True, 'bit_exact_resume': False,
            'cublas_workspace_config': os.environ['CUBLAS_WORKSPACE_CONFIG'],
            'nondeterministic_ops': list(CUDA_NONDETERMINISTIC)}


def cuda_rng_to_restore(saved: list[torch.Tensor], device_count: int,
                        device_index: int) -> dict[int, torch.Tensor]:
    """Which saved CUDA generator states to restore: all of them on the same number of GPUs,
    else the one of the device in use, if it was saved (a checkpoint moved to a machine with
    another GPU count keeps the state of the GPU it trains on)."""
    if len(saved) == device_count:
        return dict(enumerate(saved))
    return {device_index: saved[device_index]} if 0 <= device_index < len(saved) else {}


__all__ = ['configure_determinism', 'cuda_rng_to_restore', 'CUBLAS_CONFIG',
           'CUDA_NONDETERMINISTIC']
