"""ConfusionMatrix / SegMetrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from dovit_ros.train.metrics import (ConfusionMatrix, bootstrap_intervals, iou_from_matrices,
                                     resample_counts)

# 3 classes, one ignored pixel. Labelled (gt, pred) pairs: (0,0) (0,1) (1,1) (1,2) (2,2).
TARGET = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [2, 2, 0]])
# rows = ground truth, cols = prediction, counted by hand from the pairs above
HAND = np.array([[1, 1, 0],
                 [0, 1, 1],
                 [0, 0, 1]])
# IoU = tp / (gt + pred - tp): c0 1/(2+1-1), c1 1/(2+2-1), c2 1/(1+2-1)
HAND_IOU = [1 / 2, 1 / 3, 1 / 2]


@pytest.mark.parametrize('to', [np.asarray, torch.as_tensor])
def test_hand_computed_three_classes(to):
    cm = ConfusionMatrix(3)
    cm.update(to(PRED), to(TARGET))
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, HAND)
    m = cm.compute()
    np.testing.assert_allclose(m.iou_per_class, HAND_IOU)
    assert m.miou == pytest.approx(4 / 9)
    assert m.pixel_acc == pytest.approx(3 / 5)         # 3 correct of 5 labelled
    assert m.mean_acc == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert m.labelled_pixels == 5


def test_absent_and_prediction_only_classes():
    cm = ConfusionMatrix(5)
    cm.update(PRED, TARGET)
    m = cm.compute()
    # classes 3, 4 appear nowhere: NaN and left out of every mean
    assert math.isnan(m.iou_per_class[3]) and math.isnan(m.iou_per_class[4])
    assert m.miou == pytest.approx(4 / 9) and m.mean_acc == pytest.approx(2 / 3)
    # a class that is only predicted counts in mIoU with IoU 0, not in mean_acc
    cm.update(np.array([3]), np.array([0]))
    m = cm.compute()
    assert m.iou_per_class[3] == 0.0 and math.isnan(m.acc_per_class[3])
    # class 0 now has gt 3, pred 1, tp 1 -> IoU 1/3, recall 1/3
    assert m.miou == pytest.approx((1 / 3 + 1 / 3 + 1 / 2 + 0) / 4)
    assert m.mean_acc == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert m.pixel_acc == pytest.approx(3 / 6)


def test_ignored_pixels_are_excluded():
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(np.array([0, 1, 2, 2]), np.array([255, 255, 255, 255]))
    assert cm.matrix.sum() == 0 and math.isnan(cm.compute().miou)
    cm = ConfusionMatrix(3, ignore_index=7)
    cm.update(np.array([0, 1, 2]), np.array([7, 1, 7]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_merge_equals_update_on_concatenation_and_naive_count():
    rng = np.random.default_rng(3)
    k = 4
    preds = [rng.integers(0, k, (2, 5, 6)) for _ in range(3)]
    targets = [np.where(rng.random((2, 5, 6)) < 0.2, 255, rng.integers(0, k, (2, 5, 6)))
               for _ in range(3)]
    merged = ConfusionMatrix(k)
    for p, t in zip(preds, targets):
        part = ConfusionMatrix(k)
        part.update(torch.as_tensor(p, dtype=torch.uint8), t.astype(np.int32))
        merged.merge(part)
    whole = ConfusionMatrix(k)
    whole.update(np.concatenate(preds), np.concatenate(targets))
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    naive = np.zeros((k, k), np.int64)
    for p, t in zip(np.concatenate(preds).ravel(), np.concatenate(targets).ravel()):
        if t != 255:
            naive[t, p] += 1
    np.testing.assert_array_equal(whole.matrix, naive)
    with pytest.raises(ValueError, match='merge'):
        merged.merge(ConfusionMatrix(k + 1))


def test_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match='shape'):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match='target'):
        cm.update(np.zeros(2, int), np.array([0, 3]))
    with pytest.raises(ValueError, match='pred'):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='integer'):
        cm.update(np.zeros(2), np.zeros(2, int))
    assert cm.matrix.sum() == 0


def image_matrices(pairs_per_image: list[list[tuple[int, int]]], k: int = 3) -> np.ndarray:
    """(n, k, k) confusion matrices from each image's (gt, pred) pixel pairs."""
    out = np.zeros((len(pairs_per_image), k, k), np.int64)
    for i, pairs in enumerate(pairs_per_image):
        for g, p in pairs:
            out[i, g, p] += 1
    return out


def test_iou_from_matrices_matches_the_hand_computed_iou():
    np.testing.assert_allclose(iou_from_matrices(HAND), HAND_IOU)
    two = np.stack([HAND, np.eye(3, dtype=np.int64)])
    np.testing.assert_allclose(iou_from_matrices(two), [HAND_IOU, [1, 1, 1]])
    assert np.isnan(iou_from_matrices(np.zeros((2, 2), np.int64))).all()


def test_resample_counts_draw_every_image_set_and_repeat_with_the_seed():
    c = resample_counts(7, 50, seed=3)
    assert c.shape == (50, 7) and (c.sum(1) == 7).all() and (c >= 0).all()
    np.testing.assert_array_equal(c, resample_counts(7, 50, seed=3))
    assert not np.array_equal(c, resample_counts(7, 50, seed=4))


def test_identical_images_give_a_point_interval():
    mats = np.stack([HAND] * 5)
    ci = bootstrap_intervals(mats, resample_counts(5, 200))
    assert ci.miou == pytest.approx((4 / 9, 4 / 9))
    for (lo, hi), v in zip(ci.iou_per_class, HAND_IOU):
        assert lo == pytest.approx(v) and hi == pytest.approx(v)
    assert ci.miou_delta is None


def test_interval_spans_what_the_images_disagree_on():
    # image 0 all right (mIoU 1); image 1 takes class 0 for class 1 throughout
    good = [(0, 0)] * 4 + [(1, 1)] * 4
    bad = [(0, 1)] * 4 + [(1, 1)] * 4
    mats = image_matrices([good, bad], k=2)
    ci = bootstrap_intervals(mats, resample_counts(2, 400), level=0.9)
    # a quarter of the resamples draw image 0 twice (mIoU 1), a quarter image 1 twice (class 0
    # IoU 0, class 1 8 / 16: mIoU 0.25), so the 90 % interval reaches both
    assert ci.miou[0] == pytest.approx(0.25) and ci.miou[1] == pytest.approx(1.0)
    assert ci.iou_per_class[0] == pytest.approx((0.0, 1.0))
    assert ci.resamples == 400 and ci.level == 0.9


def test_paired_delta_cancels_what_two_runs_share():
    rng = np.random.default_rng(0)
    mats = rng.integers(0, 50, size=(30, 3, 3))
    counts = resample_counts(30, 300)
    assert bootstrap_intervals(mats, counts, reference=mats).miou_delta == (0.0, 0.0)
    # a run one pixel better per image on class 0: its change is > 0 in every resample
    better = mats.copy()
    better[:, 0, 0] += 1
    lo, hi = bootstrap_intervals(better, counts, reference=mats).miou_delta
    assert 0 < lo <= hi


def test_class_absent_from_every_image_has_no_interval():
    mats = image_matrices([[(0, 0), (1, 1)], [(0, 0)]], k=3)
    ci = bootstrap_intervals(mats, resample_counts(2, 50))
    assert all(math.isnan(v) for v in ci.iou_per_class[2])
    assert ci.iou_per_class[0] == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize('kw, msg', [
    (dict(level=1.0), 'level'),
    (dict(counts=np.ones((5, 3), np.int64)), 'do not fit'),
    (dict(reference=np.zeros((2, 2, 2), np.int64)), 'differ in shape'),
])
def test_bootstrap_rejects_bad_arguments(kw, msg):
    args = dict(matrices=np.stack([HAND] * 4), counts=resample_counts(4, 10))
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        bootstrap_intervals(**args)
