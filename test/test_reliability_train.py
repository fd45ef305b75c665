"""Reliability: `dovit-train` killed with SIGKILL at random moments, then `--resume`.

test/test_train.py already shows that clean interruptions (time budget) resume to the same
weights and that a save failing at any of its five file replacements leaves the previous
checkpoint loadable (simulated with a failing os.replace). Here the process itself is killed
with SIGKILL, KILLS times at seeded random moments of a run with a checkpoint every step. After
each kill: `latest` names a complete checkpoint that loads (model directory with its
weights_sha256, and train state), and every checkpoint file present under its final name is
complete (model.yaml's weights_sha256 matches the model.safetensors beside it). Then a last
`--resume` runs to the end, and the final checkpoint (weights, optimiser state, RNG state,
step) must equal an uninterrupted run's bit for bit.

scripts/soak.py train repeats this with more kills (docs/reliability.md).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from dovit_ros.model import DoViTSegmenter
from dovit_ros.runtime.artifacts import META, WEIGHTS, file_sha256, load_model, load_tensors
from dovit_ros.train import checkpoint as ckpt_mod
from dovit_ros.train.config import load_train_config
from dovit_ros.train.loop import build_optimizer, train
from test_train import assert_same_checkpoint, make_folder_dataset, write_config

STEPS = 8
KILLS = 3


pytestmark = pytest.mark.usefixtures('one_thread')


def train_cmd(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, '-m', 'dovit_ros.cli.train', '--config', str(cfg), '--out',
            str(out), '--resume', '--device', 'cpu', '--threads', '1', '--no-progress']


def metrics_rows(run: Path) -> list[int]:
    f = run / 'metrics.csv'
    if not f.is_file():
        return []
    return [int(line.split(',')[0]) for line in f.read_text().splitlines()[1:] if line]


def inspect_run(run: Path, cfg) -> dict:
    """What a kill left: the step `latest` names (loaded in full), and every file under a
    final name checked for completeness."""
    ck = ckpt_mod.latest_checkpoint(run)
    out = {'latest_step': None, 'folders': [], 'temp_files': 0}
    if ck is not None:
        load_model(ck)   # model.yaml + model.safetensors, sha256 verified
        model = DoViTSegmenter(cfg.model_config(3))
        state = ckpt_mod.load_train_state(ck, model, build_optimizer(model, cfg.optim))
        out['latest_step'] = int(state['step'])
    for d in sorted(run.glob('ckpt-*')):
        # temporary files (ours: .NAME.XXXX.tmp; safetensors' own: .tmpXXXXXX) are never
        # read: only final names count
        files = sorted(p.name for p in d.iterdir() if not p.name.startswith('.'))
        out['temp_files'] += sum(p.name.startswith('.') for p in d.iterdir())
        out['folders'].append((d.name, files))
        for name in (WEIGHTS, ckpt_mod.STATE_T):
            if (d / name).is_file():
                load_tensors(d / name)   # raises on a half-written file
        if (d / META).is_file():
            meta = yaml.safe_load((d / META).read_text())
            assert meta['weights_sha256'] == file_sha256(d / WEIGHTS), d
        if (d / ckpt_mod.STATE_Y).is_file():
            yaml.safe_load((d / ckpt_mod.STATE_Y).read_text())
    return out


@dataclass
class KillReport:
    kills: list = field(default_factory=list)   # per kill: delay, latest step after, folders
    final_step: int = 0
    identical: bool = False
    metrics_steps: list = field(default_factory=list)
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        out = [f'SIGKILL resume: {len(self.kills)} kills in {self.wall_s:.1f} s, then resumed '
               f'to step {self.final_step}; final checkpoint identical to an uninterrupted '
               f'run: {self.identical}']
        for k in self.kills:
            out.append(f'  kill {k["delay_s"]:.2f} s after metrics row {k["rows_seen"]}: '
                       f'latest -> step {k["latest_step"]}, left {k["folders"]}, '
                       f'{k["temp_files"]} temp files')
        dup = len(self.metrics_steps) - len(set(self.metrics_steps))
        out.append(f'  metrics.csv: {len(self.metrics_steps)} rows, {dup} repeated steps')
        return out


def run_kills(data_root: Path, work: Path, kills: int, seed: int, steps: int = STEPS,
              max_delay_s: float | None = None) -> KillReport:
    """`kills` SIGKILLs, each at a random moment (uniform in [0, max_delay_s], by default 1.5
    steps of the reference run) after the run has logged one more step; then resume."""
    cfg_path = write_config(work / 'cfg.yaml', data_root, steps=steps, checkpoint_every=1,
                            eval_every=100)
    cfg = load_train_config(cfg_path)
    t0 = time.monotonic()
    ref = work / 'ref'
    train(cfg, ref, device='cpu', progress=False, log=lambda *a: None)
    if max_delay_s is None:   # a step, its metrics row and its checkpoint: about this long
        times = [float(line.split(',')[1]) for line in
                 (ref / 'metrics.csv').read_text().splitlines()[1:]]
        max_delay_s = 1.5 * float(np.median(np.diff(times)))
    rep = KillReport()
    rng = np.random.default_rng(seed)
    run = work / 'killed'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    for _ in range(kills):
        before = len(metrics_rows(run))
        if before >= steps:
            break
        proc = subprocess.Popen(train_cmd(cfg_path, run), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        # wait for one more step to be logged (progress each round), then a random moment
        while proc.poll() is None and len(metrics_rows(run)) <= before:
            time.sleep(0.01)
        delay = float(rng.uniform(0.0, max_delay_s))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        info = inspect_run(run, cfg)
        rep.kills.append({'delay_s': delay, 'rows_seen': before + 1, **info,
                          'rc': proc.returncode})
    r = subprocess.run(train_cmd(cfg_path, run), env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    final = ckpt_mod.latest_checkpoint(run)
    rep.final_step = int(yaml.safe_load((final / ckpt_mod.STATE_Y).read_text())['step'])
    try:
        assert_same_checkpoint(ref / f'ckpt-{steps:07d}', final)
        rep.identical = True
    except AssertionError:
        rep.identical = False
    rep.metrics_steps = metrics_rows(run)
    rep.wall_s = time.monotonic() - t0
    return rep


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp('data'))


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(data_root, tmp_path):
    rep = run_kills(data_root, tmp_path, KILLS, seed=0)
    print('\n'.join(rep.lines()))
    assert len(rep.kills) == KILLS
    assert all(k['rc'] == -signal.SIGKILL for k in rep.kills)
    steps = [k['latest_step'] or 0 for k in rep.kills]
    assert steps == sorted(steps) and steps[-1] > 0
    assert rep.final_step == STEPS and rep.identical
    assert rep.metrics_steps == list(range(1, STEPS + 1))   # each step logged once


def test_sigterm_to_the_process_group_stops_at_a_checkpoint(tmp_path):
    """A scheduler or systemd signals the whole process group, data-loader workers included: the
    run still ends after its step with a checkpoint (workers leave the signal to the main
    process; one that died of it made the main process fail before checkpointing)."""
    data = make_folder_dataset(tmp_path / 'data', n_train=6)
    cfg = write_config(tmp_path / 'cfg.yaml', data, steps=100_000, eval_every=100_000,
                       checkpoint_every=100_000, data={'workers': 1})
    out = tmp_path / 'run'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'dovit_ros.cli.train', '--config', str(cfg), '--out', str(out),
         '--device', 'cpu', '--threads', '1', '--no-progress'],
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(metrics_rows(out)) < 3:   # inside the training loop, a worker running
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output[-2000:]
    step = metrics_rows(out)[-1]
    assert f'SIGTERM received: stopped at step {step}' in output, output[-2000:]
    assert (out / 'latest').read_text() == f'ckpt-{step:07d}'
    assert inspect_run(out, load_train_config(cfg))['latest_step'] == step   # loads in full
