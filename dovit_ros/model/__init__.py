"""Pure-PyTorch DoViT/DToP segmenter; imports nothing from ROS."""
from .config import EXIT_POLICIES, EXIT_SEMANTICS, FULL, PRESETS, ExitConfig, ViTConfig
from .fold import fold_batchnorm
from .flops import FlopsBreakdown, full_flops, segmenter_flops
from .segmenter import DoViTSegmenter, SegmentationOutput, TrainOutput

__all__ = ['EXIT_POLICIES', 'EXIT_SEMANTICS', 'FULL', 'PRESETS', 'ExitConfig', 'ViTConfig',
           'FlopsBreakdown', 'full_flops', 'segmenter_flops', 'DoViTSegmenter',
           'SegmentationOutput', 'TrainOutput', 'fold_batchnorm']
