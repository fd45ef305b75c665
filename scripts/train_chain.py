#!/usr/bin/env python3
"""Run a chain of training configs (each warm-starting from the one before) in resumable slices.

  python scripts/train_chain.py --minutes 150 --threads 2 \
      config/train/holdout/balanced_strong.yaml config/train/holdout/balanced_strong_cont.yaml ...

Each config trains into runs/<name> with `dovit-train --resume`, so a chain stopped by its time
budget (or by the end of a session) continues where it stopped when the same command is run
again: finished runs (latest checkpoint at the config's `steps`) are skipped, the unfinished one
resumes, the rest start in turn. Every run's output is appended to runs/<name>.log. The budget
covers the whole chain; `--margin` minutes are held back for the evaluation and checkpoint a
run makes after its budget is spent. `--set KEY=VALUE ...` (after the configs) overrides every
config, e.g. on a lent GPU (scripts/device_twin.sh):

  python scripts/train_chain.py --minutes 8 --margin 0.5 --min-slice 0.5 --device cuda \
      A.yaml B.yaml --set data.root=.carry/camvid data.workers=12
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from dovit_ros.train.checkpoint import latest_checkpoint
from dovit_ros.train.config import load_train_config


def done_steps(run_dir: Path) -> int:
    """The step of the run's latest complete checkpoint (0 when it has none)."""
    ck = latest_checkpoint(run_dir)
    return int(ck.name.split('-')[1]) if ck is not None else 0


def train_command(config: str, out: Path, minutes: float, threads: int, device: str = 'auto',
                  overrides: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, '-m', 'dovit_ros.cli.train', '--config', config, '--out', str(out),
           '--resume', '--no-progress', '--threads', str(threads), '--device', device,
           '--time-budget', f'{minutes:.1f}']
    return cmd + (['--set', *overrides] if overrides else [])


def run_one(cmd: list[str], log_path: Path) -> int:
    """Run `cmd`, its output appended to `log_path`. On Ctrl-C, which the run receives too
    (one process group), wait for it to stop after its step with a checkpoint (dovit-train
    does; a second Ctrl-C stops both at once), then pass the interrupt on."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, 'a') as log:
        log.write(f'# {time.strftime("%Y-%m-%d %H:%M:%S")} {" ".join(cmd)}\n')
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            print('interrupted: waiting for the run to stop at a checkpoint', flush=True)
            proc.wait()
            raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('configs', nargs='+', help='training YAMLs, in chain order')
    ap.add_argument('--minutes', type=float, required=True, help='time budget of the chain')
    ap.add_argument('--margin', type=float, default=8.0,
                    help='minutes kept for the last evaluation and checkpoint (default 8)')
    ap.add_argument('--min-slice', type=float, default=5.0,
                    help='minutes a run must have left to be started (default 5)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='auto', help="dovit-train's --device (default auto)")
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                    help='overrides for every config, e.g. data.root=.carry/camvid')
    a = ap.parse_args(argv)
    deadline = time.monotonic() + 60 * a.minutes
    for config in a.configs:
        cfg = load_train_config(config, a.set)
        out = Path('runs') / cfg.name
        if done_steps(out) >= cfg.steps:
            print(f'{cfg.name}: finished ({cfg.steps} steps)', flush=True)
            continue
        left = (deadline - time.monotonic()) / 60 - a.margin
        if left < a.min_slice:
            print(f'{cfg.name}: not started, {left:.1f} min left', flush=True)
            return 0
        print(f'{cfg.name}: from step {done_steps(out)}, {left:.0f} min', flush=True)
        try:
            cmd = train_command(config, out, left, a.threads, a.device, a.set)
            rc = run_one(cmd, Path(f'{out}.log'))
        except KeyboardInterrupt:
            print(f'{cfg.name}: interrupted at step {done_steps(out)}; run again to continue',
                  flush=True)
            return 130
        if rc != 0:
            print(f'{cfg.name}: dovit-train exited {rc} (see {out}.log)', flush=True)
            return rc
        if done_steps(out) < cfg.steps:
            print(f'{cfg.name}: stopped at step {done_steps(out)}; run again to continue',
                  flush=True)
            return 0
    print('chain finished', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
