"""QoS of the node's input and outputs.

Cameras and bag players publish reliable or best effort; rviz2 subscribes reliable. A
best-effort subscription connects to both kinds of publisher, a reliable one only to reliable
publishers. So, like image_proc, the input matches the publishers present at start-up (reliable
only when every one of them is, which keeps retransmission of lost fragments for large frames)
and is best effort otherwise. Outputs are reliable, depth 1: every subscriber connects, and a
slow subscriber gets the newest frame rather than a queue.
"""
from __future__ import annotations

from typing import Iterable

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}
NAMES = {v: k for k, v in RELIABILITY.items()}


def choose_reliability(setting: str, publishers: Iterable[ReliabilityPolicy]
                       ) -> tuple[ReliabilityPolicy, str]:
    """(reliability, why) of the input subscription for the `qos_reliability` setting and the
    reliabilities of the publishers seen at start-up."""
    if setting in RELIABILITY:
        return RELIABILITY[setting], f'set by qos_reliability:={setting}'
    if setting != 'auto':
        raise ValueError(f'qos_reliability must be auto, reliable or best_effort, got {setting!r}')
    pubs = list(publishers)
    if not pubs:
        return (ReliabilityPolicy.BEST_EFFORT,
                'no publisher yet; best effort accepts reliable and best-effort publishers')
    n_rel = sum(p == ReliabilityPolicy.RELIABLE for p in pubs)
    if n_rel == len(pubs):
        return ReliabilityPolicy.RELIABLE, f'matching {n_rel} reliable publisher(s)'
    return (ReliabilityPolicy.BEST_EFFORT,
            f'{len(pubs) - n_rel} of {len(pubs)} publisher(s) are best effort')


def input_qos(reliability: ReliabilityPolicy) -> QoSProfile:
    # Depth 1: the node only ever wants the newest frame.
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def diagnostics_qos() -> QoSProfile:
    # What diagnostic_updater uses for /diagnostics.
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE)
