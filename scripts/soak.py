#!/usr/bin/env python3
"""Long versions of the reliability tests (test/test_reliability_*.py), with their figures.

Each scenario runs the very functions of its fast test with bigger numbers and checks the same
pass criteria; the figures go to stdout (and --json). docs/reliability.md records a run.

  .venv/bin/python scripts/soak.py                    # all below, the default sizes
  .venv/bin/python scripts/soak.py overload --seconds 60 [--default-depth-seconds 20]
  .venv/bin/python scripts/soak.py fuzz --messages 2000          # per transport (raw, compressed)
  .venv/bin/python scripts/soak.py params --updates 500
  .venv/bin/python scripts/soak.py signals --repeat 5            # SIGINT and SIGTERM each
  .venv/bin/python scripts/soak.py clock --seconds 20
  .venv/bin/python scripts/soak.py flips --flips 1000            # per region, +- checksum
  .venv/bin/python scripts/soak.py train --kills 10 --steps 24
  .venv/bin/python scripts/soak.py all --json soak.json

Exit status 0 when every scenario passed. Node processes run with one torch thread each
(OMP_NUM_THREADS=1), on a fresh ROS_DOMAIN_ID.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'test')]


def log(msg: str) -> None:
    print(msg, flush=True)


def machine() -> dict:
    model = next((line.split(':', 1)[1].strip() for line in
                  subprocess.run(['lscpu'], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith('Model name')), platform.processor())
    ps = subprocess.run(['ps', '-eo', 'args'], capture_output=True, text=True).stdout
    training = [line for line in ps.splitlines() if 'dovit_ros.cli.train' in line
                and 'soak' not in line]
    return {'cpu': model, 'cores': os.cpu_count(), 'load_avg': os.getloadavg(),
            'training_jobs_running': len(training), 'python': platform.python_version(),
            'time': time.strftime('%Y-%m-%d %H:%M:%S %Z')}


# ---------------------------------------------------------------------------- scenarios

def overload(a, work: Path) -> dict:
    import test_reliability_overload as t
    from dovit_ros.ros.harness import fresh_domain_id, make_test_model
    model = make_test_model(work / 'heavy', **t.MODEL)
    out = {}
    for name, depth, seconds in (('deep input queue', 100, a.seconds),
                                 ('default input depth 1', None, a.default_depth_seconds)):
        if not seconds:
            continue
        log(f'overload, {name}: {seconds:g} s at {t.FACTOR:g}x')
        on = t.OverloadNode(fresh_domain_id(), model, input_depth=depth)
        try:
            on.start()
            rep = t.run_overload(on, seconds=seconds, log=log)
            log('\n'.join(rep.lines()))
            fig = {'sent': rep.sent, 'achieved_hz': rep.achieved_hz, 'node': rep.node,
                   'single_latency_p50_ms': t.pct(rep.single_latency_ms, 50),
                   'latency_ms': {q: t.pct(rep.latency_ms, q) for q in (50, 95, 100)},
                   'model_ms_p50': t.pct(rep.model_ms, 50), 'processed': len(rep.latency_ms),
                   'rss_warm_mb': rep.rss_warm_mb, 'rss_max_mb': max(m for _, m in rep.rss_mb),
                   'rss_end_mb': rep.rss_end_mb, 'rss_growth_mb': rep.rss_growth_mb}
            if depth:
                t.check_overload(rep, on.proc)
            else:   # frames replaced in the DDS queue never reach the node's counters
                fig['lost_before_callback'] = rep.sent - rep.node['in']
                n = rep.node
                assert n['in'] == n['out'] + n['dropped'] and rep.rss_growth_mb < 50
            out[name] = fig
            assert on.proc.stop(signal.SIGINT, timeout=10.0) == 0
        finally:
            on.close()
    return out


def fuzz(a, work: Path) -> dict:
    import test_reliability_fuzz as t
    from dovit_ros.ros.harness import fresh_domain_id, make_test_model
    model = make_test_model(work / 'tiny')
    out = {}
    for i, transport in enumerate(('raw', 'compressed')):
        log(f'fuzz {transport}: {a.messages} messages')
        fn = t.FuzzNode(fresh_domain_id(), model, transport)
        try:
            fn.start()
            rep = t.run_fuzz(fn, t.fuzz_messages(transport, a.messages, seed=100 + i), log=log)
            log('\n'.join(rep.lines()))
            out[transport] = {'sent': rep.sent, 'expected': dict(rep.expected),
                              'valid_sent': rep.valid_sent,
                              'valid_with_all_outputs': rep.valid_with_all_outputs,
                              'node': rep.node, 'wall_s': rep.wall_s}
            t.check_fuzz(rep, fn.proc)
            assert fn.proc.stop(signal.SIGINT, timeout=10.0) == 0
        finally:
            fn.close()
    return out


def params(a, work: Path) -> dict:
    import test_reliability_params as t
    from dovit_ros.ros.harness import fresh_domain_id, make_test_model
    model = make_test_model(work / 'tiny')
    log(f'parameter chaos: {a.updates} updates')
    cn = t.ChaosNode(fresh_domain_id(), model)
    try:
        cn.start()
        rep = t.run_chaos(cn, a.updates, seed=7, log=log)
        log('\n'.join(rep.lines()))
        t.check_chaos(rep, cn.proc)
        assert cn.proc.stop(signal.SIGINT, timeout=10.0) == 0
    finally:
        cn.close()
    return {k: v for k, v in vars(rep).items() if k not in ('mispredicted', 'inconsistent')} | {
        'mispredicted': len(rep.mispredicted), 'inconsistent': len(rep.inconsistent)}


def signals(a, work: Path) -> dict:
    import test_reliability_lifecycle as t
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from dovit_ros.ros.harness import Client, fresh_domain_id, make_test_model
    model = make_test_model(work / 'tiny')
    t.DOMAIN = fresh_domain_id()
    client = Client(t.DOMAIN, namespace='/life', name='soak_client')
    pub = client.node.create_publisher(Image, '/life_cam/image',
                                       QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    client.subscribe(['labels', 'frame_stats'])
    runs = []
    try:
        for i in range(a.repeat):
            for j, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
                k = 2 * i + j
                proc = t.start(model, client, pub, (100 + k, 0))   # each start: a restart
                r = t.signal_during_inference(proc, client, pub, sig, (200 + k, 0))
                r.update(signal=signal.Signals(sig).name, traceback='Traceback' in proc.output)
                log(f'  {r["signal"]}: rc {r["rc"]} after {r["exit_s"]:.2f} s (busy on the '
                    f'frame: {r["busy"]}, its outputs out before the signal: '
                    f'{r["outputs_before_signal"]})')
                runs.append(r)
    finally:
        client.close()
    exits = [r['exit_s'] for r in runs]
    for r in runs:
        assert r['busy'] and not r['outputs_before_signal'] and not r['traceback'], r
        assert r['rc'] == 0 and r['exit_s'] < t.EXIT_LIMIT_S, r
    return {'runs': len(runs), 'exit_s_max': max(exits), 'exit_s_mean': sum(exits) / len(exits),
            'all_rc_0': all(r['rc'] == 0 for r in runs), 'restarts': len(runs) - 1}


def clock(a, work: Path) -> dict:
    import cv2
    import numpy as np
    import test_reliability_lifecycle as t

    from dovit_ros.bag import MakeConfig, make_bag
    from dovit_ros.ros.harness import fresh_domain_id, make_test_model
    model = make_test_model(work / 'tiny')
    frames = work / 'frames'
    frames.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        cv2.imwrite(str(frames / f'{i}.png'), rng.integers(0, 256, (64, 96, 3), np.uint8))
    bag = work / 'short.mcap'
    make_bag(MakeConfig(frames, bag, rate=10.0, start_time=float(t.T0), frame_id='cam_sim',
                        progress=False))
    log(f'clock jumps: {a.seconds:g} s of dovit-bag play --loop --clock on a 0.4 s bag')
    r = t.run_clock_jumps(model, bag, a.seconds, domain=fresh_domain_id())
    r['bad_headers'] = len(r['bad_headers'])
    log('  ' + ', '.join(f'{k} {v}' for k, v in r.items() if k != 'player'))
    if r['player_rc'] != 0:
        log(r['player'][-6000:])
    assert r['alive'] and r['rc'] == 0 and not r['traceback'] and not r['bad_headers']
    assert r['player_rc'] == 0, 'dovit-bag play did not end cleanly on SIGINT'
    assert r['backward_jumps'] >= 3 and r['outputs_after_a_jump'] > 0 and r['diagnostics'] >= 2
    return r


def flips(a, work: Path) -> dict:
    import test_reliability_models as t
    from dovit_ros.ros.harness import make_test_model
    good = make_test_model(work / 'good')
    out = {}
    for checksum in (True, False):
        key = 'with weights_sha256' if checksum else 'without weights_sha256'
        log(f'bit flips, {key}: {a.flips} per region')
        r = out[key] = t.flip_survey(good, work / ('sum' if checksum else 'nosum'), a.flips,
                                     seed=3, checksum=checksum)
        for region, v in r.items():
            log(f'  {region}: {v["refused"]}/{v["flips"]} refused {v["by"]}')
    for v in out['with weights_sha256'].values():
        assert v['refused'] == v['flips'] == v['file_named']
    return out


def train(a, work: Path) -> dict:
    import torch
    import test_reliability_train as t
    from test_train import make_folder_dataset
    torch.set_num_threads(1)
    data = make_folder_dataset(work / 'data')
    log(f'SIGKILL resume: {a.kills} kills over {a.steps} steps')
    rep = t.run_kills(data, work, a.kills, seed=11, steps=a.steps)
    log('\n'.join(rep.lines()))
    assert rep.final_step == a.steps and rep.identical
    assert rep.metrics_steps == list(range(1, a.steps + 1))
    return {'kills': len(rep.kills), 'latest_steps': [k['latest_step'] for k in rep.kills],
            'temp_files_left': [k['temp_files'] for k in rep.kills],
            'final_step': rep.final_step, 'identical': rep.identical, 'wall_s': rep.wall_s}


SCENARIOS = {'overload': overload, 'fuzz': fuzz, 'params': params, 'signals': signals,
             'clock': clock, 'flips': flips, 'train': train}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('scenario', nargs='*', default=['all'],
                    choices=['all', *SCENARIOS], help='default: all')
    ap.add_argument('--seconds', type=float, default=60.0,
                    help='overload duration (default 60); clock: default 20')
    ap.add_argument('--default-depth-seconds', type=float, default=20.0,
                    help='overload with the node\'s default input depth (0: skip)')
    ap.add_argument('--messages', type=int, default=2000, help='fuzz, per transport')
    ap.add_argument('--updates', type=int, default=500, help='parameter chaos')
    ap.add_argument('--repeat', type=int, default=5, help='signals: rounds of SIGINT+SIGTERM')
    ap.add_argument('--flips', type=int, default=1000, help='bit flips per region')
    ap.add_argument('--kills', type=int, default=10)
    ap.add_argument('--steps', type=int, default=24)
    ap.add_argument('--json', type=Path, help='write every figure here')
    a = ap.parse_args(argv)
    names = list(SCENARIOS) if 'all' in a.scenario else a.scenario
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    report = {'machine': machine(), 'scenarios': {}}
    log(f'machine: {report["machine"]}')
    failed = []
    for name in names:
        sub = argparse.Namespace(**vars(a))
        if name == 'clock' and a.seconds == 60.0:
            sub.seconds = 20.0
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f'soak_{name}_') as tmp:
            try:
                figures = SCENARIOS[name](sub, Path(tmp))
                status = 'PASS'
            except Exception as e:  # noqa: BLE001 - report and go on with the next scenario
                figures = {'error': f'{type(e).__name__}: {e}'}
                traceback.print_exc()
                status = 'FAIL'
                failed.append(name)
        took = time.monotonic() - t0
        report['scenarios'][name] = {'status': status, 'scenario_s': round(took, 1), **figures}
        log(f'== {name}: {status} ({took:.0f} s)\n')
    log('summary: ' + ', '.join(f'{n} {report["scenarios"][n]["status"]}' for n in names))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=str))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
