"""Confusion-matrix segmentation metrics: mIoU, per-class IoU, pixel and mean accuracy.

Conventions (all values are fractions in [0, 1]):
- `matrix[g, p]` counts labelled pixels with ground truth g predicted as p (rows = truth).
- IoU of class c = tp / (gt + pred - tp). A class absent from both ground truth and
  prediction has IoU NaN and is left out of the mean: mIoU = nanmean over classes present in
  the ground truth or the prediction (a class only predicted counts, with IoU 0).
- pixel_acc = correct / labelled pixels; mean_acc = mean over classes present in the ground
  truth of their recall tp / gt.
- Pixels whose target equals `ignore_index` are excluded everywhere.

`bootstrap_intervals` puts percentile-bootstrap intervals on these figures by resampling whole
images (their per-image matrices), the unit a dataset is drawn in.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class SegMetrics:
    miou: float
    iou_per_class: list[float]      # NaN: class absent from both ground truth and prediction
    pixel_acc: float
    mean_acc: float
    acc_per_class: list[float]      # recall; NaN: class absent from the ground truth
    labelled_pixels: int

    def to_dict(self) -> dict:
        return asdict(self)


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix over batches; see the module docstring."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f'ConfusionMatrix: num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred, target) -> None:
        """Add integer class maps of the same shape (NumPy arrays or torch tensors).

        Torch inputs are counted on their own device (no full-map copy to the CPU).
        Target values other than 0..K-1 and `ignore_index`, or predictions outside 0..K-1,
        raise ValueError.
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f'pred {tuple(pred.shape)} and target {tuple(target.shape)} '
                             'differ in shape')
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            dev = pred.device if isinstance(pred, torch.Tensor) else target.device
            p, t = (torch.as_tensor(a, device=dev) for a in (pred, target))
            for name, a in (('pred', p), ('target', t)):
                if a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
                    raise ValueError(f'{name} must hold integer class ids, got {a.dtype}')
            p, t = p.reshape(-1).long(), t.reshape(-1).long()
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            if len(t):   # one device sync for all four limits
                self._check_range(*torch.stack([p.min(), p.max(), t.min(), t.max()]).tolist())
            counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2)
            counts = counts.cpu().numpy()
        else:
            p, t = np.asarray(pred), np.asarray(target)
            for name, a in (('pred', p), ('target', t)):
                if not np.issubdtype(a.dtype, np.integer):
                    raise ValueError(f'{name} must hold integer class ids, got {a.dtype}')
            p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            self._check_range(p.min(initial=0), p.max(initial=0),
                              t.min(initial=0), t.max(initial=0))
            counts = np.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def _check_range(self, pmin, pmax, tmin, tmax) -> None:
        k = self.num_classes
        if tmin < 0 or tmax >= k:
            raise ValueError(f'target values must be 0..{k - 1} or {self.ignore_index} '
                             f'(ignore), found {tmin}..{tmax}')
        if pmin < 0 or pmax >= k:
            raise ValueError(f'pred values must be 0..{k - 1}, found {pmin}..{pmax}')

    def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        """Add another matrix's counts (e.g. from another worker); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(f'cannot merge a {other.num_classes}-class matrix (ignore '
                             f'{other.ignore_index}) into a {self.num_classes}-class one '
                             f'(ignore {self.ignore_index})')
        self.matrix += other.matrix
        return self

    def compute(self) -> SegMetrics:
        m = self.matrix.astype(np.float64)
        tp, gt = np.diag(m), m.sum(1)
        iou = iou_from_matrices(self.matrix)
        acc = np.full(self.num_classes, np.nan)
        np.divide(tp, gt, out=acc, where=gt > 0)
        total = m.sum()
        return SegMetrics(
            miou=_nanmean(iou),
            iou_per_class=iou.tolist(),
            pixel_acc=float(tp.sum() / total) if total > 0 else float('nan'),
            mean_acc=_nanmean(acc),
            acc_per_class=acc.tolist(),
            labelled_pixels=int(self.matrix.sum()),
        )


def iou_from_matrices(m: np.ndarray) -> np.ndarray:
    """(..., K, K) confusion matrices -> (..., K) IoU, NaN where a class's union is empty."""
    m = m.astype(np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    union = m.sum(-1) + m.sum(-2) - tp
    iou = np.full(union.shape, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


@dataclass
class BootstrapIntervals:
    """Percentile intervals at `level` over `resamples` resamplings of the images."""
    level: float
    resamples: int
    miou: tuple[float, float]
    iou_per_class: list[tuple[float, float]]     # NaN bounds: class never present
    miou_delta: tuple[float, float] | None = None   # this mIoU minus the reference's, paired

    def to_dict(self) -> dict:
        return asdict(self)


def resample_counts(images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(R, n) how often each image is drawn in each of R resamples with replacement. The same
    seed gives the same draws, so that results on the same images can be compared paired."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, images, size=(resamples, images))
    return np.stack([np.bincount(d, minlength=images) for d in draws])


def _quantiles(level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f'level must be in (0, 1), got {level}')
    return 50 * (1 - level), 50 * (1 + level)


def _resampled_iou(matrices: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mIoU (R,) and per-class IoU (R, K) of each resample: (n, K, K) per-image matrices summed
    with the resample's counts (R, n)."""
    iou = iou_from_matrices(np.einsum('rn,nkl->rkl', counts, matrices))   # (R, K)
    ok = ~np.isnan(iou)
    return np.where(ok, iou, 0).sum(1) / np.maximum(ok.sum(1), 1), iou


def _column_intervals(x: np.ndarray, q: tuple[float, float]) -> list[tuple[float, float]]:
    """Percentile interval of each column of (R, K) over its non-NaN entries."""
    out = []
    for c in range(x.shape[1]):
        col = x[:, c][~np.isnan(x[:, c])]
        out.append(tuple(float(v) for v in np.percentile(col, q)) if len(col)
                   else (float('nan'), float('nan')))
    return out


def bootstrap_intervals(matrices: np.ndarray, counts: np.ndarray, level: float = 0.95,
                        reference: np.ndarray | None = None) -> BootstrapIntervals:
    """Percentile-bootstrap intervals of mIoU and per-class IoU from per-image confusion
    matrices (n, K, K) and resample counts (R, n) (`resample_counts`). With `reference`
    (another (n, K, K) set over the same images, e.g. the full-token run) also the interval of
    the paired mIoU difference: both are resampled with the same draws, so that what the
    images share cancels. Intervals say how much the figures move with the choice of images
    from the same source; frames of one drive are not independent, so they understate how much
    another drive would differ."""
    if matrices.ndim != 3 or counts.ndim != 2 or counts.shape[1] != matrices.shape[0]:
        raise ValueError(f'matrices (n, K, K) and counts (R, n) do not fit: {matrices.shape}, '
                         f'{counts.shape}')
    q = _quantiles(level)
    miou, iou = _resampled_iou(matrices, counts)
    delta = None
    if reference is not None:
        if reference.shape != matrices.shape:
            raise ValueError(f'reference {reference.shape} and matrices {matrices.shape} '
                             'differ in shape')
        ref_miou = _resampled_iou(reference, counts)[0]
        delta = tuple(float(v) for v in np.percentile(miou - ref_miou, q))
    return BootstrapIntervals(level=level, resamples=int(counts.shape[0]),
                              miou=tuple(float(v) for v in np.percentile(miou, q)),
                              iou_per_class=_column_intervals(iou, q), miou_delta=delta)


@dataclass
class PairedDifference:
    """B minus A on the same images: the difference of the figures over all images, and its
    percentile interval over paired resamples (both sets drawn with the same counts)."""
    level: float
    resamples: int
    miou_a: float
    miou_b: float
    miou: float                                  # B - A
    miou_interval: tuple[float, float]
    iou_a: list[float]
    iou_b: list[float]
    iou_per_class: list[float]                   # B - A; NaN: class absent in A or in B
    iou_intervals: list[tuple[float, float]]     # NaN bounds: never present in both

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(a: np.ndarray, b: np.ndarray, counts: np.ndarray,
                      level: float = 0.95) -> PairedDifference:
    """How B's mIoU and per-class IoU differ from A's, from two sets of per-image matrices
    (n, K, K) over the same images in the same order (two models, or two settings of one).
    Resampling both with the same draws cancels what the images share, so the interval is
    usually much narrower than the two figures' own intervals would suggest."""
    if a.shape != b.shape or a.ndim != 3 or counts.ndim != 2 or counts.shape[1] != a.shape[0]:
        raise ValueError(f'A {a.shape}, B {b.shape} (n, K, K) and counts (R, n) {counts.shape} '
                         'do not fit')
    q = _quantiles(level)
    whole = np.ones((1, a.shape[0]), dtype=counts.dtype)     # every image once
    (miou_a, iou_a), (miou_b, iou_b) = (_resampled_iou(m, whole) for m in (a, b))
    (rm_a, ri_a), (rm_b, ri_b) = (_resampled_iou(m, counts) for m in (a, b))
    return PairedDifference(
        level=level, resamples=int(counts.shape[0]), miou_a=float(miou_a[0]),
        miou_b=float(miou_b[0]), miou=float(miou_b[0] - miou_a[0]),
        miou_interval=tuple(float(v) for v in np.percentile(rm_b - rm_a, q)),
        iou_a=[float(v) for v in iou_a[0]], iou_b=[float(v) for v in iou_b[0]],
        iou_per_class=[float(v) for v in (iou_b - iou_a)[0]],
        iou_intervals=_column_intervals(ri_b - ri_a, q))   # NaN where either class is absent


def _nanmean(x: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a RuntimeWarning) when there are none."""
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float('nan')
