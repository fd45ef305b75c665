"""scripts/device_check.py on CPU (--device cpu --quick): the script a lent GPU runs is proven
here, whole, in CI; and its pieces that decide what runs and what the summary says."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from script_module import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'device_check.py'


def failed_tails(out: Path) -> str:
    """The output a failed part kept, for the assertion message: a one-line detail alone did
    not tell where a timed-out demo had spent its time."""
    try:
        parts = json.loads((out / 'summary.json').read_text())['parts']
    except (OSError, ValueError, KeyError):
        return ''
    return ''.join(f"\n--- {p['name']}:\n{p['data'].get('tail', '')}" for p in parts
                   if p['status'] == 'failed')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp('device_check')
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(SCRIPT), '--device', 'cpu', '--quick', '--out',
                        str(out)], capture_output=True, text=True, timeout=240)
    return r, out, time.monotonic() - t0


def test_quick_cpu_run_passes(quick):
    r, out, secs = quick   # its time is the script's own budget's business (--budget-s)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + failed_tails(out)
    s = json.loads((out / 'summary.json').read_text())
    parts = {p['name']: p for p in s['parts']}
    assert list(parts) == ['environment', 'cuda_tests', 'bench', 'multicam', 'node',
                           'tensorrt']
    assert all(p['status'] in ('ok', 'skipped') for p in parts.values())
    f = s['facts']
    assert f['torch'] and f['python'] and 'cuda_available' in f
    # every missing dependency is named, every skip says why
    for p in parts.values():
        if p['status'] == 'skipped':
            assert p['detail'], p
    if 'torch_tensorrt' not in s['modules'] or s['modules']['torch_tensorrt'] != 'ok':
        assert parts['tensorrt']['status'] == 'skipped'
        assert 'torch-tensorrt' in parts['tensorrt']['detail']
    rows = parts['bench']['data']['rows']
    assert rows and rows[0]['status'] == 'ok' and rows[0]['full_gflops'] > 0
    tests = parts['cuda_tests']['data']['tests']
    assert len(tests) >= 5   # pytest -m cuda collected test_cuda.py
    if not f['cuda_available']:
        assert all(v.startswith('skipped') for v in tests.values())
    if parts['multicam']['status'] == 'ok':   # CamVid val frames here (../shared/data)
        rows = parts['multicam']['data']['result']['rows']
        assert [r['cameras'] for r in rows] == [1, 2, 4]
        assert all(r['loop_fps'] > 0 and r['packed_split_fps'] > 0 for r in rows)
        assert '| cameras | per-frame loop |' in (out / 'summary.md').read_text()
    else:
        assert 'no CamVid val frames' in parts['multicam']['detail']
    if parts['node']['status'] == 'ok':
        assert parts['node']['data']['frames'] == [30, 30]
    md = (out / 'summary.md').read_text()
    assert '| part | status | seconds | detail |' in md and '| tiny | 64x128 | eager |' in md


def test_budget_shares_and_reports():
    dc = load_script('device_check')
    clock = dc.Clock(100.0)
    assert clock.share('cuda_tests', ['cuda_tests', 'bench']) == pytest.approx(
        100 * 0.4 / 0.8, rel=0.01)
    assert clock.share('bench', ['bench']) == pytest.approx(100, rel=0.01)
    assert dc.junit_summary(Path('/nonexistent.xml')) == {}
    st = {'facts': {'gpu': 'Fake', 'torch': '2.x', 'python': '3'}}
    bad = dc.Part('bench', 'failed', 3.0, '0 rows ok, 1 failed', {'rows': [
        {'preset': 'small', 'size': '512x1024', 'backend': 'compile', 'status': 'timed out',
         'error': 'x'}], 'skipped': ['base 1024x2048 compile: 3 s of budget left']})
    md = dc.markdown(st, [bad])
    assert '| small | 512x1024 | compile | timed out: x |' in md
    assert '- bench skipped: base 1024x2048 compile: 3 s of budget left' in md


def test_a_timed_out_command_leaves_no_process_behind(tmp_path):
    """run_cmd on timeout ends the command's whole process group, the children it started
    too (a timed-out demo once left its node and player running), and keeps its output."""
    dc = load_script('device_check')
    pid_file = tmp_path / 'child.pid'
    code = ('import subprocess, sys, time\n'
            'c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])\n'
            f'open({str(pid_file)!r}, "w").write(str(c.pid))\n'
            'print("started", flush=True)\n'
            'time.sleep(120)\n')
    rc, out = dc.run_cmd([sys.executable, '-c', code], 3.0, dict(os.environ))
    assert rc == 124 and 'started' in out
    child = int(pid_file.read_text())
    for _ in range(50):   # SIGKILLed: gone once its parent's exit hands it to init to reap
        if not Path(f'/proc/{child}').exists() or \
                Path(f'/proc/{child}/stat').read_text().split()[2] == 'Z':
            break
        time.sleep(0.1)
    else:
        pytest.fail(f'the child {child} of a timed-out command is still running')
    assert dc.run_cmd([sys.executable, '-c', 'print("ok")'], 30.0, dict(os.environ)) == \
        (0, 'ok\n')


def test_pause_stops_and_continues_a_process_group():
    """--pause-pgid: the job sharing the GPU is stopped during timed parts, then continued."""
    dc = load_script('device_check')
    job = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],
                           start_new_session=True)

    def state() -> str:
        return Path(f'/proc/{job.pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    try:
        # Stopped is 'T'; continued is any other state. A busy machine can show a process that
        # is still importing in 'D' (disk wait) right after SIGCONT: not an 'S'/'R' check.
        assert dc.pause(job.pid, True) is True and state() == 'T'
        assert dc.pause(job.pid, False) is False and state() not in ('T', 't')
        assert dc.pause(None, True) is False
    finally:
        job.kill()
        job.wait()
    assert dc.pause(job.pid, True) is False   # ended: nothing to pause


def test_wheelhouse_missing_is_said(tmp_path):
    dc = load_script('device_check')
    assert dc.install_from_wheelhouse(tmp_path, []) == 'nothing missing'
    msg = dc.install_from_wheelhouse(tmp_path / 'none', ['rosbags'])
    assert msg.startswith('no wheelhouse at') and 'rosbags' in msg


def test_fill_wheels_prints_the_download(tmp_path, capsys):
    dc = load_script('device_check')
    assert dc.main(['--fill-wheels', '3.10', '--wheels', str(tmp_path / 'w')]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[cmd.index('--python-version') + 1] == '3.10' and 'download' in cmd
    assert '--no-deps' in cmd and 'safetensors' in cmd and not (tmp_path / 'w').exists()
