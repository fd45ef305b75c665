"""rosbag2 files (MCAP or SQLite 3) read and written with rosbags, without a ROS install.

Reading streams one message at a time (memory stays flat on long bags); every failure to open
or read a bag becomes a `BagError` naming the path and what is wrong. Writing goes to a hidden
temporary folder beside the target and is moved into place only when the bag is complete, so
an interrupted run never leaves a half-written bag under the requested name.

An output path ending in `.mcap` (or `.db3`) is written as that single self-describing file:
the rosbag2 metadata is embedded in it, so `ros2 bag info x.mcap` and Foxglove open it as is.
Any other path becomes a rosbag2 folder (metadata.yaml + storage file), as `ros2 bag record`
makes. Message definitions come from the ROS 2 Kilted typestore and are embedded; serialization
is CDR.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED)
STORAGES = {'mcap': '.mcap', 'sqlite3': '.db3'}
MCAP_MAGIC = b'\x89MCAP0\r\n'


class BagError(RuntimeError):
    """A bag (or the input for one) that cannot be used; the message names the path."""

    def __init__(self, path, problem: str):
        super().__init__(f'{path}: {problem}')
        self.path = Path(path)
        self.problem = problem


@lru_cache(maxsize=None)
def typestore():
    """The ROS 2 Kilted message types (definitions and CDR (de)serialization)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_KILTED)


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_time: int          # ns, the time the recorder received it
    raw: bytes             # CDR

    def decode(self):
        """The rosbags message; raises whatever the CDR decoder raises on corrupt bytes."""
        return typestore().deserialize_cdr(self.raw, self.msgtype)


def _describe(e: BaseException) -> str:
    text = str(e).strip().rstrip('.')
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _mcap_problem(path: Path) -> str | None:
    """Cheap structural check of an MCAP file: rosbags' own messages are terse."""
    size = path.stat().st_size
    with open(path, 'rb') as f:
        head = f.read(8)
        if size >= 8:
            f.seek(-8, os.SEEK_END)
        tail = f.read(8)
    if size == 0:
        return 'file is empty'
    if head != MCAP_MAGIC:
        return 'not an MCAP file (no MCAP magic at the start)'
    if tail != MCAP_MAGIC or size < 2 * len(MCAP_MAGIC):   # 8 bytes: the start magic only
        return ('MCAP file is truncated (no footer: the recording was cut short or is still '
                'being written); `mcap recover IN -o OUT` can salvage the complete chunks')
    return None


class BagReader:
    """A bag opened for streaming; use as a context manager.

        with BagReader('drive.mcap') as bag:
            topic, msgtype = bag.image_topic('/camera/image_raw')
            for m in bag.messages([topic]):
                img = m.decode()
    """

    def __init__(self, path):
        from rosbags.rosbag2 import Reader
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(self.path, 'no such file or directory')
        if self.path.is_dir() and not (self.path / 'metadata.yaml').is_file():
            raise BagError(self.path, 'folder has no metadata.yaml, so it is not a rosbag2 bag '
                           '(pass the .mcap/.db3 file itself to read it without one)')
        if self.path.is_file() and self.path.suffix not in STORAGES.values():
            raise BagError(self.path, f'unknown bag file type {self.path.suffix!r} (expected '
                           f'{" or ".join(STORAGES.values())}, or a rosbag2 folder)')
        if self.path.suffix == '.mcap' and self.path.is_file():
            problem = _mcap_problem(self.path)
            if problem:
                raise BagError(self.path, problem)
        try:  # untrusted bytes: rosbags raises many kinds of errors on damaged files
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as e:  # noqa: BLE001
            raise BagError(self.path, f'not a readable rosbag2 bag ({_describe(e)})') from None
        for c in self._reader.connections:
            fmt = getattr(c.ext, 'serialization_format', 'cdr')
            if fmt != 'cdr':
                self.close()
                raise BagError(self.path, f'topic {c.topic} is serialized as {fmt!r}, not CDR')

    def close(self) -> None:
        if getattr(self, '_reader', None) is not None and self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> 'BagReader':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def start_time(self) -> int:
        return self._reader.start_time

    @property
    def end_time(self) -> int:
        return self._reader.end_time

    def topics(self) -> dict[str, str]:
        """Topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    def count(self, topics: Iterable[str]) -> int:
        topics = set(topics)
        return sum(c.msgcount for c in self._reader.connections if c.topic in topics)

    def image_topics(self) -> dict[str, str]:
        return {t: ty for t, ty in self.topics().items() if ty in IMAGE_TYPES}

    def image_topic(self, topic: str | None = None) -> tuple[str, str]:
        """(topic, msgtype) of an image topic: the one named, or the bag's only one."""
        images = self.image_topics()
        listing = ', '.join(f'{t} ({ty})' for t, ty in sorted(self.topics().items())) or 'none'
        if topic is None:
            if len(images) != 1:
                why = 'no image topics' if not images else 'several image topics'
                raise BagError(self.path, f'{why}; choose one with --topic (topics: {listing})')
            return next(iter(images.items()))
        types = self.topics()
        if topic not in types:
            raise BagError(self.path, f'no topic {topic} in the bag (topics: {listing})')
        if types[topic] not in IMAGE_TYPES:
            raise BagError(self.path, f'topic {topic} holds {types[topic]}, not '
                           f'{" or ".join(IMAGE_TYPES)}')
        return topic, types[topic]

    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Messages of `topics` in log-time order, one at a time."""
        topics = set(topics)
        conns = [c for c in self._reader.connections if c.topic in topics]
        if not conns:
            return
        it = self._reader.messages(connections=conns)
        n = 0
        while True:
            try:
                conn, t, raw = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - damaged chunk, index or record
                raise BagError(self.path, f'corrupt data after {n} messages '
                               f'({_describe(e)})') from None
            n += 1
            yield BagMessage(conn.topic, conn.msgtype, t, raw)


def storage_for(path: Path, storage: str | None) -> str:
    """The storage plugin for an output path: named, or inferred from the suffix (mcap)."""
    if storage is None:
        return 'sqlite3' if path.suffix == '.db3' else 'mcap'
    if storage not in STORAGES:
        raise BagError(path, f'unknown storage {storage!r} (choose {" or ".join(STORAGES)})')
    other = [s for s, ext in STORAGES.items() if ext == path.suffix and s != storage]
    if other:
        raise BagError(path, f'suffix {path.suffix} says {other[0]}, but storage {storage} '
                       'was asked for')
    return storage


class BagWriter:
    """A new bag, complete under its name only after a clean exit from the `with` block.

        with BagWriter('out.mcap') as out:
            out.write('/camera/image_raw', IMAGE, t_ns, msg)
    """

    def __init__(self, path, storage: str | None = None, compress: bool = True,
                 overwrite: bool = False):
        self.path = Path(path)
        self.storage = storage_for(self.path, storage)
        self.single_file = self.path.suffix == STORAGES[self.storage]
        self.compress = compress and self.storage == 'mcap'   # zstd chunks
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise BagError(self.path, 'exists already (use --overwrite to replace it)')
        if not self.path.parent.is_dir():
            raise BagError(self.path, f'folder {self.path.parent} does not exist')
        self._writer = None
        self._tmp: Path | None = None
        self._conns: dict[tuple[str, str], object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> 'BagWriter':
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
        self._tmp = Path(tempfile.mkdtemp(prefix=f'.{self.path.name}.', suffix='.partial',
                                          dir=self.path.parent))
        # Named so the storage file inside already carries the final file name, which the
        # embedded metadata lists as relative_file_paths.
        self._inner = self._tmp / (self.path.stem if self.single_file else self.path.name)
        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self._inner, version=Writer.VERSION_LATEST,
                                  storage_plugin=plugin)
            if self.compress:
                self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._writer.close()
                src = (self._inner / (self.path.stem + STORAGES[self.storage])
                       if self.single_file else self._inner)
                if self.path.exists():   # overwrite was allowed in __init__
                    if self.path.is_dir():
                        shutil.rmtree(self.path)
                    else:
                        self.path.unlink()
                os.replace(src, self.path)
            else:
                self._writer.abort()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _connection(self, topic: str, msgtype: str):
        key = (topic, msgtype)
        if key not in self._conns:
            self._conns[key] = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self.counts.setdefault(topic, 0)
        return self._conns[key]

    def write_raw(self, topic: str, msgtype: str, log_time: int, raw: bytes) -> None:
        self._writer.write(self._connection(topic, msgtype), int(log_time), raw)
        self.counts[topic] += 1

    def write(self, topic: str, msgtype: str, log_time: int, msg) -> None:
        self.write_raw(topic, msgtype, log_time, typestore().serialize_cdr(msg, msgtype))
