"""Ctrl-C or SIGTERM during training: stop cleanly at the end of the current step, with a
checkpoint, as a spent time budget does, so that `--resume` loses nothing. A cluster scheduler
preempting a job sends SIGTERM; torchrun forwards it to every rank (and on Ctrl-C sends its
ranks SIGTERM right after the terminal's SIGINT, which must not count as a second request).
The same signal a second time interrupts at once (KeyboardInterrupt): Ctrl-C twice."""
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
