"""scripts/train_chain.py: a chain of warm-started runs in resumable slices."""
import pytest

from script_module import load_script
from test_train import make_folder_dataset, write_config

chain = load_script('train_chain')


@pytest.fixture
def two_stage(tmp_path, monkeypatch):
    """In tmp_path (the chain trains into ./runs): stage a (3 steps) and stage b, which starts
    from a's best (2 steps)."""
    monkeypatch.chdir(tmp_path)
    data = make_folder_dataset(tmp_path / 'data')
    a = write_config(tmp_path / 'a.yaml', data, name='a', steps=3, checkpoint_every=3)
    b = write_config(tmp_path / 'b.yaml', data, name='b', steps=2, checkpoint_every=2,
                     init_from='runs/a/best')
    return str(a), str(b)


def test_runs_the_chain_then_skips_finished_runs(two_stage, monkeypatch, capsys):
    assert chain.main(['--minutes', '30', '--threads', '1', *two_stage]) == 0
    assert chain.done_steps(chain.Path('runs/a')) == 3
    assert chain.done_steps(chain.Path('runs/b')) == 2
    assert 'chain finished' in capsys.readouterr().out
    log = chain.Path('runs/b.log').read_text()   # the command, then dovit-train's summary
    assert '--config ' + two_stage[1] in log and '"step": 2' in log

    calls = []
    monkeypatch.setattr(chain, 'run_one', lambda *a: calls.append(a) or 0)
    assert chain.main(['--minutes', '30', *two_stage]) == 0
    assert calls == []
    out = capsys.readouterr().out
    assert 'a: finished (3 steps)' in out and 'b: finished (2 steps)' in out


def test_an_unfinished_run_resumes_and_a_spent_budget_stops(two_stage, monkeypatch, capsys):
    calls = []

    def stop_early(cmd, log):   # as dovit-train stopped by its budget
        calls.append((cmd[cmd.index('--config') + 1], log.name,
                      float(cmd[cmd.index('--time-budget') + 1])))
        assert cmd[cmd.index('--device') + 1] == 'cpu'
        assert cmd[cmd.index('--set') + 1:] == ['seed=7', 'data.workers=0']
        return 0
    monkeypatch.setattr(chain, 'run_one', stop_early)
    assert chain.main(['--minutes', '20', '--margin', '5', '--device', 'cpu', *two_stage,
                       '--set', 'seed=7', 'data.workers=0']) == 0
    assert [(c, n) for c, n, _ in calls] == [(two_stage[0], 'a.log')]   # b never starts
    assert 14 < calls[0][2] <= 15
    assert 'a: stopped at step 0; run again to continue' in capsys.readouterr().out

    calls.clear()
    assert chain.main(['--minutes', '9', '--margin', '5', *two_stage]) == 0
    assert calls == []
    assert 'a: not started' in capsys.readouterr().out
    assert chain.main(['--minutes', '9', '--margin', '5', '--min-slice', '3', '--device', 'cpu',
                       *two_stage,
                       '--set', 'seed=7', 'data.workers=0']) == 0
    assert len(calls) == 1


def test_a_failed_run_stops_the_chain_with_its_exit_code(two_stage, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(chain, 'run_one', lambda cmd, log: calls.append(log.name) or 2)
    assert chain.main(['--minutes', '30', *two_stage]) == 2
    assert calls == ['a.log']
    assert 'a: dovit-train exited 2 (see runs/a.log)' in capsys.readouterr().out


def test_ctrl_c_waits_for_the_run_to_stop_cleanly(tmp_path, monkeypatch):
    """Ctrl-C reaches the chain and its run alike: the chain waits until the run has stopped
    (here: a child that takes 0.3 s to finish after SIGINT), then passes the interrupt on."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    child = ('import signal, sys, time\n'
             'signal.signal(signal.SIGINT, lambda *a: (time.sleep(0.3), '
             'open(sys.argv[1], "w").write("stopped"), sys.exit(0)))\n'
             'open(sys.argv[1] + ".ready", "w").close()\n'
             'time.sleep(30)\n')
    started = []
    real = subprocess.Popen
    monkeypatch.setattr(chain.subprocess, 'Popen',
                        lambda *a, **kw: started.append(real(*a, **kw)) or started[-1])

    def ctrl_c():   # as a terminal delivers it: to the run and to the chain
        while not (tmp_path / 'stopped.ready').exists():   # its handler is in place
            time.sleep(0.01)
        time.sleep(0.1)   # the chain is waiting for it
        os.kill(started[0].pid, signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=ctrl_c, daemon=True).start()
    marker = tmp_path / 'stopped'
    with pytest.raises(KeyboardInterrupt):
        chain.run_one([sys.executable, '-c', child, str(marker)], tmp_path / 'r.log')
    assert started[0].returncode == 0 and marker.read_text() == 'stopped'
