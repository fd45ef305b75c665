"""camera_info beside the input image, republished with each segmented frame's header.

image_transport's CameraSubscriber convention: the camera_info of an image topic `.../image_raw`
is its sibling `.../camera_info`, so remapping `image` moves camera_info with it (unless
`camera_info` itself is remapped). The outputs have the input's resolution, so the camera's
intrinsics hold for them unchanged; republishing the newest camera_info under `~/camera_info`
with the header of every segmented frame lets rviz2's Camera display and downstream projection
pair it with `~/labels` and the other outputs by stamp.

Missing camera_info is normal (many bags and test cameras have none): then nothing is
published on `~/camera_info`, and diagnostics say so.

With several cameras (the `cameras` parameter) each has its own relay: `front/camera_info`
(remappable) beside `front/image`, republished on `~/front/camera_info`.
"""
from __future__ import annotations

import posixpath
import threading
import time

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo


def camera_info_topic(node, image_topic: str, prefix: str = '') -> str:
    """The camera_info topic for a resolved image topic: `{prefix}camera_info` when remapped,
    else the image topic's sibling (image_transport's rule)."""
    own = node.resolve_topic_name(f'{prefix}camera_info')
    unmapped = node.resolve_topic_name(f'{prefix}camera_info', only_expand=True)
    if own != unmapped:
        return own
    return posixpath.join(posixpath.dirname(image_topic.rstrip('/')) or '/', 'camera_info')


class CameraInfoRelay:
    """Keeps the newest CameraInfo of the input camera; `publish(header)` republishes it on
    `~/camera_info` stamped like a segmented frame. Thread-safe: the subscription callback
    runs on the executor, `publish` on the node's worker thread."""

    def __init__(self, node, image_topic: str, output_qos: QoSProfile, prefix: str = ''):
        self.topic = camera_info_topic(node, image_topic, prefix)
        self._lock = threading.Lock()
        self._latest: CameraInfo | None = None
        self._t_last = None       # monotonic time of the newest one received
        self.received = 0
        self.published = 0
        # Best effort accepts reliable and best-effort camera drivers alike; depth 1: only
        # the newest calibration matters.
        sub_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)
        self._sub = node.create_subscription(
            CameraInfo, self.topic, self._on_info, sub_qos,
            qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._pub = node.create_publisher(
            CameraInfo, f'~/{prefix}camera_info', output_qos,
            qos_overriding_options=QoSOverridingOptions.with_default_policies())

    def _on_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._latest, self._t_last = msg, time.monotonic()
            self.received += 1

    def publish(self, header) -> bool:
        """Republish the newest camera_info with `header`; False when none has come yet."""
        with self._lock:
            info = self._latest
        if info is None:
            return False
        out = CameraInfo(header=header, height=info.height, width=info.width,
                         distortion_model=info.distortion_model, d=info.d, k=info.k,
                         r=info.r, p=info.p, binning_x=info.binning_x,
                         binning_y=info.binning_y, roi=info.roi)
        self._pub.publish(out)
        self.published += 1
        return True

    def status(self) -> str:
        """One line for diagnostics: whether camera_info flows."""
        with self._lock:
            t_last, n = self._t_last, self.received
        if t_last is None:
            return f'none received on {self.topic} (~/camera_info not published)'
        age = time.monotonic() - t_last
        return (f'flowing from {self.topic}: {n} received, newest {age:.1f} s ago, '
                f'{self.published} republished')
