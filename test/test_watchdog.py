"""The suite's hang watchdog (conftest.py): a test running past DOVIT_TEST_LIMIT_S dumps the
stacks and ends the run with exit code 1, instead of holding CI until its limit."""
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_a_hanging_test_ends_the_run_with_its_stack(tmp_path):
    shutil.copy(Path(__file__).with_name('conftest.py'), tmp_path / 'conftest.py')
    (tmp_path / 'test_hang.py').write_text(
        'import time\n\n\ndef test_quick():\n    pass\n\n\n'
        'def test_hangs():\n    time.sleep(60)\n')
    env = {**os.environ, 'DOVIT_TEST_LIMIT_S': '3'}
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                        str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=50)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'Timeout (0:00:03)!' in r.stderr, r.stderr
    assert 'line 9 in test_hangs' in r.stderr, r.stderr   # the hanging test's own frame
