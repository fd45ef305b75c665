"""Evaluate a segmenter on a dataset for several exit settings: accuracy and real compute.

GFLOPs are the analytic count of what each image's forward executed (its own kept tokens),
averaged over the real images (`gflops_full`: the plain model's, averaged the same way);
`ms_mean` is the model forward's wall time per image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.transforms import to_tensor
from ..model import DoViTSegmenter, ExitConfig
from ..runtime.input_scale import scale_image, to_frame_size
from .metrics import ConfusionMatrix


@dataclass
class EvalResult:
    exits: ExitConfig
    miou: float
    pixel_acc: float
    mean_acc: float
    iou_per_class: list[float]
    acc_per_class: list[float]      # recall: the share of each class's pixels found
    gflops_mean: float
    gflops_full: float
    ms_mean: float
    tokens_active: list[float]      # mean fraction of tokens active in each stage
    images: int
    thresholds_used: list[float] = field(default_factory=list)   # per image, if steered
    # (n, K, K) each image's confusion matrix, for bootstrap intervals (metrics.py)
    image_matrices: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        thr = self.exits.threshold
        return {'threshold': list(thr) if isinstance(thr, tuple) else float(thr),
                'policy': self.exits.policy, 'topk_per_class': self.exits.topk_per_class,
                'miou': self.miou, 'pixel_acc': self.pixel_acc, 'mean_acc': self.mean_acc,
                'iou_per_class': self.iou_per_class, 'acc_per_class': self.acc_per_class,
                'gflops_mean': self.gflops_mean,
                'gflops_full': self.gflops_full,
                'gflops_saved_pct': 100.0 * (1 - self.gflops_mean / self.gflops_full),
                'ms_mean': self.ms_mean, 'tokens_active': self.tokens_active,
                'images': self.images}


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: DoViTSegmenter, dataset, exits: ExitConfig, mean: Sequence[float],
             std: Sequence[float], device='cpu', limit: int | None = None,
             choose_exits: Callable[[int], ExitConfig] | None = None,
             observe: Callable[[object, float], None] | None = None,
             on_prediction: Callable[[int, np.ndarray], None] | None = None,
             progress: bool = False, batch_size: int = 1,
             dtype: torch.dtype = torch.float32, input_scale: float = 1.0) -> EvalResult:
    """One pass over `dataset`; each image keeps its own tokens.

    dtype: the model's compute precision (the model must already be in it).
    batch_size > 1 runs that many images as one packed forward (model.forward_frames: the
    outputs equal batch 1's; ms_mean is then the batch's time per image).
    choose_exits(i) may pick the exit config per image (a budget controller; batch 1 only)
    and observe(out, ms) is told each image's result; on_prediction(i, labels) receives each
    label map.
    input_scale: each image is segmented resized by this factor and its labels resized back
    to the ground truth's size, as the node's `input_scale` does (runtime/input_scale.py).
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if choose_exits is not None and batch_size != 1:
        raise ValueError('a per-image exit chooser (budget controller) needs batch_size 1')
    device = torch.device(device)
    model.eval()
    K = model.cfg.num_classes
    n = len(dataset) if limit is None else min(limit, len(dataset))
    flops, full, ms, used, mats = [], [], [], [], []
    active = np.zeros(model.cfg.num_stages)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=f'eval {exits.policy} xi={exits.threshold}', leave=False)
    for i0 in starts:
        items = [dataset[i] for i in range(i0, min(n, i0 + batch_size))]
        xs = [to_tensor(scale_image(image, input_scale), mean, std)[None].to(device, dtype)
              for image, _ in items]
        ex = choose_exits(i0) if choose_exits else exits
        _sync(device)
        t0 = time.perf_counter()
        outs = model.forward_frames(xs, ex) if len(xs) > 1 else [model(xs[0], ex)]
        preds = [o.logits.argmax(1)[0] for o in outs]
        _sync(device)
        dt = (time.perf_counter() - t0) * 1e3 / len(xs)
        for j, (out, pred, (_, label)) in enumerate(zip(outs, preds, items)):
            pred = pred.cpu().numpy()
            if input_scale != 1:   # labels back to the ground truth's size
                ids = pred.astype(np.uint8 if K <= 256 else np.uint16)   # types cv2 resizes
                pred = to_frame_size(ids, None, *label.shape)[0]
            one = ConfusionMatrix(K, dataset.classes.ignore_index)
            one.update(pred, label)
            mats.append(one.matrix)
            flops.append(float(out.flops[0]))
            full.append(out.flops_full)   # per image: sizes may differ within a dataset
            ms.append(dt)
            used.append(ex.threshold)
            active += out.tokens_per_stage[0].cpu().numpy() / out.exit_stage[0].numel()
            if observe:
                observe(out, dt)
            if on_prediction:
                on_prediction(i0 + j, pred.astype(np.uint8))
    per_image = np.stack(mats) if mats else np.zeros((0, K, K), np.int64)   # (n, K, K)
    cm = ConfusionMatrix(K, dataset.classes.ignore_index)
    cm.matrix += per_image.sum(0)   # the whole set's counts: the images' together
    m = cm.compute()
    return EvalResult(exits=exits, miou=m.miou, pixel_acc=m.pixel_acc, mean_acc=m.mean_acc,
                      iou_per_class=m.iou_per_class, acc_per_class=m.acc_per_class,
                      gflops_mean=float(np.mean(flops)) / 1e9,
                      gflops_full=float(np.mean(full)) / 1e9, ms_mean=float(np.mean(ms)),
                      tokens_active=(active / n).tolist(), images=n,
                      thresholds_used=used if choose_exits else [],
                      image_matrices=per_image)
