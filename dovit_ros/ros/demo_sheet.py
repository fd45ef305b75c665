"""The demo's pictures: output images back to arrays, captions and the contact sheet."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

SHEET_TILE_W = 240
SHEET_COLUMNS = 3


def image_array(msg) -> np.ndarray:
    """rclpy output Image -> (H, W) or (H, W, 3) uint8."""
    a = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
    ch = 3 if msg.encoding == 'rgb8' else 1
    a = a[:, :msg.width * ch]
    return a.reshape(msg.height, msg.width, 3) if ch == 3 else a


def caption(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((20, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([img, bar])


def contact_sheet(frames: list[tuple[int, np.ndarray, np.ndarray, str]], dps: int
                  ) -> np.ndarray:
    """Rows of (overlay | exit stage) pairs with captions, under a title and a legend."""
    from ..runtime.viz import stage_lut
    tiles = []
    for _, overlay, stages, text in frames:
        h = round(overlay.shape[0] * SHEET_TILE_W / overlay.shape[1])
        o = cv2.resize(overlay, (SHEET_TILE_W, h), interpolation=cv2.INTER_AREA)
        s = cv2.resize(stages, (SHEET_TILE_W, h), interpolation=cv2.INTER_NEAREST)
        pair = np.hstack([o, np.full((h, 2, 3), 255, np.uint8), s])
        tiles.append(np.pad(caption(pair, text), ((0, 6), (0, 6), (0, 0)),
                            constant_values=255))
    th, tw = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / SHEET_COLUMNS)
    sheet = np.full((rows * th, SHEET_COLUMNS * tw, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, SHEET_COLUMNS)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = t
    head = np.full((48, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(head, 'segment_node: overlay | exit stage (where each token left the network)',
                (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    lut = stage_lut(dps)
    x = 6
    for k in list(range(1, dps + 1)) + [0]:
        label = f'exit {k}' if k else 'full depth'
        color = tuple(int(v) for v in lut[k][::-1])   # RGB -> BGR for OpenCV drawing
        cv2.rectangle(head, (x, 28), (x + 14, 42), color, -1)
        cv2.putText(head, label, (x + 18, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        x += 30 + 8 * len(label)
    return np.vstack([head, sheet[..., ::-1]])[..., ::-1]   # drawn in BGR order, back to RGB


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f'demo: could not write {path}')
