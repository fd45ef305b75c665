"""The demo's clip: the shipped rosbag2 clip found and read, its frames re-sent through rclpy.

Reading is ROS-free (rosbags); only `to_rclpy` builds rclpy messages.
"""
from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def find_clip() -> Path | None:
    """The shipped demo clip: config/demo/*.mcap in this source tree or the installed share."""
    roots = [Path(__file__).resolve().parents[2] / 'config' / 'demo',
             Path(sys.prefix) / 'share' / 'dovit_ros' / 'config' / 'demo']
    for root in roots:
        clips = sorted(root.glob('*.mcap')) if root.is_dir() else []
        if clips:
            return clips[0]
    return None


@dataclass
class Clip:
    path: Path
    topic: str
    msgtype: str
    stamps: list[tuple[int, int]]
    log_times: list[int]
    first: object   # rosbags message of the first frame

    @property
    def compressed(self) -> bool:
        return self.msgtype.endswith('CompressedImage')

    @property
    def hz(self) -> float:
        span = (self.log_times[-1] - self.log_times[0]) / 1e9
        return (len(self.log_times) - 1) / span if span > 0 else 0.0

    @property
    def base_topic(self) -> str:
        t = self.topic
        return t[:-len('/compressed')] if self.compressed and t.endswith('/compressed') else t


def read_clip(path: Path) -> Clip:
    from ..bag.storage import BagReader
    with BagReader(path) as bag:
        topic, msgtype = bag.image_topic()
        stamps, times, first = [], [], None
        for m in bag.messages([topic]):
            msg = m.decode()
            first = msg if first is None else first
            stamps.append((int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)))
            times.append(m.log_time)
    if not stamps:
        raise SystemExit(f'demo: {path} has no frames on {topic}')
    return Clip(path, topic, msgtype, stamps, times, first)


def to_rclpy(msg, compressed: bool, stamp: tuple[int, int]):
    """An rclpy Image/CompressedImage with the rosbags message's content and a new stamp."""
    from sensor_msgs.msg import CompressedImage, Image
    data = array.array('B')
    data.frombytes(np.ascontiguousarray(msg.data, np.uint8))
    if compressed:
        out = CompressedImage(format=str(msg.format), data=data)
    else:
        out = Image(height=int(msg.height), width=int(msg.width), encoding=str(msg.encoding),
                    is_bigendian=int(msg.is_bigendian), step=int(msg.step), data=data)
    out.header.frame_id = str(msg.header.frame_id)
    out.header.stamp.sec, out.header.stamp.nanosec = stamp
    return out
