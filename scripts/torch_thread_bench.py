#!/usr/bin/env python3
"""Why the node runs all of its torch work in one thread (runtime/torch_thread.py).

  python scripts/torch_thread_bench.py --model DIR [--threads 2] [--precision bf16] [--json OUT]

Three layouts, each in a fresh process (OpenMP state is per process), timing Pipeline.infer
on a real CamVid frame at the model's default exits: `main` (load and infer in the main
thread), `split` (load in the main thread, infer in a second thread: the node before the
change) and `one` (load and infer in one second thread: the node now). Reported: median ms
and the cores the process kept busy while inferring (CPU seconds / wall seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r'''
import json, sys, threading, time
import numpy as np, torch
from dovit_ros.data.base import read_image
from dovit_ros.runtime.pipeline import Pipeline
layout, model, image, threads, precision, frames = sys.argv[1:7]
threads, frames = int(threads), int(frames)
img = read_image(image)

def load():
    torch.set_num_threads(threads)
    return Pipeline.from_path(model, 'cpu', precision)

def time_it(pipe):
    for _ in range(3):
        pipe.infer(img)
    ts, c0, w0 = [], time.process_time(), time.perf_counter()
    for _ in range(frames):
        t = time.perf_counter()
        pipe.infer(img)
        ts.append((time.perf_counter() - t) * 1e3)
    cores = (time.process_time() - c0) / (time.perf_counter() - w0)
    return {'median_ms': float(np.median(ts)), 'cores_busy': cores}

out = {}
if layout == 'main':
    out.update(time_it(load()))
else:
    pipe = load() if layout == 'split' else None
    def run():
        out.update(time_it(pipe or load()))
    th = threading.Thread(target=run)
    th.start()
    th.join()
print(json.dumps(out))
'''


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='models/camvid-dovit-tiny')
    ap.add_argument('--image', default='../shared/data/camvid/val/images/0016E5_07959.jpg')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--precision', default='bf16')
    ap.add_argument('--frames', type=int, default=15)
    ap.add_argument('--rounds', type=int, default=2, help='each layout this many times, '
                    'interleaved (the machine drifts)')
    ap.add_argument('--json')
    a = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, 'PYTHONPATH': str(root)}
    env.pop('OMP_WAIT_POLICY', None)   # libgomp's default, as a user who sets nothing gets
    rows = []
    for rnd in range(a.rounds):
        for layout in ('main', 'split', 'one'):
            out = subprocess.run([sys.executable, '-c', WORKER, layout, a.model, a.image,
                                  str(a.threads), a.precision, str(a.frames)],
                                 capture_output=True, text=True, env=env, check=True)
            r = {'layout': layout, 'round': rnd, **json.loads(out.stdout.splitlines()[-1])}
            rows.append(r)
            print(f'{layout:6s} round {rnd}: {r["median_ms"]:7.1f} ms, '
                  f'{r["cores_busy"]:.2f} cores busy', flush=True)
    if a.json:
        from dovit_ros.runtime.device import cpu_model_name
        Path(a.json).write_text(json.dumps({
            'cpu': cpu_model_name(), 'cores': os.cpu_count(), 'model': a.model,
            'threads': a.threads, 'precision': a.precision, 'frames': a.frames,
            'rows': rows}, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
