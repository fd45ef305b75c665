"""Reliability: random valid and invalid parameter updates while frames stream.

A mirror of the node's configuration (dovit_ros.ros.params: the same table and FrameConfig)
predicts whether each update must be accepted. Updates touch one parameter
(set_parameters) or several at once (set_parameters_atomically), valid or not: out of range,
NaN, wrong type, unknown choice, read-only. Pass: the node accepts exactly the valid ones and
gives a reason for every rejection; every frame's ~/frame_stats (xi, policy, top-k) is one of the
configurations actually in force between the frame's sending and its outputs' arrival (never a
mix of an old xi with a new policy from one atomic update), in order; the parameters read back
at the end equal the mirror; no Traceback in the node log.

With a compute-budget target on (target_gflops or target_latency_ms > 0) the controller chooses
xi per frame: such a frame must then carry that configuration's policy and top-k and a xi within
its [threshold_min, threshold_max]. Dynamic parameters this test does not know only get wrongly
typed values.

scripts/soak.py params runs more updates (docs/reliability.md).
"""
from __future__ import annotations

import math
import re
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from dovit_ros.ros.harness import (Client, NodeProcess, diag_values, fresh_domain_id,
                                   image_msg, make_test_model, ros_env)
from dovit_ros.ros.node import FRAME_STATS
from dovit_ros.ros.params import BY_NAME, DYNAMIC, FrameConfig
from dovit_ros.runtime.artifacts import read_meta

DOMAIN = fresh_domain_id()
H, W = 64, 96
KNOWN = ('threshold', 'policy', 'topk_per_class', 'overlay_alpha', 'target_latency_ms',
         'target_gflops', 'threshold_min', 'threshold_max')
FRAME_PERIOD_S = 0.02


def frame_key(cfg: FrameConfig) -> tuple[str, str, str]:
    """What ~/frame_stats reports of a configuration without a compute budget."""
    return f'{cfg.threshold:.4f}', cfg.exits.policy, str(cfg.exits.topk_per_class)


def frame_matches(cfg: FrameConfig, got: tuple[str, str, str]) -> bool:
    """Whether a frame's (xi, policy, top-k) could come from configuration `cfg`."""
    if cfg.budget() is None:
        return got == frame_key(cfg)
    policy = cfg.exits.policy if cfg.exits.policy != 'none' else 'threshold'
    return (got[1:] == (policy, str(cfg.exits.topk_per_class))
            and cfg.threshold_min - 1e-4 <= float(got[0]) <= cfg.threshold_max + 1e-4)


def valid_value(name: str, rng):
    if name == 'threshold':
        return round(float(rng.uniform(0.0, 1.0)), 4)
    if name == 'policy':
        return str(rng.choice(['none', 'threshold', 'dtop']))
    if name == 'topk_per_class':
        return int(rng.integers(0, 20))
    if name == 'overlay_alpha':
        return round(float(rng.uniform(0.0, 1.0)), 3)
    if name in ('threshold_min', 'threshold_max'):
        return round(float(rng.uniform(0.5, 1.0)), 3)
    if rng.random() < 0.4:   # a budget target: off ...
        return 0.0
    if name == 'target_gflops':   # ... or on (the test model costs ~0.01 GFLOPs a frame)
        return round(float(rng.uniform(0.001, 0.05)), 4)
    return round(float(rng.uniform(1.0, 50.0)), 1)   # target_latency_ms


INVALID = {
    'threshold': [1.5, -0.1, math.nan, math.inf, 'high', 1, True],
    'policy': ['fastest', '', 'DTOP', 3, 0.5],
    'topk_per_class': [-1, 10**9, 2.5, 'five'],
    'overlay_alpha': [2.0, -1.0, math.nan, 'half'],
    'target_latency_ms': [-5.0, math.inf, 1e12, 'soon'],
    'target_gflops': [-1.0, math.nan, 1e7, 'lots', 3],
    'threshold_min': [1.5, -0.1, 'low'],
    'threshold_max': [2.0, math.nan, 1],
}
READ_ONLY = {'model': 'other', 'device': 'cpu', 'backend': 'eager', 'precision': 'fp16'}


def random_update(rng, extra: tuple[str, ...]) -> dict:
    """One to three parameters, each valid (70 %) or not; sometimes a read-only or an extra
    dynamic parameter (always wrongly typed)."""
    n = 1 if rng.random() < 0.5 else int(rng.integers(2, 4))
    names = list(rng.choice(KNOWN, size=n, replace=False))
    out = {}
    for name in names:
        if rng.random() < 0.7:
            out[name] = valid_value(name, rng)
        else:
            bad = INVALID[name]
            out[name] = bad[int(rng.integers(0, len(bad)))]
    r = rng.random()
    if r < 0.05:
        name = str(rng.choice(list(READ_ONLY)))
        out[name] = READ_ONLY[name]
    elif r < 0.12 and extra:
        out[str(rng.choice(extra))] = 'not a number'
    return out


def predict(cfg: FrameConfig, update: dict) -> FrameConfig | None:
    """The configuration after `update`, or None when the node must reject it."""
    kinds = {float: float, int: int, str: str}
    for name, value in update.items():
        spec = BY_NAME[name]
        if spec.read_only or type(value) is not kinds[spec.kind] or spec.check(value):
            return None
    try:
        return cfg.updated({k: v for k, v in update.items() if k in DYNAMIC})
    except ValueError:
        return None


def reason_kind(reason: str) -> str:
    """A rejection reason without its values, to count reasons by kind."""
    text = re.sub(r"'[^']*'", 'V', reason.split('. ')[0])
    text = re.sub(r'-?\b\d+(\.\d+)?(e[+-]?\d+)?\b|\bnan\b|\binf\b', 'N', text)
    return ' '.join(text.split()[:9])


@dataclass
class ChaosReport:
    updates: int = 0
    applied: int = 0
    rejected: int = 0
    atomic: int = 0
    mispredicted: list = field(default_factory=list)
    reasons: dict = field(default_factory=dict)       # first words of each reason -> count
    configs: int = 1                                   # distinct configurations in force
    budget_frames: int = 0                             # frames run with a budget target on
    frames_sent: int = 0
    frames_checked: int = 0
    inconsistent: list = field(default_factory=list)
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        return [f'parameter chaos: {self.updates} updates ({self.atomic} atomic multi-parameter)'
                f' in {self.wall_s:.1f} s: {self.applied} applied, {self.rejected} rejected, '
                f'{len(self.mispredicted)} not as predicted',
                f'  frames: {self.frames_sent} sent, {self.frames_checked} processed and '
                f'checked against {self.configs} configurations ({self.budget_frames} with a '
                f'compute budget on), {len(self.inconsistent)} inconsistent',
                '  rejections by reason: ' + '; '.join(f'{v} x {k}' for k, v in
                                                       sorted(self.reasons.items()))]


class ChaosNode:
    def __init__(self, domain: int, model_dir, echo: bool = False):
        self.topic = '/chaos_cam/image'
        self.proc = NodeProcess(['-r', '__ns:=/chaos', '-p', f'model:={model_dir}',
                                 '-r', f'image:={self.topic}'], ros_env(domain), echo=echo)
        self.client = Client(domain, namespace='/chaos', name='chaos_client')
        self.pub = self.client.node.create_publisher(
            Image, self.topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.meta = read_meta(model_dir)

    def start(self, timeout: float = 120.0) -> None:
        assert self.proc.wait_for('ready', timeout), self.proc.output
        assert self.client.wait_matched(self.pub), self.proc.output
        self.client.subscribe(['labels', 'overlay', FRAME_STATS])
        img = np.random.default_rng(0).integers(0, 256, (H, W, 3), np.uint8)
        assert self.client.send_until_output(self.pub, lambda s: image_msg(img, s), (1, 0)), \
            self.proc.output

    def close(self) -> None:
        self.proc.stop(signal.SIGKILL, timeout=0)
        self.client.close()


def run_chaos(cn: ChaosNode, n_updates: int, seed: int = 0, log=None) -> ChaosReport:
    c = cn.client
    pc = AsyncParameterClient(c.node, f'{c.prefix}')
    assert c.spin_until(pc.services_are_ready, 30.0)
    extra = tuple(n for n in DYNAMIC if n not in KNOWN)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (H, W, 3), np.uint8)
    mirror = FrameConfig(exits=cn.meta.exits)
    fut = pc.get_parameters(['threshold', 'policy', 'topk_per_class'])
    assert c.spin_until(fut.done, 20.0)
    now = [parameter_value_to_python(v) for v in fut.result().values]
    assert (f'{now[0]:.4f}', now[1], str(now[2])) == frame_key(mirror)
    history = [mirror]
    rep = ChaosReport()
    frames: dict[tuple[int, int], list[int]] = {}   # stamp -> [lowest, highest] index
    pending = None   # (future, update, predicted, atomic)
    t0 = time.monotonic()
    next_frame, next_update = t0, t0
    done = 0
    while done < n_updates or pending is not None:
        now_t = time.monotonic()
        if now_t >= next_frame:
            stamp = (2000 + rep.frames_sent // 1000, rep.frames_sent % 1000)
            cn.pub.publish(image_msg(img, stamp))
            frames[stamp] = [len(history) - 1, None]
            rep.frames_sent += 1
            next_frame = now_t + FRAME_PERIOD_S
        if pending is None and done < n_updates and now_t >= next_update:
            update = random_update(rng, extra)
            params = [Parameter(k, value=v) for k, v in update.items()]
            atomic = len(params) > 1
            fut = pc.set_parameters_atomically(params) if atomic else pc.set_parameters(params)
            pending = (fut, update, predict(mirror, update), atomic)
        if pending is not None and pending[0].done():
            fut, update, predicted, atomic = pending
            res = fut.result()
            res = res.result if atomic else res.results[0]
            rep.updates += 1
            rep.atomic += atomic
            if res.successful != (predicted is not None):
                rep.mispredicted.append((update, res.successful, res.reason))
            if res.successful:
                rep.applied += 1
                mirror = predicted if predicted is not None else mirror
                history.append(mirror)
            else:
                rep.rejected += 1
                assert res.reason, update
                key = reason_kind(res.reason)
                rep.reasons[key] = rep.reasons.get(key, 0) + 1
            pending = None
            done += 1
            next_update = time.monotonic() + float(rng.uniform(0.0, 0.04))
            if log and done % 200 == 0:
                log(f'  {done}/{n_updates} updates')
        for stamp, arr in c.outputs.get(FRAME_STATS, {}).items():
            if stamp in frames and frames[stamp][1] is None:
                # the update in flight may already be in force
                frames[stamp][1] = len(history) - 1 + (pending is not None)
        c.executor.spin_once(timeout_sec=0.002)
    c.spin_for(0.5)
    for stamp, arr in c.outputs.get(FRAME_STATS, {}).items():
        if stamp in frames and frames[stamp][1] is None:
            frames[stamp][1] = len(history) - 1
    rep.wall_s = time.monotonic() - t0
    # every processed frame: a configuration in force between its sending and its outputs,
    # and in order (greedy: the earliest matching index at or after the previous frame's)
    at = 0
    for stamp in sorted(frames):
        lo, hi = frames[stamp]
        if hi is None:
            continue   # dropped (the node keeps only the newest frame)
        kv = diag_values(c.outputs[FRAME_STATS][stamp].status[0])
        got = (kv['threshold'], kv['policy'], kv['topk per class'])
        rep.frames_checked += 1
        match = [i for i in range(max(lo, at), hi + 1) if frame_matches(history[i], got)]
        if not match:
            rep.inconsistent.append((stamp, got, [frame_key(h) for h in history[lo:hi + 1]]))
        else:
            at = match[0]
            rep.budget_frames += history[at].budget() is not None
    rep.configs = len({repr(h) for h in history})
    # the parameters read back equal the mirror
    fut = pc.get_parameters(list(KNOWN))
    assert c.spin_until(fut.done, 20.0)
    back = dict(zip(KNOWN, (parameter_value_to_python(v) for v in fut.result().values)))
    want = {'threshold': mirror.threshold, 'policy': mirror.exits.policy,
            'topk_per_class': mirror.exits.topk_per_class,
            **{k: getattr(mirror, k) for k in KNOWN[3:]}}
    assert back == pytest.approx(want), (back, want)
    return rep


def check_chaos(rep: ChaosReport, proc: NodeProcess) -> None:
    assert proc.proc.poll() is None, 'the node died'
    assert not rep.mispredicted, rep.mispredicted[:5]
    assert rep.applied and rep.rejected and rep.atomic
    assert rep.frames_checked >= rep.frames_sent // 4
    assert not rep.inconsistent, rep.inconsistent[:5]
    assert 'Traceback' not in proc.output and 'frame failed' not in proc.output


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp('model') / 'tiny')


def test_parameter_chaos_while_streaming(model_dir):
    cn = ChaosNode(DOMAIN, model_dir)
    try:
        cn.start()
        rep = run_chaos(cn, n_updates=80, seed=0)
        print('\n'.join(rep.lines()))
        check_chaos(rep, cn.proc)
        assert cn.proc.stop(signal.SIGINT, timeout=10.0) == 0, cn.proc.output[-3000:]
    finally:
        cn.close()
