"""Bags for the segmenter without a ROS install: make camera bags from images or video,
process a bag offline through the node's pipeline, and (with rclpy) play one back live.

Importing this package imports neither ROS nor torch: `process` (torch) loads on first use,
and only `dovit_ros.bag.play.play_bag` needs rclpy.
"""
from .make import MakeConfig, MakeSummary, make_bag
from .storage import COMPRESSED, IMAGE, IMAGE_TYPES, BagError, BagMessage, BagReader, BagWriter

_PROCESS = ('ExitChooser', 'FixedExits', 'ProcessConfig', 'ProcessSummary', 'process_bag')

__all__ = ['MakeConfig', 'MakeSummary', 'make_bag', 'COMPRESSED', 'IMAGE', 'IMAGE_TYPES',
           'BagError', 'BagMessage', 'BagReader', 'BagWriter', *_PROCESS]


def __getattr__(name):
    if name in _PROCESS:
        from . import process
        return getattr(process, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
