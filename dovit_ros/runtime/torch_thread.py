"""One thread for all of a process's torch work.

With OpenMP (PyTorch's CPU backend), every thread that runs a parallel region gets a team of
its own. A node that loads the model in the main thread and infers in a worker has two teams;
libgomp then counts more threads than cores and stops spinning between parallel regions, which
costs ~1.4x per frame at 2 threads on 2 cores (measured: 52 ms vs 74 ms per 360x480 frame in
bf16, 1.2 instead of 2 cores busy; docs/benchmarks.md). So the node loads, warms up and runs
the model in this one thread, and nothing else in the process calls torch.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable


class TorchThread:
    """A daemon thread that runs the callables given to it, one at a time, in order."""

    def __init__(self, name: str = 'torch'):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
                fut.set_exception(e)

    def submit(self, fn: Callable[..., Any], *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, args, fut))
        return fut

    def call(self, fn: Callable[..., Any], *args) -> Any:
        """fn(*args) in the thread; its result, or its exception raised here."""
        return self.submit(fn, *args).result()

    def close(self, timeout: float | None = None) -> bool:
        """No more jobs; True when the thread has ended within `timeout` seconds (a job still
        running keeps it alive: it is a daemon, so it does not hold the process)."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def ident(self) -> int | None:
        return self._thread.ident


__all__ = ['TorchThread']
