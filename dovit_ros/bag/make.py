"""Frames (a folder of images in name order, or a video) -> a bag of camera images.

Consecutive header stamps at a fixed rate; each message's log time equals its header stamp, as
if a recorder had received every frame the instant it was taken. Raw frames are sensor_msgs/Image
rgb8; with `compressed` they are sensor_msgs/CompressedImage JPEG on `<topic>/compressed`
(image_transport's name), and JPEG files are stored byte for byte unless a quality is given.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..runtime.image_codec import encode_compressed, image_fields
from .messages import compressed_msg, header, image_msg
from .storage import COMPRESSED, IMAGE, BagError, BagWriter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm', '.webp')
DEFAULT_TOPIC = '/camera/image_raw'
DEFAULT_RATE = 15.0
DEFAULT_JPEG_QUALITY = 90


@dataclass
class MakeConfig:
    source: Path                      # folder of images, or a video file
    out: Path                         # .mcap / .db3 file, or a rosbag2 folder
    rate: float | None = None         # Hz; None: the video's own rate, 15 for a folder
    topic: str | None = None          # None: /camera/image_raw (+ /compressed)
    frame_id: str = 'camera'
    compressed: bool = False          # CompressedImage JPEG instead of Image rgb8
    jpeg_quality: int | None = None   # None: JPEG files kept as they are, others at 90
    storage: str | None = None        # mcap | sqlite3; None: from the suffix, else mcap
    limit: int | None = None          # at most this many frames
    start_time: float | None = None   # s since the epoch of the first stamp; None: now
    chunk_compression: bool = True    # zstd MCAP chunks (never for JPEG: nothing to gain)
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self):
        self.source, self.out = Path(self.source), Path(self.out)
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f'rate must be a positive number of Hz, got {self.rate}')
        if self.limit is not None and self.limit < 1:
            raise ValueError(f'limit must be >= 1, got {self.limit}')
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f'JPEG quality must be in 1..100, got {self.jpeg_quality}')
        if self.start_time is not None and not (math.isfinite(self.start_time)
                                                and self.start_time >= 0):
            raise ValueError(f'start time must be >= 0 s, got {self.start_time}')
        if self.topic is None:
            self.topic = DEFAULT_TOPIC + ('/compressed' if self.compressed else '')
        if not self.topic.startswith('/'):
            self.topic = '/' + self.topic


@dataclass
class MakeSummary:
    out: Path
    topic: str
    msgtype: str
    frames: int
    rate: float
    start_ns: int
    end_ns: int
    size_bytes: int
    skipped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f'wrote {self.frames} frames to {self.out} ({self.size_bytes / 1e6:.2f} MB)',
               f'  topic {self.topic} ({self.msgtype}) at {self.rate:g} Hz, stamps '
               f'{self.start_ns / 1e9:.3f} .. {self.end_ns / 1e9:.3f} s']
        for name, n in sorted(self.skipped.items()):
            out.append(f'  skipped {n}: {name}')
        return out


@dataclass
class _Frame:
    name: str
    rgb: np.ndarray | None = None   # (H, W, 3) uint8
    jpeg: bytes | None = None       # the file's own bytes, when it is a JPEG
    problem: str = ''


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b'\xff\xd8\xff'


def _folder_frames(folder: Path) -> Iterator[_Frame]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BagError(folder, f'no image files ({", ".join(IMAGE_SUFFIXES)}) in the folder')
    for p in files:
        data = p.read_bytes()
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if bgr is None:
            yield _Frame(p.name, problem='undecodable image file')
            continue
        yield _Frame(p.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                     data if _is_jpeg(data) else None)


def _video_frames(cap) -> Iterator[_Frame]:
    i = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield _Frame(f'frame {i}', cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
    finally:
        cap.release()


def _open_source(cfg: MakeConfig) -> tuple[Iterator[_Frame], float, int | None]:
    """(frames, rate, frame count if known)."""
    src = cfg.source
    if src.is_dir():
        n = sum(1 for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return _folder_frames(src), cfg.rate or DEFAULT_RATE, n
    if not src.is_file():
        raise BagError(src, 'no such file or folder')
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise BagError(src, 'not a folder, and OpenCV cannot open it as a video')
    fps = cap.get(cv2.CAP_PROP_FPS)
    rate = cfg.rate or (fps if math.isfinite(fps) and 1.0 <= fps <= 1000.0 else DEFAULT_RATE)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return _video_frames(cap), rate, n


def make_bag(cfg: MakeConfig) -> MakeSummary:
    from tqdm import tqdm
    frames, rate, total = _open_source(cfg)
    if cfg.limit and total:
        total = min(total, cfg.limit)
    start_ns = int(round((time.time() if cfg.start_time is None else cfg.start_time) * 1e9))
    msgtype = COMPRESSED if cfg.compressed else IMAGE
    quality = cfg.jpeg_quality or DEFAULT_JPEG_QUALITY
    skipped: dict[str, int] = {}
    n, t = 0, start_ns
    zstd = cfg.chunk_compression and not cfg.compressed
    with BagWriter(cfg.out, cfg.storage, zstd, cfg.overwrite) as out, \
            tqdm(total=total, unit='frame', disable=not cfg.progress) as bar:
        for f in frames:
            if cfg.limit and n >= cfg.limit:
                break
            if f.rgb is None:
                log.warning('%s: %s, skipped', f.name, f.problem)
                skipped[f.problem] = skipped.get(f.problem, 0) + 1
                continue
            t = start_ns + int(round(n * 1e9 / rate))  # from the start: no drift
            hdr = header(t, cfg.frame_id)
            if not cfg.compressed:
                msg = image_msg(hdr, image_fields(f.rgb, 'rgb8', as_numpy=True))
            elif f.jpeg is not None and cfg.jpeg_quality is None:
                msg = compressed_msg(hdr, 'rgb8; jpeg compressed bgr8', f.jpeg)
            else:
                msg = compressed_msg(hdr, *encode_compressed(f.rgb, 'jpeg', quality))
            out.write(cfg.topic, msgtype, t, msg)
            n += 1
            bar.update()
        if n == 0:
            raise BagError(cfg.source, 'no frame could be read')
    size = (cfg.out.stat().st_size if cfg.out.is_file()
            else sum(p.stat().st_size for p in cfg.out.rglob('*') if p.is_file()))
    return MakeSummary(cfg.out, cfg.topic, msgtype, n, rate, start_ns, t, size, skipped)
