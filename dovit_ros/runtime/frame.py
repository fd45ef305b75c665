"""The work on one frame, shared by `segment_node` and `dovit-bag process`; ROS-free.

  message -> decode (image_codec; rejections counted) -> model with this frame's exits ->
  the subscribed image outputs as sensor_msgs/Image fields -> frame stats -> compute record

The callers only move messages: the node deserializes, publishes with rclpy and times the
publication; the bag tool reads and writes rosbags messages. What a frame produces, and how
it is counted in the diagnostics, exists here once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

from ..model import ExitConfig
from .compressed import OVERLAY_COMPRESSED, jpeg_fields
from .image_codec import DEFAULT_MAX_PIXELS, FrameRejected, decode_any
from .outputs import IMAGE_OUTPUTS, check_outputs, output_fields, render_outputs
from .pipeline import FrameResult, Pipeline
from .stats import ComputeStats, FrameRecord, frame_stats, frame_threshold


class CostObserver(Protocol):
    """A compute-budget controller (runtime.budget.BudgetChooser): told what each frame cost."""

    def observe(self, result: FrameResult, frame_ms: float) -> object: ...


@dataclass
class Frame:
    """One segmented frame: its exit settings, the model's result, and the wanted image
    outputs as message fields (no header: the caller copies the input's onto each)."""
    shape: tuple[int, ...]       # (H, W, 3) of the decoded input
    exits: ExitConfig
    result: FrameResult
    fields: dict[str, dict]
    t_received: float            # seconds, the caller's clock
    jpeg: dict | None = None     # ~/overlay/compressed CompressedImage fields, when wanted


class FrameProcessor:
    """decode -> segment -> finish, around one Pipeline and one ComputeStats.

    as_numpy: image fields with NumPy data (rosbags messages) instead of bytes (rclpy).
    """

    def __init__(self, pipe: Pipeline, stats: ComputeStats | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, as_numpy: bool = False):
        self.pipe = pipe
        self.stats = stats if stats is not None else ComputeStats()
        self.max_pixels = max_pixels
        self.as_numpy = as_numpy

    def decode(self, msg) -> np.ndarray:
        """Image or CompressedImage -> (H, W, 3) uint8 RGB. A frame that cannot be used is
        counted under its reason and raised as FrameRejected (the caller logs it)."""
        try:
            rgb = decode_any(msg, self.max_pixels)
        except FrameRejected as e:
            self.stats.on_rejected(e.reason)
            raise
        # a view of a read-only message buffer (rosbags): torch warns on it, cv2 may write
        return rgb if rgb.flags.writeable else rgb.copy()

    def segment(self, image: np.ndarray, exits: ExitConfig, wanted: Iterable[str],
                alpha: float, t_received: float, jpeg_quality: int = 80) -> Frame:
        """The model on `image` with `exits`, then only the `wanted` outputs (image outputs
        and OVERLAY_COMPRESSED, the overlay as JPEG at `jpeg_quality`)."""
        return self.segment_many([image], exits, [wanted], alpha, [t_received],
                                 jpeg_quality)[0]

    def segment_many(self, images: Sequence[np.ndarray], exits: ExitConfig,
                     wanted: Sequence[Iterable[str]], alpha: float,
                     t_received: Sequence[float], jpeg_quality: int = 80) -> list[Frame]:
        """Frames of several cameras as one packed forward (Pipeline.infer_many); wanted[i]
        are the outputs subscribed for frame i's camera."""
        wanted = [check_outputs(w, (*IMAGE_OUTPUTS, OVERLAY_COMPRESSED)) for w in wanted]
        results = self.pipe.infer_many(images, exits)
        return [self._frame(im, exits, r, w, alpha, t, jpeg_quality)
                for im, r, w, t in zip(images, results, wanted, t_received)]

    def _frame(self, image: np.ndarray, exits: ExitConfig, result: FrameResult,
               wanted: set[str], alpha: float, t_received: float, jpeg_quality: int) -> Frame:
        jpeg = OVERLAY_COMPRESSED in wanted
        images = wanted - {OVERLAY_COMPRESSED}
        need = images | {'overlay'} if jpeg else images
        arrays = render_outputs(self.pipe, image, result, need, alpha)
        return Frame(shape=image.shape, exits=exits, result=result,
                     fields=output_fields({n: a for n, a in arrays.items() if n in images},
                                          as_numpy=self.as_numpy),
                     t_received=t_received,
                     jpeg=jpeg_fields(arrays['overlay'], jpeg_quality) if jpeg else None)

    def stats_message(self, frame: Frame, latency_ms: float) -> tuple[str, dict[str, str]]:
        """(message, key/values) of the frame's ~/frame_stats status."""
        return frame_stats(frame.shape, frame.result, frame.exits, latency_ms)

    def finish(self, frame: Frame, t_published: float,
               budget: CostObserver | None = None) -> float:
        """Record the frame (its outputs are out at `t_published`) and tell the budget
        controller its cost; returns the latency in ms."""
        latency_ms = (t_published - frame.t_received) * 1e3
        if budget is not None:
            budget.observe(frame.result, latency_ms)
        r = frame.result
        total = max(r.tokens_total, 1)
        self.stats.on_processed(FrameRecord(
            t_received=frame.t_received, t_published=t_published, model_ms=r.model_ms,
            tokens_active=[n / total for n in r.tokens_per_stage], gflops=r.gflops,
            gflops_full=r.gflops_full, threshold=frame_threshold(frame.exits),
            policy=frame.exits.policy))
        return latency_ms


__all__ = ['Frame', 'FrameProcessor', 'CostObserver']
