"""scripts/val_curve.py: runs chained by images seen, from where their weights were taken."""
from pathlib import Path

import pytest

from script_module import load_script

vc = load_script('val_curve')

HEAD = 'step,time,lr,xi,loss,ce,aux,kl,img_per_s,val_miou,holdout_miou\n'


def write(path: Path, rows: list[str]) -> Path:
    path.write_text(HEAD + ''.join(r + '\n' for r in rows))
    return path


def test_chain_offsets_by_the_starting_step_and_batch(tmp_path):
    a = write(tmp_path / 'a.csv', ['1,1,0,,1,,,,1,,', '100,1,0,,1,,,,1,0.40,0.30',
                                   '200,1,0,,1,,,,1,0.50,'])
    b = write(tmp_path / 'b.csv', ['50,1,0,,1,,,,1,0.55,'])
    pts = vc.chain([(a, 'A', 16, 0), (b, 'B', 8, 100)])   # B starts from A's step 100
    assert [(p['run'], p['images']) for p in pts] == [('A', 1600), ('A', 3200),
                                                      ('B', 1600 + 400)]
    assert pts[0]['val'] == pytest.approx(40.0) and pts[0]['heldout'] == pytest.approx(30.0)
    assert pts[1]['heldout'] is None


def test_main_writes_plot_and_table(tmp_path, capsys):
    a = write(tmp_path / 'a.csv', ['10,1,0,,1,,,,1,0.25,'])
    assert vc.main(['--run', str(a), 'A', '8', '0', '--out', str(tmp_path / 'c.png'),
                    '--md', str(tmp_path / 'c.md')]) == 0
    assert (tmp_path / 'c.png').stat().st_size > 1000
    assert '| A | 10 | 80 | 25.00 |  |' in (tmp_path / 'c.md').read_text()
    empty = write(tmp_path / 'e.csv', [])
    assert vc.main(['--run', str(empty), 'E', '8', '0', '--out', str(tmp_path / 'e.png')]) == 1


def test_val_at_the_default_exits_is_read_where_the_run_has_it(tmp_path):
    """Phase 2 with select_best: default logs val at the default exits in its own column."""
    p = tmp_path / 'p2.csv'
    p.write_text(HEAD.rstrip('\n') + ',val_miou_default\n' + '5,1,0,0.9,1,,,,1,0.50,,0.55\n'
                 + '6,1,0,0.9,1,,,,1,,,\n')
    assert vc.read_evals(p) == [(5, pytest.approx(50.0), None, pytest.approx(55.0))]
    assert vc.main(['--run', str(p), 'P2', '8', '0', '--out', str(tmp_path / 'p.png'),
                    '--md', str(tmp_path / 'p.md')]) == 0
    assert '| P2 | 5 | 40 | 50.00 | 55.00 |' in (tmp_path / 'p.md').read_text()
