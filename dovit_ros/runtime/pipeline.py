"""The one path from an image array to every output: the node, the bag tools, the benchmark and
the evaluation all call `Pipeline.infer`, so pre- and post-processing exist once.

  RGB uint8 (H, W, 3) -> normalise -> model (exits) -> labels, confidence, exit stage, compute
  record; colour and overlay images are made on request (they cost real time at 2048x1024).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.transforms import to_tensor
from ..model import DoViTSegmenter, ExitConfig, SegmentationOutput, fold_batchnorm
from .artifacts import ModelLoadError, ModelMeta, load_model
from .attention import use_attention
from .device import resolve_device as _resolve_device, resolve_precision
from .input_scale import check_scale, scale_image, to_frame_size, token_rows
from .viz import apply_lut

PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
Runner = Callable[[torch.Tensor, ExitConfig], SegmentationOutput]


@dataclass
class FrameResult:
    labels: np.ndarray          # (H, W) uint8 class ids
    confidence: np.ndarray      # (H, W) float32 max softmax probability
    exit_grid: np.ndarray       # (h, w) uint8 decision stage each token left at (0 = end)
    tokens_per_stage: list[int]
    tokens_total: int
    gflops: float
    gflops_full: float
    model_ms: float
    exits: ExitConfig
    patch_size: int = 0         # pixels per token side; 0: guess from the grid (square only)
    seen_hw: tuple[int, int] | None = None   # the size the model saw, when not the frame's

    @property
    def saved_pct(self) -> float:
        return 100.0 * (1.0 - self.gflops / self.gflops_full) if self.gflops_full else 0.0

    def exit_stage(self) -> np.ndarray:
        """(H, W) uint8: each pixel's token exit stage (nearest, patch-aligned)."""
        H, W = self.labels.shape
        h, w = self.exit_grid.shape
        if self.seen_hw is not None and self.seen_hw != (H, W):   # input_scale != 1
            p = self.patch_size
            rows, cols = (token_rows(n, seen, p, g)
                          for n, seen, g in ((H, self.seen_hw[0], h), (W, self.seen_hw[1], w)))
            return np.ascontiguousarray(self.exit_grid[np.ix_(rows, cols)])
        # The grid is ceil(H / p) x ceil(W / p), so p cannot be recovered from one side alone
        # (50 x 70 at p = 16 is a 4 x 5 grid, and ceil(50 / 4) = 13).
        p = self.patch_size or max(-(-H // h), -(-W // w))
        up = np.repeat(np.repeat(self.exit_grid, p, 0), p, 1)
        return np.ascontiguousarray(up[:H, :W])


def resolve_model_path(name_or_path: str) -> Path:
    """A model directory path, or a model name looked up in the installed share/dovit_ros/models
    (colcon or pip) and in this source tree's models/."""
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return p
    if os.sep not in str(name_or_path) and name_or_path not in ('', '.', '..'):
        roots = []
        try:  # a ROS install: ament index
            from ament_index_python.packages import get_package_share_directory
            roots.append(Path(get_package_share_directory('dovit_ros')) / 'models')
        except Exception:  # noqa: BLE001 - not a ROS install, or not installed there
            pass
        roots += [Path(sys.prefix) / 'share' / 'dovit_ros' / 'models',
                  Path(__file__).resolve().parents[2] / 'models']
        for r in roots:
            if (r / name_or_path).is_dir():
                return r / name_or_path
    raise ModelLoadError(f'model {name_or_path!r} not found: not a directory, and no installed '
                         f'model of that name')


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids outside the palette are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(palette)] = palette
    return apply_lut(labels, lut)


def blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * colour + (1 - alpha) * image, uint8."""
    import cv2
    return cv2.addWeighted(color, float(alpha), image, 1.0 - float(alpha), 0.0)


class Pipeline:
    def __init__(self, model: DoViTSegmenter, meta: ModelMeta, device: str = 'cpu',
                 precision: str = 'fp32', runner: Runner | None = None,
                 attention: str | None = None, input_scale: float = 1.0):
        self.input_scale = input_scale   # frames are segmented at this scale of their size
        self.device = torch.device(resolve_device(device))
        precision = resolve_precision(precision, self.device)   # 'auto': by what the CPU has
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        fold_batchnorm(model.eval())   # before the cast: folded in float64, then rounded once
        self.model = model.to(self.device, self.dtype).eval()
        if self.device.type == 'cpu':
            self.model.channels_last()
        self.meta = meta
        self.runner: Runner = runner or self.model
        # the eager model's attention core: 'auto' / 'sdpa' / 'matmul', None = DOVIT_ATTENTION
        # or 'auto' (measured here, runtime/attention.py); a compiled or TensorRT runner keeps
        # the fused kernel its stages were built with
        eager = self.runner is self.model
        self.attention, self.attention_ms = use_attention(
            self.model, attention if eager else 'sdpa', self.device, self.dtype)
        self.palette = meta.classes.palette_array()

    @property
    def input_scale(self) -> float:
        return self._input_scale

    @input_scale.setter
    def input_scale(self, scale: float) -> None:
        self._input_scale = check_scale(scale)   # runtime/input_scale.py

    @classmethod
    def from_path(cls, name_or_path: str, device: str = 'cpu', precision: str = 'fp32',
                  attention: str | None = None, input_scale: float = 1.0) -> 'Pipeline':
        path = resolve_model_path(name_or_path)
        model, meta = load_model(path)
        pipe = cls(model, meta, device, precision, attention=attention, input_scale=input_scale)
        pipe.model_path = path
        return pipe

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, H, W) normalised, on the device, in the precision."""
        x = to_tensor(image, self.meta.mean, self.meta.std)[None]
        return x.to(self.device, self.dtype, non_blocking=True)

    @torch.no_grad()
    def infer(self, image: np.ndarray, exits: ExitConfig | None = None) -> FrameResult:
        return self.infer_many([image], exits)[0]

    @torch.no_grad()
    def infer_many(self, images: Sequence[np.ndarray], exits: ExitConfig | None = None
                   ) -> list[FrameResult]:
        """Frames of several cameras (any sizes) as one packed forward when the runner is the
        eager model (model.forward_frames; each frame keeps its own tokens), else one by one.
        model_ms of each result is the whole call's time: the frames came out together."""
        exits = exits or self.meta.exits
        seen = [scale_image(im, self.input_scale) for im in images]
        xs = [self.preprocess(im) for im in seen]
        sync = torch.cuda.synchronize if self.device.type == 'cuda' else (lambda: None)
        sync()
        t0 = time.perf_counter()
        if len(xs) > 1 and self.runner is self.model:
            outs = self.model.forward_frames(xs, exits)
        else:
            outs = [self.runner(x, exits) for x in xs]
        post = [out.labels_confidence() for out in outs]
        post = [to_frame_size(lb[0].to(torch.uint8).cpu().numpy(), cf[0].float().cpu().numpy(),
                              *im.shape[:2]) for (lb, cf), im in zip(post, images)]
        sync()
        ms = (time.perf_counter() - t0) * 1e3
        return [FrameResult(labels=labels, confidence=conf,
                            exit_grid=out.exit_stage[0].cpu().numpy(),
                            tokens_per_stage=[int(v) for v in out.tokens_per_stage[0]],
                            tokens_total=int(out.exit_stage[0].numel()),
                            gflops=float(out.flops[0]) / 1e9, gflops_full=out.flops_full / 1e9,
                            model_ms=ms, exits=exits, patch_size=self.model.cfg.patch_size,
                            seen_hw=sn.shape[:2])
                for out, (labels, conf), sn in zip(outs, post, seen)]

    def color(self, result: FrameResult) -> np.ndarray:
        return colorize(result.labels, self.palette)

    def overlay(self, image: np.ndarray, result: FrameResult, alpha: float = 0.5,
                color: np.ndarray | None = None) -> np.ndarray:
        return blend(image, self.color(result) if color is None else color, alpha)

    def warmup(self, height: int | None = None, width: int | None = None, runs: int = 2
               ) -> bool:
        """A few forwards at the expected size so the first real frame is not the slow one.
        False (nothing run) when the runner must see a real frame first: TensorRT fp16
        engines are checked against fp32 on the first frame of each size, and a blank
        warm-up image would make that check meaningless."""
        size = self.meta.input_size or (360, 480)
        H, W = height or size[0], width or size[1]
        needs_real = getattr(self.runner, 'needs_real_frame', None)
        if needs_real is not None and needs_real((H, W)):
            return False
        img = np.zeros((H, W, 3), np.uint8)
        for _ in range(runs):
            self.infer(img)
        return True


def resolve_device(device: str) -> str:
    """runtime.device.resolve_device as a string (the node's `device` parameter value)."""
    return str(_resolve_device(device))
