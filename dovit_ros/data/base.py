"""The dataset object every loader returns, and the checked image/label readers.

Pairing is checked when a dataset is built (cheap: file names only); readability, sizes and
label values are checked when an item is loaded, so a bad file stops training with its name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .classes import ClassInfo


class DatasetError(ValueError):
    """Bad or missing data; the message names the offending file or folder."""


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f'cannot read image {path} (missing, corrupt or not an image)')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8 or uint16 raw label values, exactly as stored."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DatasetError(f'cannot read label {path} (missing, corrupt or not an image)')
    if lab.ndim == 3 and lab.shape[2] == 1:
        lab = lab[:, :, 0]
    if lab.ndim != 2:
        raise DatasetError(f'label {path} has shape {lab.shape}: it must be single-channel '
                           '(a class id per pixel, not a colour image)')
    if lab.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f'label {path} is {lab.dtype}: it must be 8-bit or 16-bit')
    return lab


def identity_lut(num_classes: int, ignore_value: int) -> np.ndarray:
    """(65536,) int16 table raw value -> delivered label: 0..K-1 kept, ignore_value -> 255,
    everything else -1 (invalid)."""
    lut = np.full(65536, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_value] = 255
    return lut


class SegDataset:
    """Indexable (image, label) pairs: image (H, W, 3) uint8 RGB, label (H, W) uint8, 255 =
    ignore.

    `lut` maps raw label values to delivered ones; a negative entry marks a value that must
    not occur (an error naming the file).
    """

    def __init__(self, name: str, files: Sequence[tuple[Path, Path]], classes: ClassInfo,
                 lut: np.ndarray):
        if not files:
            raise DatasetError(f'{name}: no image/label pairs found')
        self.name = name
        self.files = [(Path(i), Path(lb)) for i, lb in files]
        self.classes = classes
        self._lut = lut

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f'SegDataset({self.name!r}, {len(self)} items, {self.classes.num_classes} classes)'

    def image_path(self, i: int) -> Path:
        return self.files[i][0]

    def label_path(self, i: int) -> Path:
        return self.files[i][1]

    def label(self, i: int) -> np.ndarray:
        """Item i's label alone (no image decoding): class statistics."""
        return self.map_label(read_label(self.files[i][1]), self.files[i][1])

    def select(self, prefix: str, keep: bool) -> 'SegDataset':
        """The items whose image file name starts with `prefix` (keep=True) or the others
        (keep=False): e.g. one CamVid drive ('0006R0') held out of training."""
        files = [f for f in self.files if f[0].name.startswith(prefix) == keep]
        if not files:
            raise DatasetError(f'{self.name}: no image named {prefix}* '
                               f'{"found" if keep else "would be left"}')
        return SegDataset(f'{self.name}[{"" if keep else "-"}{prefix}]', files, self.classes,
                          self._lut)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f'{self.name}: index {i} out of range for {len(self)} items')
        ipath, lpath = self.files[i]
        image = read_image(ipath)
        raw = read_label(lpath)
        if image.shape[:2] != raw.shape:
            raise DatasetError(f'size mismatch: image {ipath} is {image.shape[1]}x'
                               f'{image.shape[0]} but label {lpath} is {raw.shape[1]}x'
                               f'{raw.shape[0]} (WxH)')
        return image, self.map_label(raw, lpath)

    def map_label(self, raw: np.ndarray, path: str | Path = '<array>') -> np.ndarray:
        """Raw stored label values -> (H, W) uint8 train ids with 255 = ignore."""
        lut = self._lut
        if raw.max(initial=0) >= len(lut):
            lut = np.concatenate([lut, np.full(65536 - len(lut), -1, lut.dtype)])
        mapped = lut[raw]
        if mapped.min(initial=0) < 0:
            bad = np.unique(raw[mapped < 0])
            shown = ', '.join(str(v) for v in bad[:8]) + (' ...' if len(bad) > 8 else '')
            raise DatasetError(f'label {path} has values outside the class range of '
                               f'{self.name}: {shown}')
        return mapped.astype(np.uint8)
