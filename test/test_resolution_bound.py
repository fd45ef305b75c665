"""scripts/resolution_bound.py: what a prediction at stride s can draw, per class."""

import numpy as np
import pytest
import torch

from script_module import load_script

rb = load_script('resolution_bound')


def scene() -> torch.Tensor:
    """64 x 64: class 0 above, class 1 below, a 2-pixel-wide class-2 pole; a few ignored."""
    lab = torch.zeros(64, 64, dtype=torch.long)
    lab[32:] = 1
    lab[:, 21:23] = 2
    lab[0, :4] = 255
    return lab


def test_stride_1_is_exact_and_a_thin_pole_vanishes_at_stride_16():
    lab = scene()
    assert torch.equal(rb.pooled_prediction(lab, 3, 255, 1)[lab != 255], lab[lab != 255])
    iou1 = rb.class_iou([(rb.pooled_prediction(lab, 3, 255, 1), lab)], 3, 255)
    assert iou1 == pytest.approx([100, 100, 100])
    iou16 = rb.class_iou([(rb.pooled_prediction(lab, 3, 255, 16), lab)], 3, 255)
    assert iou16[2] == 0 and iou16[0] > 90 and iou16[1] > 90   # 2/16 of a cell never wins


def test_class_iou_by_hand_and_absent_classes_are_nan():
    lab = torch.tensor([[0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 2]])
    iou = rb.class_iou([(pred, lab)], 3, 255)   # the ignored pixel's prediction is not counted
    assert iou[0] == pytest.approx(50) and iou[1] == pytest.approx(50) and np.isnan(iou[2])
