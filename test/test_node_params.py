"""The node's parameter table, QoS choice, frame buffer and config snapshots, without a second
process: the table and QoS logic are plain Python, the node runs in-process on its own context."""
import math
import time

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from dovit_ros.model import ExitConfig
from dovit_ros.ros import qos
from dovit_ros.ros.harness import fresh_domain_id, make_test_model
from dovit_ros.ros.params import (BY_NAME, DYNAMIC, FROM_MODEL, PARAMETERS, FrameConfig, check,
                                  model_defaults, resolve_aliases)
from dovit_ros.runtime.viz import FULL_DEPTH, color_stages, stage_lut

REL, BE = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT


def test_table_is_complete_and_defaults_are_valid():
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names))
    assert {'model', 'backend', 'device', 'precision', 'threads', 'input_scale',
            'image_transport',
            'input_transport', 'qos_reliability', 'qos_discovery_s', 'cameras', 'threshold',
            'policy', 'topk_per_class', 'overlay_alpha', 'overlay_jpeg_quality',
            'target_latency_ms', 'target_gflops', 'threshold_min', 'threshold_max',
            'batch_wait_ms'} == set(names)
    assert set(DYNAMIC) == {'threshold', 'policy', 'topk_per_class', 'overlay_alpha',
                            'overlay_jpeg_quality', 'target_latency_ms', 'target_gflops',
                            'threshold_min', 'threshold_max', 'batch_wait_ms'}
    for p in PARAMETERS:
        assert p.description
        if p.default is not FROM_MODEL:
            assert p.check(p.default) is None, p.name


@pytest.mark.parametrize('name,value', [
    ('threshold', 0.0), ('threshold', 1.0), ('threshold', 1), ('policy', 'dtop'),
    ('topk_per_class', 0), ('device', 'cuda:1'), ('device', 'auto'),
    ('qos_reliability', 'best_effort'), ('overlay_alpha', 0.3), ('model', '/some/dir'),
    ('input_scale', 0.25), ('input_scale', 2)])
def test_valid_values(name, value):
    assert check(name, value) is None


@pytest.mark.parametrize('name,value,why', [
    ('threshold', 1.01, 'outside'), ('threshold', -0.1, 'outside'),
    ('threshold', math.nan, 'finite'), ('threshold', 'high', 'expected float'),
    ('threshold', True, 'expected float'), ('policy', 'fast', 'not one of'),
    ('topk_per_class', -1, 'outside'), ('topk_per_class', 1.5, 'expected int'),
    ('device', 'cuda:x', 'does not match'), ('device', 'gpu', 'does not match'),
    ('backend', 'onnx', 'not one of'), ('image_transport', 'theora', 'not one of'),
    ('input_transport', 'theora', 'does not match'), ('overlay_jpeg_quality', 0, 'outside'),
    ('model', '  ', 'empty'), ('nonexistent', 1, 'unknown'), ('input_scale', 0.2, 'outside'),
    ('input_scale', 0, 'outside'), ('input_scale', math.inf, 'finite')])
def test_invalid_values_have_a_reason(name, value, why):
    assert why in check(name, value)


def test_deprecated_alias_input_transport():
    # not given: nothing changes, no warning
    assert resolve_aliases({'image_transport': 'raw', 'input_transport': ''}) == \
        ({'image_transport': 'raw'}, [])
    # given alone: taken, with a warning naming the new name
    v, warnings = resolve_aliases({'image_transport': 'raw', 'input_transport': 'compressed'})
    assert v == {'image_transport': 'compressed'}
    assert warnings == ["parameter input_transport is deprecated: use image_transport "
                        "(taking image_transport='compressed')"]
    # both given, agreeing: fine; disagreeing: refused with both names
    assert resolve_aliases({'image_transport': 'compressed',
                            'input_transport': 'compressed'})[0]['image_transport'] == 'compressed'
    with pytest.raises(ValueError, match='input_transport.*image_transport'):
        resolve_aliases({'image_transport': 'compressed', 'input_transport': 'raw'})


def test_frame_config_jpeg_quality():
    a = FrameConfig(exits=ExitConfig(policy='threshold', threshold=0.9))
    assert a.overlay_jpeg_quality == 80
    b = a.updated({'overlay_jpeg_quality': 35})
    assert b.overlay_jpeg_quality == 35 and type(b.overlay_jpeg_quality) is int
    with pytest.raises(ValueError, match='outside'):
        a.updated({'overlay_jpeg_quality': 101})


def test_frame_config_is_replaced_not_mutated():
    a = FrameConfig(exits=ExitConfig(policy='threshold', threshold=(0.8, 0.9, 0.95)))
    b = a.updated({'policy': 'dtop', 'topk_per_class': 3, 'overlay_alpha': 0.2})
    assert a.exits.policy == 'threshold' and a.overlay_alpha == 0.5
    assert (b.exits.policy, b.exits.topk_per_class, b.overlay_alpha) == ('dtop', 3, 0.2)
    assert b.exits.threshold == (0.8, 0.9, 0.95) and b.threshold == 0.95  # kept per point
    c = b.updated({'threshold': 0.5})
    assert c.exits.threshold == 0.5 and c.exits.policy == 'dtop'
    with pytest.raises(ValueError, match='threshold'):
        a.updated({'threshold': 2.0})
    with pytest.raises(ValueError, match='not a dynamic'):
        a.updated({'model': 'x'})
    with pytest.raises(Exception):
        a.overlay_alpha = 0.1   # frozen


def test_model_defaults():
    assert model_defaults(ExitConfig('dtop', (0.7, 0.9, 0.8), 4)) == \
        {'threshold': 0.9, 'policy': 'dtop', 'topk_per_class': 4}
    assert model_defaults(ExitConfig('threshold', 1.5, 0))['threshold'] == 1.0


@pytest.mark.parametrize('setting,pubs,want', [
    ('auto', [], BE), ('auto', [REL], REL), ('auto', [REL, REL], REL), ('auto', [BE], BE),
    ('auto', [REL, BE], BE), ('reliable', [BE], REL), ('best_effort', [REL], BE)])
def test_input_reliability(setting, pubs, want):
    got, why = qos.choose_reliability(setting, pubs)
    assert got == want and why


def test_stage_colours():
    lut = stage_lut(3)
    assert tuple(lut[0]) == FULL_DEPTH
    assert len({tuple(c) for c in lut[:4]}) == 4
    img = color_stages(np.array([[0, 1], [2, 3]], np.uint8), 3)
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8


@pytest.mark.parametrize('shape', [(360, 480), (1, 1), (7, 300)])
def test_apply_lut_equals_indexing(shape):
    """The OpenCV table lookup behind every colour output gives exactly NumPy's indexing, for
    every byte value; other dtypes take the indexing path."""
    from dovit_ros.runtime.pipeline import colorize
    from dovit_ros.runtime.viz import apply_lut
    rng = np.random.default_rng(shape[0])
    lut = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    v = rng.integers(0, 256, shape, dtype=np.uint8)
    v.flat[:min(v.size, 256)] = np.arange(min(v.size, 256))
    np.testing.assert_array_equal(apply_lut(v, lut), lut[v])
    np.testing.assert_array_equal(apply_lut(v.astype(np.int64), lut), lut[v])
    palette = rng.integers(0, 256, (11, 3), dtype=np.uint8)
    want = np.zeros(shape + (3,), np.uint8)
    want[v < 11] = palette[v[v < 11]]   # ids outside the palette are black
    np.testing.assert_array_equal(colorize(v, palette), want)


def test_output_names_are_defined_once_and_the_entry_point_stays_light():
    """The node's entry point takes its names from runtime/outputs.py, and importing it pulls
    in neither torch nor rclpy (they load after the signal handlers are in place)."""
    import subprocess
    import sys
    from dovit_ros.ros import node
    from dovit_ros.runtime import outputs
    assert node.IMAGE_OUTPUTS is outputs.IMAGE_OUTPUTS and node.FRAME_STATS == outputs.FRAME_STATS
    assert set(outputs.IMAGE_OUTPUTS) == set(outputs.OUTPUTS)
    code = ('import sys, dovit_ros.ros.node; '
            'print(sorted(m for m in ("torch", "rclpy") if m in sys.modules))')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == '[]', r.stdout + r.stderr


def test_entry_point_module_is_light():
    """segment_node's module installs its signal handlers before torch and rclpy load."""
    import subprocess
    import sys
    code = ('import sys, dovit_ros.ros.node; '
            'print(sorted(m for m in ("torch", "rclpy") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.stdout.strip() == '[]', out.stderr


def test_descriptors_carry_ranges_and_read_only():
    from dovit_ros.ros.startup import descriptor
    d = descriptor(BY_NAME['threshold'])
    assert not d.read_only and d.floating_point_range[0].to_value == 1.0
    assert descriptor(BY_NAME['topk_per_class']).integer_range[0].from_value == 0
    m = descriptor(BY_NAME['model'])
    assert m.read_only and m.description
    assert 'dtop' in descriptor(BY_NAME['policy']).additional_constraints


@pytest.fixture(scope='module')
def inproc_node(tmp_path_factory):
    """The node in this process, on a private context (no spinning: callbacks called here)."""
    from dovit_ros.ros.segmenter import SegmentNode
    model = make_test_model(tmp_path_factory.mktemp('m') / 'tiny')
    ctx = Context()
    rclpy.init(context=ctx, domain_id=fresh_domain_id(),
               args=['--ros-args', '-p', f'model:={model}', '-p', 'overlay_alpha:=0.25',
                     '-p', 'qos_reliability:=best_effort', '-p', 'input_scale:=0.5'])
    node = SegmentNode(context=ctx)
    try:
        yield node
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_declared_parameters_and_overrides(inproc_node):
    n = inproc_node
    for p in PARAMETERS:
        assert n.has_parameter(p.name)
        assert n.describe_parameter(p.name).read_only == p.read_only
    assert n.get_parameter('overlay_alpha').value == 0.25 and n.config().overlay_alpha == 0.25
    assert n.get_parameter('threshold').value == 0.9   # the test model's model.yaml
    assert n.get_parameter('input_scale').value == 0.5 and n.pipe.input_scale == 0.5


def test_set_parameters_validated_and_snapshotted(inproc_node):
    n = inproc_node
    before = n.config()
    [bad] = n.set_parameters([Parameter('policy', value='fast')])
    assert not bad.successful and 'not one of' in bad.reason
    [ro] = n.set_parameters([Parameter('model', value='other')])
    assert not ro.successful and ro.reason
    assert n.config() is before   # nothing applied
    [ok] = n.set_parameters([Parameter('threshold', value=0.3)])
    assert ok.successful
    after = n.config()
    assert after is not before and after.exits.threshold == 0.3
    assert before.exits.threshold == 0.9   # a frame holding the old snapshot keeps it


def test_one_slot_buffer_keeps_the_newest_and_counts_drops(inproc_node):
    n = inproc_node
    assert n.stop()   # no worker: frames stay in the slot
    [cam] = n.cameras   # `cameras` empty: the one camera on `image`
    for i in range(3):
        cam.on_image(bytes([i]))
        time.sleep(0.001)
    assert n.slots._slots[cam.name][0] == bytes([2])
    assert cam.stats.frames_in == 3 and cam.stats.dropped == 2


def test_exit_stage_map_has_the_input_size_for_any_size(tmp_path):
    """A 50x70 image is a 4x5 grid of 16-pixel tokens; the map must be 50x70 and patch-aligned."""
    from dovit_ros.runtime.pipeline import Pipeline
    pipe = Pipeline.from_path(str(make_test_model(tmp_path / 'm')))
    r = pipe.infer(np.zeros((50, 70, 3), np.uint8))
    stages = r.exit_stage()
    assert stages.shape == (50, 70) and r.exit_grid.shape == (4, 5)
    assert np.array_equal(stages[::16, ::16], r.exit_grid)


def test_input_scale_segments_the_resized_frame_at_the_frame_size(tmp_path):
    """At scale s the result is the model's on the resized frame, its maps resized back: labels
    by nearest neighbour, the exit map token-aligned in the model's pixels."""
    import cv2

    from dovit_ros.runtime.input_scale import scale_image
    from dovit_ros.runtime.pipeline import Pipeline
    pipe = Pipeline.from_path(str(make_test_model(tmp_path / 'm')), input_scale=0.5)
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
    r = pipe.infer(img, ExitConfig('threshold', 0.5))
    pipe.input_scale = 1.0
    small = scale_image(img, 0.5)                          # 25 x 35: a 2 x 3 token grid
    ref = pipe.infer(small, ExitConfig('threshold', 0.5))
    assert small.shape[:2] == (25, 35) and r.seen_hw == (25, 35)
    assert r.labels.shape == r.confidence.shape == (50, 70)
    assert np.array_equal(r.labels, cv2.resize(ref.labels, (70, 50),
                                               interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(r.exit_grid, ref.exit_grid) and r.gflops == ref.gflops
    stages = r.exit_stage()
    assert stages.shape == (50, 70)
    # frame pixel y sits at model pixel (y + 0.5) / 2: rows 0-31 in token row 0, 32-49 in row 1
    assert np.array_equal(stages[31], np.repeat(r.exit_grid[0], [32, 32, 6]))
    assert np.array_equal(stages[32], np.repeat(r.exit_grid[1], [32, 32, 6]))
    with pytest.raises(ValueError, match=r'input scale must be a number in \[0.25, 2\]'):
        pipe.input_scale = 0.1


def test_scale_image_keeps_the_frame_when_the_size_does_not_change():
    """No copy and no resampling when the scaled size rounds to the frame's own."""
    from dovit_ros.runtime.input_scale import scale_image
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), np.uint8)
    assert scale_image(img, 1.0) is img
    assert scale_image(img, 1.005) is img                 # 50.25 x 70.35 rounds to 50 x 70
    assert scale_image(img, 1.02).shape == (51, 71, 3)


def test_budget_parameters_are_validated_together():
    cfg = FrameConfig(exits=ExitConfig('threshold', 0.9, 5))
    on = cfg.updated({'target_gflops': 3.0})
    assert on.budget().kind == 'gflops' and on.budget().target == 3.0
    with pytest.raises(ValueError, match='cannot both be set.*target_gflops to 0'):
        on.updated({'target_latency_ms': 50.0})
    with pytest.raises(ValueError, match=r'steered by the compute budget \(target_gflops=3\)'):
        on.updated({'threshold': 0.95})
    # switching the target off and choosing xi by hand in one (atomic) update is fine
    off = on.updated({'target_gflops': 0.0, 'threshold': 0.95})
    assert off.budget() is None and off.exits.threshold == 0.95
    with pytest.raises(ValueError, match='threshold_min 0.99 is above threshold_max 0.95'):
        cfg.updated({'threshold_min': 0.99, 'threshold_max': 0.95})
    lat = cfg.updated({'target_latency_ms': 80.0, 'threshold_min': 0.5})
    assert (lat.budget().kind, lat.budget().threshold_min) == ('latency_ms', 0.5)


def test_node_steers_xi_with_a_budget_and_keeps_it_across_target_changes(inproc_node):
    n = inproc_node
    cfg = n.config().updated({'target_gflops': 1e-9, 'threshold_min': 0.2})
    exits = n._frame_exits(cfg)
    assert exits.threshold == pytest.approx(n.config().threshold)   # starts at the user's xi

    class Cost:   # a frame result as the chooser sees it
        gflops = 1.0
    for _ in range(5):
        n._chooser.observe(Cost, 10.0)
    lowered = n._frame_exits(cfg).threshold
    assert lowered < exits.threshold
    # a new target keeps the xi reached so far as the starting point
    cfg2 = cfg.updated({'target_gflops': 2e-9})
    assert n._frame_exits(cfg2).threshold == pytest.approx(lowered)
    # target off: the configured exits again, controller dropped
    assert n._frame_exits(cfg2.updated({'target_gflops': 0.0})) == cfg2.exits
    assert n._chooser is None


def test_exit_if_stuck_ends_a_hung_teardown_and_only_then():
    """A teardown stuck past its time ends the process with the node's code (the Fast DDS TCP
    deadlock); a teardown that finishes cancels it."""
    import threading

    from dovit_ros.ros.segmenter import exit_if_stuck

    class Log:
        def __init__(self):
            self.lines = []

        def error(self, text):
            self.lines.append(text)
    exited, log = threading.Event(), Log()
    codes = []
    exit_if_stuck(0.05, 3, log, exit_fn=lambda c: (codes.append(c), exited.set()))
    assert exited.wait(10.0) and codes == [3]
    assert 'did not finish within 0.05 s' in log.lines[0]
    quiet = []
    guard = exit_if_stuck(0.5, 0, log, exit_fn=quiet.append)
    guard.cancel()
    guard.join(2.0)
    assert quiet == [] and not guard.is_alive()
