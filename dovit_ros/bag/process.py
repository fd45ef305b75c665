"""Offline segmentation of a bag: every image on a topic through the node's pipeline, as fast as
the machine allows, into a new bag with the input and every output topic of the node.

Per frame: the node's own frame processor (runtime/frame.py: decode, infer, render, message
fields, stats), giving <namespace>/{labels, confidence, color, overlay, exit_stage,
exit_stage_color} (Image) and <namespace>/frame_stats (DiagnosticArray, one per frame), all
with the input's header and logged at the input's log time (as if inference took no time), so
input and outputs line up in Foxglove. /diagnostics holds ComputeStats.report() key/values
under the node's status name, in bag time: its latency is this machine's processing time per
frame. Messages are streamed one at a time; nothing grows with the length of the bag.

The exit settings of each frame come from one `ExitChooser` (FixedExits by default), the hook
for a compute-budget controller that picks the threshold frame by frame from what it observes.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..model import ExitConfig
from ..runtime.budget import THRESHOLD_MIN, BudgetChooser, budget_from
from ..runtime.frame import Frame, FrameProcessor
from ..runtime.image_codec import DEFAULT_MAX_PIXELS, UNDECODABLE, FrameRejected
from ..runtime.outputs import ALL_OUTPUTS, FRAME_STATS
from ..runtime.pipeline import FrameResult, Pipeline
from ..runtime.stats import ComputeStats, frame_threshold
from .messages import DIAGNOSTIC_ARRAY, diagnostic_array, header, image_msg
from .storage import COMPRESSED, IMAGE, BagError, BagReader, BagWriter

log = logging.getLogger(__name__)
WARNINGS_PER_REASON = 5   # then one line saying the rest are not shown
DIAGNOSTICS_TOPIC = '/diagnostics'


class ExitChooser(Protocol):
    """Where each frame's ExitConfig comes from; `observe` is told what the frame cost."""

    def __call__(self) -> ExitConfig: ...

    def observe(self, result: FrameResult, frame_ms: float) -> None: ...


@dataclass
class FixedExits:
    exits: ExitConfig

    def __call__(self) -> ExitConfig:
        return self.exits

    def observe(self, result: FrameResult, frame_ms: float) -> None:
        pass


@dataclass
class ProcessConfig:
    in_bag: Path
    out_bag: Path
    model: str = ''                      # name or directory (unused when a Pipeline is given)
    topic: str | None = None             # None: the bag's only image topic
    threshold: float | None = None       # None: the model's default exits
    policy: str | None = None
    topk: int | None = None
    outputs: Sequence[str] = ALL_OUTPUTS
    overlay_alpha: float = 0.5
    namespace: str = '/dovit_segmenter'
    diagnostics_period: float = 1.0      # s of bag time between diagnostics; 0: every frame
    target_gflops: float = 0.0           # compute budget (0 = off): xi steered per frame
    target_latency_ms: float = 0.0
    threshold_min: float = THRESHOLD_MIN
    threshold_max: float = 1.0
    device: str = 'auto'
    precision: str = 'auto'
    input_scale: float = 1.0             # segment frames resized by this (outputs keep size)
    storage: str | None = None
    chunk_compression: bool = True
    overwrite: bool = False
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        self.in_bag, self.out_bag = Path(self.in_bag), Path(self.out_bag)
        self.outputs = tuple(self.outputs)
        unknown = sorted(set(self.outputs) - set(ALL_OUTPUTS))
        if unknown:
            raise ValueError(f'unknown output(s) {", ".join(unknown)}; known: '
                             f'{", ".join(ALL_OUTPUTS)}')
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f'overlay alpha must be in [0, 1], got {self.overlay_alpha}')
        if not (math.isfinite(self.diagnostics_period) and self.diagnostics_period >= 0):
            raise ValueError(f'diagnostics period must be >= 0 s, got {self.diagnostics_period}')
        self.namespace = '/' + self.namespace.strip('/')

    def exits(self, default: ExitConfig) -> ExitConfig:
        changes = {k: v for k, v in (('policy', self.policy), ('threshold', self.threshold),
                                     ('topk_per_class', self.topk)) if v is not None}
        return default.with_(**changes)


@dataclass
class ProcessSummary:
    in_bag: str
    out_bag: str
    topic: str
    frames_in: int = 0
    frames_out: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    gflops_mean: float = 0.0
    gflops_full: float = 0.0
    saved_pct: float = 0.0
    model_ms_mean: float = 0.0
    frame_ms_mean: float = 0.0          # decode + model + render + serialize + write
    tokens_per_stage: list[float] = field(default_factory=list)   # mean fraction active
    wall_s: float = 0.0
    messages: dict[str, int] = field(default_factory=dict)        # written, per topic
    budget: dict[str, str] = field(default_factory=dict)          # controller report, if any

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f'{self.frames_out}/{self.frames_in} frames of {self.topic} processed in '
               f'{self.wall_s:.1f} s -> {self.out_bag}']
        if self.frames_out:
            out += [f'  GFLOPs per frame {self.gflops_mean:.3f} vs {self.gflops_full:.3f} full '
                    f'({self.saved_pct:.1f} % saved)',
                    f'  model {self.model_ms_mean:.1f} ms, whole frame {self.frame_ms_mean:.1f} '
                    'ms (mean)',
                    '  tokens active per stage: '
                    + ', '.join(f'{v:.3f}' for v in self.tokens_per_stage)]
        for reason, n in sorted(self.skipped.items()):
            out.append(f'  skipped {n}: {reason}')
        if self.budget:
            out.append('  ' + ', '.join(f'{k}: {v}' for k, v in self.budget.items()))
        return out


class _Run:
    """State of one pass: sums for the summary, rejection counting, diagnostics timing."""

    def __init__(self, cfg: ProcessConfig, pipe: Pipeline, out: BagWriter, choose: ExitChooser,
                 summary: ProcessSummary, msgtype: str):
        self.cfg, self.pipe, self.out, self.choose, self.s = cfg, pipe, out, choose, summary
        self.topic = summary.topic
        self.transport = 'compressed' if msgtype == COMPRESSED else 'raw'
        self.stats = ComputeStats()
        self.frames = FrameProcessor(pipe, self.stats, cfg.max_pixels, as_numpy=True)
        self.sums = {'gflops': 0.0, 'model_ms': 0.0, 'frame_ms': 0.0}
        self.tokens = np.zeros(0)
        self.next_diag: int | None = None
        self.last_diag = -1
        self.node = cfg.namespace.rsplit('/', 1)[-1] or 'dovit_segmenter'
        self.wanted = set(cfg.outputs)
        self.images = self.wanted - {FRAME_STATS}
        self.device = str(pipe.device)
        self.extra: dict[str, str] = {}

    def reject(self, where: str, reason: str, message: str) -> None:
        n = self.s.skipped.get(reason, 0) + 1
        self.s.skipped[reason] = n
        if n <= WARNINGS_PER_REASON:
            more = ' (further ones of this kind not shown)' if n == WARNINGS_PER_REASON else ''
            log.warning('%s: frame skipped: %s%s', where, message, more)

    def frame(self, m) -> None:
        t_in = m.log_time / 1e9
        self.stats.on_received(t_in)
        where = f'{self.cfg.in_bag} {m.topic} @ {t_in:.3f} s'
        t0 = time.perf_counter()
        try:
            msg = m.decode()
        except Exception as e:  # noqa: BLE001 - damaged CDR bytes in an intact bag
            self.stats.on_rejected(UNDECODABLE)
            self.reject(where, UNDECODABLE, f'message could not be deserialized ({e})')
            return
        try:
            rgb = self.frames.decode(msg)
        except FrameRejected as e:   # counted in stats by the processor
            self.reject(where, e.reason, e.message)
            return
        exits = self.choose()
        frame = self.frames.segment(rgb, exits, self.images, self.cfg.overlay_alpha, t_in)
        for name, f in frame.fields.items():
            self.out.write(f'{self.cfg.namespace}/{name}', IMAGE, m.log_time,
                           image_msg(msg.header, f))
        frame_ms = (time.perf_counter() - t0) * 1e3
        # bag time stands still while a frame is processed: its latency is the work's time
        self.frames.finish(frame, t_in + frame_ms / 1e3, self.choose)
        if FRAME_STATS in self.wanted:
            self.out.write(f'{self.cfg.namespace}/{FRAME_STATS}', DIAGNOSTIC_ARRAY, m.log_time,
                           self.frame_stats(msg.header, frame, frame_ms))
        self.count(frame, frame_ms)

    def count(self, frame: Frame, frame_ms: float) -> None:
        result, exits = frame.result, frame.exits
        self.extra.update({'configured threshold': f'{frame_threshold(exits):.4f}',
                           'configured policy': exits.policy,
                           'configured topk per class': str(exits.topk_per_class)})
        if hasattr(self.choose, 'report'):
            self.extra.update(self.choose.report())
        active = np.asarray(result.tokens_per_stage, float) / max(result.tokens_total, 1)
        self.s.frames_out += 1
        self.sums['gflops'] += result.gflops
        self.sums['model_ms'] += result.model_ms
        self.sums['frame_ms'] += frame_ms
        self.tokens = active if not len(self.tokens) else self.tokens + active
        self.s.gflops_full = result.gflops_full

    def frame_stats(self, hdr, frame: Frame, latency_ms: float):
        """The node's ~/frame_stats message (same message and key/values)."""
        message, kv = self.frames.stats_message(frame, latency_ms)
        return diagnostic_array(hdr, f'{self.node}: frame', 0, message, kv,
                                hardware_id=self.device)

    def diagnostics(self, t: int, final: bool = False) -> None:
        """At most one per diagnostics_period of bag time, and one at the end."""
        if self.next_diag is None:
            self.next_diag = t + int(self.cfg.diagnostics_period * 1e9)
        if t == self.last_diag or (not final and t < self.next_diag):
            return
        extra = {'model': str(getattr(self.pipe, 'model_path', self.cfg.model)),
                 'backend': 'eager', 'device': self.device, 'precision': self.pipe.precision,
                 'input scale': f'{self.pipe.input_scale:g}', 'input topic': self.topic,
                 'input transport': self.transport, **self.extra}
        level, message, kv = self.stats.report(0.0, extra)
        self.out.write(DIAGNOSTICS_TOPIC, DIAGNOSTIC_ARRAY, t, diagnostic_array(
            header(t, ''), f'{self.node}: compute budget', level, message, kv,
            hardware_id=self.device))
        self.last_diag = t
        period = int(self.cfg.diagnostics_period * 1e9)
        if period <= 0:
            self.next_diag = t + 1
        else:   # the first period boundary after t
            self.next_diag += period * ((t - self.next_diag) // period + 1)

    def finish(self, wall_s: float) -> None:
        s, n = self.s, self.s.frames_out
        s.wall_s = wall_s
        s.messages = dict(self.out.counts)
        if n:
            s.gflops_mean = self.sums['gflops'] / n
            s.saved_pct = 100 * (1 - s.gflops_mean / s.gflops_full) if s.gflops_full else 0.0
            s.model_ms_mean = self.sums['model_ms'] / n
            s.frame_ms_mean = self.sums['frame_ms'] / n
            s.tokens_per_stage = [float(v) for v in self.tokens / n]
        if hasattr(self.choose, 'report'):
            s.budget = self.choose.report()


def process_bag(cfg: ProcessConfig, pipe: Pipeline | None = None,
                choose_exits: ExitChooser | None = None) -> ProcessSummary:
    """Run the pipeline over every image of a topic into a new bag; returns the summary.

    `pipe` defaults to the model cfg names; `choose_exits` to FixedExits(the model's default
    exits with cfg's overrides)."""
    from tqdm import tqdm
    if cfg.out_bag.resolve() == cfg.in_bag.resolve():
        raise BagError(cfg.out_bag, 'output bag would replace the input bag')
    t_start = time.perf_counter()
    with BagReader(cfg.in_bag) as bag:
        topic, msgtype = bag.image_topic(cfg.topic)
        if pipe is None:
            pipe = Pipeline.from_path(cfg.model, cfg.device, cfg.precision,
                                      input_scale=cfg.input_scale)
        if choose_exits is None:
            exits = cfg.exits(pipe.meta.exits)
            exits.thresholds(len(pipe.meta.architecture.decision_points))  # validates count
            budget = budget_from(cfg.target_gflops, cfg.target_latency_ms, cfg.threshold_min,
                                 cfg.threshold_max)
            choose_exits = FixedExits(exits) if budget is None else BudgetChooser(exits, budget)
        summary = ProcessSummary(str(cfg.in_bag), str(cfg.out_bag), topic)
        with BagWriter(cfg.out_bag, cfg.storage, cfg.chunk_compression, cfg.overwrite) as out, \
                tqdm(total=bag.count([topic]), unit='frame', disable=not cfg.progress,
                     desc='dovit-bag process') as bar:
            run = _Run(cfg, pipe, out, choose_exits, summary, msgtype)
            t_last = None
            for m in bag.messages([topic]):
                out.write_raw(m.topic, m.msgtype, m.log_time, m.raw)  # input byte for byte
                summary.frames_in += 1
                run.frame(m)
                run.diagnostics(m.log_time)
                t_last = m.log_time
                bar.update()
            if t_last is None:
                raise BagError(cfg.in_bag, f'topic {topic} has no messages')
            run.diagnostics(t_last, final=True)
        run.finish(time.perf_counter() - t_start)
    return summary
