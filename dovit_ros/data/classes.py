"""Class names, colours and ignore value of a segmentation label set.

Cityscapes' table comes from `cityscapesscripts.helpers.labels` (the official source), never
from a hand copy; CamVid uses SegNet's 11 classes and palette.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from ..optional import require

# Labels are delivered as uint8 with 255 = ignore, so at most 255 real classes fit.
MAX_CLASSES = 255
DICT_KEYS = ('names', 'palette', 'ignore_index')


def _is_int(v: Any) -> bool:
    # YAML turns `yes`/`true` into bool, which is an int subclass; never accept it as a number.
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class ClassInfo:
    """Names and RGB colours of classes 0..K-1, and the label value that means "ignore".

    `ignore_index` must not collide with a class id (0 <= ignore_index <= 65535, >= K).
    Datasets always deliver labels with 255 = ignore; their `classes.ignore_index` is 255.
    """
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255

    def __post_init__(self):
        # Normalise lists (e.g. from YAML) into the hashable tuple form, then validate.
        names = tuple(self.names) if isinstance(self.names, (list, tuple)) else self.names
        palette = self.palette
        if isinstance(palette, (list, tuple)):
            palette = tuple(tuple(c) if isinstance(c, (list, tuple)) else c for c in palette)
        object.__setattr__(self, 'names', names)
        object.__setattr__(self, 'palette', palette)
        self._validate()
        object.__setattr__(self, 'ignore_index', int(self.ignore_index))
        object.__setattr__(self, 'palette', tuple(tuple(int(v) for v in c) for c in palette))

    def _validate(self) -> None:
        def bad(field, why):
            raise ValueError(f'ClassInfo.{field}: {why}')
        if not isinstance(self.names, tuple):
            bad('names', f'expected a list of strings, got {type(self.names).__name__}')
        if not isinstance(self.palette, tuple):
            bad('palette', f'expected a list of [r, g, b], got {type(self.palette).__name__}')
        if not 1 <= len(self.names) <= MAX_CLASSES:
            bad('names', f'need 1..{MAX_CLASSES} classes, got {len(self.names)}')
        for i, n in enumerate(self.names):
            if not isinstance(n, str) or not n.strip():
                bad(f'names[{i}]', f'expected a non-empty string, got {n!r}')
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            bad('names', f'duplicate class names {dup}')
        if len(self.palette) != len(self.names):
            bad('palette', f'{len(self.palette)} colours for {len(self.names)} names')
        for i, c in enumerate(self.palette):
            if not (isinstance(c, tuple) and len(c) == 3
                    and all(_is_int(v) and 0 <= v <= 255 for v in c)):
                bad(f'palette[{i}]', f'expected [r, g, b] with integers 0..255, got {c!r}')
        ig = self.ignore_index
        if not _is_int(ig) or not 0 <= ig <= 65535:
            bad('ignore_index', f'expected an integer 0..65535, got {ig!r}')
        if ig < len(self.names):
            bad('ignore_index', f'{ig} collides with class {ig} ({self.names[ig]!r})')

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette_array(self) -> np.ndarray:
        """(K, 3) uint8 RGB colours, handy for colourising a label map: `pal[label]`."""
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)

    def to_dict(self) -> dict:
        """Plain lists/ints/strings only, so yaml.safe_dump / safe_load round-trip it."""
        return {
            'names': list(self.names),
            'palette': [list(c) for c in self.palette],
            'ignore_index': self.ignore_index,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'ClassInfo':
        """Inverse of `to_dict`; `ignore_index` is optional (255). Unknown keys are an error."""
        if not isinstance(d, Mapping):
            raise ValueError(f'ClassInfo: expected a mapping, got {type(d).__name__}')
        unknown = sorted(set(d) - set(DICT_KEYS), key=str)
        if unknown:
            raise ValueError(f'ClassInfo: unknown keys {unknown} (allowed: {list(DICT_KEYS)})')
        for key in ('names', 'palette'):
            if key not in d:
                raise ValueError(f'ClassInfo.{key}: missing')
            if not isinstance(d[key], (list, tuple)):
                raise ValueError(f'ClassInfo.{key}: expected a list, got {d[key]!r}')
        return cls(names=d['names'], palette=d['palette'],
                   ignore_index=d.get('ignore_index', 255))


@lru_cache(maxsize=1)
def cityscapes_classes() -> ClassInfo:
    """The 19 Cityscapes train classes (trainId order) with their official colours."""
    require('cityscapesscripts', 'the Cityscapes class table')
    from cityscapesscripts.helpers.labels import labels
    train = sorted((lb for lb in labels if 0 <= lb.trainId < 255), key=lambda lb: lb.trainId)
    if [lb.trainId for lb in train] != list(range(len(train))):
        raise RuntimeError('cityscapesscripts: train ids are not contiguous')
    return ClassInfo(tuple(lb.name for lb in train), tuple(tuple(lb.color) for lb in train))


@lru_cache(maxsize=1)
def cityscapes_id_lut() -> np.ndarray:
    """(256,) int16 table labelId -> trainId, 255 for ignored classes, -1 for undefined ids.

    Ids whose trainId is 255 or -1 (e.g. 'guard rail', 'license plate') map to 255.
    """
    require('cityscapesscripts', 'the Cityscapes label id table')
    from cityscapesscripts.helpers.labels import labels
    lut = np.full(256, -1, dtype=np.int16)
    for lb in labels:
        if 0 <= lb.id < 256:
            lut[lb.id] = lb.trainId if 0 <= lb.trainId < 255 else 255
    lut.flags.writeable = False
    return lut


CAMVID_CLASSES = ClassInfo(
    names=('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence',
           'Car', 'Pedestrian', 'Bicyclist'),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
             (0, 128, 192)),
)
CAMVID_VOID = 11   # 'Unlabelled' in SegNet's CamVid labels; delivered as 255 (ignore)


def camvid_classes() -> ClassInfo:
    """SegNet's 11 CamVid classes (label value 11 = Unlabelled is ignored)."""
    return CAMVID_CLASSES
