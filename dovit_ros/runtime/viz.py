"""Viewable colour images of the exit-stage map (ROS-free).

~/exit_stage holds stage numbers (1..D = left at that decision point, 0 = ran every block),
which look black in viewers that do not stretch mono8, rviz2 among them. The node's
~/exit_stage_color and the demo's PNGs map them to colours: early exits green, later ones
yellow to orange, tokens that ran the whole network red.
"""
from __future__ import annotations

import numpy as np

_GREEN, _YELLOW, _ORANGE = np.array([30, 170, 60]), np.array([240, 210, 40]), \
    np.array([245, 120, 30])
FULL_DEPTH = (200, 30, 40)   # stage 0: the token ran every block


def stage_lut(num_decision_points: int) -> np.ndarray:
    """(256, 3) uint8 colour for each stage value; values above D are grey."""
    lut = np.full((256, 3), 128, np.uint8)
    lut[0] = FULL_DEPTH
    d = max(int(num_decision_points), 1)
    for k in range(1, d + 1):
        t = (k - 1) / max(d - 1, 1)   # 0 for the first decision point, 1 for the last
        c = _GREEN + (_YELLOW - _GREEN) * (2 * t) if t <= 0.5 else \
            _YELLOW + (_ORANGE - _YELLOW) * (2 * t - 1)
        lut[k] = np.round(c).astype(np.uint8)
    return lut


def apply_lut(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through a (256, 3) uint8 table. For uint8 maps,
    OpenCV's per-channel LUT on the map repeated in 3 channels: 0.30 ms against NumPy's 1.41 ms
    (`lut[values]`) at 360x480, paid for every colour output of every frame."""
    if values.dtype != np.uint8 or values.ndim != 2 or lut.shape != (256, 3):
        return lut[values]
    import cv2
    return cv2.LUT(cv2.cvtColor(values, cv2.COLOR_GRAY2RGB),
                   np.ascontiguousarray(lut, np.uint8).reshape(256, 1, 3))


def color_stages(stages: np.ndarray, num_decision_points: int) -> np.ndarray:
    """(H, W) uint8 stage map -> (H, W, 3) uint8 RGB."""
    return apply_lut(stages, stage_lut(num_decision_points))
