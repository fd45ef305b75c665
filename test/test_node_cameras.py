"""segment_node serving three cameras over real DDS, one of them silent: a node process started
with `-p cameras:=[front, left, right]`, and beside it a single-camera node process that
segments the same frames for comparison; one rclpy client in this process feeds and reads both
(two client participants in one process lost a node's outputs for 60 s in 2 of ~12 runs), on a
ROS_DOMAIN_ID of this run's own.
"""
import signal

import numpy as np
import pytest

from dovit_ros.ros.harness import (Client, NodeProcess, diag_values, fresh_domain_id, image_msg,
                                   make_test_model, ros_env)
from dovit_ros.ros.node import FRAME_STATS, NODE_NAME

DOMAIN = fresh_domain_id()
CAMERAS = ('front', 'left', 'right')   # right: no publisher at all
INPUTS = {'front': '/front/image', 'left': '/rig/left'}   # left remapped
SIZES = {'front': (96, 128), 'left': (50, 70)}   # 50x70: not a patch multiple
SINGLE_NS = '/single'
COMMON = ['-p', 'threshold:=0.5', '-p', 'qos_reliability:=reliable']


@pytest.fixture(scope='module')
def nodes(tmp_path_factory):
    """(multi-camera node, single-camera node), started side by side."""
    model = make_test_model(tmp_path_factory.mktemp('model') / 'tiny')
    env = ros_env(DOMAIN)
    multi = NodeProcess(['-p', f'model:={model}', '-p', f'cameras:=[{", ".join(CAMERAS)}]',
                         '-r', f'left/image:={INPUTS["left"]}', *COMMON], env)
    single = NodeProcess(['-p', f'model:={model}', '-r', f'__ns:={SINGLE_NS}', *COMMON], env)
    try:
        for proc in (multi, single):
            assert proc.wait_for('ready', 180), proc.output
        yield multi, single
    finally:
        multi.stop(signal.SIGKILL, timeout=0)
        single.stop(signal.SIGKILL, timeout=0)


@pytest.fixture(scope='module')
def client(nodes):
    rig = Client(DOMAIN, name='rig')
    yield rig
    rig.close()


def frame(name: str, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*SIZES[name], 3), dtype=np.uint8)


def labels_of(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width]


def statuses_where(client, predicate, timeout=60.0) -> dict[str, dict] | None:
    """Name suffix -> key/values of the first /diagnostics array from now on that has every
    camera's status and satisfies `predicate` (None on timeout)."""
    want = {f'{NODE_NAME}: camera {c}' for c in CAMERAS} | {f'{NODE_NAME}: compute budget'}

    def match(arr):
        if not want <= {s.name for s in arr.status}:
            return None
        kv = {s.name.split(': ', 1)[1]: {**diag_values(s), '_message': s.message}
              for s in arr.status}
        return kv if predicate(kv) else None
    return client.first_diagnostics(match, timeout)


def batched_frames(kv: dict) -> int:
    """Frames run in the batches the node counted (`size: count, ...`)."""
    seen = kv['compute budget']['batch sizes seen']
    pairs = [p.split(': ') for p in seen.split(', ')] if ':' in seen else []
    return sum(int(size) * int(count) for size, count in pairs)


def frames_out(kv: dict, camera: str) -> int:
    return int(kv[f'camera {camera}']['frames out'])


def test_three_cameras_one_silent(nodes, client):
    multi_proc, single_proc = nodes
    rig = client
    single_labels = f'{SINGLE_NS}/{NODE_NAME}/labels'
    names = [f'{c}/{o}' for c in CAMERAS for o in ('labels', FRAME_STATS)]
    rig.subscribe(names)
    rig.subscribe([single_labels])
    pubs = {c: rig.image_publisher(t, 'reliable') for c, t in INPUTS.items()}
    # until the node has discovered this client's subscriptions on both live cameras
    for i, (cam, pub) in enumerate(pubs.items()):
        img = frame(cam, 100 + i)
        assert rig.send_until_output(pub, lambda s: image_msg(img, s), (1 + i, 0),
                                     [f'{cam}/labels', f'{cam}/{FRAME_STATS}']), (
            rig.link_report(pub) + '\n' + multi_proc.output[-3000:])

    sent = {c: image_msg(frame(c, i), (20, i), frame_id=f'{c}_optical')
            for i, c in enumerate(INPUTS)}
    for cam, msg in sent.items():   # back to back: they may run as one batch, or not
        pubs[cam].publish(msg)
    stamps = {c: (m.header.stamp.sec, m.header.stamp.nanosec) for c, m in sent.items()}
    assert rig.spin_until(lambda: all(rig.got(stamps[c], [f'{c}/labels', f'{c}/{FRAME_STATS}'])
                                      for c in INPUTS), 90.0), multi_proc.output[-3000:]
    for cam, msg in sent.items():
        out = rig.outputs[f'{cam}/labels'][stamps[cam]]
        stats = rig.outputs[f'{cam}/{FRAME_STATS}'][stamps[cam]]
        assert out.header == msg.header and stats.header == msg.header, cam
        assert (out.height, out.width) == SIZES[cam]
        kv = diag_values(stats.status[0])
        assert kv['camera'] == cam and kv['batch size'] in ('1', '2')
    assert not rig.outputs['right/labels'] and not rig.outputs[f'right/{FRAME_STATS}']

    # topics: one subscription per camera on its (remapped) input, outputs under ~/<camera>/
    for topic in ('/front/image', '/rig/left', '/right/image'):   # right: subscribed, silent
        assert rig.node.get_subscriptions_info_by_topic(topic), topic
    assert rig.node.get_publishers_info_by_topic(f'/{NODE_NAME}/right/labels')
    assert not rig.node.get_publishers_info_by_topic(f'/{NODE_NAME}/labels')

    # A report written while a batch is being published may count its batch but not yet all
    # its frames: wait for one from after the last batch.
    diag = statuses_where(rig, lambda kv: frames_out(kv, 'front') >= 2 and frames_out(
        kv, 'left') >= 2 and batched_frames(kv) == sum(frames_out(kv, c) for c in CAMERAS))
    assert diag is not None, (rig.last_diagnostics(), multi_proc.output[-3000:])
    assert diag['compute budget']['cameras'] == 'front, left, right'
    assert float(diag['compute budget']['batch size mean']) >= 1.0
    assert diag['camera left']['input topic'] == '/rig/left'
    assert diag['camera right']['frames in'] == '0' and frames_out(diag, 'right') == 0
    assert diag['camera right']['_message'] == 'waiting for images'

    # each camera's labels equal a single-camera node's on the same frame
    single_pub = rig.image_publisher(f'{SINGLE_NS}/image', 'reliable')
    warm = frame('front', 7)
    assert rig.send_until_output(single_pub, lambda s: image_msg(warm, s), (1, 0),
                                 [single_labels]), (
        rig.link_report(single_pub, [single_labels]) + '\n' + single_proc.output[-3000:])
    for cam, msg in sent.items():
        single_pub.publish(msg)
        assert rig.spin_until(lambda: rig.got(stamps[cam], [single_labels]), 90.0)
        alone = rig.outputs[single_labels][stamps[cam]]
        assert np.array_equal(labels_of(alone), labels_of(rig.outputs[f'{cam}/labels'][
            stamps[cam]])), cam

    assert multi_proc.stop(signal.SIGINT, timeout=10.0) == 0, multi_proc.output[-2000:]
