"""rosbags message objects (Header, Image, CompressedImage, DiagnosticArray) from plain values.

Image fields come from `runtime.image_codec.image_fields` / `runtime.outputs.output_fields` and
diagnostics from `runtime.stats.ComputeStats.report`, the same sources the live node uses, so
a processed bag holds exactly what the node would have published.
"""
from __future__ import annotations

import numpy as np

from .storage import COMPRESSED, IMAGE, typestore

DIAGNOSTIC_ARRAY = 'diagnostic_msgs/msg/DiagnosticArray'


def _t(name: str):
    return typestore().types[name]


def time_msg(ns: int):
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return _t('builtin_interfaces/msg/Time')(sec=sec, nanosec=nanosec)


def header(stamp_ns: int, frame_id: str):
    return _t('std_msgs/msg/Header')(stamp=time_msg(stamp_ns), frame_id=frame_id)


def stamp_ns(hdr) -> int:
    return int(hdr.stamp.sec) * 1_000_000_000 + int(hdr.stamp.nanosec)


def image_msg(hdr, fields: dict):
    """sensor_msgs/Image from `image_fields(..., as_numpy=True)`."""
    return _t(IMAGE)(header=hdr, **fields)


def compressed_msg(hdr, fmt: str, payload: bytes):
    return _t(COMPRESSED)(header=hdr, format=fmt, data=np.frombuffer(payload, np.uint8))


def diagnostic_array(hdr, name: str, level: int, message: str, values: dict[str, str],
                     hardware_id: str = ''):
    """One DiagnosticStatus holding `values` (the key/values of ComputeStats.report)."""
    kv = _t('diagnostic_msgs/msg/KeyValue')
    status = _t('diagnostic_msgs/msg/DiagnosticStatus')(
        level=int(level), name=name, message=message, hardware_id=hardware_id,
        values=[kv(key=str(k), value=str(v)) for k, v in values.items()])
    return _t(DIAGNOSTIC_ARRAY)(header=hdr, status=[status])
