"""Rolling compute-budget statistics and their diagnostics report, free of ROS.

The node turns `report()` into a diagnostic_msgs/DiagnosticStatus every second; `dovit-bag
process` writes the same key/values into the output bag and prints `summary()` at the end.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np

OK, WARN, ERROR = 0, 1, 2


@dataclass
class FrameRecord:
    t_received: float      # seconds, monotonic
    t_published: float
    model_ms: float
    tokens_active: list[float]  # fraction of tokens in each stage
    gflops: float
    gflops_full: float
    threshold: float
    policy: str


class ComputeStats:
    """Thread-safe: the subscription callback counts frames in/dropped/rejected, the worker
    adds processed frames; `report` reads a consistent snapshot."""

    def __init__(self, window: int = 100):
        self._lock = threading.Lock()
        self.frames: collections.deque[FrameRecord] = collections.deque(maxlen=window)
        self.received: collections.deque[float] = collections.deque(maxlen=window)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self._dropped_reported = 0   # drops already seen by a report: WARN only on new ones
        self.rejected: collections.Counter[str] = collections.Counter()

    def on_received(self, t: float) -> None:
        with self._lock:
            self.frames_in += 1
            self.received.append(t)

    def on_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def on_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def on_processed(self, rec: FrameRecord) -> None:
        with self._lock:
            self.frames_out += 1
            self.frames.append(rec)

    @staticmethod
    def _rate(ts) -> float:
        ts = list(ts)
        return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0

    def report(self, target_latency_ms: float = 0.0, extra: dict | None = None
               ) -> tuple[int, str, dict[str, str]]:
        """(level, message, key/values) over the current window."""
        with self._lock:
            frames = list(self.frames)
            fps_in = self._rate(self.received)
            fps_out = self._rate([f.t_published for f in frames])
            dropped, rejected = self.dropped, dict(self.rejected)
            new_drops = dropped - self._dropped_reported
            self._dropped_reported = dropped
            n_in, n_out = self.frames_in, self.frames_out
        kv: dict[str, str] = {'frames in': str(n_in), 'frames out': str(n_out),
                              'fps in': f'{fps_in:.2f}', 'fps out': f'{fps_out:.2f}',
                              'frames dropped': str(dropped),
                              'frames rejected': str(sum(rejected.values()))}
        for reason, n in sorted(rejected.items()):
            kv[f'rejected {reason}'] = str(n)
        level, msgs = OK, []
        if frames:
            lat = np.array([(f.t_published - f.t_received) * 1e3 for f in frames])
            gf = np.array([f.gflops for f in frames])
            full = frames[-1].gflops_full
            act = np.mean([f.tokens_active for f in frames], axis=0)
            p50, p95 = np.percentile(lat, [50, 95])
            kv.update({
                'latency p50 ms': f'{p50:.1f}', 'latency p95 ms': f'{p95:.1f}',
                'model ms mean': f'{np.mean([f.model_ms for f in frames]):.1f}',
                'tokens active per stage': ', '.join(f'{a:.3f}' for a in act),
                'gflops per frame': f'{gf.mean():.2f}', 'gflops full model': f'{full:.2f}',
                'gflops saved pct': f'{100 * (1 - gf.mean() / full):.1f}' if full else '0.0',
                'threshold': f'{frames[-1].threshold:.4f}', 'policy': frames[-1].policy,
            })
            if target_latency_ms > 0 and p95 > target_latency_ms:
                level = WARN
                msgs.append(f'latency p95 {p95:.0f} ms over target {target_latency_ms:.0f} ms')
        if new_drops:
            level = max(level, WARN)
            msgs.append(f'{new_drops} frames dropped since the last report')
        for k, v in (extra or {}).items():
            kv[k] = str(v)
        return level, '; '.join(msgs) or ('ok' if frames else 'waiting for images'), kv


def frame_threshold(exits) -> float:
    """xi of an ExitConfig as one number (the largest when there is one per decision point)."""
    t = exits.threshold
    return float(max(t)) if isinstance(t, (list, tuple)) else float(t)


def frame_stats(shape, result, exits, latency_ms: float) -> tuple[str, dict[str, str]]:
    """(message, key/values) of one frame's `~/frame_stats` status: the node and
    `dovit-bag process` publish exactly this."""
    kv = {'width': shape[1], 'height': shape[0],
          'latency ms': f'{latency_ms:.1f}', 'model ms': f'{result.model_ms:.1f}',
          'gflops': f'{result.gflops:.3f}', 'gflops full model': f'{result.gflops_full:.3f}',
          'gflops saved pct': f'{result.saved_pct:.1f}',
          'tokens per stage': ', '.join(map(str, result.tokens_per_stage)),
          'tokens total': result.tokens_total,
          'threshold': f'{frame_threshold(exits):.4f}', 'policy': exits.policy,
          'topk per class': exits.topk_per_class}
    message = (f'{result.gflops:.2f} of {result.gflops_full:.2f} GFLOPs '
               f'({result.saved_pct:.1f}% saved)')
    return message, {k: str(v) for k, v in kv.items()}
