"""The node's output images, made from one FrameResult: the node and `dovit-bag process` both
call `render_outputs`, so the two can never disagree on what an output contains."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .image_codec import image_fields
from .pipeline import FrameResult, Pipeline

# output name -> ROS image encoding
OUTPUTS = {
    'labels': 'mono8',        # class ids
    'confidence': '32FC1',    # max softmax probability
    'color': 'rgb8',          # palette image
    'overlay': 'rgb8',        # input blended with the palette
    'exit_stage': 'mono8',    # decision stage each pixel's token left at (0 = reached the end)
}


def render_outputs(pipe: Pipeline, image: np.ndarray, result: FrameResult,
                   wanted: Iterable[str] = OUTPUTS, alpha: float = 0.5) -> dict[str, np.ndarray]:
    """Only the outputs asked for are computed (colour and overlay are not free at 2048x1024)."""
    wanted = set(wanted)
    unknown = wanted - set(OUTPUTS)
    if unknown:
        raise ValueError(f'unknown output(s) {sorted(unknown)}; known: {list(OUTPUTS)}')
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
    if 'exit_stage' in wanted:
        out['exit_stage'] = result.exit_stage()
    return out


def output_fields(outputs: dict[str, np.ndarray], as_numpy: bool = False) -> dict[str, dict]:
    """Output name -> sensor_msgs/Image fields (no header): the node builds rclpy messages and
    the bag tool rosbags messages from these same fields (`as_numpy` for rosbags)."""
    return {name: image_fields(arr, OUTPUTS[name], as_numpy=as_numpy)
            for name, arr in outputs.items()}
