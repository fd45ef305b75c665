"""Training augmentation in NumPy/OpenCV, and conversion to normalised tensors.

Everything random draws from the `np.random.Generator` passed in, so a worker seeded the
same way produces the same crops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # RGB, on the 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Random scale -> pad/crop to `crop` (H, W) -> horizontal flip -> colour jitter -> blur.

    Jitter factors are drawn uniformly from [1 - x, 1 + x] (x = 0 turns that jitter off);
    `hue` is a shift in fractions of the colour wheel, drawn from [-hue, hue]; `blur` is the
    probability of a Gaussian blur with sigma drawn from [0.3, 1.5] pixels (motion and focus
    blur of real cameras).
    """
    crop: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.0
    blur: float = 0.0
    ignore_index: int = 255   # fill value of padded label pixels

    def __post_init__(self):
        self.crop = tuple(int(v) for v in self.crop)
        self.scale_range = tuple(float(v) for v in self.scale_range)
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise ValueError(f'AugmentConfig.crop: expected (h, w) > 0, got {self.crop}')
        lo, hi = self.scale_range if len(self.scale_range) == 2 else (0, -1)
        if not 0 < lo <= hi:
            raise ValueError('AugmentConfig.scale_range: expected (lo, hi) with 0 < lo <= hi, '
                             f'got {self.scale_range}')
        for name in ('brightness', 'contrast', 'saturation'):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f'AugmentConfig.{name}: expected 0..1, '
                                 f'got {getattr(self, name)}')
        if not 0 <= self.blur <= 1:
            raise ValueError(f'AugmentConfig.blur: expected a probability 0..1, got {self.blur}')
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f'AugmentConfig.hue: expected 0..0.5, got {self.hue}')
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f'AugmentConfig.ignore_index: expected 0..255, '
                             f'got {self.ignore_index}')


class TrainTransform:
    """`(image (H, W, 3) uint8 RGB, label (H, W) uint8, rng) -> same types, crop-sized`."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f'image {image.shape} and label {label.shape} differ in size')
        h, w = label.shape[:2]
        s = rng.uniform(*cfg.scale_range)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            # nearest keeps labels within the original set of ids
            label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)

        ch, cw = cfg.crop
        ph, pw = max(0, ch - nh), max(0, cw - nw)
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
            label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                       value=cfg.ignore_index)
        y0 = int(rng.integers(0, label.shape[0] - ch + 1))
        x0 = int(rng.integers(0, label.shape[1] - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]

        if cfg.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = self.jitter(image, rng)
        if cfg.blur and rng.random() < cfg.blur:
            image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), rng.uniform(0.3, 1.5))
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast, saturation (and hue), applied after cropping (fewer pixels)."""
        cfg = self.cfg
        if not (cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue):
            return image
        x = image.astype(np.float32)
        if cfg.brightness:
            x *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        if cfg.contrast:
            mean = _gray(x).mean()
            x = (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
        if cfg.saturation:
            g = _gray(x)[..., None]
            x = (x - g) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + g
        out = np.clip(x, 0, 255).astype(np.uint8)
        if cfg.hue:
            shift = rng.uniform(-cfg.hue, cfg.hue)
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)   # 8-bit hue is 0..179
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(shift * 180)) % 180)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return out


def _gray(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114   # (H, W)


def to_tensor(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, `(image / 255 - mean) / std` (0..1 scale)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'to_tensor: expected (H, W, 3) uint8, got {image.shape} {image.dtype}')
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


def collate(batch: Sequence[tuple[np.ndarray, np.ndarray]], mean: Sequence[float] = IMAGENET_MEAN,
            std: Sequence[float] = IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image, label), ...] of equal sizes -> images (B, 3, H, W) float32, labels (B, H, W)
    int64 (255 stays 255 = ignore)."""
    images = torch.stack([to_tensor(im, mean, std) for im, _ in batch])
    labels = torch.stack([torch.from_numpy(np.ascontiguousarray(lb)).long() for _, lb in batch])
    return images, labels
