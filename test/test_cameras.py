"""Several cameras, one node (the `cameras` parameter), without a second process: parameter
checks, batch sizes and the budget's batch cost as plain Python; then the node in this process
on a context of its own (worker stopped, batches driven by hand) for topic names, per-camera
slots, and a batch whose outputs each equal single-frame inference."""
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image

from dovit_ros.model import ExitConfig
from dovit_ros.ros.harness import diag_values, fresh_domain_id, image_msg, make_test_model
from dovit_ros.ros.params import check
from dovit_ros.runtime.batch import BatchSizes, observe_batch
from dovit_ros.runtime.budget import BudgetChooser, BudgetConfig

pytestmark = pytest.mark.usefixtures('one_thread')
NODE = '/dovit_segmenter'


@pytest.mark.parametrize('value', [[], None, ['front'], ['front', 'left', 'rear/right_2']])
def test_cameras_parameter_accepts_distinct_relative_names(value):
    assert check('cameras', value) is None   # None: `cameras:=[]` arrives unset from rcl


@pytest.mark.parametrize('value,why', [
    (['front', 'front'], 'twice'), (['/front'], 'does not match'), (['front', ''], 'does not '),
    (['2nd'], 'does not match'), (['~/left'], 'does not match'), (['a//b'], 'does not match'),
    ('front', 'expected a list of strings'), ([1, 2], 'expected a list of strings')])
def test_cameras_parameter_refuses_with_a_reason(value, why):
    assert why in check('cameras', value)


def test_cameras_descriptor_is_a_read_only_string_array():
    from rcl_interfaces.msg import ParameterType

    from dovit_ros.ros.params import BY_NAME
    from dovit_ros.ros.startup import descriptor
    d = descriptor(BY_NAME['cameras'])
    assert d.type == ParameterType.PARAMETER_STRING_ARRAY and d.read_only
    # an empty default would otherwise fix the type to a byte array and refuse [front, left]
    assert d.dynamic_typing and 'distinct relative names' in d.additional_constraints


def test_batch_wait_ms_range():
    assert check('batch_wait_ms', 0.0) is None and check('batch_wait_ms', 50) is None
    assert 'outside' in check('batch_wait_ms', -1.0)


def test_batch_sizes_histogram_and_mean():
    sizes = BatchSizes()
    assert sizes.report() == {'batches': '0', 'batch size mean': '0.00',
                              'batch sizes seen': 'none yet'}
    for n in (3, 1, 3):
        sizes.add(n)
    assert sizes.report() == {'batches': '3', 'batch size mean': '2.33',
                              'batch sizes seen': '1: 1, 3: 2'}
    with pytest.raises(ValueError):
        sizes.add(0)


def test_budget_is_told_one_cost_per_batch():
    """GFLOPs of all the batch's frames together, latency of its slowest frame; a batch of one
    is exactly the single-camera frame cost."""
    seen = []

    class Recorder:
        def observe(self, result, frame_ms):
            seen.append((result.gflops, frame_ms))
    results = [SimpleNamespace(gflops=1.5), SimpleNamespace(gflops=2.25)]
    observe_batch(Recorder(), results, [10.0, 30.0])
    observe_batch(Recorder(), results[:1], [12.0])
    assert seen == [(3.75, 30.0), (1.5, 12.0)]
    with pytest.raises(ValueError):
        observe_batch(Recorder(), results, [10.0])
    gflops = BudgetChooser(ExitConfig('threshold', 0.95), BudgetConfig(target=5.0))
    latency = BudgetChooser(ExitConfig('threshold', 0.95),
                            BudgetConfig(target=5.0, kind='latency_ms'))
    for chooser in (gflops, latency):
        observe_batch(chooser, results, [10.0, 30.0])
    assert list(gflops.ctrl.costs) == [3.75] and list(latency.ctrl.costs) == [30.0]


# ------------------------------------------------------------------------ the node in-process
@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp('m') / 'tiny')


def start_node(model_dir, *ros_args):
    from dovit_ros.ros.segmenter import SegmentNode
    ctx = Context()
    rclpy.init(context=ctx, domain_id=fresh_domain_id(),
               args=['--ros-args', '-p', f'model:={model_dir}', *ros_args])
    return SegmentNode(context=ctx), ctx


@pytest.fixture(scope='module')
def rig(model_dir):
    """Three cameras, left remapped, right's camera_info remapped; the worker is stopped so
    that each test runs batches by hand (`_process`)."""
    node, ctx = start_node(model_dir, '-p', 'cameras:=[front, left, right]',
                           '-p', 'qos_reliability:=reliable', '-p', 'threshold:=0.5',
                           '-r', 'left/image:=/rig/left_raw',
                           '-r', 'right/camera_info:=/rig/right_info')
    assert node.stop()
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_each_camera_has_its_own_remappable_topics(rig):
    front, left, right = rig.cameras
    assert [c.name for c in rig.cameras] == ['front', 'left', 'right']
    assert [c.input_topic for c in rig.cameras] == ['/front/image', '/rig/left_raw',
                                                    '/right/image']
    assert [c.camera_info.topic for c in rig.cameras] == ['/front/camera_info',
                                                          '/rig/camera_info', '/rig/right_info']
    assert front.image_pubs['labels'].topic_name == f'{NODE}/front/labels'
    assert left.stats_pub.topic_name == f'{NODE}/left/frame_stats'
    assert right.jpeg_pub.topic_name == f'{NODE}/right/overlay/compressed'
    assert right.camera_info._pub.topic_name == f'{NODE}/right/camera_info'
    assert rig.describe_parameter('cameras').read_only
    [res] = rig.set_parameters([Parameter('cameras', value=['front'])])
    assert not res.successful
    assert rig.get_parameter('cameras').value == ['front', 'left', 'right']
    # batch_wait_ms is dynamic: the worker reads it before taking each batch
    [ok] = rig.set_parameters([Parameter('batch_wait_ms', value=25.0)])
    [bad] = rig.set_parameters([Parameter('batch_wait_ms', value=-1.0)])
    assert ok.successful and not bad.successful and rig.config().batch_wait_ms == 25.0
    rig.set_parameters([Parameter('batch_wait_ms', value=0.0)])


def test_compressed_input_per_camera(model_dir):
    node, ctx = start_node(model_dir, '-p', 'cameras:=[a, b]', '-p', 'image_transport:=compressed',
                           '-p', 'qos_reliability:=best_effort', '-r', 'a/image:=/x/img',
                           '-r', 'b/image/compressed:=/y/jpeg')
    try:
        assert [c.input_topic for c in node.cameras] == ['/x/img/compressed', '/y/jpeg']
        assert [c.camera_info.topic for c in node.cameras] == ['/x/camera_info',
                                                               '/b/camera_info']
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_the_example_parameters_file_starts_three_cameras(model_dir):
    path = Path(__file__).resolve().parents[1] / 'config' / 'cameras.yaml'
    values = yaml.safe_load(path.read_text())['/**']['ros__parameters']
    assert all(check(name, value) is None for name, value in values.items())
    node, ctx = start_node(model_dir, '--params-file', str(path), '-r', '__ns:=/rig',
                           '-p', 'qos_reliability:=best_effort')   # no wait for publishers
    try:
        assert [c.input_topic for c in node.cameras] == [
            '/rig/front/image', '/rig/left/image', '/rig/right/image']
        assert node.cameras[0].image_pubs['labels'].topic_name == \
            '/rig/dovit_segmenter/front/labels'
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_one_slot_per_camera_drops_counted_per_camera(rig):
    front, left, right = rig.cameras
    for i in range(3):
        front.on_image(bytes([i]))
    left.on_image(b'L')
    slots = rig.slots._slots   # closed by stop(): the frames stay where the callbacks put them
    assert slots['front'][0] == bytes([2]) and slots['left'][0] == b'L'
    assert slots['right'] is None
    assert (front.stats.dropped, left.stats.dropped, right.stats.dropped) == (2, 0, 0)
    for name in slots:
        slots[name] = None


class Listener:
    """A node on the rig's context subscribing to some of its outputs."""

    def __init__(self, rig, topics):
        self.node = rclpy.create_node('listener', context=rig.context)
        self.executor = SingleThreadedExecutor(context=rig.context)
        self.executor.add_node(self.node)
        self.got = {t: [] for t in topics}
        for t in topics:
            kind = DiagnosticArray if t.endswith('frame_stats') else Image
            self.node.create_subscription(kind, f'{NODE}/{t}', self.got[t].append,
                                          QoSProfile(depth=5))

    def spin_until(self, done, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        return done()


def mono8(msg: Image) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width]


def matched(pubs, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() for p in pubs):
            return True
        time.sleep(0.02)
    return False


def test_a_batch_of_cameras_equals_single_frame_inference(rig):
    """front and left subscribed, right's outputs not: right's frame is idle and stays out of
    the batch; front (96x128) and left (50x70) run as one batch of 2, each with its own
    header, labels and exit stages equal to running its frame alone."""
    front, left, right = rig.cameras
    topics = ['front/labels', 'front/exit_stage', 'front/frame_stats',
              'left/labels', 'left/exit_stage', 'left/frame_stats']
    listener = Listener(rig, topics)
    try:
        assert matched([front.image_pubs['labels'], front.stats_pub,
                        left.image_pubs['exit_stage']])
        rng = np.random.default_rng(3)
        images = {'front': rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
                  'left': rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
                  'right': rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)}
        msgs = {n: image_msg(im, (40 + i, 7), frame_id=f'{n}_optical')
                for i, (n, im) in enumerate(images.items())}
        t = time.monotonic()
        rig._process({n: (serialize_message(m), t) for n, m in msgs.items()})
        assert listener.spin_until(lambda: all(listener.got[x] for x in topics))
        assert right.idle == 1 and rig.batch_sizes.counts == {2: 1}
        exits = rig.config().exits
        for name in ('front', 'left'):
            alone = rig.pipe.infer(images[name], exits)
            [labels], [stages] = listener.got[f'{name}/labels'], listener.got[f'{name}/exit_stage']
            [stats] = listener.got[f'{name}/frame_stats']
            for m in (labels, stages, stats):
                assert m.header == msgs[name].header, name
            assert np.array_equal(mono8(labels), alone.labels), name
            assert np.array_equal(mono8(stages), alone.exit_stage()), name
            kv = diag_values(stats.status[0])
            assert (kv['camera'], kv['batch size']) == (name, '2')
            assert kv['tokens per stage'] == ', '.join(map(str, alone.tokens_per_stage))
        assert [c.stats.frames_out for c in rig.cameras] == [1, 1, 0]

        statuses = rig._camera_statuses(rig.config(), {'model': 'm'})
        assert [s.name for s in statuses] == [f'dovit_segmenter: {n}' for n in (
            'compute budget', 'camera front', 'camera left', 'camera right')]
        node_kv = diag_values(statuses[0])
        assert node_kv['cameras'] == 'front, left, right' and node_kv['model'] == 'm'
        assert node_kv['batch sizes seen'] == '2: 1' and node_kv['batch size mean'] == '2.00'
        kv = {s.name.rsplit(' ', 1)[-1]: diag_values(s) for s in statuses[1:]}
        assert kv['front']['frames out'] == '1' and kv['left']['input topic'] == '/rig/left_raw'
        assert kv['right']['frames out'] == '0'
        assert kv['right']['frames idle (no subscribers)'] == '1'
        assert statuses[3].message == 'no subscriber to any output: frames are not segmented'
    finally:
        listener.node.destroy_node()


def test_the_budget_steers_xi_on_the_batch_cost(rig):
    front, left, _ = rig.cameras
    listener = Listener(rig, ['front/frame_stats', 'left/frame_stats'])
    try:
        assert matched([front.stats_pub, left.stats_pub])
        assert all(r.successful for r in rig.set_parameters(
            [Parameter('threshold_min', value=0.3), Parameter('target_gflops', value=1e-6)]))
        rng = np.random.default_rng(5)
        images = {n: rng.integers(0, 256, (96, 128, 3), np.uint8) for n in ('front', 'left')}
        rig._process({n: (serialize_message(image_msg(im, (60, i))), time.monotonic())
                      for i, (n, im) in enumerate(images.items())})
        assert listener.spin_until(lambda: all(listener.got.values()))
        used = [diag_values(listener.got[f'{n}/frame_stats'][0].status[0])['threshold']
                for n in images]
        assert used == ['0.5000', '0.5000']   # the budget starts from the configured xi
        exits = rig.config().exits
        [cost] = rig._chooser.ctrl.costs
        assert cost == pytest.approx(sum(rig.pipe.infer(im, exits).gflops
                                         for im in images.values()), rel=1e-9)
        assert rig._chooser.ctrl.threshold < 0.5   # over budget: xi lowered for every camera
    finally:
        rig.set_parameters([Parameter('target_gflops', value=0.0),
                            Parameter('threshold_min', value=0.9)])
        listener.node.destroy_node()
