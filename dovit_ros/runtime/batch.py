"""Batches of several cameras' frames: the sizes seen, and what a batch costs the budget.

One forward runs every camera's waiting frame (runtime/slots.py, Pipeline.infer_many), so the
compute budget steers xi for the batch as a whole: it is told one cost per batch, the GFLOPs
of all its frames together and the latency of its slowest frame (all come out together). With
one camera a batch is one frame, and this is exactly the per-frame cost. ROS-free.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Sequence

from .frame import CostObserver
from .pipeline import FrameResult


@dataclass(frozen=True)
class BatchCost:
    """A batch as a BudgetChooser sees a frame result: only its GFLOPs are read."""
    gflops: float


def observe_batch(budget: CostObserver, results: Sequence[FrameResult],
                  latencies_ms: Sequence[float]) -> object:
    """Tell the budget controller one batch's cost: summed GFLOPs, slowest latency."""
    if not results or len(results) != len(latencies_ms):
        raise ValueError(f'a batch needs one latency per result, got {len(results)} results '
                         f'and {len(latencies_ms)} latencies')
    return budget.observe(BatchCost(sum(r.gflops for r in results)), max(latencies_ms))


class BatchSizes:
    """How many frames each forward ran, for the diagnostics. Thread-safe: the worker adds,
    the diagnostics timer reports."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: collections.Counter[int] = collections.Counter()

    def add(self, size: int) -> None:
        if size < 1:
            raise ValueError(f'a batch has at least one frame, got {size}')
        with self._lock:
            self.counts[size] += 1

    def report(self) -> dict[str, str]:
        """Diagnostic key/values: batches run, mean size, and the histogram `size: count`."""
        with self._lock:
            counts = dict(self.counts)
        n = sum(counts.values())
        mean = sum(k * v for k, v in counts.items()) / n if n else 0.0
        return {'batches': str(n), 'batch size mean': f'{mean:.2f}',
                'batch sizes seen': ', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))
                or 'none yet'}


__all__ = ['BatchCost', 'BatchSizes', 'observe_batch']
