#!/usr/bin/env python3
"""What segment_node costs on top of the model: latency (receipt -> last output published)
minus model time, per frame, at 360x480 and 1024x2048, over real DDS.

  .venv/bin/python scripts/node_overhead.py [--model NAME_OR_DIR] [--threads 2] [--json OUT]

Frames go one at a time (the next is sent once the previous one's ~/frame_stats is back), so
nothing queues or drops. 'all outputs' subscribes to every image output (the node renders and
publishes all six); 'labels only' to ~/labels, the cheapest useful configuration. Model time
is Pipeline.infer's: the network plus arg-max/confidence at full resolution. The input is a
real CamVid val frame (0016E5_07959, resized to 1024x2048 for the large size), so the exits are
those of a real scene.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dovit_ros.ros.harness import (LARGE_DATA, Client, NodeProcess, diag_values,  # noqa: E402
                                   fresh_domain_id, image_msg, make_test_model, ros_env)
from dovit_ros.ros.node import FRAME_STATS, IMAGE_OUTPUTS  # noqa: E402
from dovit_ros.runtime.device import cpu_model_name, resolve_precision  # noqa: E402

SIZES = ((360, 480), (1024, 2048))


FRAME = Path(__file__).resolve().parents[1].parent / 'shared/data/camvid/val/images' / \
    '0016E5_07959.jpg'


def frame_at(h: int, w: int) -> np.ndarray:
    import cv2
    from dovit_ros.data.base import read_image
    if FRAME.is_file():
        img = read_image(FRAME)
        return img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h))
    print(f'({FRAME} not found: random pixels)')
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def measure(client, pub, h, w, frames, names, first_sec):
    img = frame_at(h, w)
    stats = client.outputs[FRAME_STATS]
    warm = client.send_until_output(pub, lambda s: image_msg(img, s), (first_sec, 0), names,
                                    timeout=300.0, period=10.0)
    if warm is None:
        raise SystemExit('no output from segment_node')
    rows = []
    for k in range(frames):
        s = (first_sec, 1000 + k)
        pub.publish(image_msg(img, s))
        if not client.spin_until(lambda s=s: client.got(s, names), 300.0):
            raise SystemExit(f'frame {s} got no output')
        kv = diag_values(stats[s].status[0])
        rows.append((float(kv['latency ms']), float(kv['model ms'])))
    a = np.array(rows)
    over = a[:, 0] - a[:, 1]
    return dict(latency=np.median(a[:, 0]), model=np.median(a[:, 1]),
                over=np.median(over), over95=np.percentile(over, 95), n=len(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', help='model name or directory (default: camvid-dovit-tiny if '
                    'installed, else a random-weight test model)')
    ap.add_argument('--threads', type=int, default=2, help='torch threads of the node')
    ap.add_argument('--json', help='also write the rows here')
    ap.add_argument('--precision', default='auto', help="the node's precision parameter")
    ap.add_argument('--frames', type=int, nargs=2, default=(20, 5), metavar=('SMALL', 'LARGE'))
    a = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    model = a.model
    if model is None:
        from dovit_ros.runtime.pipeline import resolve_model_path
        try:
            model = str(resolve_model_path('camvid-dovit-tiny'))
        except ValueError:
            model = str(make_test_model(Path(tmp.name) / 'test-model'))
            print('(camvid-dovit-tiny not installed: random-weight test model, dim 32)')
    domain = fresh_domain_id()
    env = ros_env(domain, LARGE_DATA, threads=a.threads)
    client = Client(domain, LARGE_DATA, name='overhead_client')
    pub = client.image_publisher('/overhead/image', 'reliable')
    node = NodeProcess(['-p', f'model:={model}', '-r', 'image:=/overhead/image',
                        '-p', 'qos_reliability:=reliable', '-p', f'threads:={a.threads}',
                        '-p', f'precision:={a.precision}'], env)
    rows = []
    try:
        if not node.wait_for('ready', 300.0):
            raise SystemExit(node.output)
        print(f'CPU: {cpu_model_name()}, {os.cpu_count()} cores, load average '
              f'{os.getloadavg()[0]:.2f} at start; node torch threads {a.threads}; '
              f'model {model}')
        print(f'{"outputs":12s} {"size":>10s} {"frames":>6s} {"latency":>9s} {"model":>9s} '
              f'{"overhead":>9s} {"p95":>7s}   (ms, medians)')
        sec = 10
        for label, names in (('all outputs', list(IMAGE_OUTPUTS) + [FRAME_STATS]),
                             ('labels only', ['labels', FRAME_STATS])):
            client.unsubscribe()
            client.subscribe(names)
            for (h, w), n in zip(SIZES, a.frames):
                sec += 1
                r = measure(client, pub, h, w, n, names, sec)
                rows.append({'outputs': label, 'height': h, 'width': w,
                             **{k: float(v) for k, v in r.items()}})
                print(f'{label:12s} {f"{h}x{w}":>10s} {r["n"]:6d} {r["latency"]:9.1f} '
                      f'{r["model"]:9.1f} {r["over"]:9.1f} {r["over95"]:7.1f}', flush=True)
        print(f'load average at the end {os.getloadavg()[0]:.2f}')
        if a.json:
            Path(a.json).write_text(json.dumps({'cpu': cpu_model_name(), 'cores': os.cpu_count(),
                                                'model': model, 'threads': a.threads,
                                                'precision': resolve_precision(a.precision),
                                                'rows': rows}, indent=1) + '\n')
    finally:
        node.stop()
        client.close()
        tmp.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
