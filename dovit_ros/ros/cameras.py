"""One camera's topics in segment_node: its input subscription, camera_info relay and outputs.

With the `cameras` parameter empty the node has one Camera named '' on `image`, publishing
under `~/` exactly as a single-camera node always has. With cameras [front, left] it has one
per name: it subscribes to `front/image` (relative, so namespaces and `-r front/image:=...`
work; `front/image/compressed` and `front/camera_info` follow it as image_transport's rules
say) and publishes the same outputs under `~/front/`. A Camera only moves messages; the work
on a frame is runtime/'s (FrameProcessor), and the node's worker runs the waiting frames of
every camera as one batch. Each camera keeps its own counters (ComputeStats), so diagnostics
and `frame_stats` are per camera.
"""
from __future__ import annotations

import time
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image

from ..runtime.compressed import OVERLAY_COMPRESSED
from ..runtime.frame import Frame, FrameProcessor
from ..runtime.image_codec import FrameRejected
from ..runtime.outputs import FRAME_STATS, IMAGE_OUTPUTS
from ..runtime.pipeline import Pipeline
from ..runtime.stats import ComputeStats
from . import qos
from .camera_info import CameraInfoRelay

REJECT_LOG_PERIOD_S = 5.0
Wanted = tuple[set[str], bool]   # (image outputs incl. overlay/compressed, frame_stats)


class Camera:
    def __init__(self, node: Node, name: str, pipe: Pipeline, transport: str,
                 hardware_id: str):
        self.node, self.name = node, name
        self.prefix = f'{name}/' if name else ''
        self.transport = transport
        self.hardware_id = hardware_id
        self.stats = ComputeStats()
        self.frames = FrameProcessor(pipe, self.stats)   # decode and finish: counted here
        self.idle = 0   # frames not segmented because none of this camera's outputs had a sub
        self.jpeg = 0   # ~/<camera>/overlay/compressed frames encoded
        self._reject_logs: dict[str, object] = {}
        self._make_publishers()

    # ---------------------------------------------------------------- topics
    def _make_publishers(self) -> None:
        # qos_overrides./dovit_segmenter/<camera>/<output>.publisher.<policy> parameters, as
        # for the input. rclpy writes an override into the profile object it is given: one
        # fresh profile per publisher, or labels' override would leak into every later output.
        def output(msg_type, name):
            return self.node.create_publisher(
                msg_type, f'~/{self.prefix}{name}', qos.output_qos(),
                qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self.image_pubs = {name: output(Image, name) for name in IMAGE_OUTPUTS}
        self.jpeg_pub = output(CompressedImage, OVERLAY_COMPRESSED)
        self.stats_pub = output(DiagnosticArray, FRAME_STATS)

    def _input_topic(self) -> str:
        base = self.node.resolve_topic_name(f'{self.prefix}image')
        if self.transport == 'raw':
            return base
        # image_transport's convention: remapping `image` moves `image/compressed` with it,
        # unless `image/compressed` itself is remapped.
        own = self.node.resolve_topic_name(f'{self.prefix}image/compressed')
        unmapped = self.node.resolve_topic_name(f'{self.prefix}image/compressed',
                                                only_expand=True)
        return own if own != unmapped else base.rstrip('/') + '/compressed'

    def subscribe(self, setting: str, deadline: float,
                  on_frame: Callable[[str, tuple[bytes, float]], None]) -> None:
        """Subscribe to this camera's input with the reliability `setting` chooses (auto: from
        the publishers seen before the monotonic `deadline`); `on_frame(name, (raw, t))`."""
        self.input_topic = self._input_topic()
        # beside `image` (before a /compressed suffix), as image_transport's CameraSubscriber
        self.camera_info = CameraInfoRelay(
            self.node, self.node.resolve_topic_name(f'{self.prefix}image'), qos.output_qos(),
            self.prefix)
        self.msg_type = Image if self.transport == 'raw' else CompressedImage
        pubs = []
        # Give discovery a moment to report publishers already up. The deadline is shared by
        # all cameras, so a silent one costs the start-up no more than one camera would.
        while setting == 'auto':
            pubs = self.node.get_publishers_info_by_topic(self.input_topic)
            if pubs or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        self.reliability, why = qos.choose_reliability(
            setting, [p.qos_profile.reliability for p in pubs])
        self.node.get_logger().info(f'input {self.input_topic} ({self.msg_type.__name__}): '
                                    f'{qos.NAMES[self.reliability]} QoS, {why}')
        self._on_frame = on_frame
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self.sub = self.node.create_subscription(
            self.msg_type, self.input_topic, self.on_image, qos.input_qos(self.reliability),
            raw=True, event_callbacks=events,
            qos_overriding_options=QoSOverridingOptions.with_default_policies())

    def _on_incompatible_qos(self, event) -> None:
        self.node.get_logger().warning(
            f'a publisher on {self.input_topic} has QoS incompatible with this '
            f'{qos.NAMES[self.reliability]} subscription (policy '
            f'{event.last_policy_kind}); its frames are not received. Restart with '
            '-p qos_reliability:=best_effort to accept every publisher.',
            throttle_duration_sec=REJECT_LOG_PERIOD_S)

    def on_image(self, raw: bytes) -> None:
        """Subscription callback: no decoding here, just hand the newest frame on."""
        t = time.monotonic()
        self.stats.on_received(t)
        self._on_frame(self.name, (raw, t))

    # ---------------------------------------------------------------- one frame
    def decode(self, raw: bytes):
        """(message, RGB image), or None when the frame is rejected (counted and logged)."""
        msg = deserialize_message(raw, self.msg_type)
        try:
            return msg, self.frames.decode(msg)
        except FrameRejected as e:
            self._reject_logger(e.reason).warning(
                f'rejected a frame on {self.input_topic}: {e.message} [{e.reason}]',
                throttle_duration_sec=REJECT_LOG_PERIOD_S)
            return None

    def _reject_logger(self, reason: str):
        # One logger object per reason: rclpy throttles per logger and call site, so each
        # reason gets its own warning every REJECT_LOG_PERIOD_S.
        if reason not in self._reject_logs:
            self._reject_logs[reason] = self.node.get_logger().get_child('input')
        return self._reject_logs[reason]

    def wanted(self) -> Wanted | None:
        """What this camera's subscribers ask for now; None (counted idle) when nothing."""
        wanted = {n for n, pub in self.image_pubs.items() if pub.get_subscription_count()}
        if self.jpeg_pub.get_subscription_count():
            wanted.add(OVERLAY_COMPRESSED)
        want_stats = self.stats_pub.get_subscription_count() > 0
        if not wanted and not want_stats:
            self.idle += 1
            return None
        return wanted, want_stats

    def publish(self, frame: Frame, header, want_stats: bool,
                stats_extra: dict[str, str] | None = None) -> float:
        """Publish a segmented frame with its input's header; returns its latency in ms."""
        for name, f in frame.fields.items():
            self.image_pubs[name].publish(Image(header=header, **f))
        if frame.jpeg is not None:
            self.jpeg_pub.publish(CompressedImage(header=header, **frame.jpeg))
            self.jpeg += 1
        self.camera_info.publish(header)
        latency_ms = self.frames.finish(frame, time.monotonic())
        if want_stats:
            message, kv = self.frames.stats_message(frame, latency_ms)
            kv.update(stats_extra or {})
            status = DiagnosticStatus(
                level=DiagnosticStatus.OK, name=f'{self.node.get_name()}: frame',
                message=message, hardware_id=self.hardware_id,
                values=[KeyValue(key=k, value=v) for k, v in kv.items()])
            self.stats_pub.publish(DiagnosticArray(header=header, status=[status]))
        return latency_ms

    # ---------------------------------------------------------------- diagnostics
    def report(self, target_latency_ms: float, extra: dict | None = None
               ) -> tuple[int, str, dict[str, str]]:
        """(level, message, key/values) of this camera over the stats window."""
        mine = {'input topic': self.input_topic, 'input transport': self.transport,
                'camera_info': self.camera_info.status(), 'overlay jpeg frames': self.jpeg,
                'input reliability': qos.NAMES[self.reliability],
                'frames idle (no subscribers)': self.idle}
        level, message, kv = self.stats.report(target_latency_ms, {**(extra or {}), **mine})
        if self.idle and not self.stats.frames_out:
            message = 'no subscriber to any output: frames are not segmented'
        return level, message, kv


__all__ = ['Camera', 'Wanted']
