"""Where tensors run: one rule for resolving 'auto', and what this CPU can do."""
from __future__ import annotations

import platform
import re
from functools import lru_cache

import torch


def resolve_device(device: str | torch.device = 'auto', local_rank: int | None = None,
                   check: bool = True) -> torch.device:
    """The one rule for device names: 'auto' -> cuda when available, else cpu; 'cuda' under
    torchrun -> this rank's GPU. Raises ValueError for a malformed name, and (with `check`)
    for a CUDA device this host does not have; the backends pass check=False to say
    themselves what is missing."""
    name = str(device)
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if not re.fullmatch(r'cpu|cuda(:\d+)?', name):
        raise ValueError(f'device must be auto, cpu, cuda or cuda:N, got {name!r}')
    if name == 'cuda' and local_rank is not None:
        name = f'cuda:{local_rank}'
    dev = torch.device(name)
    if dev.type == 'cuda' and check:
        if not torch.cuda.is_available():
            raise ValueError(f'device {name!r} asked for, but CUDA is not available here')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f'device {name!r}: only {torch.cuda.device_count()} CUDA '
                             'device(s) here')
    return dev


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX or AVX512-BF16): bf16 autocast is then
    faster than fp32 there; elsewhere bf16 is emulated and slower."""
    return bool(_cpu_flags() & {'amx_bf16', 'avx512_bf16'})


PRECISION_CHOICES = ('auto', 'fp32', 'fp16', 'bf16')


def resolve_precision(precision: str, device: str | torch.device = 'cpu') -> str:
    """The one rule for 'auto': bf16 on a CPU with bf16 matrix units (measured 1.7x faster
    than fp32 with AMX at 360x480, docs/benchmarks.md, at the same mIoU), else fp32 -- on
    CUDA too, where fp16/bf16 are the user's explicit choice (the GPU paths were checked in
    fp32 and fp16 against the CPU, TensorRT fp16 needs a real frame to check its engines)."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f'precision must be one of {", ".join(PRECISION_CHOICES)}, '
                         f'got {precision!r}')
    if precision != 'auto':
        return precision
    on_cpu = torch.device(str(device)).type == 'cpu'
    return 'bf16' if on_cpu and cpu_supports_bf16() else 'fp32'


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """`lscpu`'s "Model name" (from /proc/cpuinfo), for naming the machine of a figure."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


__all__ = ['resolve_device', 'resolve_precision', 'cpu_supports_bf16', 'cpu_model_name',
           'PRECISION_CHOICES']
