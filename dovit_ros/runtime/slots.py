"""Newest-frame slots, one per camera, between message callbacks and the worker thread.

A callback only stores its camera's newest frame (an older one not yet taken is dropped and
counted: latency stays one frame, never a backlog). The worker takes every waiting frame at
once and runs them as one batch; with `batch_wait_s` > 0 it first waits up to that long for
the cameras that have not delivered yet, so a slow or silent camera delays the others by at
most that much (0: never wait). ROS-free and thread-safe.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Hashable, Sequence, TypeVar

T = TypeVar('T')


class FrameSlots(Generic[T]):
    def __init__(self, cameras: Sequence[Hashable],
                 on_drop: Callable[[Hashable], None] | None = None):
        if not cameras:
            raise ValueError('FrameSlots needs at least one camera')
        self.cameras = tuple(cameras)
        self._slots: dict[Hashable, T | None] = {c: None for c in self.cameras}
        self._cond = threading.Condition()
        self._closed = False
        self._on_drop = on_drop

    def put(self, camera: Hashable, item: T) -> None:
        with self._cond:
            if self._slots[camera] is not None and self._on_drop is not None:
                self._on_drop(camera)
            self._slots[camera] = item
            self._cond.notify_all()

    def close(self) -> None:
        """Wake the worker for good: `take` returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, batch_wait_s: float = 0.0) -> dict[Hashable, T] | None:
        """Block until at least one frame waits (None once closed); then, for up to
        `batch_wait_s`, wait for the cameras still missing; take and clear every slot."""
        with self._cond:
            while not self._closed and not self._waiting():
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + batch_wait_s
            while not self._closed and len(self._waiting()) < len(self.cameras):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            batch = {c: self._slots[c] for c in self._waiting()}
            for c in batch:
                self._slots[c] = None
            return batch

    def _waiting(self) -> list[Hashable]:
        return [c for c in self.cameras if self._slots[c] is not None]


__all__ = ['FrameSlots']
