"""ConfusionMatrix / SegMetrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from dovit_ros.train.metrics import ConfusionMatrix

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
