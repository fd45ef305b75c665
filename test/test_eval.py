"""dovit-eval end to end: report schema, markdown and plot, mIoU recomputed from the saved
predictions, the Cityscapes result format checked by cityscapesscripts' own evaluator, and
merging the report into an exported model with dovit-export --metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from dovit_ros.cli import eval as eval_cli
from dovit_ros.cli import export as export_cli
from dovit_ros.data import ClassInfo, load_dataset
from dovit_ros.data.classes import cityscapes_classes, cityscapes_id_lut
from dovit_ros.model import DoViTSegmenter, ViTConfig
from dovit_ros.runtime.artifacts import ModelMeta, load_model, save_model_dir
from dovit_ros.train.checkpoint import save_checkpoint
from dovit_ros.train.loop import build_optimizer
from dovit_ros.train.config import OptimConfig
from test_data import write_label, write_rgb
from dovit_ros.train.metrics import ConfusionMatrix

ARCH = {'dim': 32, 'depth': 4, 'heads': 2, 'decision_points': [1, 2, 3], 'img_size': [64, 64],
        'decoder_dim': 16}
CLASSES = {'names': ['ground', 'wall', 'sky'],
           'palette': [[128, 64, 128], [70, 70, 70], [70, 130, 180]], 'ignore_index': 255}
THRESHOLDS = [1.0, 0.9, 0.6]
RESULT_KEYS = {'threshold', 'policy', 'topk_per_class', 'miou', 'pixel_acc', 'mean_acc',
               'iou_per_class', 'acc_per_class', 'gflops_mean', 'gflops_full',
               'gflops_saved_pct', 'ms_mean', 'tokens_active', 'images', 'predictions'}
META_KEYS = {'model', 'model_name', 'weights_sha256', 'dataset', 'data_root', 'split', 'images',
             'policy', 'topk_per_class', 'class_names', 'device', 'torch', 'python', 'machine',
             'created'}


pytestmark = pytest.mark.usefixtures('one_thread')


def random_model(cfg: ViTConfig, seed: int = 0) -> DoViTSegmenter:
    """Random weights whose aux heads are confident enough for thresholds to split tokens."""
    torch.manual_seed(seed)
    m = DoViTSegmenter(cfg).eval()
    with torch.no_grad():
        for head in m.aux_heads:
            head.proj.weight.mul_(30.0)
            head.proj.bias.normal_(0, 1.0)
    return m


@pytest.fixture(scope='module')
def folder_data(tmp_path_factory) -> Path:
    """3 val images 64x96 (classes in horizontal bands, some ignored pixels)."""
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(0)
    for i in range(3):
        label = np.repeat(np.array([0] * 20 + [1] * 24 + [2] * 20, np.uint8)[:, None], 96, 1)
        label[rng.random((64, 96)) < 0.05] = 255
        rgb = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
        write_rgb(root / 'val' / 'images' / f'frame_{i:02d}.png', rgb)
        write_label(root / 'val' / 'labels' / f'frame_{i:02d}.png', label)
    (root / 'classes.yaml').write_text(yaml.safe_dump(CLASSES))
    return root


@pytest.fixture(scope='module')
def exported_model(tmp_path_factory) -> Path:
    """A checkpoint of a tiny model, exported with dovit-export."""
    tmp = tmp_path_factory.mktemp('model')
    cfg = ViTConfig(num_classes=3, **ARCH)
    model = random_model(cfg)
    opt = build_optimizer(model, OptimConfig())
    meta = ModelMeta(architecture=cfg, classes=ClassInfo.from_dict(CLASSES), name='tiny-eval')
    save_checkpoint(tmp / 'run', 7, model, meta, opt)
    assert export_cli.main([str(tmp / 'run'), '--out', str(tmp / 'm'), '--threshold',
                            '0.9']) == 0
    return tmp / 'm'


def recompute_miou(ds, folder: Path, name, to_train_ids=None) -> float:
    cm = ConfusionMatrix(ds.classes.num_classes, ds.classes.ignore_index)
    for i in range(len(ds)):
        pred = cv2.imread(str(folder / name(ds.image_path(i))), cv2.IMREAD_UNCHANGED)
        assert pred is not None and pred.ndim == 2 and pred.dtype == np.uint8
        if to_train_ids is not None:
            pred = to_train_ids(pred)
        cm.update(pred, ds[i][1])
    return cm.compute().miou


def test_eval_end_to_end(tmp_path, folder_data, exported_model, capsys):
    out = tmp_path / 'reports' / 'tiny.json'
    preds = tmp_path / 'preds'
    rc = eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                        str(folder_data), '--split', 'val', '--thresholds',
                        ','.join(map(str, THRESHOLDS)), '--device', 'cpu', '--threads', '1',
                        '--json', str(out), '--save-predictions', str(preds), '--no-progress'])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert set(report) == {'meta', 'results'}
    meta = report['meta']
    assert META_KEYS <= set(meta)
    assert meta['class_names'] == CLASSES['names'] and meta['images'] == 3
    assert meta['dataset'] == 'folder' and meta['split'] == 'val'
    assert meta['device'] == 'cpu' and meta['torch'] == torch.__version__
    assert meta['machine']['cpu_count'] == os.cpu_count()
    assert meta['policy'] == 'threshold' and Path(meta['model']) == exported_model
    rs = report['results']
    assert [r['threshold'] for r in rs] == THRESHOLDS
    for r in rs:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert 0 <= r['miou'] <= 1 and 0 <= r['pixel_acc'] <= 1 and 0 <= r['mean_acc'] <= 1
        assert len(r['iou_per_class']) == 3 and len(r['tokens_active']) == 4
        recall = [v for v in r['acc_per_class'] if v is not None]
        assert r['mean_acc'] == pytest.approx(sum(recall) / len(recall))
        assert r['gflops_full'] > 0 and r['ms_mean'] > 0 and r['images'] == 3
    assert rs[0]['tokens_active'] == [1.0] * 4          # xi = 1: nothing exits
    assert rs[-1]['tokens_active'][-1] < 1.0            # xi = 0.6: tokens left early
    assert rs[-1]['gflops_mean'] < rs[0]['gflops_mean']
    assert rs[-1]['gflops_saved_pct'] > 0
    # bootstrap intervals (--bootstrap, default 1000): ordered, per class, paired against xi 1
    for r in rs:
        ci = r['ci']
        assert ci['resamples'] == 1000 and ci['level'] == 0.95
        assert ci['miou'][0] <= ci['miou'][1] and len(ci['iou_per_class']) == 3
    assert rs[0]['ci']['miou_delta'] is None
    assert all(r['ci']['miou_delta'][0] <= r['ci']['miou_delta'][1] for r in rs[1:])

    # the reported mIoU is the one of the saved label maps
    ds = load_dataset('folder', folder_data, 'val')
    for r, t in zip(rs, THRESHOLDS):
        folder = preds / f'xi_{t:g}'
        assert Path(r['predictions']) == folder
        assert sorted(p.name for p in folder.iterdir()) == [f'frame_{i:02d}.png' for i in range(3)]
        assert recompute_miou(ds, folder, lambda p: p.stem + '.png') == r['miou']

    md = out.with_suffix('.md').read_text()
    assert '| ξ | mIoU | pixel acc | mean acc | GFLOPs mean | GFLOPs saved % |' in md
    assert '| mIoU 95 % | change vs first 95 % |' in md and 'percentile bootstrap' in md
    assert len([line for line in md.splitlines() if line.startswith('| 0.6 ')]) == 1
    assert out.with_suffix('.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert cv2.imread(str(out.with_suffix('.png'))).shape[0] > 100

    # dovit-export --metrics merges the report into model.yaml
    rc = export_cli.main([str(exported_model), '--out', str(exported_model), '--metrics',
                          str(out)])
    assert rc == 0
    assert 'other weights' not in capsys.readouterr().err
    _, m = load_model(exported_model)
    ev = m.metrics['eval']['folder/val']
    assert [r['miou'] for r in ev['results']] == [r['miou'] for r in rs]
    assert ev['images'] == 3 and m.exits.threshold == 0.9 and m.recipe['export']['step'] == 7


def test_eval_errors(tmp_path, folder_data, exported_model, capsys):
    base = ['--dataset', 'folder', '--data-root', str(folder_data), '--device', 'cpu',
            '--json', str(tmp_path / 'r.json'), '--no-progress']
    assert eval_cli.main(['--model', str(tmp_path / 'nope')] + base) == 2
    assert 'not found' in capsys.readouterr().err
    assert eval_cli.main(['--model', str(exported_model), '--split', 'test'] + base) == 2
    assert 'test' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.main(['--model', str(exported_model), '--thresholds', '0.9,high'] + base)
    assert '_pred_labelIds.png' in eval_cli.build_parser().format_help()


# ------------------------------------------------------------------ Cityscapes

CS_FRAMES = (('berlin', '000000_000019'), ('berlin', '000001_000019'), ('bonn', '000002_000019'))


def make_cityscapes(root: Path) -> None:
    """leftImg8bit + gtFine (labelIds, instanceIds) of 64x96 frames, official naming."""
    rng = np.random.default_rng(1)
    for city, frame in CS_FRAMES:
        stem = f'{city}_{frame}'
        ids = np.full((64, 96), 7, np.uint8)   # road
        ids[:20] = 23                          # sky
        ids[20:40, :40] = 11                   # building
        ids[20:40, 40:] = 21                   # vegetation
        ids[44:56, 10:30] = 26                 # a car
        ids[60:] = 1                           # ego vehicle: ignored in evaluation
        inst = ids.astype(np.uint16)
        inst[44:56, 10:30] = 26000             # instance 0 of class car
        write_rgb(root / 'leftImg8bit' / 'val' / city / f'{stem}_leftImg8bit.png',
                  rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
        gt = root / 'gtFine' / 'val' / city
        write_label(gt / f'{stem}_gtFine_labelIds.png', ids)
        write_label(gt / f'{stem}_gtFine_instanceIds.png', inst)


# cityscapesScripts (2.3.0 included) calls np.in1d, which NumPy 2.4 removed (upstream fix:
# mcordts/cityscapesScripts PR #196); np.isin(...).ravel() is what in1d returned.
CS_EVAL = '''
import runpy
import numpy as np
if not hasattr(np, 'in1d'):
    np.in1d = lambda a, b, assume_unique=False, invert=False: np.isin(
        a, b, assume_unique=assume_unique, invert=invert).ravel()
runpy.run_module('cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling',
                 run_name='__main__')
'''


def test_cityscapes_official_result_format(tmp_path):
    root = tmp_path / 'cityscapes'
    make_cityscapes(root)
    cfg = ViTConfig(num_classes=19, **ARCH)
    model_dir = save_model_dir(tmp_path / 'model', random_model(cfg, seed=3),
                               ModelMeta(architecture=cfg, classes=cityscapes_classes()))
    preds, out = tmp_path / 'results', tmp_path / 'cs.json'
    rc = eval_cli.main(['--model', str(model_dir), '--dataset', 'cityscapes', '--data-root',
                        str(root), '--split', 'val', '--thresholds', '1.0,0.6', '--device',
                        'cpu', '--json', str(out), '--save-predictions', str(preds),
                        '--no-progress'])
    assert rc == 0
    results = json.loads(out.read_text())['results']
    from cityscapesscripts.helpers.labels import labels
    eval_ids = {lb.id for lb in labels if 0 <= lb.trainId < 255}
    ds = load_dataset('cityscapes', root, 'val')
    lut = cityscapes_id_lut()
    for r, t in zip(results, ('1', '0.6')):
        folder = preds / f'xi_{t}'
        want = sorted(f'{c}_{f}_pred_labelIds.png' for c, f in CS_FRAMES)
        assert sorted(p.name for p in folder.iterdir()) == want
        for p in folder.iterdir():
            ids = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert ids.shape == (64, 96) and set(np.unique(ids)) <= eval_ids
        miou = recompute_miou(
            ds, folder, lambda p: p.name.replace('_leftImg8bit.png', '_pred_labelIds.png'),
            lambda ids: lut[ids].astype(np.uint8))
        assert miou == r['miou']

        # cityscapesscripts' own evaluator finds the files and agrees on the class mIoU
        export = tmp_path / f'export_{t}'
        export.mkdir()
        env = {**os.environ, 'CITYSCAPES_DATASET': str(root), 'CITYSCAPES_RESULTS': str(folder),
               'CITYSCAPES_EXPORT_DIR': str(export), 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
        p = subprocess.run([sys.executable, '-c', CS_EVAL], env=env, capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        official = json.loads((export / 'resultPixelLevelSemanticLabeling.json').read_text())
        assert official['averageScoreClasses'] == pytest.approx(r['miou'], rel=1e-9)


def test_eval_target_gflops_runs_the_budget_controller(tmp_path, folder_data, exported_model,
                                                       capsys):
    out = tmp_path / 'budget.json'
    rc = eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                        str(folder_data), '--split', 'val', '--thresholds', '1.0,0.5',
                        '--device', 'cpu', '--threads', '1', '--json', str(out),
                        '--no-progress', '--target-gflops', '1e-9', '--threshold-min', '0.5'])
    assert rc == 0, capsys.readouterr().err
    rs = json.loads(out.read_text())['results']
    assert [r.get('controller', False) for r in rs] == [False, False, True]
    c = rs[-1]
    full = rs[0]['gflops_mean']
    # an unreachable target: the controller walks xi down towards threshold_min, so the run
    # costs less than the full model and every image's xi stays within the bounds
    assert 0.5 <= c['threshold_min_used'] <= c['threshold'] <= c['threshold_max_used'] <= 1.0
    assert c['threshold_min_used'] < 1.0
    assert c['gflops_mean'] < full
    assert c['budget']['budget kind'] == 'gflops'
    md = out.with_suffix('.md').read_text()
    assert 'Budget controller' in md and 'budget 1e-09 GFLOPs' in md
    # bad bounds are refused with a clear message
    rc = eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                        str(folder_data), '--json', str(out), '--no-progress',
                        '--target-gflops', '5', '--threshold-min', '0.99',
                        '--threshold-max', '0.9'])
    assert rc == 2 and 'threshold_min' in capsys.readouterr().err


def test_eval_batch_size_packs_and_matches_batch_one(tmp_path, folder_data, exported_model):
    """--batch-size 3 runs packed forwards; every per-image figure equals batch 1's."""
    out = {}
    for bs in (1, 3):
        js = tmp_path / f'b{bs}.json'
        assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder',
                              '--data-root', str(folder_data), '--split', 'val',
                              '--thresholds', '1.0,0.9', '--json', str(js), '--no-progress',
                              '--batch-size', str(bs)]) == 0
        out[bs] = json.loads(js.read_text())['results']
    for a, b in zip(out[1], out[3]):
        for k in ('miou', 'pixel_acc', 'iou_per_class', 'gflops_mean', 'tokens_active'):
            assert a[k] == pytest.approx(b[k], rel=1e-9), k
    assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                          str(folder_data), '--json', str(tmp_path / 'x.json'),
                          '--batch-size', '0']) == 2


def test_eval_precision_bf16_runs_and_is_recorded(tmp_path, folder_data, exported_model):
    js = tmp_path / 'bf16.json'
    assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                          str(folder_data), '--split', 'val', '--thresholds', '1.0,0.9',
                          '--json', str(js), '--no-progress', '--precision', 'bf16']) == 0
    r = json.loads(js.read_text())
    assert r['meta']['precision'] == 'bf16'
    assert all(0 <= x['miou'] <= 1 for x in r['results'])


def test_eval_only_selects_one_drive(tmp_path, folder_data, exported_model, capsys):
    ds = load_dataset('folder', folder_data, 'val')
    first = ds.image_path(0).name[:3]
    js = tmp_path / 'only.json'
    assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                          str(folder_data), '--split', 'val', '--only', first, '--json',
                          str(js), '--no-progress']) == 0
    want = sum(1 for f in ds.files if f[0].name.startswith(first))
    assert json.loads(js.read_text())['meta']['images'] == want
    assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                          str(folder_data), '--only', 'zzz_none', '--json', str(js)]) == 2
    assert 'no image named zzz_none' in capsys.readouterr().err


def test_eval_input_scale_scores_labels_resized_back(tmp_path, folder_data, exported_model):
    """--input-scale 0.5: the model sees 32x48 images (fewer GFLOPs), its labels come back at
    64x96 and are what the report scores; the scale is recorded."""
    runs = {}
    for s in ('1', '0.5'):
        js = tmp_path / f's{s}.json'
        assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder',
                              '--data-root', str(folder_data), '--split', 'val', '--thresholds',
                              '1.0', '--json', str(js), '--no-progress', '--input-scale', s,
                              '--save-predictions', str(tmp_path / f'p{s}')]) == 0
        runs[s] = json.loads(js.read_text())
    half = runs['0.5']
    assert half['meta']['input_scale'] == 0.5
    assert 'segmented at scale 0.5 of their size' in (tmp_path / 's0.5.md').read_text()
    assert half['results'][0]['gflops_mean'] < 0.5 * runs['1']['results'][0]['gflops_mean']
    ds = load_dataset('folder', folder_data, 'val')
    got = recompute_miou(ds, tmp_path / 'p0.5' / 'xi_1', lambda p: p.stem + '.png')
    assert got == pytest.approx(half['results'][0]['miou'])
    assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                          str(folder_data), '--json', str(tmp_path / 'x.json'),
                          '--input-scale', '5']) == 2
