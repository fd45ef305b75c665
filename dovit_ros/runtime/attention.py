"""Which attention core a model runs with on this machine (model/vit.py, ATTENTION_CORES).

PyTorch's fused `scaled_dot_product_attention` is not the fastest way to compute a few hundred
tokens' attention on every CPU: on an AMD EPYC (Zen 4, AVX512-BF16, no AMX) the same
softmax(QK^T)V written out as two matmuls took 1.70 ms against 3.13 ms in bf16 at the default
model's ~690 tokens, while in fp32 the fused kernel won (2.56 against 3.61 ms;
scripts/attention_core_bench.py, docs/benchmarks.md "CPU: AMD EPYC"). Which one wins depends on
the CPU, the precision and the sequence length, so 'auto' measures it once, at start-up, on the
shapes the model will run: its full token count for the blocks before the first exit, a fifth
of it (what stays active at the default exits) for the rest. The matmul core holds the (N, N)
scores in memory, so it has to win clearly (MARGIN) to be chosen; everywhere else, and on CUDA
(flash kernels), the fused kernel runs. The choice is made once per process for a given shape,
precision and thread count, so every pipeline of a process runs the same core; the environment
variable DOVIT_ATTENTION (auto, sdpa or matmul) pins it for a whole deployment (the test suite
pins sdpa, so that results do not depend on a timing).
"""
from __future__ import annotations

import os
import time
from functools import lru_cache

import torch

from ..model.vit import ATTENTION_CORES

ATTENTION_CHOICES = ('auto', *ATTENTION_CORES)
MARGIN = 0.9   # matmul is chosen only when it takes at most 90 % of the fused kernel's time


def attention_workload(model) -> list[tuple[int, int]]:
    """(tokens, blocks) pairs of a frame at the model's own size: the blocks before the first
    decision point at full length, the rest at a fifth (~17-20 % of the default model's tokens
    stay active at ξ 0.8, model card)."""
    cfg = model.cfg
    h, w = model.grid
    n = h * w + (1 if cfg.class_token else 0)
    first = min(cfg.decision_points) if cfg.decision_points else cfg.depth
    return [(n, first), (max(1, n // 5), cfg.depth - first)]


@lru_cache(maxsize=None)
def _measured_choice(heads: int, head_dim: int, workload: tuple, dtype: torch.dtype,
                     threads: int) -> tuple[str, tuple]:
    ms = time_cores(heads, head_dim, list(workload), dtype)
    return ('matmul' if ms['matmul'] <= MARGIN * ms['sdpa'] else 'sdpa'), tuple(ms.items())


@torch.inference_mode()
def time_cores(heads: int, head_dim: int, workload: list[tuple[int, int]], dtype: torch.dtype,
               rounds: int = 5) -> dict[str, float]:
    """ms of one frame's attention calls (sum over the workload) per core: the best of `rounds`
    interleaved rounds, so that a busy moment of the host hits both cores alike."""
    qkv = {n: [torch.randn(1, heads, n, head_dim, dtype=dtype) for _ in range(3)]
           for n, _ in workload}
    best = {core: float('inf') for core in ATTENTION_CORES}
    for _ in range(rounds):
        for core, fn in ATTENTION_CORES.items():
            ms = 0.0
            for n, blocks in workload:
                q, k, v = qkv[n]
                fn(q, k, v)   # warm-up: first calls allocate and pick kernels
                t0 = time.perf_counter()
                fn(q, k, v)
                ms += (time.perf_counter() - t0) * 1e3 * blocks
            best[core] = min(best[core], ms)
    return best


def resolve_attention(choice: str | None, model, device: torch.device, dtype: torch.dtype
                      ) -> tuple[str, dict[str, float]]:
    """(core, the timings behind an 'auto' choice; empty when nothing was measured).
    choice None: DOVIT_ATTENTION, else 'auto'."""
    if choice is None:
        choice = os.environ.get('DOVIT_ATTENTION', '').strip() or 'auto'
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f'attention {choice!r}: expected one of {ATTENTION_CHOICES}')
    if choice != 'auto':
        return choice, {}
    if device.type != 'cpu':
        return 'sdpa', {}
    cfg = model.cfg
    core, ms = _measured_choice(cfg.heads, cfg.dim // cfg.heads,
                                tuple(attention_workload(model)), dtype,
                                torch.get_num_threads())   # the winner can change with it
    return core, dict(ms)


def use_attention(model, choice: str | None, device: torch.device, dtype: torch.dtype
                  ) -> tuple[str, dict[str, float]]:
    """resolve_attention, then set the core on `model`: what every inference loader does."""
    core, ms = resolve_attention(choice, model, device, dtype)
    model.attention_core(core)
    return core, ms
