"""Names the node's entry point, the node and the tools share (no torch, no rclpy here)."""
NODE_NAME = 'dovit_segmenter'
EXIT_STARTUP = 2   # model or parameter problem at start-up

__all__ = ['NODE_NAME', 'EXIT_STARTUP']
