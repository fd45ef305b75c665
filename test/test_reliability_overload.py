"""Reliability: a camera publishing at 10x the node's throughput.

The node's single-frame latency and throughput are measured first (frames sent one at a time);
then a reliable publisher sends at FACTOR x that throughput for a while. Pass: the node's
resident memory (VmRSS of its process) grows by less than 50 MB after warm-up, the frames it
does process wait at most for the frame in progress (no backlog: the median time a processed
frame spends outside the model is within 1.5x the median model time under the same load, and
latency does not grow from the first third of the run to the last), and its counters close
exactly: every frame sent reached the callback
(`frames in`), and was processed or dropped (`frames out` + `frames dropped`), none rejected.

The node's input queue is deepened with a qos_overrides parameter so that DDS itself loses
nothing and the node's own accounting can be checked against the frames sent; with the default
depth 1 a few frames are replaced in the DDS reader queue before the callback ever sees them
(counted by scripts/soak.py, docs/reliability.md). scripts/soak.py overload runs this for 60 s.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from dovit_ros.ros.harness import (Client, NodeProcess, diag_values, fresh_domain_id,
                                   image_msg, make_test_model, ros_env)
from dovit_ros.ros.node import FRAME_STATS

DOMAIN = fresh_domain_id()
H, W = 120, 160
FACTOR = 10.0
MEMORY_LIMIT_MB = 50.0
# Heavier than the other tests' model, so that 10x the node's rate stays a rate a Python
# publisher can hold on a busy 2-core machine (7-25 ms per 120x160 frame here, by host day).
MODEL = dict(dim=256, depth=8, heads=2)


def rss_mb(pid: int) -> float:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'no VmRSS for pid {pid}')


def node_counters(kv: dict) -> dict:
    return {k: int(kv.get(v, 0)) for k, v in
            {'in': 'frames in', 'out': 'frames out', 'dropped': 'frames dropped',
             'rejected': 'frames rejected', 'idle': 'frames idle (no subscribers)',
             'failed': 'frames failed'}.items()}


def settled(kv: dict) -> bool:
    c = node_counters(kv)
    return c['in'] == c['out'] + c['dropped'] + c['rejected'] + c['idle'] + c['failed']


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


@dataclass
class OverloadReport:
    single_latency_ms: list = field(default_factory=list)    # frames sent one at a time
    single_model_ms: list = field(default_factory=list)
    throughput_fps: float = 0.0
    target_hz: float = 0.0
    achieved_hz: float = 0.0
    seconds: float = 0.0
    sent: int = 0
    node: dict = field(default_factory=dict)                  # counter deltas over the run
    latency_ms: list = field(default_factory=list)            # processed under overload
    model_ms: list = field(default_factory=list)
    rss_mb: list = field(default_factory=list)                # (t, MB) during the run
    rss_warm_mb: float = 0.0                                  # after warm-up
    rss_end_mb: float = 0.0

    @property
    def wait_ms(self) -> list:
        """Per processed frame: latency minus model time (queueing, decoding, publishing)."""
        return [lat - m for lat, m in zip(self.latency_ms, self.model_ms)]

    @property
    def rss_growth_mb(self) -> float:
        return max(m for t, m in self.rss_mb if t >= 0) - self.rss_warm_mb

    def lines(self) -> list[str]:
        s, lat = self.single_latency_ms, self.latency_ms
        n = self.node
        return [
            f'single frame: latency p50 {pct(s, 50):.1f} ms, p95 {pct(s, 95):.1f} ms (model '
            f'{pct(self.single_model_ms, 50):.1f} ms), throughput {self.throughput_fps:.1f} '
            'frames/s',
            f'overload: {self.sent} frames in {self.seconds:.1f} s at {self.achieved_hz:.0f} Hz '
            f'(target {self.target_hz:.0f} Hz = {FACTOR:g}x)',
            f'  node: in {n["in"]}, out {n["out"]}, dropped {n["dropped"]}, rejected '
            f'{n["rejected"]}, failed {n["failed"]}; sent - in = {self.sent - n["in"]}',
            f'  latency of processed frames: p50 {pct(lat, 50):.1f}, p95 {pct(lat, 95):.1f}, '
            f'max {max(lat, default=float("nan")):.1f} ms ({len(lat)} frames; model p50 '
            f'{pct(self.model_ms, 50):.1f} ms, outside the model p50 '
            f'{pct(self.wait_ms, 50):.1f} ms); p50 {pct(lat, 50) / pct(s, 50):.2f}x, p95 '
            f'{pct(lat, 95) / pct(s, 50):.2f}x the single-frame p50',
            f'  VmRSS: {self.rss_warm_mb:.1f} MB after warm-up, max '
            f'{max(m for _, m in self.rss_mb):.1f}, end {self.rss_end_mb:.1f} MB (growth '
            f'{self.rss_growth_mb:+.1f} MB)']


class OverloadNode:
    def __init__(self, domain: int, model_dir, input_depth: int | None = 100,
                 echo: bool = False):
        self.topic = '/overload_cam/image'
        args = ['-r', '__ns:=/overload', '-p', f'model:={model_dir}',
                '-r', f'image:={self.topic}', '-p', 'qos_reliability:=reliable']
        if input_depth:
            args += ['-p', f'qos_overrides.{self.topic}.subscription.depth:={input_depth}']
        self.proc = NodeProcess(args, ros_env(domain), echo=echo)
        self.client = Client(domain, namespace='/overload', name='overload_client')
        self.pub = self.client.node.create_publisher(
            Image, self.topic, QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))

    def start(self, timeout: float = 120.0) -> None:
        assert self.proc.wait_for('ready', timeout), self.proc.output
        assert self.client.wait_matched(self.pub), self.proc.output
        self.client.subscribe()
        img = np.random.default_rng(0).integers(0, 256, (H, W, 3), np.uint8)
        stamp = self.client.send_until_output(self.pub, lambda s: image_msg(img, s), (1, 0))
        assert stamp is not None, self.proc.output
        self.warm_sent = stamp[1] + 1

    def diagnostics(self, predicate, timeout: float = 5.0) -> dict | None:
        return self.client.latest_diagnostics(
            lambda kv: kv.get('input topic') == self.topic and predicate(kv), timeout)

    def close(self) -> None:
        self.proc.stop(signal.SIGKILL, timeout=0)
        self.client.close()


def _stats(client, stamp) -> dict:
    return diag_values(client.outputs[FRAME_STATS][stamp].status[0])


def run_overload(on: OverloadNode, seconds: float, single_frames: int = 12,
                 warmup_s: float = 1.0, log=None) -> OverloadReport:
    c, pid = on.client, on.proc.proc.pid
    rep = OverloadReport()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (H, W, 3), np.uint8)
    # 1. single frames: latency and throughput with the worker otherwise idle
    t0 = time.monotonic()
    for i in range(single_frames):
        stamp = (10, i)
        on.pub.publish(image_msg(img, stamp))
        assert c.spin_until(lambda: c.got(stamp), 30.0), on.proc.output[-3000:]
        kv = _stats(c, stamp)
        rep.single_latency_ms.append(float(kv['latency ms']))
        rep.single_model_ms.append(float(kv['model ms']))
    rep.throughput_fps = single_frames / (time.monotonic() - t0)
    base = on.diagnostics(lambda kv: settled(kv)
                          and int(kv['frames in']) >= on.warm_sent + single_frames, 10.0)
    assert base is not None, on.proc.output[-3000:]
    before = node_counters(base)
    # 2. overload: one message object, new stamp each time (the publisher's own cost low)
    rep.target_hz = FACTOR * rep.throughput_fps
    msg = image_msg(img, (0, 0))
    period = 1.0 / rep.target_hz
    t_start = time.monotonic()
    next_t, next_rss = t_start, t_start
    while True:
        now = time.monotonic()
        if now - t_start >= seconds:
            break
        while next_t <= now:
            msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + rep.sent // 10**6, \
                rep.sent % 10**6
            on.pub.publish(msg)
            rep.sent += 1
            next_t += period
        if now >= next_rss:
            rep.rss_mb.append((now - t_start - warmup_s, rss_mb(pid)))
            next_rss += 0.25
            if log and int(now - t_start) % 10 == 0 and len(rep.rss_mb) % 40 == 0:
                log(f'  {now - t_start:.0f} s: {rep.sent} frames sent, VmRSS '
                    f'{rep.rss_mb[-1][1]:.1f} MB')
        c.executor.spin_once(timeout_sec=max(0.0, min(0.002, next_t - time.monotonic())))
    rep.seconds = time.monotonic() - t_start
    rep.achieved_hz = rep.sent / rep.seconds
    # 3. wait for the worker to go idle and the counters to take in every frame sent
    want = before['in'] + rep.sent
    kv = on.diagnostics(lambda kv: int(kv['frames in']) >= want and settled(kv), 30.0)
    if kv is None:   # some frame never reached the callback: take what the node says
        kv = on.diagnostics(settled, 5.0)
    assert kv is not None, on.proc.output[-3000:]
    after = node_counters(kv)
    rep.node = {k: after[k] - before[k] for k in after}
    rep.rss_end_mb = rss_mb(pid)
    rep.rss_mb.append((rep.seconds + 1.0, rep.rss_end_mb))
    warm = [m for t, m in rep.rss_mb if t <= 0]
    rep.rss_warm_mb = warm[-1] if warm else rep.rss_mb[0][1]
    for stamp, arr in c.outputs[FRAME_STATS].items():
        if stamp[0] >= 1000:
            kv = diag_values(arr.status[0])
            rep.latency_ms.append(float(kv['latency ms']))
            rep.model_ms.append(float(kv['model ms']))
    return rep


def check_overload(rep: OverloadReport, proc: NodeProcess) -> None:
    assert proc.proc.poll() is None, 'the node died'
    assert rep.achieved_hz >= 0.9 * rep.target_hz, 'the publisher could not hold the rate'
    n = rep.node
    assert n['in'] == rep.sent, 'frames were lost before the node saw them'
    assert n['out'] + n['dropped'] == rep.sent and n['rejected'] == n['failed'] == 0
    assert n['dropped'] >= rep.sent / 2, 'not an overload'
    assert rep.rss_growth_mb < MEMORY_LIMIT_MB
    lat = rep.latency_ms
    assert len(lat) >= 10
    # Newest frame wins: a processed frame waits at most for the one in progress, so its time
    # outside the model is below one model time (about half on average). Both are measured
    # under the same load: the 10x publisher slows the model on a 2-core machine, which is
    # contention, not a backlog. A queue would add whole model times and grow over the run.
    assert pct(rep.wait_ms, 50) <= 1.5 * pct(rep.model_ms, 50), 'a backlog builds up'
    third = len(lat) // 3
    assert pct(lat[-third:], 50) <= 2.0 * pct(lat[:third], 50), 'latency grows over the run'
    assert 'Traceback' not in proc.output and 'frame failed' not in proc.output


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp('model') / 'heavy', **MODEL)


def test_overload_drops_counted_memory_flat_no_backlog(model_dir):
    on = OverloadNode(DOMAIN, model_dir)
    try:
        on.start()
        rep = run_overload(on, seconds=8.0)
        print('\n'.join(rep.lines()))
        check_overload(rep, on.proc)
        assert on.proc.stop(signal.SIGINT, timeout=10.0) == 0, on.proc.output[-3000:]
    finally:
        on.close()
