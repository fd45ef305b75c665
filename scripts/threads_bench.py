"""Frame latency under CPU contention: torch threads x OpenMP wait policy, idle and with
another process keeping every core busy (a stand-in for a training job or a second node).

  python scripts/threads_bench.py --model models/camvid-dovit-tiny --frames 30 --json out.json

Each configuration runs in a fresh process (OMP_WAIT_POLICY is read once, when the OpenMP
runtime starts). The load is `--load-procs` processes each running 1-thread matrix products
in a loop (default: one per core). Reported: median ms of Pipeline.infer over real CamVid val
frames at the model's default exits, and the ratio contended / idle for each setting.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r'''
import json, sys, time
import numpy as np, torch
from dovit_ros.data.base import read_image
from dovit_ros.runtime.pipeline import Pipeline
threads, model, frames = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
precision, paths = sys.argv[4], sys.argv[5:]
torch.set_num_threads(threads)
pipe = Pipeline.from_path(model, 'cpu', precision)
images = [read_image(p) for p in paths]
for im in images[:2]:
    pipe.infer(im)
ms = []
for i in range(frames):
    t0 = time.perf_counter()
    pipe.infer(images[i % len(images)])
    ms.append(1e3 * (time.perf_counter() - t0))
print(json.dumps({'median_ms': float(np.median(ms)), 'p90_ms': float(np.percentile(ms, 90))}))
'''

LOAD = r'''
import torch
torch.set_num_threads(1)
a = torch.randn(384, 384)
while True:
    a = (a @ a).clamp_(-1, 1)
'''


def run_one(threads: int, policy: str, a) -> dict:
    env = {**os.environ, 'OMP_WAIT_POLICY': policy}
    r = subprocess.run([sys.executable, '-c', WORKER, str(threads), a.model, str(a.frames),
                        a.precision, *a.images], env=env, capture_output=True, text=True,
                       timeout=900)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='models/camvid-dovit-tiny')
    ap.add_argument('--data', default='../shared/data/camvid/val/images')
    ap.add_argument('--frames', type=int, default=30)
    ap.add_argument('--threads', default='1,2')
    ap.add_argument('--policies', default='ACTIVE,PASSIVE')
    ap.add_argument('--load-procs', type=int, default=os.cpu_count() or 2)
    ap.add_argument('--precision', default='fp32',
                    help="the model's precision (auto: the node's default)")
    ap.add_argument('--json')
    a = ap.parse_args()
    a.images = [str(p) for p in sorted(Path(a.data).glob('*.jpg'))[:10]]
    from dovit_ros.runtime.device import cpu_model_name
    rows = []
    for loaded in (False, True):
        load = []
        if loaded:
            load = [subprocess.Popen([sys.executable, '-c', LOAD]) for _ in range(a.load_procs)]
            time.sleep(2)
        try:
            for policy in a.policies.split(','):
                for t in map(int, a.threads.split(',')):
                    r = {'threads': t, 'omp_wait_policy': policy, 'loaded': loaded,
                         **run_one(t, policy, a)}
                    rows.append(r)
                    print(f"{'loaded' if loaded else 'idle':6s} {policy:7s} threads {t}: "
                          f"median {r['median_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms",
                          flush=True)
        finally:
            for p in load:
                p.kill()
    idle = {(r['threads'], r['omp_wait_policy']): r['median_ms'] for r in rows
            if not r['loaded']}
    for r in rows:
        if r['loaded']:
            r['ratio_to_idle'] = r['median_ms'] / idle[(r['threads'], r['omp_wait_policy'])]
            print(f"{r['omp_wait_policy']:7s} threads {r['threads']}: loaded / idle = "
                  f"{r['ratio_to_idle']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({'cpu': cpu_model_name(), 'cores': os.cpu_count(),
                                            'model': a.model, 'frames': a.frames,
                                            'precision': a.precision,
                                            'load_procs': a.load_procs, 'rows': rows},
                                           indent=1))


if __name__ == '__main__':
    main()
