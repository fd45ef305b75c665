"""dovit_ros.bag and dovit-bag: make -> process -> read back (rosbags and the independent mcap
reader), live playback with rclpy, and bags the tools must refuse or partly skip."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dovit_ros.bag import (COMPRESSED, IMAGE, BagError, BagReader, BagWriter, FixedExits,
                           MakeConfig, ProcessConfig, make_bag, process_bag)
from dovit_ros.bag import messages as bm
from dovit_ros.cli.bag import main as cli
from dovit_ros.data.classes import camvid_classes
from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.runtime.viz import color_stages
from dovit_ros.runtime.artifacts import ModelMeta, save_model_dir
from dovit_ros.runtime.image_codec import decode_any, encode_compressed
from dovit_ros.runtime.outputs import OUTPUTS
from dovit_ros.runtime.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
H, W, N = 48, 64, 6
T0 = 100.0            # s, first stamp of the test bags
NS = '/dovit_segmenter'
IMAGES = dict(OUTPUTS)
DTYPES = {'mono8': np.uint8, 'rgb8': np.uint8, '32FC1': np.float32}


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    cfg = ViTConfig(num_classes=11, dim=32, depth=4, heads=2, decision_points=(1, 2, 3),
                    img_size=(H, W), decoder_dim=16)
    torch.manual_seed(0)
    model = DoViTSegmenter(cfg).eval()
    with torch.no_grad():   # confident aux heads, so that some tokens exit at xi = 0.5
        for head in model.aux_heads:
            head.proj.weight.mul_(30.0)
    meta = ModelMeta(architecture=cfg, classes=camvid_classes(), input_size=(H, W),
                     exits=ExitConfig(threshold=0.5))
    return save_model_dir(tmp_path_factory.mktemp('model') / 'tiny', model, meta)


@pytest.fixture(scope='module')
def pipe(model_dir):
    # the tool's default precision, resolved by the same rule (bf16 on CPUs with AMX)
    return Pipeline.from_path(str(model_dir), device='cpu', precision='auto')


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
    """N random RGB frames as PNG files (lossless, so the bag must hold them exactly)."""
    folder = tmp_path_factory.mktemp('frames')
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    for i, img in enumerate(imgs):
        cv2.imwrite(str(folder / f'f{i:03d}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (folder / 'notes.txt').write_text('not an image: ignored')
    return folder, imgs


@pytest.fixture(scope='module')
def raw_bag(frames, tmp_path_factory):
    out = tmp_path_factory.mktemp('bags') / 'raw.mcap'
    make_bag(MakeConfig(frames[0], out, rate=10.0, start_time=T0))
    return out


def read_all(path):
    """topic -> [(log_time, msgtype, rosbags message)] via rosbags."""
    out = {}
    with BagReader(path) as bag:
        for m in bag.messages(bag.topics()):
            out.setdefault(m.topic, []).append((m.log_time, m.msgtype, m.decode()))
    return out


def as_array(msg) -> np.ndarray:
    """sensor_msgs/Image (rosbags or mcap_ros2) -> (H, W[, C]) array of its encoding."""
    dtype = np.dtype(DTYPES[msg.encoding]).newbyteorder('<')
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    arr = data[:, :msg.width * dtype.itemsize * (3 if msg.encoding == 'rgb8' else 1)]
    arr = np.ascontiguousarray(arr).view(dtype)
    return arr.reshape(msg.height, msg.width, 3) if msg.encoding == 'rgb8' else arr


def stamps(n, rate=10.0, t0=T0):
    return [int(round(t0 * 1e9)) + int(round(i * 1e9 / rate)) for i in range(n)]


# ---------------------------------------------------------------------------------------- make

@pytest.mark.parametrize('name', ['clip.mcap', 'clip.db3', 'clipdir'])
def test_make_raw_round_trip(frames, tmp_path, name):
    folder, imgs = frames
    s = make_bag(MakeConfig(folder, tmp_path / name, rate=10.0, start_time=T0))
    assert (s.frames, s.topic, s.msgtype) == (N, '/camera/image_raw', IMAGE)
    assert (tmp_path / name).is_dir() == (name == 'clipdir')
    assert not list(tmp_path.glob('.*partial'))          # the temporary folder is gone
    msgs = read_all(tmp_path / name)['/camera/image_raw']
    assert [t for t, _, _ in msgs] == stamps(N)           # log time = header stamp
    for (t, ty, msg), img in zip(msgs, imgs):
        assert ty == IMAGE and bm.stamp_ns(msg.header) == t
        assert (msg.header.frame_id, msg.encoding, msg.height, msg.width, msg.step) == \
            ('camera', 'rgb8', H, W, 3 * W)
        np.testing.assert_array_equal(as_array(msg), img)


def test_make_compressed_keeps_jpeg_bytes(tmp_path):
    folder = tmp_path / 'jpg'
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(folder / f'{i}.jpg'), rng.integers(0, 256, (H, W, 3), np.uint8))
    s = make_bag(MakeConfig(folder, tmp_path / 'c.mcap', compressed=True, limit=2,
                            start_time=T0))
    assert (s.frames, s.topic, s.msgtype, s.rate) == (2, '/camera/image_raw/compressed',
                                                      COMPRESSED, 15.0)
    msgs = read_all(tmp_path / 'c.mcap')['/camera/image_raw/compressed']
    assert [t for t, _, _ in msgs] == stamps(2, rate=15.0)
    for i, (_, _, msg) in enumerate(msgs):
        assert msg.format == 'rgb8; jpeg compressed bgr8'
        assert msg.data.tobytes() == (folder / f'{i}.jpg').read_bytes()
    make_bag(MakeConfig(folder, tmp_path / 'q.mcap', compressed=True, jpeg_quality=50))
    _, _, msg = read_all(tmp_path / 'q.mcap')['/camera/image_raw/compressed'][0]
    assert msg.data.tobytes() != (folder / '0.jpg').read_bytes()
    assert decode_any(msg).shape == (H, W, 3)


def test_make_from_video_uses_its_rate(tmp_path):
    video = tmp_path / 'v.avi'
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 20.0, (W, H))
    for i in range(5):
        w.write(np.full((H, W, 3), 40 * i, np.uint8))
    w.release()
    assert cli(['make', str(video), str(tmp_path / 'v.mcap'), '--limit', '3', '--start-time',
                str(T0), '--topic', 'cam/image', '--frame-id', 'cam', '-q']) == 0
    msgs = read_all(tmp_path / 'v.mcap')['/cam/image']
    assert [t for t, _, _ in msgs] == stamps(3, rate=20.0)
    means = [as_array(m).mean() for _, _, m in msgs]   # frames 0, 1, 2 in order (MJPEG: ~)
    np.testing.assert_allclose(means, [0, 40, 80], atol=3)


def test_make_skips_unreadable_files_and_refuses_bad_input(frames, tmp_path, capsys):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    for i in (0, 2):
        (folder / f'{i}.png').write_bytes((frames[0] / f'f00{i}.png').read_bytes())
    (folder / '1.png').write_bytes(b'\x89PNG broken')
    s = make_bag(MakeConfig(folder, tmp_path / 'm.mcap', rate=10.0, start_time=T0))
    assert (s.frames, s.skipped) == (2, {'undecodable image file': 1})
    assert [t for t, _, _ in read_all(tmp_path / 'm.mcap')['/camera/image_raw']] == stamps(2)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(BagError, match='no image files'):
        make_bag(MakeConfig(empty, tmp_path / 'e.mcap'))
    with pytest.raises(BagError, match='exists already'):
        make_bag(MakeConfig(folder, tmp_path / 'm.mcap'))
    with pytest.raises(BagError, match='cannot open it as a video'):
        make_bag(MakeConfig(tmp_path / 'm.mcap', tmp_path / 'x.mcap'))
    assert not (tmp_path / 'e.mcap').exists() and not list(tmp_path.glob('.*partial'))
    assert cli(['make', str(tmp_path / 'nope'), str(tmp_path / 'y.mcap')]) == 2
    assert 'nope: no such file or folder' in capsys.readouterr().err
    with pytest.raises(ValueError, match='rate'):
        MakeConfig(folder, tmp_path / 'z.mcap', rate=0)


# ------------------------------------------------------------------------------------- process

def test_process_round_trip(raw_bag, model_dir, pipe, frames, tmp_path):
    out = tmp_path / 'out.mcap'
    s = process_bag(ProcessConfig(raw_bag, out, model=str(model_dir), device='cpu',
                                  diagnostics_period=0.25, progress=False))
    assert (s.frames_in, s.frames_out, s.skipped) == (N, N, {})
    assert s.gflops_full > 0 and 0 < s.gflops_mean and len(s.tokens_per_stage) == 4
    assert s.tokens_per_stage[0] == 1.0 and min(s.tokens_per_stage) < 1.0   # some exited
    assert s.messages == {'/camera/image_raw': N, **{f'{NS}/{o}': N for o in IMAGES},
                          f'{NS}/frame_stats': N, '/diagnostics': 2}
    assert any('GFLOPs per frame' in line for line in s.lines())

    bag = read_all(out)
    with BagReader(raw_bag) as src:
        inputs = [m.raw for m in src.messages(['/camera/image_raw'])]
    with BagReader(out) as o:
        assert [m.raw for m in o.messages(['/camera/image_raw'])] == inputs  # byte for byte
        assert o.topics()['/diagnostics'] == 'diagnostic_msgs/msg/DiagnosticArray'
    for name, enc in IMAGES.items():
        msgs = bag[f'{NS}/{name}']
        assert [t for t, _, _ in msgs] == stamps(N)
        for t, ty, msg in msgs:
            assert ty == IMAGE and bm.stamp_ns(msg.header) == t
            assert (msg.header.frame_id, msg.encoding, msg.height, msg.width) == \
                ('camera', enc, H, W)
    outputs = zip(bag[f'{NS}/labels'], bag[f'{NS}/confidence'], frames[1])
    for (_, _, labels), (_, _, conf), img in outputs:
        ref = pipe.infer(img)   # the same model and exits, run directly
        np.testing.assert_array_equal(as_array(labels), ref.labels)
        np.testing.assert_allclose(as_array(conf), ref.confidence, rtol=1e-5, atol=1e-6)

    diags = bag['/diagnostics']
    assert [t for t, _, _ in diags] == stamps(N)[3::2]   # 0.3 and 0.5 s (also the end)
    status = diags[-1][2].status[0]
    kv = {v.key: v.value for v in status.values}
    assert status.name == 'dovit_segmenter: compute budget' and status.level == 0
    assert kv['frames in'] == kv['frames out'] == str(N)
    assert kv['frames rejected'] == '0' and kv['policy'] == 'threshold'
    assert float(kv['gflops full model']) == pytest.approx(s.gflops_full, abs=0.01)
    assert (kv['input topic'], kv['input transport'], kv['device']) == \
        ('/camera/image_raw', 'raw', 'cpu')
    for t, _, stats in bag[f'{NS}/frame_stats']:
        st = stats.status[0]
        kv = {v.key: v.value for v in st.values}
        assert (st.name, bm.stamp_ns(stats.header), kv['width'], kv['height']) == \
            ('dovit_segmenter: frame', t, str(W), str(H))
    colors = [as_array(m) for _, _, m in bag[f'{NS}/exit_stage_color']]
    for c, (_, _, st) in zip(colors, bag[f'{NS}/exit_stage']):
        np.testing.assert_array_equal(c, color_stages(as_array(st), 3))

    # An independent reader decodes the same messages from the embedded definitions.
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    seen = {}
    with open(out, 'rb') as f:
        for schema, channel, message, msg in make_reader(
                f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            i = seen[channel.topic] = seen.get(channel.topic, -1) + 1
            t, ty, ref = bag[channel.topic][i]
            assert (message.log_time, schema.name, channel.message_encoding) == (t, ty, 'cdr')
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == \
                (ref.header.stamp.sec, ref.header.stamp.nanosec)
            if ty == IMAGE:
                np.testing.assert_array_equal(as_array(msg), as_array(ref))
            else:   # DiagnosticArray
                assert [(v.key, v.value) for v in msg.status[0].values] == \
                    [(v.key, v.value) for v in ref.status[0].values]
    assert {k: v + 1 for k, v in seen.items()} == s.messages


def test_process_outputs_subset_and_exit_hook(raw_bag, pipe, tmp_path):
    class Alternate:
        """A stand-in for a compute-budget controller: full model, then exits, ..."""

        def __init__(self):
            self.i, self.seen = 0, []

        def __call__(self):
            self.i += 1
            return ExitConfig(policy='none') if self.i % 2 else ExitConfig(threshold=0.0)

        def observe(self, result, frame_ms):
            self.seen.append((result.exits.policy, result.gflops, frame_ms))

    hook = Alternate()
    cfg = ProcessConfig(raw_bag, tmp_path / 'o.db3', outputs=['labels', 'exit_stage'],
                        namespace='seg', diagnostics_period=0, progress=False)
    s = process_bag(cfg, pipe=pipe, choose_exits=hook)
    assert [p for p, _, _ in hook.seen] == ['none', 'threshold'] * (N // 2)
    assert all(g == pytest.approx(s.gflops_full) for p, g, _ in hook.seen if p == 'none')
    assert all(g < s.gflops_full for p, g, _ in hook.seen if p == 'threshold')
    assert s.messages == {'/camera/image_raw': N, '/seg/labels': N, '/seg/exit_stage': N,
                          '/diagnostics': N}
    stages = [as_array(m) for _, _, m in read_all(tmp_path / 'o.db3')['/seg/exit_stage']]
    assert all((st == 0).all() for st in stages[0::2])   # no exits: every token to the end
    assert all((st == 1).all() for st in stages[1::2])   # xi = 0: every token at the first
    assert FixedExits(ExitConfig())() == ExitConfig()


def test_process_target_gflops_steers_xi(raw_bag, pipe, tmp_path):
    """--target-gflops: the node's BudgetChooser picks each frame's xi; an unreachable target
    drives xi monotonically down to threshold_min and the summary reports the budget."""
    cfg = ProcessConfig(raw_bag, tmp_path / 'b.db3', outputs=['labels'], namespace='seg',
                        diagnostics_period=0, progress=False, target_gflops=1e-6,
                        threshold_min=0.05)
    s = process_bag(cfg, pipe=pipe)
    assert s.budget['budget kind'] == 'gflops'
    assert s.budget['budget frames over pct'] == '100.0'
    xis = [float(dict((kv.key, kv.value) for kv in m.status[0].values)['threshold'])
           for _, _, m in read_all(tmp_path / 'b.db3')['/diagnostics']]
    assert len(xis) == N and xis[0] == pytest.approx(pipe.meta.exits.threshold)
    assert all(b <= a + 1e-9 for a, b in zip(xis, xis[1:])) and xis[-1] < xis[0]
    with pytest.raises(ValueError, match='cannot both be set'):
        process_bag(ProcessConfig(raw_bag, tmp_path / 'c.db3', progress=False,
                                  target_gflops=1.0, target_latency_ms=5.0), pipe=pipe)


def _write_bag(path, topic, msgtype, msgs):
    with BagWriter(path) as out:
        for i, msg in enumerate(msgs):
            t = stamps(len(msgs))[i]
            if isinstance(msg, bytes):
                out.write_raw(topic, msgtype, t, msg)
            else:
                out.write(topic, msgtype, t, msg)


def test_process_skips_undecodable_frames(pipe, tmp_path, caplog):
    rng = np.random.default_rng(2)
    good = []
    for i in range(5):
        fmt, payload = encode_compressed(rng.integers(0, 256, (H, W, 3), np.uint8), 'png')
        good.append(bm.compressed_msg(bm.header(stamps(5)[i], 'cam'), fmt, payload))
    msgs = list(good)
    msgs[1] = bm.compressed_msg(msgs[1].header, 'rgb8; jpeg compressed bgr8', b'not a jpeg')
    cdr = bm.typestore().serialize_cdr(good[3], COMPRESSED)
    msgs[3] = bytes(cdr[:20])    # truncated CDR: cannot even be deserialized
    bag = tmp_path / 'bad_frames.mcap'
    _write_bag(bag, '/cam/compressed', COMPRESSED, msgs)
    s = process_bag(ProcessConfig(bag, tmp_path / 'o.mcap', outputs=['labels'],
                                  progress=False), pipe=pipe)
    assert (s.frames_in, s.frames_out, s.skipped) == (5, 3, {'undecodable': 2})
    assert caplog.text.count('frame skipped') == 2 and 'could not be deserialized' in caplog.text
    with BagReader(tmp_path / 'o.mcap') as o:
        assert o.count(['/cam/compressed']) == 5      # the input is copied whole
        labels = [m.log_time for m in o.messages([f'{NS}/labels'])]
        diag = [m.decode() for m in o.messages(['/diagnostics'])][-1]
    assert labels == [stamps(5)[i] for i in (0, 2, 4)]
    kv = {v.key: v.value for v in diag.status[0].values}
    assert (kv['frames in'], kv['frames out'], kv['rejected undecodable']) == ('5', '3', '2')


def test_process_refuses_unusable_bags(raw_bag, model_dir, pipe, tmp_path, capsys):
    def refused(path, match, **kw):
        with pytest.raises(BagError, match=match) as e:
            process_bag(ProcessConfig(path, tmp_path / 'out.mcap', progress=False, **kw),
                        pipe=pipe)
        assert str(path) in str(e.value)
        assert not (tmp_path / 'out.mcap').exists() and not list(tmp_path.glob('.*partial'))

    refused(raw_bag, r'no topic /nope in the bag \(topics: /camera/image_raw', topic='/nope')
    strings = tmp_path / 'strings.mcap'
    _write_bag(strings, '/camera/image_raw', 'std_msgs/msg/String',
               [bm.typestore().types['std_msgs/msg/String'](data='hi')])
    refused(strings, 'holds std_msgs/msg/String, not sensor_msgs/msg/Image',
            topic='/camera/image_raw')
    refused(strings, 'no image topics')
    garbage = tmp_path / 'garbage.mcap'
    garbage.write_bytes(os.urandom(4096))
    refused(garbage, 'not an MCAP file')
    data = raw_bag.read_bytes()
    truncated = tmp_path / 'truncated.mcap'
    truncated.write_bytes(data[:len(data) // 2])
    refused(truncated, 'truncated')
    damaged = tmp_path / 'damaged.mcap'    # intact header and footer, broken records
    damaged.write_bytes(data[:64] + os.urandom(len(data) - 128) + data[-64:])
    refused(damaged, 'not a readable rosbag2 bag|corrupt data')
    sqlite = tmp_path / 'garbage.db3'
    sqlite.write_bytes(os.urandom(4096))
    refused(sqlite, 'not a readable rosbag2 bag')
    refused(tmp_path / 'missing.mcap', 'no such file or directory')
    refused(tmp_path, 'no metadata.yaml')
    (tmp_path / 'x.bag').write_bytes(b'')
    refused(tmp_path / 'x.bag', 'unknown bag file type')
    with pytest.raises(BagError, match='replace the input'):
        process_bag(ProcessConfig(raw_bag, raw_bag, progress=False), pipe=pipe)

    rc = cli(['process', str(truncated), str(tmp_path / 'out.mcap'), '--model',
              str(model_dir), '-q'])
    err = capsys.readouterr().err
    assert rc == 2 and f'error: {truncated}: MCAP file is truncated' in err
    assert cli(['process', str(raw_bag), str(tmp_path / 'o.mcap'), '--model',
                str(tmp_path / 'no_model')]) == 2
    assert 'not found' in capsys.readouterr().err
    with pytest.raises(ValueError, match='unknown output'):
        ProcessConfig(raw_bag, tmp_path / 'o.mcap', outputs=['labels', 'depth'])


def test_cli_process_prints_summary(raw_bag, model_dir, tmp_path, capsys):
    assert cli(['process', str(raw_bag), str(tmp_path / 'o.mcap'), '--model', str(model_dir),
                '--device', 'cpu', '--threshold', '0.9', '--outputs', 'labels', '-q',
                '--json']) == 0
    import json
    s = json.loads(capsys.readouterr().out)
    assert (s['frames_in'], s['frames_out']) == (N, N)
    assert set(s['messages']) == {'/camera/image_raw', f'{NS}/labels', '/diagnostics'}


def test_cli_process_input_scale(raw_bag, model_dir, pipe, frames, tmp_path):
    """--input-scale 0.5: labels at the camera's size, equal to the pipeline's at that scale,
    and the scale in the diagnostics."""
    out = tmp_path / 'half.mcap'
    assert cli(['process', str(raw_bag), str(out), '--model', str(model_dir), '--device',
                'cpu', '--outputs', 'labels', '-q', '--input-scale', '0.5']) == 0
    bag = read_all(out)
    pipe.input_scale = 0.5
    try:
        for (_, _, labels), img in zip(bag[f'{NS}/labels'], frames[1]):
            assert (labels.height, labels.width) == (H, W)
            np.testing.assert_array_equal(as_array(labels), pipe.infer(img).labels)
    finally:
        pipe.input_scale = 1.0
    kv = {v.key: v.value for v in bag['/diagnostics'][-1][2].status[0].values}
    assert kv['input scale'] == '0.5'
    assert cli(['process', str(raw_bag), str(tmp_path / 'x.mcap'), '--model', str(model_dir),
                '--input-scale', '0']) == 2


# ----------------------------------------------------------------------------------------- play

def _play_and_listen(bag, args, topics, n_expected, timeout=60.0, interrupt_after=None):
    """Run `dovit-bag play` in a subprocess; collect (monotonic receive time, message).
    `interrupt_after`: once that many messages arrived, two SIGINTs at once (as Ctrl-C on
    `ros2 launch` delivers them: the terminal's process group, then launch itself)."""
    from dovit_ros.ros.harness import fresh_domain_id
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    domain = fresh_domain_id()
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    got = {t: [] for t in topics}
    try:
        node = rclpy.create_node('test_bag_listener', context=ctx)
        for topic, cls in topics.items():
            node.create_subscription(cls, topic, lambda m, t=topic: got[t].append(
                (time.monotonic(), m)), QoSProfile(depth=100))
        clock = []
        node.create_subscription(Clock, '/clock', lambda m: clock.append(m),
                                 QoSProfile(depth=1000))
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        env = {**os.environ, 'ROS_DOMAIN_ID': str(domain)}
        proc = subprocess.Popen([sys.executable, '-m', 'dovit_ros.cli.bag', 'play', str(bag),
                                 '--wait-for-subscribers', '20', *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end and (
                proc.poll() is None or sum(map(len, got.values())) < n_expected):
            ex.spin_once(timeout_sec=0.005)
            if interrupt_after and sum(map(len, got.values())) >= interrupt_after:
                proc.send_signal(signal.SIGINT)
                proc.send_signal(signal.SIGINT)
                interrupt_after = None
            if proc.poll() is not None:   # a few stragglers at most
                end = min(end, time.monotonic() + 2.0)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        ex.shutdown()
        node.destroy_node()
    finally:
        ctx.try_shutdown()
    return got, clock, out


def test_play_publishes_with_recorded_timing(raw_bag, frames):
    from sensor_msgs.msg import Image
    got, clock, out = _play_and_listen(raw_bag, ['--clock', '50'],
                                       {'/camera/image_raw': Image}, N)
    msgs = got['/camera/image_raw']
    assert len(msgs) == N, out
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in msgs] == stamps(N)
    for (_, m), img in zip(msgs, frames[1]):
        assert (m.encoding, m.height, m.width, m.header.frame_id) == ('rgb8', H, W, 'camera')
        np.testing.assert_array_equal(np.asarray(m.data, np.uint8).reshape(H, W, 3), img)
    # 10 Hz as recorded: the player's own schedule (receipt gaps depend on the machine's load,
    # which can only delay a publication, never advance it)
    assert 'schedule: 0 early' in out, out
    span = float(re.search(r'first loop scheduled over ([0-9.]+) s', out).group(1))
    assert span == pytest.approx(0.1 * (N - 1), abs=1e-3), out
    ticks = [c.clock.sec * 10**9 + c.clock.nanosec for c in clock]
    assert len(ticks) >= N and ticks == sorted(ticks)
    assert stamps(N)[0] <= ticks[0] and ticks[-1] <= stamps(N)[-1]
    assert '/camera/image_raw: 6 messages' in out


def test_play_interrupted_twice_ends_with_its_summary(raw_bag):
    from sensor_msgs.msg import Image
    got, _, out = _play_and_listen(raw_bag, ['--loop'], {'/camera/image_raw': Image}, 2,
                                   interrupt_after=2)
    assert len(got['/camera/image_raw']) >= 2
    assert re.search(r'played \d+ loop\(s\)', out), out   # exit 0 is checked by the helper
    assert re.search(r'/camera/image_raw: \d+ messages', out), out


def test_play_decompress(tmp_path, frames):
    from sensor_msgs.msg import Image
    bag = tmp_path / 'c.mcap'
    make_bag(MakeConfig(frames[0], bag, compressed=True, jpeg_quality=95, limit=3, rate=20.0,
                        start_time=T0))
    got, clock, out = _play_and_listen(bag, ['--decompress', '--rate', '0.5'],
                                       {'/camera/image_raw': Image}, 3)
    msgs = got['/camera/image_raw']
    assert len(msgs) == 3 and not clock
    with BagReader(bag) as b:
        ref = [decode_any(m.decode()) for m in b.messages(['/camera/image_raw/compressed'])]
    for (_, m), img in zip(msgs, ref):
        assert m.encoding == 'rgb8'
        np.testing.assert_array_equal(np.asarray(m.data, np.uint8).reshape(H, W, 3), img)
    assert 'schedule: 0 early' in out, out   # 20 Hz at rate 0.5: 0.1 s apart at least
    span = float(re.search(r'first loop scheduled over ([0-9.]+) s', out).group(1))
    assert span == pytest.approx(0.2, abs=1e-3)


def test_play_refuses_before_starting_ros(raw_bag, tmp_path, capsys):
    assert cli(['play', str(raw_bag), '--topics', '/nope']) == 2
    assert 'no topic /nope' in capsys.readouterr().err
    assert cli(['play', str(tmp_path / 'missing.mcap')]) == 2


def test_demo_clip():
    clip = ROOT / 'config' / 'demo' / 'camvid_0016E5_30f.mcap'
    assert clip.stat().st_size <= 3_000_000
    with BagReader(clip) as bag:
        assert bag.image_topic() == ('/camera/image_raw/compressed', COMPRESSED)
        ts = [m.log_time for m in bag.messages(['/camera/image_raw/compressed'])]
        assert len(ts) == 30 and set(np.diff(ts) // 1000) <= {66666, 66667}
        first = next(bag.messages(['/camera/image_raw/compressed'])).decode()
    assert decode_any(first).shape == (360, 480, 3)


def test_package_imports_neither_ros_nor_torch():
    code = ('import sys, dovit_ros.bag, dovit_ros.bag.play; '
            'bad = [m for m in sys.modules if m.startswith(("rclpy", "torch")) '
            'or m.endswith("_msgs")]; sys.exit(str(bad) if bad else 0)')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
