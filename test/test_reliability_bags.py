"""Reliability: truncated and corrupted bags (MCAP and SQLite 3).

Already covered in test/test_bag.py (test_process_refuses_unusable_bags): a missing bag,
garbage bytes as .mcap and .db3, an MCAP cut in half, random bytes between an intact header
and footer, and `dovit-bag process` exiting 2 with the path in the message.

Here, what can be read is reported: an MCAP whose third compressed chunk is damaged and an
SQLite bag with a damaged page in the middle stop with `corrupt data after N messages`, N being
exactly the messages before the damage; `dovit-bag process` exits 2 saying so and leaves no
output. A truncated MCAP (no footer) is refused before reading, whatever the cut, with the
`mcap recover` hint; a truncated SQLite file is refused at open. Not detected: bytes changed
inside an image payload of an MCAP chunk (rosbags writes no chunk CRCs, and high-entropy
images are stored uncompressed inside zstd frames): the frame decodes with other pixel values.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from dovit_ros.bag import BagError, BagReader, MakeConfig, make_bag
from dovit_ros.cli.bag import main as bag_cli

H, W, N = 240, 320, 12   # random pixels: ~1.15 MB MCAP chunks, so 3 chunks of 5, 5, 2 frames


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
    d = tmp_path_factory.mktemp('frames')
    rng = np.random.default_rng(0)
    for i in range(N):
        cv2.imwrite(str(d / f'{i:02d}.png'), rng.integers(0, 256, (H, W, 3), np.uint8))
    return d


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    from dovit_ros.ros.harness import make_test_model
    return make_test_model(tmp_path_factory.mktemp('model') / 'tiny')


@pytest.fixture(scope='module')
def bags(frames, tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    out = {}
    for name in ('clip.mcap', 'clip.db3'):
        make_bag(MakeConfig(frames, root / name, rate=10.0, start_time=100.0, progress=False))
        out[name.split('.')[1]] = root / name
    return out


def read_count(path) -> tuple[int, str | None]:
    """(messages read, BagError problem or None)."""
    n = 0
    try:
        with BagReader(path) as bag:
            for m in bag.messages(bag.image_topics()):
                m.decode()
                n += 1
    except BagError as e:
        return n, e.problem
    return n, None


def mcap_chunks(path) -> list[tuple[int, int]]:
    """(file offset of the chunk's compressed records, messages before the chunk)."""
    from mcap.reader import make_reader
    with open(path, 'rb') as f:
        summary = make_reader(f).get_summary()
    with BagReader(path) as bag:
        times = [m.log_time for m in bag.messages(bag.image_topics())]
    out = []
    for c in sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
        # opcode (1) + record length (8) + start/end time, uncompressed size and crc (28),
        # compression string (4 + len) and records length (8): then the zstd frame
        start = c.chunk_start_offset + 1 + 8 + 28 + 4 + len(c.compression) + 8
        out.append((start, sum(t < c.message_start_time for t in times)))
    return out


def damaged(src, dst, pos: int, n: int = 16):
    data = bytearray(src.read_bytes())
    data[pos:pos + n] = np.random.default_rng(pos).bytes(n)
    dst.write_bytes(bytes(data))
    return dst


def test_damaged_mcap_chunk_reports_the_messages_before_it(bags, model_dir, tmp_path, capsys):
    chunks = mcap_chunks(bags['mcap'])
    assert len(chunks) >= 3, chunks
    start, before = chunks[2]
    bad = damaged(bags['mcap'], tmp_path / 'bad.mcap', start)
    n, problem = read_count(bad)
    assert n == before > 0 and problem.startswith(f'corrupt data after {before} messages'), \
        (n, problem)
    rc = bag_cli(['process', str(bad), str(tmp_path / 'out.mcap'), '-q', '--model',
                  str(model_dir), '--device', 'cpu'])
    err = capsys.readouterr().err
    assert rc == 2 and f'{bad}: corrupt data after {before} messages' in err, err
    assert not (tmp_path / 'out.mcap').exists() and not list(tmp_path.glob('.*partial'))


@pytest.mark.parametrize('cut', ['after_magic', 'mid_chunk', 'before_footer'])
def test_truncated_mcap_refused_before_reading(bags, tmp_path, cut):
    data = bags['mcap'].read_bytes()
    at = {'after_magic': 8, 'mid_chunk': len(data) // 3, 'before_footer': len(data) - 9}[cut]
    bad = tmp_path / 'cut.mcap'
    bad.write_bytes(data[:at])
    n, problem = read_count(bad)
    assert n == 0 and 'truncated' in problem and 'mcap recover' in problem, problem


def test_damaged_sqlite_page_reports_the_messages_before_it(bags, model_dir, tmp_path,
                                                            capsys):
    data = bags['db3'].read_bytes()
    results = []
    for frac in (0.3, 0.6, 0.9):
        bad = damaged(bags['db3'], tmp_path / f'bad{frac}.db3', int(len(data) * frac), 4096)
        n, problem = read_count(bad)
        results.append((frac, n, problem))
        assert problem is not None and 0 < n < N, results
        assert problem.startswith(f'corrupt data after {n} messages'), results
    ns = [n for _, n, _ in results]
    assert ns == sorted(ns)   # damage later in the file: more frames read first
    rc = bag_cli(['process', str(bad), str(tmp_path / 'o.mcap'), '-q', '--model',
                  str(model_dir), '--device', 'cpu'])
    err = capsys.readouterr().err
    assert rc == 2 and f'{bad}: corrupt data after {ns[-1]} messages' in err, err
    assert not (tmp_path / 'o.mcap').exists()


def test_truncated_sqlite_refused_at_open(bags, tmp_path):
    data = bags['db3'].read_bytes()
    for frac in (0.01, 0.5, 0.99):
        bad = tmp_path / 'cut.db3'
        bad.write_bytes(data[:int(len(data) * frac)])
        n, problem = read_count(bad)
        assert n == 0 and problem is not None and 'not a readable rosbag2 bag' in problem, \
            (frac, problem)


def test_payload_bytes_changed_in_an_mcap_chunk_go_unnoticed(bags, tmp_path):
    """Documented limitation: no CRC guards the chunk contents."""
    chunks = mcap_chunks(bags['mcap'])
    start, _ = chunks[1]
    bad = damaged(bags['mcap'], tmp_path / 'quiet.mcap', start + 200_000, 64)
    assert read_count(bad) == (N, None)
    with BagReader(bags['mcap']) as a, BagReader(bad) as b:
        ra = [m.raw for m in a.messages(a.image_topics())]
        rb = [m.raw for m in b.messages(b.image_topics())]
    assert sum(x != y for x, y in zip(ra, rb)) == 1
    assert os.path.getsize(bad) == os.path.getsize(bags['mcap'])
