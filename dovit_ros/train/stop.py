"""Ctrl-C or SIGTERM during training: stop cleanly at the end of the current step, with a
checkpoint, as a spent time budget does, so that `--resume` loses nothing. A cluster scheduler
preempting a job sends SIGTERM; torchrun forwards it to every rank. A second signal interrupts
at once (KeyboardInterrupt), for a run that must not wait for its step."""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while inside, SIGINT/SIGTERM set `requested` (the signal's name)
    instead of ending the process. Outside the main thread (where Python cannot handle
    signals) it does nothing and `requested` stays None."""

    def __init__(self) -> None:
        self.requested: str | None = None
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
        if self.requested is not None:   # the second one: do not wait for the step
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
