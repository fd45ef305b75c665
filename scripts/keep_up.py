#!/usr/bin/env python3
"""Does segment_node keep up with a camera? The shipped clip played at its recorded 15 Hz into
the node over real DDS, every output subscribed, counting the frames that come out.

  .venv/bin/python scripts/keep_up.py [--model NAME_OR_DIR] [--threads 2] [--frames 300] \
      [--param target_latency_ms:=60.0] \
      [--rate 15] [--json out.json]

Frames are the clip's (config/demo/camvid_0016E5_30f.mcap, 360x480, looped), each with a new
stamp, published best effort at `--rate` Hz on a wall-clock schedule, as a camera driver
would; the node's one-slot buffer drops what it cannot process. Reported: frames out on
~/labels (and on every output) / frames sent, and the node's own latency and model time
(medians of ~/frame_stats).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dovit_ros.bag.storage import BagReader  # noqa: E402
from dovit_ros.ros.harness import (LARGE_DATA, Client, NodeProcess, diag_values,  # noqa: E402
                                   fresh_domain_id, image_msg, ros_env)
from dovit_ros.runtime.device import cpu_model_name, resolve_precision  # noqa: E402
from dovit_ros.runtime.image_codec import decode_any  # noqa: E402
from dovit_ros.runtime.outputs import FRAME_STATS, IMAGE_OUTPUTS  # noqa: E402

CLIP = Path(__file__).resolve().parents[1] / 'config' / 'demo' / 'camvid_0016E5_30f.mcap'


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (Linux /proc)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def clip_frames(path: Path) -> list[np.ndarray]:
    with BagReader(path) as bag:
        topic, _ = bag.image_topic(None)
        return [np.ascontiguousarray(decode_any(m.decode())) for m in bag.messages([topic])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='camvid-dovit-tiny')
    ap.add_argument('--threads', type=int, default=2, help="the node's threads parameter")
    ap.add_argument('--frames', type=int, default=300)
    ap.add_argument('--rate', type=float, default=15.0)
    ap.add_argument('--precision', default='auto', help="the node's precision parameter")
    ap.add_argument('--omp-wait-policy', choices=('ACTIVE', 'PASSIVE'),
                    help="the node's OMP_WAIT_POLICY (default: the node's own, PASSIVE)")
    ap.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                    help="another node parameter, e.g. target_latency_ms:=60.0 (repeatable)")
    ap.add_argument('--json')
    a = ap.parse_args(argv)
    for p in a.param:
        if ':=' not in p:
            ap.error(f'--param {p!r}: expected NAME:=VALUE')
    frames = clip_frames(CLIP)
    domain = fresh_domain_id()
    env = ros_env(domain, LARGE_DATA, threads=None)
    if a.omp_wait_policy:
        env['OMP_WAIT_POLICY'] = a.omp_wait_policy
    client = Client(domain, LARGE_DATA, name='keep_up_client')
    names = list(IMAGE_OUTPUTS) + [FRAME_STATS]
    client.subscribe(names)
    pub = client.image_publisher('/keep_up/image', 'best_effort')
    node = NodeProcess(['-p', f'model:={a.model}', '-r', 'image:=/keep_up/image',
                        '-p', f'threads:={a.threads}', '-p', f'precision:={a.precision}',
                        *[arg for p in a.param for arg in ('-p', p)]], env)
    try:
        if not node.wait_for('ready', 300.0):
            raise SystemExit(node.output)
        warm = client.send_until_output(pub, lambda s: image_msg(frames[0], s), (1, 0), names,
                                        timeout=120.0, period=1.0)
        if warm is None:
            raise SystemExit('no output from segment_node\n' + node.output)
        client.spin_for(1.0)
        load0 = os.getloadavg()[0]
        cpu0 = (cpu_seconds(node.proc.pid), time.process_time())
        period, t0 = 1.0 / a.rate, time.monotonic()
        sent = []
        for k in range(a.frames):
            while time.monotonic() < t0 + k * period:   # keep the executor busy in between
                client.spin_for(min(0.005, max(0.0, t0 + k * period - time.monotonic())))
            s = (100, k)
            pub.publish(image_msg(frames[k % len(frames)], s))
            sent.append(s)
        send_s = time.monotonic() - t0
        cpu1 = (cpu_seconds(node.proc.pid), time.process_time())
        client.spin_for(3.0)   # the last frame's outputs
        got = {n: sum(1 for s in sent if s in client.outputs[n]) for n in names}
        stats = [diag_values(client.outputs[FRAME_STATS][s].status[0]) for s in sent
                 if s in client.outputs[FRAME_STATS]]
        r = {'cpu': cpu_model_name(), 'cores': os.cpu_count(), 'model': a.model,
             'threads': a.threads, 'precision': resolve_precision(a.precision, 'cpu'),
             'omp_wait_policy': a.omp_wait_policy or 'PASSIVE', 'params': a.param,
             'rate_hz': a.rate, 'frames_sent': len(sent),
             'frames_out': got, 'fraction_out': got['labels'] / len(sent),
             'latency_ms_median': float(np.median([float(k['latency ms']) for k in stats])),
             'model_ms_median': float(np.median([float(k['model ms']) for k in stats])),
             # the exits the frames ran with (the compute budget steers xi per frame)
             'threshold_median': float(np.median([float(k['threshold']) for k in stats])),
             'gflops_median': float(np.median([float(k['gflops']) for k in stats])),
             'wall_s': time.monotonic() - t0, 'load_avg_start': load0,
             # cores used while sending: the node (model, rendering, DDS) and this
             # subscriber (receiving every output), which share the machine's cores
             'node_cores': (cpu1[0] - cpu0[0]) / send_s,
             'subscriber_cores': (cpu1[1] - cpu0[1]) / send_s,
             'load_avg_end': os.getloadavg()[0]}
        print(json.dumps(r, indent=1))
        if a.json:
            Path(a.json).write_text(json.dumps(r, indent=1) + '\n')
    finally:
        node.stop()
        client.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
