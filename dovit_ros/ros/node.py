"""`segment_node`: segments a camera stream with a DoViT/DToP model, publishing at the input
resolution under ~/ (labels, confidence, color, overlay, exit_stage, exit_stage_color,
frame_stats) and the compute budget on /diagnostics once a second.

Threads: the executor (main thread) runs the subscription callback, the parameter services
and the diagnostics timer; the callback only stores the newest serialized message in a
one-slot buffer (an older unprocessed one is dropped and counted). One worker thread
deserializes, decodes, segments and publishes, so a slow frame never builds a backlog and
the parameter services stay responsive while the model runs. With the `cameras` parameter
each camera has its own slot and topics (ros/cameras.py), and the worker runs every camera's
waiting frame as one batch (one packed forward).

Usage: segment_node --ros-args -r image:=/camera/image_raw -p model:=camvid-dovit-tiny

This module is the light entry point (names and `main`); the rclpy node is in
`dovit_ros.ros.segmenter`, imported once the signal handlers are in place.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from ..runtime.outputs import FRAME_STATS, IMAGE_OUTPUTS  # noqa: F401 - names for users
from .names import EXIT_STARTUP, NODE_NAME  # noqa: F401


def main(argv: list[str] | None = None, fast_exit: bool = True) -> int:
    """Run the node until SIGINT/SIGTERM; the exit code (0, or EXIT_STARTUP when it could not
    start). The signal handlers come first, so a signal during the imports (torch, rclpy:
    seconds) or the model's warm-up also ends the process with 0. With `fast_exit` the process
    ends right after ROS has shut down (os._exit): interpreter teardown with torch loaded
    takes over a second, and a signalled node should be gone well within two."""
    argv = list(sys.argv if argv is None else argv)
    stop = threading.Event()
    state = {'spinning': False, 'exit_on_hang': fast_exit}

    def on_signal(signum, _frame):
        stop.set()
        if not state['spinning']:   # still importing or loading the model: abandon it
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    # Before torch loads OpenMP: idle threads sleep instead of spinning, so that a node
    # sharing its cores with other work does not steal them from it (scripts/threads_bench.py)
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    code, clean = 0, True
    try:
        from .segmenter import run
        code, clean = run(argv, stop, state)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    if fast_exit or not clean or 'failed' in state:
        # Not clean: the worker is still inside the model; don't let teardown race it.
        # Failed start-up: DDS was deliberately not torn down (see segmenter.run).
        os._exit(code)
    return code


if __name__ == '__main__':
    sys.exit(main())
