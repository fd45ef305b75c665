#!/usr/bin/env python3
"""How much accuracy a prediction made at stride s can reach at all, per class.

  python scripts/resolution_bound.py --dataset camvid --data-root ../shared/data/camvid \
      --split val --strides 16,8,4,2 --json docs/measurements/resolution_bound.json

The "perfect" prediction at stride s is the ground truth itself, pooled to s x s cells (each
cell holds its class fractions), upsampled bilinearly to full size and argmaxed: what a
decoder that predicts each cell's class mix exactly, then upsamples as ours does, would draw.
Its IoU per class against the full-resolution labels shows which classes a decoder at that
stride cannot draw (a pole 3 pixels wide is a minority in every 16 x 16 cell). It is a
reference for where a model's errors come from, not a strict upper bound: sharper logits
than the class mix can draw a little more.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def pooled_prediction(labels: torch.Tensor, num_classes: int, ignore_index: int,
                      stride: int) -> torch.Tensor:
    """(H, W) labels -> (H, W) argmax of their stride-s class fractions, upsampled."""
    H, W = labels.shape
    valid = labels != ignore_index
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes)  # (H, W, K)
    onehot = (onehot * valid[..., None]).permute(2, 0, 1).float()[None]  # (1, K, H, W)
    cells = F.avg_pool2d(onehot, stride, ceil_mode=True)  # (1, K, H/s, W/s)
    up = F.interpolate(cells, size=(H, W), mode='bilinear', align_corners=False)
    return up.argmax(1)[0]  # (H, W)


def class_iou(pairs, num_classes: int, ignore_index: int) -> np.ndarray:
    """IoU % per class over (prediction, labels) pairs (NaN: class absent from both), by the
    training metrics' own confusion matrix."""
    from dovit_ros.train.metrics import ConfusionMatrix
    cm = ConfusionMatrix(num_classes, ignore_index)
    for pred, lab in pairs:
        cm.update(pred, lab)
    return 100 * np.asarray(cm.compute().iou_per_class, dtype=np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--dataset', required=True)
    ap.add_argument('--data-root', required=True)
    ap.add_argument('--split', default='val')
    ap.add_argument('--strides', default='16,8,4,2')
    ap.add_argument('--json', help='write {"meta", "results": [{stride, miou, iou_per_class}]}')
    a = ap.parse_args(argv)
    from dovit_ros.data import load_dataset
    ds = load_dataset(a.dataset, a.data_root, a.split)
    K, ig, names = ds.classes.num_classes, ds.classes.ignore_index, ds.classes.names
    labels = [torch.as_tensor(np.asarray(ds[i][1])).long() for i in range(len(ds))]
    results = []
    for s in (int(x) for x in a.strides.split(',')):
        iou = class_iou(((pooled_prediction(t, K, ig, s), t) for t in labels), K, ig)
        results.append({'stride': s, 'miou': float(np.nanmean(iou)),
                        'iou_per_class': {n: float(v) for n, v in zip(names, iou)}})
        print(f'stride {s:2d}: mIoU {np.nanmean(iou):5.1f}  ' + '  '.join(
            f'{n} {v:.1f}' for n, v in zip(names, iou)), flush=True)
    if a.json:
        meta = {'dataset': a.dataset, 'data_root': a.data_root, 'split': a.split,
                'images': len(labels), 'method': 'ground truth pooled to stride s, bilinear '
                'upsampling of the class fractions, argmax'}
        with open(a.json, 'w') as f:
            json.dump({'meta': meta, 'results': results}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
