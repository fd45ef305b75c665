"""Publish a bag's image topics live with rclpy, at the recorded timing, optionally with /clock.

The only module of dovit_ros.bag that needs ROS: rclpy and the message packages are imported
inside `play_bag`, so reading and writing bags works without them. Messages are deserialized
with rosbags and copied field by field into rclpy messages (header included); `decompress`
turns CompressedImage into rgb8 Image on the fly (published without the `/compressed` suffix),
so a small JPEG bag can feed a node that subscribes to raw images.

Timing: message i is published when (log_time_i - log_time_0) / rate seconds have passed since
the start, measured against that absolute schedule (no drift from sleeping frame by frame).
/clock carries the bag time of the moment: at `clock_hz` and right before every message, so
a node with use_sim_time already has a clock at or past a message's stamp when it arrives.
"""
from __future__ import annotations

import array
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..runtime.image_codec import UNDECODABLE, FrameRejected, decode_compressed, image_fields
from .storage import COMPRESSED, IMAGE, BagError, BagReader

log = logging.getLogger(__name__)
RELIABILITY = ('reliable', 'best_effort')
WARNINGS_PER_REASON = 5


@dataclass
class PlayConfig:
    bag: Path
    rate: float = 1.0                    # playback speed factor
    loops: int = 1                       # 0: forever
    clock_hz: float | None = None        # publish /clock at this rate; None: no /clock
    topics: Sequence[str] | None = None  # None: every image topic
    reliability: str = 'reliable'
    depth: int = 10
    decompress: bool = False
    wait_for_subscribers: float = 0.0    # s to wait until every topic has a subscriber
    node_name: str = 'dovit_bag_player'

    def __post_init__(self):
        self.bag = Path(self.bag)
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f'rate must be > 0, got {self.rate}')
        if self.clock_hz is not None and not (math.isfinite(self.clock_hz)
                                              and self.clock_hz > 0):
            raise ValueError(f'clock rate must be > 0 Hz, got {self.clock_hz}')
        if self.reliability not in RELIABILITY:
            raise ValueError(f'reliability must be one of {", ".join(RELIABILITY)}, got '
                             f'{self.reliability!r}')
        if self.loops < 0 or self.depth < 1:
            raise ValueError('loops must be >= 0 and depth >= 1')


@dataclass
class PlaySummary:
    published: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    clock_messages: int = 0
    loops: int = 0
    wall_s: float = 0.0
    early: int = 0              # messages published before their scheduled time (a bug)
    max_late_ms: float = 0.0    # the worst lateness against the schedule (machine load)
    schedule_span_s: float = 0.0   # scheduled wall time from first to last message, loop 1

    def lines(self) -> list[str]:
        out = [f'played {self.loops} loop(s) in {self.wall_s:.1f} s',
               f'  schedule: {self.early} early, at most {self.max_late_ms:.1f} ms late; '
               f'first loop scheduled over {self.schedule_span_s:.3f} s']
        out += [f'  {t}: {n} messages' for t, n in sorted(self.published.items())]
        if self.clock_messages:
            out.append(f'  /clock: {self.clock_messages} messages')
        out += [f'  skipped {n}: {r}' for r, n in sorted(self.skipped.items())]
        return out


def select_topics(bag: BagReader, cfg: PlayConfig) -> dict[str, tuple[str, str]]:
    """Bag topic -> (live topic, live message type)."""
    images = bag.image_topics()
    if cfg.topics:
        for t in cfg.topics:
            bag.image_topic(t)   # raises BagError naming what is wrong
        chosen = {t: images[t] for t in cfg.topics}
    elif images:
        chosen = images
    else:
        raise BagError(bag.path, 'no sensor_msgs/Image or CompressedImage topics to play')
    out = {}
    for t, ty in chosen.items():
        if cfg.decompress and ty == COMPRESSED:
            base = t[:-len('/compressed')] if t.endswith('/compressed') else t
            out[t] = (base or '/', IMAGE)
        else:
            out[t] = (t, ty)
    live = [v[0] for v in out.values()]
    clash = sorted({t for t in live if live.count(t) > 1})
    if clash:
        raise BagError(bag.path, f'several bag topics would be published on {clash[0]} '
                       '(choose with --topics)')
    return out


class _Converter:
    """rosbags message -> rclpy message, field by field."""

    def __init__(self):
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import Header
        self.Image, self.CompressedImage, self.Header = Image, CompressedImage, Header

    def header(self, h):
        out = self.Header(frame_id=str(h.frame_id))
        out.stamp.sec, out.stamp.nanosec = int(h.stamp.sec), int(h.stamp.nanosec)
        return out

    @staticmethod
    def _bytes(data) -> array.array:
        buf = array.array('B')
        buf.frombytes(np.ascontiguousarray(data, np.uint8))
        return buf

    def __call__(self, msg, msgtype: str, live_type: str):
        if msgtype == live_type == IMAGE:
            return self.Image(header=self.header(msg.header), height=int(msg.height),
                              width=int(msg.width), encoding=str(msg.encoding),
                              is_bigendian=int(msg.is_bigendian), step=int(msg.step),
                              data=self._bytes(msg.data))
        if msgtype == live_type == COMPRESSED:
            return self.CompressedImage(header=self.header(msg.header), format=str(msg.format),
                                        data=self._bytes(msg.data))
        rgb = decode_compressed(msg)   # decompress: CompressedImage -> Image rgb8
        return self.Image(header=self.header(msg.header), **image_fields(rgb, 'rgb8'))


def play_bag(cfg: PlayConfig) -> PlaySummary:
    """Blocks until the bag (or its last loop) has been played, or Ctrl-C."""
    import rclpy
    from rclpy.context import Context
    from rclpy.duration import Duration
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    summary, t0 = PlaySummary(), time.monotonic()
    with BagReader(cfg.bag) as bag:
        mapping = select_topics(bag, cfg)
        ctx = Context()
        rclpy.init(context=ctx)   # a context of its own: coexists with a caller's rclpy
        node, running = None, _Running(ctx)
        restore_signals = running.catch_signals()   # until the clean-up below is done
        try:
            node = rclpy.create_node(cfg.node_name, context=ctx)
            convert = _Converter()
            qos = QoSProfile(depth=cfg.depth, history=HistoryPolicy.KEEP_LAST,
                             durability=DurabilityPolicy.VOLATILE,
                             reliability=ReliabilityPolicy.RELIABLE
                             if cfg.reliability == 'reliable' else ReliabilityPolicy.BEST_EFFORT)
            msg_class = {IMAGE: convert.Image, COMPRESSED: convert.CompressedImage}
            pubs = {t: node.create_publisher(msg_class[ty], live, qos)
                    for t, (live, ty) in mapping.items()}
            clock_pub = (node.create_publisher(Clock, '/clock', QoSProfile(depth=10))
                         if cfg.clock_hz else None)
            _wait_for_subscribers(running, list(pubs.values()), cfg.wait_for_subscribers)
            player = _Player(cfg, bag, mapping, pubs, clock_pub, Clock, convert, summary,
                             running)
            player.run()
            if running.stopped.is_set():
                log.info('playback interrupted')
            elif cfg.reliability == 'reliable':
                # Exiting right after the last write can lose samples still in flight (seen in
                # CI: the last of 6 frames); reliable writers flush until acknowledged.
                for p in pubs.values():
                    p.wait_for_all_acked(Duration(seconds=2.0))
        except (KeyboardInterrupt, ExternalShutdownException):
            # Ctrl-C on `ros2 launch` reaches the player twice (the terminal's process group,
            # then launch itself): a second one must not cut the clean-up and the summary.
            _ignore_sigint()
            log.info('playback interrupted')
        finally:
            if node is not None:
                node.destroy_node()
            ctx.try_shutdown()
            restore_signals()
            summary.wall_s = time.monotonic() - t0
    return summary


class _Running:
    """Whether playback goes on: the context is up and no SIGINT/SIGTERM has come. In the main
    thread the signals only set a flag that the loops read, never a KeyboardInterrupt: Ctrl-C
    on `ros2 launch` reaches the player twice (the terminal's process group, then launch
    itself), and a second KeyboardInterrupt landing in the clean-up cut the summary short
    (seen in test_ros2_tools' demo test)."""

    def __init__(self, ctx):
        self.ctx, self.stopped = ctx, threading.Event()

    def ok(self) -> bool:
        return self.ctx.ok() and not self.stopped.is_set()

    def catch_signals(self) -> Callable[[], None]:
        """SIGINT/SIGTERM set the flag from now on; returns what restores the handlers before.
        Off the main thread, nothing (signals go to the main thread: the caller's handling)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        sigs = (signal.SIGINT, signal.SIGTERM)
        old = {sig: signal.signal(sig, lambda *_: self.stopped.set()) for sig in sigs}
        return lambda: [signal.signal(sig, handler) for sig, handler in old.items()]


def _ignore_sigint() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_for_subscribers(ctx, pubs, timeout: float, settle: float = 0.5) -> None:
    """Until every publisher has matched a subscription, then `settle` s more: the subscriber
    side matches a little later, and a sample written before that can be lost (seen with
    0.25 s in a full CI run on 2 cores: the first of 6 frames never arrived)."""
    end = time.monotonic() + timeout
    while timeout > 0 and ctx.ok() and time.monotonic() < end:
        if all(p.get_subscription_count() > 0 for p in pubs):
            time.sleep(settle)
            return
        time.sleep(0.02)
    if timeout > 0:
        log.warning('not every topic has a subscriber after %.1f s; playing anyway', timeout)


class _Player:
    def __init__(self, cfg, bag, mapping, pubs, clock_pub, clock_type, convert, summary, ctx):
        self.cfg, self.bag, self.mapping, self.pubs = cfg, bag, mapping, pubs
        self.clock_pub, self.Clock, self.convert, self.s, self.ctx = (
            clock_pub, clock_type, convert, summary, ctx)
        self.period = 1.0 / cfg.clock_hz if cfg.clock_hz else math.inf
        self.s.published = {live: 0 for live, _ in mapping.values()}

    def publish_clock(self, bag_ns: int) -> None:
        msg = self.Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_ns), 1_000_000_000)
        self.clock_pub.publish(msg)
        self.s.clock_messages += 1

    def bag_time(self, now: float) -> int:
        """The bag time (ns) that wall time `now` stands for in the current loop."""
        return self.first + min(int((now - self.wall0) * self.cfg.rate * 1e9), self.span)

    def wait_until(self, target: float) -> None:
        """Sleep until wall time `target`, publishing /clock ticks on the way."""
        while self.ctx.ok():
            now = time.monotonic()
            if self.clock_pub is not None and self.next_tick <= min(now, target):
                self.publish_clock(self.bag_time(now))
                self.next_tick += self.period
                continue
            if now >= target:
                return
            time.sleep(min(target, self.next_tick) - now)

    def run(self) -> None:
        cfg = self.cfg
        self.next_tick = time.monotonic() if self.clock_pub is not None else math.inf
        loop = 0
        while cfg.loops == 0 or loop < cfg.loops:
            self.wall0, self.first, self.span, last, n = time.monotonic(), None, 0, None, 0
            for m in self.bag.messages(self.mapping):
                if not self.ctx.ok():
                    return
                live, live_type = self.mapping[m.topic]
                try:  # convert first, so decoding does not delay the publication
                    msg = self.convert(m.decode(), m.msgtype, live_type)
                except FrameRejected as e:
                    msg = self.skip(m, e.reason, e.message)
                except Exception as e:  # noqa: BLE001 - damaged CDR bytes
                    msg = self.skip(m, UNDECODABLE, f'message could not be deserialized ({e})')
                if self.first is None:   # the schedule starts when the first one is ready
                    self.first, self.wall0 = m.log_time, time.monotonic()
                last, n = m.log_time, n + 1
                self.span = last - self.first
                if msg is None:
                    continue
                due = self.wall0 + self.span / 1e9 / cfg.rate
                self.wait_until(due)
                if not self.ctx.ok():
                    return
                self.keep_time(due, time.monotonic(), loop)
                if self.clock_pub is not None:
                    self.publish_clock(m.log_time)
                self.pubs[m.topic].publish(msg)
                self.s.published[live] += 1
            loop += 1
            self.s.loops = loop
            if self.first is None:
                return
            if cfg.loops == 0 or loop < cfg.loops:  # one mean frame gap before starting over
                gap = self.span / (n - 1) if n > 1 else 1e8
                self.wait_until(self.wall0 + (self.span + gap) / 1e9 / cfg.rate)

    def keep_time(self, due: float, now: float, loop: int) -> None:
        """Lateness statistics of one publication (wall clock; load makes it late, never
        early: early would be a scheduling bug)."""
        self.s.early += now < due
        self.s.max_late_ms = max(self.s.max_late_ms, (now - due) * 1e3)
        if loop == 0:   # the schedule itself: recorded gaps / rate
            self.s.schedule_span_s = due - self.wall0

    def skip(self, m, reason: str, message: str) -> None:
        k = self.s.skipped[reason] = self.s.skipped.get(reason, 0) + 1
        if k <= WARNINGS_PER_REASON:
            log.warning('%s @ %.3f s: not published: %s', m.topic, m.log_time / 1e9, message)
        return None
