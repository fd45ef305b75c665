#!/usr/bin/env python3
"""The whole GPU verification as one prepared run, so a lent GPU's minutes go to measuring.

  python scripts/device_check.py --out .device/out              # on CUDA: <= 8 minutes
  python scripts/device_check.py --device cpu --quick --out DIR  # CI: proves the script itself
  python scripts/device_check.py --fill-wheels 3.10 --yes        # before: fill .carry/wheels

Parts, in order, each with a share of the time budget (a part that would overrun it is skipped
with a line saying so, and the run goes on):
  environment  GPU, driver, CUDA and torch versions; which of the Python packages the other
               parts need import here (the device machine cannot reach a package registry:
               missing pure-Python ones are installed from the wheelhouse --wheels, if carried)
  cuda_tests   `pytest -m cuda` (test/test_cuda.py): pipeline fp32/fp16/bf16 against CPU, the
               compile backend over 20 kept counts without recompiling, 50 bf16 training steps
               then resume, one-process torchrun with nccl, TensorRT engines where installed
  bench        the dovit-bench table: presets small and base at 512x1024 and 1024x2048, eager
               and compile, full against --keep 0.5,0.3,0.2, with the realisation
  multicam     scripts/multicam_bench.py on the GPU: 1, 2, 4 cameras of CamVid val frames,
               packed forward against the per-frame loop (needs --data)
  node         the shipped clip through segment_node over DDS (python -m dovit_ros.ros.demo)
  tensorrt     dovit-bench --backend tensorrt, when torch_tensorrt imports
With --pause-pgid, another job sharing the GPU (a training run) is stopped (SIGSTOP to its
process group) during the timed parts (bench, multicam, tensorrt) and continued afterwards, so
the lease's minutes train a model while the correctness tests run.
Writes DIR/summary.json and DIR/summary.md (tables ready for docs/benchmarks.md) and exits 1 if
any part failed. Parts whose dependencies are missing are skipped with the reason.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# module -> the distribution that provides it (for the wheelhouse)
MODULES = {'numpy': 'numpy', 'yaml': 'PyYAML', 'safetensors': 'safetensors', 'cv2':
           'opencv-python-headless', 'rosbags': 'rosbags', 'mcap': 'mcap', 'pytest': 'pytest',
           'rclpy': 'ros-rclpy', 'triton': 'triton', 'torch_tensorrt': 'torch-tensorrt'}
NEEDS = {   # part -> modules it cannot run without
    'cuda_tests': ('numpy', 'yaml', 'safetensors', 'cv2', 'pytest'),   # rosbags: per test
    'bench': ('numpy', 'yaml', 'safetensors'),
    'multicam': ('numpy', 'yaml', 'safetensors', 'cv2'),
    'node': ('numpy', 'yaml', 'safetensors', 'cv2', 'rosbags', 'rclpy'),
    'tensorrt': ('numpy', 'yaml', 'safetensors', 'torch_tensorrt'),
}
FULL_BENCH = [(p, hw, b) for hw in ((512, 1024), (1024, 2048)) for p in ('small', 'base')
              for b in ('eager', 'compile')]
QUICK_BENCH = [('tiny', (64, 128), 'eager')]
# quick (CI on CPU): the demo takes 20-35 s on 2 loaded cores, but its dead-link recovery
# (a new player after each stall, up to demo.PLAYER_RESTARTS, each with its own discovery) may
# need over the ~95 s a 110 s budget left the node part. CI once interrupted the demo there
# (2026-12-02) without a record of where it was; the demo now says so when interrupted.
BUDGET_S = {'full': 480.0, 'quick': 160.0}
# each part's weight in the share of what is left
SHARE = {'cuda_tests': 0.35, 'bench': 0.35, 'multicam': 0.1, 'node': 0.12, 'tensorrt': 0.08}
TIMED = ('bench', 'multicam', 'tensorrt')   # parts during which --pause-pgid is stopped
EST_S = {'eager': 15.0, 'compile': 60.0, 'tensorrt': 120.0}   # a bench row, for skipping early


@dataclass
class Part:
    name: str
    status: str = 'skipped'      # ok | failed | skipped
    seconds: float = 0.0
    detail: str = ''
    data: dict = field(default_factory=dict)


class Clock:
    """The run's time budget."""

    def __init__(self, budget_s: float):
        self.t0, self.budget = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def share(self, part: str, parts_left: list[str]) -> float:
        """This part's slice of the remaining budget, by its weight among the parts to come."""
        w = sum(SHARE[p] for p in parts_left) or 1.0
        return max(0.0, self.left() * SHARE[part] / w)


def run_cmd(cmd: list[str], timeout: float, env: dict, cwd: Path = ROOT
            ) -> tuple[int, str]:
    """(exit code, combined output); 124 on timeout. The command runs in a session of its own,
    and on timeout its whole process group gets SIGINT (the demo then stops its node and player
    and writes the node's log), then SIGKILL: a timed-out demo once left its segment_node and
    player running after the check had ended."""
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out = p.communicate(timeout=max(1.0, timeout))[0]
        return p.returncode, out
    except subprocess.TimeoutExpired:
        pass
    out = ''
    for sig in (signal.SIGINT, signal.SIGKILL):
        signal_group(p.pid, sig)
        try:   # a retried communicate() keeps what was read before
            out = p.communicate(timeout=10.0)[0]
            break
        except subprocess.TimeoutExpired:
            continue
    signal_group(p.pid, signal.SIGKILL)   # whatever the leader left behind
    return 124, out


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:   # the group is gone
        pass


def importable(name: str) -> tuple[bool, str]:
    """Whether `name` imports here, by trying (a module can be found and still fail to load,
    e.g. torch_tensorrt without the TensorRT libraries)."""
    if importlib.util.find_spec(name) is None:
        return False, 'not installed'
    code = f'import {name}'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=120, env=child_env())
    last = (r.stderr.strip().splitlines() or [''])[-1]
    return r.returncode == 0, 'ok' if r.returncode == 0 else last[:200]


SITE = ROOT / '.device' / 'site'   # where carried wheels are installed (git-ignored)


def child_env() -> dict:
    """Environment of every child process: the repository and any carried packages first."""
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(SITE)] if SITE.is_dir() else [])
    env['PYTHONPATH'] = os.pathsep.join(paths + [p for p in [env.get('PYTHONPATH')] if p])
    env['PYTHONUNBUFFERED'] = '1'
    return env


def install_from_wheelhouse(wheels: Path, missing: list[str]) -> str:
    """pip install --no-index the missing packages the wheelhouse holds; a line saying what
    happened."""
    if not missing:
        return 'nothing missing'
    if not wheels.is_dir() or not any(wheels.glob('*.whl')):
        return f'no wheelhouse at {wheels}: {", ".join(missing)} stay missing'
    dists = [MODULES[m] for m in missing]
    cmd = [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--find-links',
           str(wheels), '--target', str(SITE), *dists]
    rc, out = run_cmd(cmd, 180, child_env())
    if rc != 0:   # install one by one: the ones that have wheels here still go in
        got = [d for d in dists if run_cmd(cmd[:-len(dists)] + [d], 120, child_env())[0] == 0]
        return f'installed {got or "none"} of {dists} from {wheels}'
    return f'installed {dists} from {wheels}'


# Small wheels worth carrying (a few MB together; OpenCV's ~50 MB wheel does not fit the
# 64 MiB carry beside the repository, so the parts that decode images need it preinstalled).
CARRY = ('PyYAML', 'safetensors', 'pytest', 'pluggy', 'iniconfig', 'packaging', 'mcap',
         'rosbags', 'ruamel.yaml', 'lz4', 'zstandard', 'typing-extensions')


def fill_command(wheels: Path, python_version: str) -> list[str]:
    """The pip command (run on a machine with a registry) that fills the wheelhouse for the
    device's Python version, linux x86-64, binary wheels only, no dependencies resolved."""
    return [sys.executable, '-m', 'pip', 'download', '-q', '--only-binary=:all:', '--no-deps',
            '--dest', str(wheels), '--python-version', python_version,
            '--platform', 'manylinux2014_x86_64', '--platform', 'manylinux_2_17_x86_64',
            '--platform', 'any', *CARRY]


def gpu_facts(device: str) -> dict:
    import torch
    facts = {'python': platform.python_version(), 'torch': torch.__version__,
             'torch_cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available(),
             'cpu': cpu_model(), 'device': device}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, capability=f'sm_{p.major}{p.minor}',
                     gpu_memory_gib=round(p.total_memory / 2 ** 30, 1))
        rc, out = run_cmd(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                          30, dict(os.environ))
        facts['driver'] = out.strip().splitlines()[0] if rc == 0 and out.strip() else 'unknown'
    return facts


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


# ------------------------------------------------------------------ parts
def part_environment(a, st: dict) -> Part:
    p = Part('environment')
    t0 = time.monotonic()
    st['facts'] = gpu_facts(a.device)
    mods = {m: importable(m) for m in MODULES}
    missing = [m for m, (ok, _) in mods.items() if not ok and m not in ('torch_tensorrt',
                                                                        'triton', 'rclpy')]
    p.data['wheelhouse'] = install_from_wheelhouse(a.wheels, missing)
    if missing and SITE.is_dir():
        mods.update({m: importable(m) for m in missing})
    st['modules'] = {m: why for m, (ok, why) in mods.items()}
    st['have'] = {m for m, (ok, _) in mods.items() if ok}
    p.data.update(st['facts'], modules=st['modules'])
    p.status, p.seconds = 'ok', time.monotonic() - t0
    f = st['facts']
    p.detail = (f'{f.get("gpu", "no GPU")}, driver {f.get("driver", "-")}, CUDA '
                f'{f["torch_cuda"]}, torch {f["torch"]}, Python {f["python"]}; missing: '
                f'{", ".join(m for m in MODULES if m not in st["have"]) or "nothing"}')
    return p


def part_cuda_tests(a, st: dict, budget: float, out: Path) -> Part:
    p = Part('cuda_tests')
    xml = out / 'cuda_tests.xml'
    env = {**child_env(), 'DOVIT_DEVICE_CHECK_OUT': str(out)}
    cmd = [sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', '-p', 'no:cacheprovider',
           f'--junitxml={xml}', 'test/test_cuda.py']
    rc, text = run_cmd(cmd, budget, env)
    p.data = junit_summary(xml)
    p.data['tail'] = text[-2000:]
    for name in ('resume_cuda.json', 'tensorrt.json'):
        if (out / name).is_file():
            p.data[name[:-5]] = json.loads((out / name).read_text())
    n = p.data.get('counts', {})
    if rc == 124:
        p.status, p.detail = 'failed', f'timed out after {budget:.0f} s'
    elif rc in (0, 5):   # 5: nothing collected/selected
        p.status = 'ok'
        p.detail = (f'{n.get("passed", 0)} passed, {n.get("skipped", 0)} skipped'
                    + ('' if st['facts']['cuda_available'] else ' (no CUDA here: all skip)'))
    else:
        p.status = 'failed'
        p.detail = f'{n.get("failed", 0)} failed, {n.get("passed", 0)} passed (pytest rc {rc})'
    return p


def junit_summary(xml: Path) -> dict:
    if not xml.is_file():
        return {}
    import xml.etree.ElementTree as ET
    tests, counts = {}, {'passed': 0, 'failed': 0, 'skipped': 0}
    for case in ET.parse(xml).getroot().iter('testcase'):
        kids = {c.tag: c for c in case}
        if 'failure' in kids or 'error' in kids:
            res = 'failed: ' + (kids.get('failure') if 'failure' in kids
                                else kids['error']).get('message', '')[:300]
        elif 'skipped' in kids:
            res = 'skipped: ' + kids['skipped'].get('message', '')[:200]
        else:
            res = 'passed'
        counts[res.split(':')[0]] += 1
        tests[case.get('name')] = res
    return {'counts': counts, 'tests': tests}


def bench_row(preset: str, hw, backend: str, device: str, runs: int, warmup: int,
              timeout: float) -> dict:
    cmd = [sys.executable, '-m', 'dovit_ros.cli.bench', '--preset', preset, '--height',
           str(hw[0]), '--width', str(hw[1]), '--keep', '0.5,0.3,0.2', '--device', device,
           '--backend', backend, '--runs', str(runs), '--warmup', str(warmup), '--json']
    t0 = time.monotonic()
    rc, text = run_cmd(cmd, timeout, child_env())
    row = {'preset': preset, 'size': f'{hw[0]}x{hw[1]}', 'backend': backend,
           'seconds': round(time.monotonic() - t0, 1)}
    js = [ln for ln in text.splitlines() if ln.startswith('{')]
    if rc == 0 and js:
        r = json.loads(js[-1])
        row.update({k: r[k] for k in ('full_ms', 'pruned_ms', 'full_gflops', 'pruned_gflops',
                                      'speedup', 'flops_ratio', 'realisation',
                                      'tokens_per_stage')})
        row['status'] = 'ok'
    else:
        row['status'] = 'timed out' if rc == 124 else 'failed'
        row['error'] = (text.strip().splitlines() or [''])[-1][:300]
    return row


def part_bench(a, st: dict, budget: float, rows_spec) -> Part:
    p = Part('bench')
    deadline = time.monotonic() + budget
    runs, warmup = (2, 1) if a.quick else (10, 3)
    rows, skipped = [], []
    for preset, hw, backend in rows_spec:
        left = deadline - time.monotonic()
        if backend == 'compile' and 'triton' not in st['have'] and a.device == 'cuda':
            skipped.append(f'{preset} {hw[0]}x{hw[1]} compile: Triton not importable')
            continue
        if backend != 'eager' and 'cv2' not in st['have']:   # the backend layer imports it
            skipped.append(f'{preset} {hw[0]}x{hw[1]} {backend}: OpenCV not importable')
            continue
        if left < EST_S[backend]:
            skipped.append(f'{preset} {hw[0]}x{hw[1]} {backend}: {left:.0f} s of budget left')
            continue
        rows.append(bench_row(preset, hw, backend, a.device, runs, warmup, left))
    if a.quick:
        skipped.append('compile rows: not in --quick (a CPU compile costs about a minute; '
                       'test_backends covers the compile backend)')
    p.data = {'rows': rows, 'skipped': skipped}
    bad = [r for r in rows if r['status'] != 'ok']
    p.status = 'failed' if bad else 'ok' if rows else 'skipped'
    p.detail = f'{len(rows) - len(bad)} rows ok, {len(bad)} failed, {len(skipped)} skipped'
    return p


def part_multicam(a, st: dict, budget: float, out: Path) -> Part:
    p = Part('multicam')
    frames = a.data / 'val' / 'images'
    if not frames.is_dir():
        p.detail = f'no CamVid val frames at {frames} (--data)'
        return p
    js = out / 'multicam.json'
    cmd = [sys.executable, str(ROOT / 'scripts' / 'multicam_bench.py'), '--device', a.device,
           '--data', str(frames), '--cameras', '1,2,4', '--threads', '1',
           '--rounds', '3' if a.quick else '20', '--json', str(js)]
    rc, text = run_cmd(cmd, budget, child_env())
    p.data = {'lines': [ln for ln in text.splitlines() if ln.startswith('threads')],
              'tail': text[-1500:]}
    if rc == 0 and js.is_file():
        p.data['result'] = json.loads(js.read_text())
        p.status, p.detail = 'ok', '; '.join(p.data['lines'])[:400]
    else:
        p.status = 'failed'
        p.detail = f'exit {rc}' + (' (timed out)' if rc == 124 else '')
    return p


def part_node(a, st: dict, budget: float, out: Path) -> Part:
    p = Part('node')
    cmd = [sys.executable, '-m', 'dovit_ros.ros.demo', '--passes', '1', '--out',
           str(out / 'demo')]
    rc, text = run_cmd(cmd, budget, child_env())
    lines = [ln for ln in text.splitlines() if ln.startswith('demo:')]
    p.data = {'lines': lines[-8:], 'tail': text[-1500:]}
    done = re.search(r'(\d+)/(\d+) frames segmented', text)
    p.data['frames'] = [int(done[1]), int(done[2])] if done else None
    p.status = 'ok' if rc == 0 else 'failed'
    p.detail = (f'{done[0] if done else "the clip segmented"} (exit 0)' if rc == 0 else
                f'exit {rc}' + (' (timed out)' if rc == 124 else '') +
                f': {(lines or ["no output"])[-1][:200]}')
    return p


def part_tensorrt(a, st: dict, budget: float) -> Part:
    p = Part('tensorrt')
    rows = []
    for preset, hw in (('small', (512, 1024)), ('base', (512, 1024))):
        if budget < EST_S['tensorrt']:
            break
        t0 = time.monotonic()
        rows.append(bench_row(preset, hw, 'tensorrt', a.device, 10, 3, budget))
        budget -= time.monotonic() - t0
    p.data = {'rows': rows}
    bad = [r for r in rows if r['status'] != 'ok']
    p.status = 'failed' if bad else 'ok' if rows else 'skipped'
    p.detail = f'{len(rows) - len(bad)} engine bench rows ok' if rows else 'no budget left'
    return p


def pause(pgid: int | None, stop: bool) -> bool:
    """Stop (or continue) the process group sharing the GPU; whether it is now stopped."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, signal.SIGSTOP if stop else signal.SIGCONT)
    except ProcessLookupError:   # the job has ended: nothing to pause
        return False
    if stop:
        time.sleep(2.0)   # let kernels it queued drain before timing
    return stop


# ------------------------------------------------------------------ report
def markdown(st: dict, parts: list[Part]) -> str:
    f = st.get('facts', {})
    head = [f'# Device check ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})', '',
            f'GPU: {f.get("gpu", "none")} {f.get("capability", "")}, driver '
            f'{f.get("driver", "-")}, CUDA (torch build) {f.get("torch_cuda")}, torch '
            f'{f.get("torch")}, Python {f.get("python")}; CPU: {f.get("cpu")}', '',
            '| part | status | seconds | detail |', '| --- | --- | --- | --- |']
    head += [f'| {p.name} | {p.status} | {p.seconds:.0f} | {p.detail} |' for p in parts]
    rows = [r for p in parts if p.name in ('bench', 'tensorrt') for r in p.data.get('rows', [])]
    if rows:
        head += ['', '| preset | size | backend | full ms | pruned ms | full GFLOPs | '
                 'pruned GFLOPs | speed-up | FLOPs ratio | realisation |',
                 '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
        for r in rows:
            if r['status'] != 'ok':
                head.append(f'| {r["preset"]} | {r["size"]} | {r["backend"]} | '
                            f'{r["status"]}: {r.get("error", "")} | | | | | | |')
                continue
            head.append(f'| {r["preset"]} | {r["size"]} | {r["backend"]} | '
                        f'{r["full_ms"]:.1f} | {r["pruned_ms"]:.1f} | {r["full_gflops"]:.1f} | '
                        f'{r["pruned_gflops"]:.1f} | {r["speedup"]:.2f} | '
                        f'{r["flops_ratio"]:.2f} | {r["realisation"]:.2f} |')
    mc = next((p.data['result'] for p in parts if p.name == 'multicam' and 'result' in p.data),
              None)
    if mc:
        head += ['', f'Several cameras on {mc.get("device")} (scripts/multicam_bench.py, frames '
                 'per second, median):', '',
                 '| cameras | per-frame loop | packed split | packed mask | speed-up |',
                 '| --- | --- | --- | --- | --- |']
        head += [f'| {r["cameras"]} | {r["loop_fps"]:.1f} | {r["packed_split_fps"]:.1f} | '
                 f'{r["packed_mask_fps"]:.1f} | {r["speedup"]:.2f} |' for r in mc['rows']]
    for p in parts:
        for line in p.data.get('skipped', []):
            head.append(f'- {p.name} skipped: {line}')
    return '\n'.join(head) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    ap.add_argument('--quick', action='store_true', help='one small eager bench row, no compile '
                    '(the CI run of the script itself)')
    ap.add_argument('--out', type=Path, default=ROOT / '.device' / 'out')
    ap.add_argument('--budget-s', type=float, help='time budget (default 480 s, 110 with '
                    '--quick)')
    ap.add_argument('--wheels', type=Path, default=ROOT / '.carry' / 'wheels',
                    help='wheelhouse of carried packages (default .carry/wheels)')
    ap.add_argument('--fill-wheels', metavar='PYTHON_VERSION',
                    help='instead of checking: print (with --yes: run) the pip download that '
                         'fills --wheels for the device\'s Python (e.g. 3.10); needs a registry')
    ap.add_argument('--yes', action='store_true', help='with --fill-wheels: run it')
    ap.add_argument('--data', type=Path, default=ROOT.parent / 'shared' / 'data' / 'camvid',
                    help='CamVid root with val/images, for the multicam part')
    ap.add_argument('--parts', default='cuda_tests,bench,multicam,node,tensorrt',
                    help='which parts to run (comma-separated; environment always runs)')
    ap.add_argument('--pause-pgid', type=int, help='process group of a job sharing the GPU, '
                    'stopped during the timed parts')
    a = ap.parse_args(argv)
    if a.fill_wheels:
        cmd = fill_command(a.wheels, a.fill_wheels)
        print(' '.join(cmd))
        return subprocess.call(cmd) if a.yes else 0
    a.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(a.budget_s or BUDGET_S['quick' if a.quick else 'full'])
    st: dict = {}
    parts = [part_environment(a, st)]
    print(f"device_check: environment: {parts[0].detail}", flush=True)
    if a.device == 'cuda' and not st['facts']['cuda_available']:
        parts[0].detail += '; --device cuda asked for, but CUDA is not available here'
    names = [n for n in ('cuda_tests', 'bench', 'multicam', 'node', 'tensorrt')
             if n in a.parts.split(',')]
    need = {n: [m for m in NEEDS[n] if m not in st['have']] for n in names}
    todo = [n for n in names if not need[n]]   # the budget is shared among these
    for name in names:
        t0 = time.monotonic()
        if need[name]:
            p = Part(name, detail=f'needs {", ".join(MODULES[m] for m in need[name])}, which '
                                  f'{"does" if len(need[name]) == 1 else "do"} not import here')
            parts.append(p)
            print(f'device_check: {p.name}: skipped: {p.detail}', flush=True)
            continue
        budget = clock.share(name, todo)
        todo.remove(name)
        paused = pause(a.pause_pgid, name in TIMED)
        if name == 'cuda_tests':
            p = part_cuda_tests(a, st, budget, a.out)
        elif name == 'bench':
            p = part_bench(a, st, budget, QUICK_BENCH if a.quick else FULL_BENCH)
        elif name == 'multicam':
            p = part_multicam(a, st, budget, a.out)
        elif name == 'node':
            p = part_node(a, st, budget, a.out)
        else:
            p = part_tensorrt(a, st, budget) if a.device == 'cuda' else Part(
                name, detail='TensorRT engines need --device cuda')
        pause(a.pause_pgid, False)
        p.seconds = time.monotonic() - t0
        if paused:
            p.detail += ' (the job sharing the GPU was stopped meanwhile)'
        parts.append(p)
        print(f'device_check: {p.name}: {p.status} ({p.seconds:.0f} s) {p.detail}', flush=True)
    summary = {'facts': st.get('facts'), 'modules': st.get('modules'),
               'quick': a.quick, 'budget_s': clock.budget,
               'seconds': round(clock.budget - clock.left(), 1),
               'parts': [asdict(p) for p in parts]}
    (a.out / 'summary.json').write_text(json.dumps(summary, indent=1, default=str))
    (a.out / 'summary.md').write_text(markdown(st, parts))
    print(f'device_check: wrote {a.out / "summary.json"} and summary.md', flush=True)
    return 1 if any(p.status == 'failed' for p in parts) else 0


if __name__ == '__main__':
    sys.exit(main())
