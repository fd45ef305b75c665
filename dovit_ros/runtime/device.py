"""Where tensors run: one rule for resolving 'auto', and what this CPU can do."""
from __future__ import annotations

import platform
from functools import lru_cache

import torch


def resolve_device(device: str | torch.device = 'auto', local_rank: int | None = None
                   ) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' under torchrun -> this rank's GPU."""
    name = str(device)
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and local_rank is not None:
        name = f'cuda:{local_rank}'
    return torch.device(name)


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


__all__ = ['resolve_device', 'cpu_supports_bf16', 'cpu_model_name']
