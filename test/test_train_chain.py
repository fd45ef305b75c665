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

    def stop_early(config, out, minutes, threads):   # as dovit-train stopped by its budget
        calls.append((config, out.name, minutes))
        return 0
    monkeypatch.setattr(chain, 'run_one', stop_early)
    assert chain.main(['--minutes', '20', '--margin', '5', *two_stage]) == 0
    assert [(c, n) for c, n, _ in calls] == [(two_stage[0], 'a')]   # b never starts
    assert 14 < calls[0][2] <= 15
    assert 'a: stopped at step 0; run again to continue' in capsys.readouterr().out

    calls.clear()
    assert chain.main(['--minutes', '9', '--margin', '5', *two_stage]) == 0
    assert calls == []
    assert 'a: not started' in capsys.readouterr().out


def test_a_failed_run_stops_the_chain_with_its_exit_code(two_stage, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(chain, 'run_one', lambda c, o, m, t: calls.append(o.name) or 2)
    assert chain.main(['--minutes', '30', *two_stage]) == 2
    assert calls == ['a']
    assert 'a: dovit-train exited 2 (see runs/a.log)' in capsys.readouterr().out
