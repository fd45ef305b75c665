"""The node's outputs, named once: image topics with their encodings, and the per-frame stats.

`render_outputs` makes the image arrays from one FrameResult; `output_fields` turns them into
sensor_msgs/Image fields. The frame processor (runtime/frame.py) calls both for the node and
`dovit-bag process`, so the two can never disagree on what an output contains. This module
imports neither torch nor ROS: the node's light entry point reads the names from here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

from .image_codec import image_fields
from .viz import color_stages

if TYPE_CHECKING:
    from .pipeline import FrameResult, Pipeline

# ~/<name> image outputs -> ROS image encoding
OUTPUTS = {
    'labels': 'mono8',            # class ids
    'confidence': '32FC1',        # max softmax probability
    'color': 'rgb8',              # palette image
    'overlay': 'rgb8',            # input blended with the palette
    'exit_stage': 'mono8',        # decision stage each pixel's token left at (0 = reached the end)
    'exit_stage_color': 'rgb8',   # exit_stage in colours (viewers show mono8 stages as black)
}
IMAGE_OUTPUTS = tuple(OUTPUTS)
FRAME_STATS = 'frame_stats'       # ~/frame_stats: one DiagnosticArray per frame
ALL_OUTPUTS = (*IMAGE_OUTPUTS, FRAME_STATS)


def check_outputs(names: Iterable[str], known: Iterable[str] = IMAGE_OUTPUTS) -> set[str]:
    names, known = set(names), tuple(known)
    unknown = names - set(known)
    if unknown:
        raise ValueError(f'unknown output(s) {sorted(unknown)}; known: {list(known)}')
    return names


def render_outputs(pipe: 'Pipeline', image: np.ndarray, result: 'FrameResult',
                   wanted: Iterable[str] = OUTPUTS, alpha: float = 0.5) -> dict[str, np.ndarray]:
    """Only the outputs asked for are computed (colour and overlay are not free at 2048x1024)."""
    wanted = check_outputs(wanted)
    out: dict[str, np.ndarray] = {}
    if 'labels' in wanted:
        out['labels'] = result.labels
    if 'confidence' in wanted:
        out['confidence'] = result.confidence.astype(np.float32, copy=False)
    if 'color' in wanted or 'overlay' in wanted:
        color = pipe.color(result)
        if 'color' in wanted:
            out['color'] = color
        if 'overlay' in wanted:
            out['overlay'] = pipe.overlay(image, result, alpha, color=color)
    if 'exit_stage' in wanted or 'exit_stage_color' in wanted:
        stages = result.exit_stage()
        if 'exit_stage' in wanted:
            out['exit_stage'] = stages
        if 'exit_stage_color' in wanted:
            out['exit_stage_color'] = color_stages(
                stages, len(pipe.meta.architecture.decision_points))
    return out


def output_fields(outputs: dict[str, np.ndarray], as_numpy: bool = False) -> dict[str, dict]:
    """Output name -> sensor_msgs/Image fields (no header): the node builds rclpy messages and
    the bag tool rosbags messages from these same fields (`as_numpy` for rosbags)."""
    return {name: image_fields(arr, OUTPUTS[name], as_numpy=as_numpy)
            for name, arr in outputs.items()}


__all__ = ['OUTPUTS', 'IMAGE_OUTPUTS', 'FRAME_STATS', 'ALL_OUTPUTS', 'check_outputs',
           'render_outputs', 'output_fields']
