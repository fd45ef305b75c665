"""Reliability: malformed and random camera messages.

In process, hypothesis throws arbitrary field values and payloads at the codec the node uses:
it must answer with an image or a FrameRejected naming a known reason, never anything else.
Over DDS, a live segment_node (raw and compressed transport) gets malformed or random
sensor_msgs/Image and CompressedImage messages interleaved with valid frames (every
VALID_EVERY-th message, plus random ones that happen to decode). The expected reason of every
message is computed here with dovit_ros.runtime.image_codec, the node's own decoder; a valid
frame is sent only when the previous one's outputs are back, so each must get all its outputs.
The node's counters must then close exactly: sent = frames in = out + rejected + dropped, and
the rejections per reason equal what was sent (exactly when nothing was dropped).

scripts/soak.py fuzz runs the same scenario with 2,000 messages (docs/reliability.md).
"""
from __future__ import annotations

import collections
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from dovit_ros.ros.harness import Client, NodeProcess, fresh_domain_id, make_test_model, ros_env
from dovit_ros.runtime.image_codec import (RAW_ENCODINGS, REJECT_REASONS, FrameRejected,
                                           decode_compressed, decode_image, encode_compressed)

DOMAIN = fresh_domain_id()
H, W = 64, 96
VALID_EVERY = 4
OK = 'ok'   # expected outcome of a message the codec decodes
BPP = {'rgb8': 3, 'bgr8': 3, '8UC3': 3, 'rgba8': 4, 'bgra8': 4, '8UC4': 4, 'mono8': 1,
       '8UC1': 1, 'mono16': 2, 'bayer_rggb8': 1, 'bayer_bggr8': 1, 'bayer_gbrg8': 1,
       'bayer_grbg8': 1}
NOT_SUPPORTED = ('yuv422', 'yuv422_yuy2', 'nv21', '16UC1', '32FC1', '64FC3', 'bayer_rggb16',
                 'jpeg', 'RGB8', 'rgb8 ', '', 'mono', 'bgr16', 'uyvy')


# ------------------------------------------------------------------ the codec, in process

def expected(msg, decode) -> str:
    """What the node's decoder makes of `msg`: OK, a reject reason, or 'error:<Type>' (a bug:
    anything but FrameRejected would be counted as `frames failed` by the node)."""
    try:
        rgb = decode(msg)
    except FrameRejected as e:
        return e.reason
    except Exception as e:  # noqa: BLE001 - what the test is looking for
        return f'error:{type(e).__name__}'
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    return OK


u32 = st.integers(0, 2**32 - 1)
small = st.integers(0, 300)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(height=st.one_of(small, u32), width=st.one_of(small, u32),
       step=st.one_of(small, st.integers(0, 2000), u32),
       encoding=st.one_of(st.sampled_from(RAW_ENCODINGS + NOT_SUPPORTED), st.text(max_size=12)),
       big=st.integers(0, 255), data=st.binary(max_size=4096))
def test_codec_answers_every_raw_image_with_an_image_or_a_reason(height, width, step,
                                                                 encoding, big, data):
    msg = Image(height=height, width=width, step=step, encoding=encoding.replace('\0', ''),
                is_bigendian=big, data=data)
    assert expected(msg, decode_image) in (OK, *REJECT_REASONS)


def _payloads():
    rng = np.random.default_rng(1)
    return [encode_compressed(rng.integers(0, 256, (12, 20, 3), np.uint8), f)[1]
            for f in ('jpeg', 'png')]


PAYLOADS = _payloads()


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.one_of(st.sampled_from(['jpeg', 'png', 'rgb8; jpeg compressed bgr8',
                                      '16UC1; compressedDepth png']), st.text(max_size=20)),
       base=st.sampled_from(PAYLOADS), cut=st.integers(0, 2000),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=6),
       junk=st.binary(max_size=512), mode=st.sampled_from(['cut', 'flip', 'junk', 'prefix']))
def test_codec_answers_every_compressed_image_with_an_image_or_a_reason(fmt, base, cut, flips,
                                                                        junk, mode):
    data = bytearray(base)
    if mode == 'cut':
        data = data[:cut]
    elif mode == 'flip':
        for pos, bit in flips:
            data[pos % len(data)] ^= 1 << bit
    elif mode == 'junk':
        data = bytearray(junk)
    else:   # a valid magic number in front of junk
        data = bytearray(base[:8]) + junk
    msg = CompressedImage(format=fmt.replace('\0', ''), data=bytes(data))
    assert expected(msg, decode_compressed) in (OK, *REJECT_REASONS)


# ------------------------------------------------------------------ message generators

def _stamp(msg, stamp):
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = f'fuzz{stamp[0]}'
    return msg


def valid_raw(rng) -> Image:
    """A valid frame in a random supported encoding, sometimes with padded rows."""
    enc = str(rng.choice(RAW_ENCODINGS))
    row = W * BPP[enc]
    step = row + int(rng.choice([0, 0, 1, 7, 32]))
    data = rng.integers(0, 256, step * H, dtype=np.uint8).tobytes()
    return Image(height=H, width=W, encoding=enc, is_bigendian=int(rng.integers(0, 2)),
                 step=step, data=data)


def bad_raw(rng) -> Image:
    """A malformed or random Image: each kind targets one check of the decoder (or none)."""
    m = valid_raw(rng)
    row = m.width * BPP[m.encoding]
    kind = rng.integers(0, 9)
    if kind == 0:
        m.encoding = str(rng.choice(NOT_SUPPORTED))
    elif kind == 1:
        m.encoding = ''.join(chr(c) for c in rng.integers(32, 0x2FF, int(rng.integers(1, 12))))
    elif kind == 2:
        m.height, m.width = (0, W) if rng.random() < 0.5 else (H, 0)
    elif kind == 3:
        m.height, m.width = int(rng.integers(4097, 2**32)), int(rng.integers(4097, 2**32))
        m.step = m.width * 3 % 2**32
    elif kind == 4:
        m.step = int(rng.integers(0, row))
    elif kind == 5:   # truncated
        m.data = bytes(m.data)[:int(rng.integers(0, len(m.data)))]
    elif kind == 6:   # oversized
        m.data = bytes(m.data) + rng.bytes(int(rng.integers(1, 5000)))
    elif kind == 7:   # a step that the data does not follow
        m.step += int(rng.integers(1, 64))
    else:             # everything random
        m = Image(height=int(rng.integers(0, 200)), width=int(rng.integers(0, 200)),
                  encoding=str(rng.choice(RAW_ENCODINGS + NOT_SUPPORTED)),
                  step=int(rng.integers(0, 800)), is_bigendian=int(rng.integers(0, 256)),
                  data=rng.bytes(int(rng.integers(0, 20000))))
    return m


def valid_compressed(rng) -> CompressedImage:
    fmt, data = encode_compressed(rng.integers(0, 256, (H, W, 3), np.uint8),
                                  str(rng.choice(['jpeg', 'png'])))
    return CompressedImage(format=fmt, data=data)


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + b'IHDR' + ihdr
            + struct.pack('>I', zlib.crc32(b'IHDR' + ihdr)))


def bad_compressed(rng) -> CompressedImage:
    m = valid_compressed(rng)
    data = bytearray(m.data)
    kind = rng.integers(0, 8)
    if kind == 0:     # random bytes, labelled JPEG or PNG
        data = bytearray(rng.bytes(int(rng.integers(1, 5000))))
    elif kind == 1:   # a real magic number, then junk
        data = data[:int(rng.integers(2, 24))] + bytearray(rng.bytes(int(rng.integers(0, 3000))))
    elif kind == 2:   # truncated (a JPEG cut late may still decode: then it is a valid frame)
        data = data[:int(rng.integers(0, len(data)))]
    elif kind == 3:   # bit flips
        for pos in rng.integers(0, len(data), int(rng.integers(1, 20))):
            data[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == 4:
        data = bytearray()
    elif kind == 5:
        m.format = '16UC1; compressedDepth png'
    elif kind == 6:   # a PNG header announcing a huge image
        data = bytearray(_png_header(int(rng.integers(5000, 2**31)),
                                     int(rng.integers(5000, 2**31))) + rng.bytes(64))
    else:             # a random format string on a valid payload: the magic bytes decide
        m.format = ''.join(chr(c) for c in rng.integers(32, 127, int(rng.integers(0, 30))))
    m.data = bytes(data)
    return m


GENERATORS = {'raw': (Image, valid_raw, bad_raw, decode_image),
              'compressed': (CompressedImage, valid_compressed, bad_compressed,
                             decode_compressed)}


def fuzz_messages(kind: str, n: int, seed: int, first_sec: int = 1000):
    """n (stamp, message, expected outcome): every VALID_EVERY-th a valid frame."""
    _, valid, bad, decode = GENERATORS[kind]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        msg = _stamp(valid(rng) if i % VALID_EVERY == VALID_EVERY - 1 else bad(rng),
                     (first_sec + i, 0))
        out.append(((first_sec + i, 0), msg, expected(msg, decode)))
    return out


# ------------------------------------------------------------------ the node side

def counters(kv: dict) -> dict:
    keys = {'in': 'frames in', 'out': 'frames out', 'dropped': 'frames dropped',
            'idle': 'frames idle (no subscribers)', 'failed': 'frames failed'}
    c = {k: int(kv.get(v, 0)) for k, v in keys.items()}
    c['rejected'] = {r: int(kv.get(f'rejected {r}', 0)) for r in REJECT_REASONS}
    return c


def settled(kv: dict) -> bool:
    """Every frame the node received is accounted for (the worker is idle)."""
    c = counters(kv)
    return c['in'] == (c['out'] + c['dropped'] + c['idle'] + c['failed']
                       + sum(c['rejected'].values()))


@dataclass
class FuzzReport:
    kind: str
    sent: int = 0
    expected: dict = field(default_factory=collections.Counter)   # outcome -> messages
    valid_sent: int = 0
    valid_with_all_outputs: int = 0
    node: dict = field(default_factory=dict)   # counter deltas over the run
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        rej = {r: n for r, n in self.node['rejected'].items() if n}
        return [f'fuzz {self.kind}: {self.sent} messages sent in {self.wall_s:.1f} s, '
                f'expected {dict(sorted(self.expected.items()))}',
                f'  valid frames: {self.valid_sent} sent, {self.valid_with_all_outputs} got '
                'every output',
                f'  node: in {self.node["in"]}, out {self.node["out"]}, dropped '
                f'{self.node["dropped"]}, failed {self.node["failed"]}, rejected {rej}']


class FuzzNode:
    """A segment_node (own namespace and topic) with a reliable deep-queued publisher, so that
    every message sent reaches the node's callback and the accounting can close exactly."""

    def __init__(self, domain: int, model_dir, transport: str, echo: bool = False):
        self.transport = transport
        self.ns = f'/fuzz_{transport}'
        self.topic = f'/fuzz_cam_{transport}/image'
        topic_in = self.topic + ('/compressed' if transport == 'compressed' else '')
        self.proc = NodeProcess(
            ['-r', f'__ns:={self.ns}', '-p', f'model:={model_dir}', '-r', f'image:={self.topic}',
             '-p', f'input_transport:={transport}', '-p', 'qos_reliability:=reliable',
             '-p', f'qos_overrides.{topic_in}.subscription.depth:=100'],
            ros_env(domain), echo=echo)
        self.client = Client(domain, namespace=self.ns, name=f'fuzz_client_{transport}')
        self.pub = self.client.node.create_publisher(
            GENERATORS[transport][0], topic_in,
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))

    def start(self, timeout: float = 120.0) -> None:
        assert self.proc.wait_for('ready', timeout), self.proc.output
        assert self.client.wait_matched(self.pub), self.proc.output
        self.client.subscribe()
        _, valid, _, _ = GENERATORS[self.transport]
        rng = np.random.default_rng(99)
        warm = valid(rng)
        stamp = self.client.send_until_output(self.pub, lambda s: _stamp(warm, s), (1, 0))
        assert stamp is not None, self.proc.output
        self.warm_sent = stamp[1] + 1   # stamps (1, 0), (1, 1), ...: all of them must arrive

    def diagnostics(self, predicate=lambda kv: True, timeout: float = 5.0) -> dict | None:
        topic = self.topic + ('/compressed' if self.transport == 'compressed' else '')
        return self.client.latest_diagnostics(
            lambda kv: kv.get('input topic') == topic and predicate(kv), timeout)

    def close(self) -> None:
        self.proc.stop(signal.SIGKILL, timeout=0)
        self.client.close()


def run_fuzz(fn: FuzzNode, messages, gap_s: float = 0.003, log=None) -> FuzzReport:
    """Send `messages`, each valid one only once the previous valid one's outputs are back
    (so every valid frame finds the worker idle), then wait for the counters to settle."""
    c = fn.client
    base = fn.diagnostics(lambda kv: settled(kv) and int(kv['frames in']) >= fn.warm_sent,
                          10.0)
    assert base is not None, fn.proc.output[-3000:]
    before = counters(base)
    rep = FuzzReport(fn.transport)
    t0 = time.monotonic()
    for i, (stamp, msg, outcome) in enumerate(messages):
        fn.pub.publish(msg)
        rep.sent += 1
        rep.expected[outcome] += 1
        if outcome == OK:
            rep.valid_sent += 1
            if c.spin_until(lambda: c.got(stamp), 30.0):
                rep.valid_with_all_outputs += 1
        else:
            c.spin_for(gap_s)   # gives the worker a moment; a frame it missed counts as dropped
        if log and (i + 1) % 500 == 0:
            log(f'  {i + 1}/{len(messages)} messages sent')
    want_in = before['in'] + rep.sent
    kv = fn.diagnostics(lambda kv: int(kv['frames in']) >= want_in and settled(kv), 30.0)
    assert kv is not None, fn.proc.output[-3000:]
    after = counters(kv)
    rep.node = {k: after[k] - before[k] for k in ('in', 'out', 'dropped', 'idle', 'failed')}
    rep.node['rejected'] = {r: after['rejected'][r] - before['rejected'][r]
                            for r in REJECT_REASONS}
    rep.wall_s = time.monotonic() - t0
    return rep


def check_fuzz(rep: FuzzReport, proc: NodeProcess) -> None:
    """The pass criteria (shared with scripts/soak.py)."""
    assert proc.proc.poll() is None, 'the node died'
    assert not [o for o in rep.expected if o.startswith('error:')], rep.expected
    assert rep.valid_with_all_outputs == rep.valid_sent
    n = rep.node
    assert n['in'] == rep.sent, 'a message never reached the node'
    assert n['failed'] == 0 and n['idle'] == 0
    assert n['out'] + n['dropped'] + sum(n['rejected'].values()) == rep.sent
    assert n['out'] >= rep.valid_sent and n['out'] <= rep.expected[OK]
    if n['dropped'] == 0:   # nothing lost in the slot: every reason matches exactly
        assert n['out'] == rep.expected[OK]
        assert n['rejected'] == {r: rep.expected[r] for r in REJECT_REASONS}
    else:                   # a dropped message's reason is unknown: bounds that close
        for r in REJECT_REASONS:
            assert n['rejected'][r] <= rep.expected[r], r
        assert sum(rep.expected[r] - n['rejected'][r] for r in REJECT_REASONS) + \
            rep.expected[OK] - n['out'] == n['dropped']
    assert 'Traceback' not in proc.output and 'frame failed' not in proc.output


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp('model') / 'tiny')


@pytest.fixture(scope='module')
def nodes(model_dir):
    """Both nodes start at once: their start-ups (imports, model load) overlap."""
    fns = {t: FuzzNode(DOMAIN, model_dir, t) for t in GENERATORS}
    try:
        yield fns
    finally:
        for fn in fns.values():
            fn.close()


@pytest.mark.parametrize('transport', ['raw', 'compressed'])
def test_node_survives_fuzz_and_counts_every_reject(nodes, transport):
    fn = nodes[transport]
    fn.start()
    msgs = fuzz_messages(transport, 200, seed=0 if transport == 'raw' else 1)
    rep = run_fuzz(fn, msgs)
    print('\n'.join(rep.lines()))
    check_fuzz(rep, fn.proc)
    # the generators reach most of the reasons the transport can produce
    reasons = {o for o in rep.expected if o != OK}
    want = ({'unsupported_encoding', 'zero_size', 'too_large', 'bad_step',
             'data_size_mismatch'} if transport == 'raw'
            else {'unsupported_encoding', 'too_large', 'undecodable'})
    assert want <= reasons, reasons
    assert fn.proc.stop(signal.SIGINT, timeout=10.0) == 0, fn.proc.output[-3000:]
