"""A run's folder: new runs only in empty folders, the metrics file kept in step with the
checkpoint on resume, and finished folders (best/) swapped into place whole."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from ..runtime.files import atomic_path

CSV_FIELDS = ['step', 'time', 'lr', 'xi', 'loss', 'ce', 'aux', 'kl', 'img_per_s', 'val_miou',
              'holdout_miou', 'val_miou_default']   # the last: val at the default exits


def replace_dir(src: Path, dst: Path) -> None:
    """Swap a freshly written folder into place (old copy removed only afterwards)."""
    old = dst.with_name(dst.name + '.old')
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


class RunFolderError(ValueError):
    """A new run pointed at a folder that already holds files."""


def check_run_folder(out: Path, resume: bool) -> None:
    """A new run (not --resume) needs a new or empty folder: in one that holds a run it would
    append its metrics to the old ones and mix its checkpoints with theirs, and in one that
    holds anything else (a parent such as runs/) it would scatter its files among them."""
    if resume or not out.exists():
        return
    if not out.is_dir():
        raise RunFolderError(f'run folder {out} is a file')
    if any(out.iterdir()):
        raise RunFolderError(
            f'run folder {out} is not empty: continue the run there with --resume, or give a '
            f'new run a new folder (--out, or another name in the config)')


def open_metrics_csv(path: Path, start: int, resume: bool) -> None:
    """The metrics file with its header; on resume, rows past the checkpoint (written by a run
    killed before its next checkpoint) are dropped, since they will be redone."""
    if not path.exists():
        with open(path, 'w', newline='') as f:
            csv.writer(f).writerow(CSV_FIELDS)
        return
    if not resume:
        return
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= start]
    if keep[0] == CSV_FIELDS[:len(keep[0])] and len(keep[0]) < len(CSV_FIELDS):
        keep[0] = CSV_FIELDS   # a run started before a column was added: its rows lack it
    if keep != rows:
        with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
            csv.writer(f).writerows(keep)
