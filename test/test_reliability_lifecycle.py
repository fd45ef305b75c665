"""Reliability: signals in the middle of a frame, restart, and a simulated clock that jumps back.

test_node.py already checks that SIGINT (idle node) and SIGTERM (after a compressed frame) exit
with 0 and that start-up failures exit with 2. Here the signal lands while the worker is inside
the model: a 1024x2048 frame (about a second of inference with the test model on this CPU) is
sent, and the signal follows once the node's process has used 0.2 s of CPU time on it. Pass:
exit code 0 within 2 s, no Traceback; a restart with the same parameters segments again.

Clock jumps: the node runs with use_sim_time while `dovit-bag play --loop --clock` replays a
0.4 s bag, so /clock jumps back at every loop. Pass: the node keeps segmenting, every output
header is an input header (stamp and frame_id) of the bag, and /diagnostics keep coming (the
node's 1 Hz diagnostics timer runs on the steady clock: a ROS-time timer never fires when
the simulated time loops in under a second).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from dovit_ros.bag import MakeConfig, make_bag
from dovit_ros.ros.harness import (Client, NodeProcess, fresh_domain_id, image_msg,
                                   make_test_model, ros_env, stamp_of)
from dovit_ros.ros.node import FRAME_STATS

DOMAIN = fresh_domain_id()
EXIT_LIMIT_S = 2.0
BUSY_CPU_S = 0.2
T0 = 1_700_000_000


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp('model') / 'tiny')


@pytest.fixture(scope='module')
def client():
    c = Client(DOMAIN, namespace='/life', name='life_client')
    yield c
    c.close()


def start(model_dir, client, pub, first_stamp) -> NodeProcess:
    proc = NodeProcess(['-r', '__ns:=/life', '-p', f'model:={model_dir}',
                        '-r', 'image:=/life_cam/image', '-p', 'qos_reliability:=reliable',
                        '-p', 'threshold:=0.8'], ros_env(DOMAIN))
    assert proc.wait_for('ready', 120), proc.output
    assert client.wait_matched(pub), proc.output
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    stamp = client.send_until_output(pub, lambda s: image_msg(img, s), first_stamp)
    assert stamp is not None, proc.output
    return proc


def signal_during_inference(proc: NodeProcess, client, pub, sig: int, stamp) -> dict:
    """Send a 1024x2048 frame, wait until the node is busy with it, signal; how it ended."""
    big = np.random.default_rng(1).integers(0, 256, (1024, 2048, 3), np.uint8)
    pid = proc.proc.pid
    cpu0 = cpu_s(pid)
    pub.publish(image_msg(big, stamp))
    busy = client.spin_until(lambda: cpu_s(pid) - cpu0 >= BUSY_CPU_S, 30.0)
    out_before = client.got(stamp)
    t = time.monotonic()
    proc.proc.send_signal(sig)
    try:
        rc = proc.proc.wait(10.0)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t
    proc.stop(signal.SIGKILL, timeout=0)
    return {'busy': busy, 'outputs_before_signal': out_before, 'rc': rc, 'exit_s': took}


def test_sigint_and_sigterm_during_inference_then_restart(model_dir, client):
    pub = client.node.create_publisher(Image, '/life_cam/image',
                                       QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    client.subscribe(['labels', FRAME_STATS])
    results = {}
    procs = []
    try:
        for i, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
            # the second start is the restart: same parameters, same topics
            proc = start(model_dir, client, pub, (10 + i, 0))
            procs.append(proc)
            r = signal_during_inference(proc, client, pub, sig, (20 + i, 0))
            results[signal.Signals(sig).name] = r
            print(signal.Signals(sig).name, r)
            assert r['busy'] and not r['outputs_before_signal'], r   # inside the frame
            assert r['rc'] == 0, proc.output[-3000:]
            assert r['exit_s'] < EXIT_LIMIT_S, r
            assert 'Traceback' not in proc.output, proc.output[-3000:]
    finally:
        for p in procs:
            p.stop(signal.SIGKILL, timeout=0)
        client.node.destroy_publisher(pub)


@pytest.fixture(scope='module')
def short_bag(tmp_path_factory):
    """5 frames of 64x96 at 10 Hz: 0.4 s of bag time, stamps from T0."""
    d = tmp_path_factory.mktemp('frames')
    rng = np.random.default_rng(2)
    for i in range(5):
        cv2.imwrite(str(d / f'{i}.png'), rng.integers(0, 256, (64, 96, 3), np.uint8))
    bag = d.parent / 'short.mcap'
    make_bag(MakeConfig(d, bag, rate=10.0, start_time=float(T0), frame_id='cam_sim',
                        progress=False))
    return bag


def default_sigint() -> None:
    """In the child: SIGINT back to its default. A background job of a non-interactive shell
    (`cmd &` in a script, as a soak run may be started) inherits SIGINT ignored, and Python then
    never raises KeyboardInterrupt: the player would not stop on SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_clock_jumps(model_dir, bag, seconds: float, domain: int = DOMAIN) -> dict:
    """segment_node with use_sim_time under `dovit-bag play --loop --clock`; what came out."""
    stamps = {(T0, int(round(i * 1e8))) for i in range(5)}
    c = Client(domain, namespace='/sim', name='sim_client')
    proc = NodeProcess(['-r', '__ns:=/sim', '-p', f'model:={model_dir}',
                        '-r', 'image:=/camera/image_raw', '-p', 'use_sim_time:=true'],
                       ros_env(domain))
    clock: list[float] = []
    seen = {'outputs': 0, 'bad_headers': [], 'after_jump': 0}
    jumps = [0]

    def on_clock(m):
        t = m.clock.sec + m.clock.nanosec * 1e-9
        if clock and t < clock[-1]:
            jumps[0] += 1
        clock.append(t)

    def on_output(name, msg):
        seen['outputs'] += 1
        seen['after_jump'] += jumps[0] > 0
        if stamp_of(msg) not in stamps or msg.header.frame_id != 'cam_sim':
            seen['bad_headers'].append((name, stamp_of(msg), msg.header.frame_id))
    play = None
    try:
        assert proc.wait_for('ready', 120), proc.output
        c.node.create_subscription(Clock, '/clock', on_clock, QoSProfile(depth=100))
        c.subscribe(['labels', 'overlay', FRAME_STATS], on_message=on_output)
        play = subprocess.Popen(   # faulthandler: a stack dump should it ever hang
            [sys.executable, '-X', 'faulthandler', '-m', 'dovit_ros.cli.bag', 'play', str(bag),
             '--loop', '--clock', '20', '--wait-for-subscribers', '30'], env=ros_env(domain),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=default_sigint)
        assert c.spin_until(lambda: clock, 30.0), 'no /clock'
        n_diag = len(c.diagnostics)
        c.spin_for(seconds)
        diags = [a for a in c.diagnostics[n_diag:]
                 if any(s.name.startswith('dovit_segmenter') for s in a.status)]
        play.send_signal(signal.SIGINT)
        t = time.monotonic()
        try:
            play_out = play.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            play.send_signal(signal.SIGABRT)   # faulthandler prints every thread's stack
            play_out = 'did not exit within 20 s of SIGINT:\n' + play.communicate(timeout=20)[0]
        player_exit_s = time.monotonic() - t
        alive = proc.proc.poll() is None
        rc = proc.stop(signal.SIGINT)
        return {'clock_messages': len(clock), 'backward_jumps': jumps[0],
                'outputs': seen['outputs'], 'outputs_after_a_jump': seen['after_jump'],
                'bad_headers': seen['bad_headers'], 'diagnostics': len(diags),
                'diagnostic_stamps_sim': all(T0 <= a.header.stamp.sec <= T0 + 1 for a in diags),
                'alive': alive, 'rc': rc, 'seconds': seconds,
                'traceback': 'Traceback' in proc.output, 'player_rc': play.returncode,
                'player_exit_s': round(player_exit_s, 2), 'player': play_out.strip()}
    finally:
        if play is not None and play.poll() is None:
            play.kill()
        proc.stop(signal.SIGKILL, timeout=0)
        c.close()


def test_clock_jumping_back_with_use_sim_time(model_dir, short_bag):
    r = run_clock_jumps(model_dir, short_bag, seconds=3.0)
    print({k: v for k, v in r.items() if k != 'player'})
    assert r['alive'] and r['rc'] == 0 and not r['traceback']
    assert r['player_rc'] == 0, r['player']
    assert r['backward_jumps'] >= 3
    assert r['outputs_after_a_jump'] > 0 and not r['bad_headers']
    assert r['diagnostics'] >= 2 and r['diagnostic_stamps_sim']
