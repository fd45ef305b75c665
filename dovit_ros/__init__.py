"""dovit_ros: early-exit ViT semantic segmentation for ROS 2."""
__version__ = '0.1.0'
