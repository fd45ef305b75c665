"""Segmenting a frame at a scale of its size: the image resized before the model, the label and
confidence maps resized back, so every output keeps the camera's resolution.

The model's cost follows its token count, which follows the pixel count: at scale s a frame
costs about s^2 of the full-size one, in every part (stem, blocks, decoder, post-processing),
including the parts token exits cannot shrink. What it loses is detail: a pole 3 pixels wide is
2.4 pixels wide at 0.8. `segment_node`'s `input_scale`, `dovit-bag process --input-scale`,
`dovit-bench` and `dovit-eval --input-scale` (which measures the accuracy this costs) all go
through these functions.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

SCALE_RANGE = (0.25, 2.0)


def check_scale(scale: float) -> float:
    """The scale as a float; ValueError outside SCALE_RANGE."""
    lo, hi = SCALE_RANGE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
            math.isfinite(scale) and lo <= scale <= hi):
        raise ValueError(f'input scale must be a number in [{lo:g}, {hi:g}], got {scale!r}')
    return float(scale)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) the model sees for an (height, width) frame: rounded, at least 1 pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def scale_image(rgb: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) -> the image the model sees; the same array at scale 1. Area averaging when
    shrinking (no aliasing of fine texture), bilinear when enlarging."""
    h, w = scaled_size(*rgb.shape[:2], scale)
    if (h, w) == rgb.shape[:2]:
        return rgb
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


def to_frame_size(labels: np.ndarray, confidence: np.ndarray | None, height: int, width: int
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Label (nearest: class ids are not averaged) and confidence (bilinear) maps back to the
    frame's (height, width); unchanged when they already have it."""
    if labels.shape == (height, width):
        return labels, confidence
    labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    if confidence is not None:
        confidence = cv2.resize(confidence, (width, height), interpolation=cv2.INTER_LINEAR)
    return labels, confidence


def token_rows(n: int, seen: int, patch: int, grid: int) -> np.ndarray:
    """For each of n frame pixels along one side, the token row (or column) it fell in, when the
    model saw that side as `seen` pixels in tokens of `patch` pixels (`grid` tokens)."""
    centres = (np.arange(n) + 0.5) * (seen / n)            # in the model's pixels
    return np.minimum((centres // patch).astype(np.intp), grid - 1)
