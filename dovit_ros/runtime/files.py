"""Files written whole or not at all, and their digests: one helper each, used by model
directories, checkpoints, metrics and evaluation records."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# mkstemp makes 0600; models and records are meant to be shared: what open() would make
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yields a temporary path beside `path`; once the block has written it, it is fsynced and
    renamed over `path`. On any error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)


def sha256_files(*paths: str | Path) -> str:
    """sha256 of the files' bytes, concatenated in order (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
    return h.hexdigest()


__all__ = ['atomic_path', 'atomic_write_bytes', 'sha256_files', 'FILE_MODE']
