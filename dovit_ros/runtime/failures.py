"""Frames that could not be processed: counted, the last reason kept, and a run of failures
in a row turned into one message that says why (the node logs it and reports it in its
diagnostics) instead of the same error scrolling by on every frame."""
from __future__ import annotations

from dataclasses import dataclass

FAILURES_IN_A_ROW = 10   # this many consecutive failed frames: the stream is not being served


@dataclass
class FrameFailures:
    """Failure bookkeeping of one frame stream (the node's worker; not thread-safe: one
    writer). `failed` and `ok` are called once per frame that reached processing."""
    limit: int = FAILURES_IN_A_ROW
    total: int = 0
    in_a_row: int = 0
    last: str = ''
    _said: bool = False   # the message for the current run was returned already

    def __post_init__(self):
        if self.limit < 1:
            raise ValueError(f'limit must be >= 1, got {self.limit}')

    def failed(self, error: BaseException) -> str | None:
        """Count a failed frame. Returns the message to log, once, when `limit` frames in a row
        have failed (None otherwise)."""
        self.total += 1
        self.in_a_row += 1
        self.last = f'{type(error).__name__}: {error}'
        if self.in_a_row >= self.limit and not self._said:
            self._said = True
            return self.message()
        return None

    def ok(self) -> None:
        """A frame went through: the run of failures, if any, is over."""
        self.in_a_row = 0
        self._said = False

    @property
    def stuck(self) -> bool:
        """`limit` or more frames in a row have failed, and none since."""
        return self.in_a_row >= self.limit

    def message(self) -> str:
        return (f'the last {self.in_a_row} frames all failed, so no output is being published; '
                f'the last error: {self.last}')

    def report(self) -> dict[str, str]:
        """Diagnostic key-values."""
        return {'frames failed': str(self.total), 'frames failed in a row': str(self.in_a_row),
                'last failure': self.last or 'none'}


__all__ = ['FrameFailures', 'FAILURES_IN_A_ROW']
