"""Paired comparison of two evaluations: the paired bootstrap difference (by hand), the matrices
file (round trip, rejection of bad files) and dovit-compare, also on dovit-eval's own output."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from dovit_ros.cli import compare as compare_cli
from dovit_ros.cli import eval as eval_cli
from dovit_ros.train.matrices_file import (EvalMatrices, MatricesFileError, load_matrices,
                                           row_label, save_matrices)
from dovit_ros.train.metrics import bootstrap_intervals, paired_difference, resample_counts
from test_eval import exported_model, folder_data  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures('one_thread')

NAMES = ['road', 'pole']


def stack(m, n: int) -> np.ndarray:
    return np.repeat(np.asarray(m, np.int64)[None], n, 0)   # (n, K, K)


def test_paired_difference_by_hand():
    # every image alike, so every resample gives the whole set's figures. A: road 10 right;
    # pole 5 right, 5 called road -> IoU road 10/15, pole 5/10. B: everything right.
    a, b = stack([[10, 0], [5, 5]], 4), stack([[10, 0], [0, 10]], 4)
    d = paired_difference(a, b, resample_counts(4, 50))
    assert d.miou_a == pytest.approx((2 / 3 + 0.5) / 2) and d.miou_b == pytest.approx(1.0)
    assert d.miou == pytest.approx(1 - (2 / 3 + 0.5) / 2)
    assert d.miou_interval == pytest.approx((d.miou, d.miou))
    assert d.iou_per_class == pytest.approx([1 / 3, 0.5])
    assert d.iou_intervals == [pytest.approx((1 / 3, 1 / 3)), pytest.approx((0.5, 0.5))]
    same = paired_difference(a, a, resample_counts(4, 50))
    assert same.miou == 0 and same.miou_interval == (0, 0)


def test_pairing_separates_what_the_two_intervals_cannot():
    # images of very different difficulty; B gets 3 more pole pixels right on every image
    rng = np.random.default_rng(0)
    right = rng.integers(5, 60, 30)
    a = np.stack([[[100, 0], [60 - r, r]] for r in right]).astype(np.int64)
    b = a.copy()
    b[:, 1, 0] -= 3
    b[:, 1, 1] += 3
    counts = resample_counts(30, 1000)
    ia, ib = bootstrap_intervals(a, counts), bootstrap_intervals(b, counts)
    assert ia.miou[1] > ib.miou[0]               # the two intervals overlap ...
    lo, hi = paired_difference(a, b, counts).miou_interval
    assert 0 < lo <= hi                           # ... the paired difference excludes zero


def test_a_class_missing_from_one_side_has_no_difference():
    a = stack([[10, 0, 0], [0, 0, 0], [0, 0, 5]], 3)      # class 1 absent from A
    b = stack([[9, 1, 0], [0, 0, 0], [0, 0, 5]], 3)       # B predicts it once: IoU 0
    d = paired_difference(a, b, resample_counts(3, 20))
    assert np.isnan(d.iou_a[1]) and d.iou_b[1] == 0
    assert np.isnan(d.iou_per_class[1]) and all(np.isnan(d.iou_intervals[1]))
    with pytest.raises(ValueError, match='do not fit'):
        paired_difference(a, b[:2], resample_counts(3, 20))


def em(images, matrices, rows=None, names=NAMES) -> EvalMatrices:
    rows = rows or [{'policy': 'threshold', 'threshold': 1.0}]
    return EvalMatrices(rows, matrices, images, names, {'model': 'm', 'weights_sha256': 'ab'})


def test_matrices_file_round_trip_and_bad_files(tmp_path):
    rows = [{'policy': 'threshold', 'threshold': 0.8},
            {'policy': 'threshold', 'threshold': 0.8, 'controller': True, 'target_gflops': 7.0}]
    ms = [stack([[3, 1], [2, 4]], 2), stack([[4, 0], [1, 5]], 2)]
    save_matrices(tmp_path / 'a.safetensors', em(['x.png', 'y.png'], ms, rows))
    back = load_matrices(tmp_path / 'a.safetensors')
    assert back.images == ['x.png', 'y.png'] and back.class_names == NAMES
    assert [row_label(r) for r in back.rows] == ['threshold xi 0.8', 'budget 7 GFLOPs']
    assert all(np.array_equal(x, y) for x, y in zip(back.matrices, ms))

    save_file({'row0': ms[0]}, str(tmp_path / 'plain.safetensors'))
    (tmp_path / 'junk.safetensors').write_bytes(b'\x80\x04not safetensors')
    save_matrices(tmp_path / 'neg.safetensors', em(['x.png', 'y.png'], [-ms[0]]))
    save_matrices(tmp_path / 'shape.safetensors', em(['x.png'], [ms[0]]))
    for name, message in (('plain', 'no "dovit_eval" metadata'),
                          ('junk', 'not a readable safetensors file'),
                          ('neg', r'row0 \(threshold xi 1\) must be int64 counts'),
                          ('shape', r'of shape \(1, 2, 2\), got int64 \(2, 2, 2\)'),
                          ('missing', 'not a readable safetensors file')):
        with pytest.raises(MatricesFileError, match=message):
            load_matrices(tmp_path / f'{name}.safetensors')


def test_compare_cli_aligns_images_and_names_what_it_skips(tmp_path, capsys):
    rows = [{'policy': 'threshold', 'threshold': 1.0}, {'policy': 'threshold', 'threshold': 0.8}]
    ma = [np.stack([[[5, 0], [1, 3]], [[6, 0], [4, 0]]]).astype(np.int64)] * 2
    save_matrices(tmp_path / 'a.safetensors', em(['p.png', 'q.png'], ma, rows))
    # B: the same images in the other order, its xi 1 row equal to A's, plus a budget row
    mb = [ma[0][::-1].copy(), ma[0][::-1].copy()]
    rows_b = [rows[0], {'policy': 'threshold', 'threshold': 0.5, 'controller': True,
                        'target_gflops': 6.0}]
    save_matrices(tmp_path / 'b.safetensors', em(['q.png', 'p.png'], mb, rows_b))
    js = tmp_path / 'out' / 'diff.json'
    assert compare_cli.main([str(tmp_path / 'a.safetensors'), str(tmp_path / 'b.safetensors'),
                             '--resamples', '50', '--json', str(js)]) == 0
    text = capsys.readouterr().out
    assert '| threshold xi 1 | ' in text and '+0.00 (+0.00 to +0.00)' in text
    assert 'In one file only (skipped): budget 6 GFLOPs, threshold xi 0.8' in text
    report = json.loads(js.read_text())
    assert [r['setting'] for r in report['rows']] == ['threshold xi 1']
    assert report['rows'][0]['miou'] == 0 and report['images'] == 2

    save_matrices(tmp_path / 'c.safetensors', em(['p.png', 'r.png'], ma, rows))
    save_matrices(tmp_path / 'd.safetensors', em(['p.png', 'q.png'], ma, rows, ['a', 'b']))
    save_matrices(tmp_path / 'e.safetensors', em(['p.png', 'q.png'], ma[:1], rows_b[1:]))
    for other, message in (('c', 'not of the same images'), ('d', 'class names differ'),
                           ('e', 'no setting in common')):
        assert compare_cli.main([str(tmp_path / 'a.safetensors'),
                                 str(tmp_path / f'{other}.safetensors')]) == 2
        assert message in capsys.readouterr().err
    assert compare_cli.main([str(tmp_path / 'a.safetensors'), str(tmp_path / 'a.safetensors'),
                             '--level', '1.5']) == 2


def test_eval_saves_the_matrices_its_report_is_made_of(tmp_path, folder_data,  # noqa: F811
                                                       exported_model):  # noqa: F811
    out = tmp_path / 'r.json'
    assert eval_cli.main(['--model', str(exported_model), '--dataset', 'folder', '--data-root',
                          str(folder_data), '--split', 'val', '--thresholds', '1.0,0.6',
                          '--json', str(out), '--no-progress',
                          '--save-matrices', str(tmp_path / 'r.safetensors')]) == 0
    report = json.loads(out.read_text())
    em_ = load_matrices(tmp_path / 'r.safetensors')
    assert em_.images == [f'frame_{i:02d}.png' for i in range(3)]
    assert em_.source['weights_sha256'] == report['meta']['weights_sha256']
    assert [row_label(r) for r in em_.rows] == ['threshold xi 1', 'threshold xi 0.6']
    for r, m in zip(report['results'], em_.matrices):
        whole = np.ones((1, 3), np.int64)
        assert paired_difference(m, m, whole).miou_a == pytest.approx(r['miou'])
