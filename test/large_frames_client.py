"""A LARGE_DATA client in a process of its own, for test_node.py's camera-sized frames.

Frames over ~0.5 MB need Fast DDS's LARGE_DATA transports (TCP), and Fast DDS 3.2.3 can
deadlock deleting a participant that used TCP (see dovit_ros/ros/harness.py). The pytest
process must always be able to exit, so the client that talks TCP lives here: it publishes
`--count` frames of `--size`, waits for each one's labels, prints one JSON line (the size of
each labels image, or null where none came back) and leaves with os._exit, skipping the
participant teardown that can hang. The test kills it if it does not finish in time.

    python test/large_frames_client.py DOMAIN TOPIC --reliability best_effort --size 1024 2048
"""
import argparse
import json
import os
import sys

import numpy as np

from dovit_ros.ros.harness import LARGE_DATA, Client, image_msg
from dovit_ros.ros.node import FRAME_STATS

NAMES = ['labels', FRAME_STATS]


def run(a) -> dict:
    client = Client(a.domain, LARGE_DATA, name='large_frames_client')
    client.subscribe(NAMES)
    pub = client.image_publisher(a.topic, a.reliability)
    if not client.wait_matched(pub, a.timeout):
        return {'error': 'the node did not match the publisher', 'links': client.link_report(pub)}
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    # frames until one comes back: the node has discovered this client's subscriptions
    if client.send_until_output(pub, lambda s: image_msg(small, s), (900, 0), NAMES,
                                timeout=a.timeout) is None:
        return {'error': 'no output for small frames', 'links': client.link_report(pub)}
    big = rng.integers(0, 256, (*a.size, 3), dtype=np.uint8)
    sizes = []
    for i in range(a.count):   # each frame must arrive: no resending
        stamp = (1000 + i, 0)
        pub.publish(image_msg(big, stamp))
        if client.spin_until(lambda: client.got(stamp, NAMES), a.timeout):
            m = client.outputs['labels'][stamp]
            sizes.append([m.height, m.width])
        else:
            sizes.append(None)
    return {'sizes': sizes, 'links': client.link_report(pub)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('domain', type=int)
    ap.add_argument('topic')
    ap.add_argument('--reliability', choices=('reliable', 'best_effort'), default='reliable')
    ap.add_argument('--size', type=int, nargs=2, default=(1024, 2048), metavar=('H', 'W'))
    ap.add_argument('--count', type=int, default=3)
    ap.add_argument('--timeout', type=float, default=120.0, help='seconds per wait')
    result = run(ap.parse_args())
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)   # no participant teardown (see the docstring)


if __name__ == '__main__':
    main()
