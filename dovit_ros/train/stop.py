"""Ctrl-C or SIGTERM during training: stop cleanly at the end of the current step, with a
checkpoint, as a spent time budget does, so that `--resume` loses nothing. A cluster scheduler
preempting a job sends SIGTERM; torchrun forwards it to every rank (and on Ctrl-C sends its
ranks SIGTERM right after the terminal's SIGINT, which must not count as a second request).
The same signal a second time interrupts at once (KeyboardInterrupt): Ctrl-C twice.

A terminal's Ctrl-C, a Slurm job's cancellation and systemd's stop signal the whole process
group, data-loader workers included. A worker that SIGTERM ends makes the main process fail at
its next batch ("DataLoader worker ... killed by signal"), before it can checkpoint; so workers
ignore both signals (`ignore_in_worker`) and leave the stop to the main process, which ends them
when the loader closes (and they exit by themselves if it dies)."""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while inside, SIGINT/SIGTERM set `requested` (the signal's name)
    instead of ending the process. Outside the main thread (where Python cannot handle
    signals) it does nothing and `requested` stays None."""

    def __init__(self) -> None:
        self.requested: str | None = None   # the first signal's name
        self._seen: set[int] = set()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> 'StopRequest':
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if signum in self._seen:   # asked again: do not wait for the step
            raise KeyboardInterrupt
        self._seen.add(signum)
        self.requested = self.requested or signal.Signals(signum).name


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the stop signals are the main process's to handle."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
