#!/usr/bin/env python3
"""How steady the runtime's start-up choice of attention core is (runtime/attention.py): N fresh
processes each load the model as the node does, with `attention: auto`, and report the core they
chose and the timings behind it. A choice that differs between processes on an idle host is a
measurement that cannot tell the cores apart; compare it with the whole-frame A/B of
scripts/attention_core_bench.py.

  python scripts/attention_choice.py [--model DIR] [--precision bf16] [--threads 2]
      [--processes 6] [--json OUT]
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# one process: load as the node does, print the choice as a JSON line
CHILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from dovit_ros.runtime.pipeline import Pipeline
p = Pipeline.from_path(sys.argv[1], precision=sys.argv[2], attention='auto')
print(json.dumps({'core': p.attention, 'ms': p.attention_ms}))
"""


def one_choice(model: str, precision: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, '-c', CHILD, model, precision, str(threads)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='models/camvid-dovit-tiny')
    ap.add_argument('--precision', default='bf16')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--processes', type=int, default=6)
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dovit_ros.runtime.device import cpu_model_name
    runs = []
    for i in range(a.processes):
        r = one_choice(a.model, a.precision, a.threads)
        runs.append(r)
        ms = ', '.join(f'{c} {t:.2f} ms' for c, t in r['ms'].items())
        print(f'process {i + 1}: {r["core"]} ({ms})')
    counts = collections.Counter(r['core'] for r in runs)
    print('chosen:', dict(counts))
    if a.json:
        Path(a.json).write_text(json.dumps(
            {'cpu': cpu_model_name(), 'precision': a.precision, 'threads': a.threads,
             'model': a.model, 'chosen': dict(counts), 'runs': runs}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
