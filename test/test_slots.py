"""Newest-frame slots per camera (runtime/slots.py) and the batched frame path: drops are
counted, the worker takes every waiting frame, a late camera is waited for at most
batch_wait_s, and Pipeline.infer_many equals frame-by-frame inference."""
import threading

import numpy as np
import pytest
import torch

from dovit_ros.data import ClassInfo
from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.runtime.artifacts import ModelMeta
from dovit_ros.runtime.frame import FrameProcessor
from dovit_ros.runtime.pipeline import Pipeline
from dovit_ros.runtime.slots import FrameSlots

pytestmark = pytest.mark.usefixtures('one_thread')


def test_newest_frame_wins_and_drops_are_counted():
    dropped = []
    s = FrameSlots(['front', 'left'], on_drop=dropped.append)
    s.put('front', 1)
    s.put('front', 2)
    s.put('left', 3)
    assert s.take() == {'front': 2, 'left': 3}
    assert dropped == ['front']
    s.put('left', 4)
    assert s.take() == {'left': 4}   # batch_wait 0: never waits for the silent camera


def test_batch_wait_collects_a_late_camera_and_close_wakes_the_worker():
    s = FrameSlots(['a', 'b'])
    s.put('a', 1)
    got = {}
    t = threading.Thread(target=lambda: got.update(s.take(batch_wait_s=30.0)))
    t.start()
    s.put('b', 2)
    t.join(30.0)
    assert got == {'a': 1, 'b': 2}
    out = []
    t = threading.Thread(target=lambda: out.append(s.take()))
    t.start()
    s.close()
    t.join(30.0)
    assert out == [None] and not t.is_alive()
    with pytest.raises(ValueError):
        FrameSlots([])


def _pipeline() -> Pipeline:
    torch.manual_seed(0)
    cfg = ViTConfig(num_classes=3, dim=32, depth=4, heads=2, decision_points=(1, 2, 3),
                    img_size=(64, 64), decoder_dim=16)
    m = DoViTSegmenter(cfg).eval()
    with torch.no_grad():
        for head in m.aux_heads:
            head.proj.weight.mul_(30)
    classes = ClassInfo.from_dict({'names': ['a', 'b', 'c'],
                                   'palette': [[0, 0, 0], [255, 0, 0], [0, 255, 0]]})
    return Pipeline(m, ModelMeta(architecture=cfg, classes=classes))


def test_infer_many_equals_one_by_one_and_renders_per_camera():
    pipe = _pipeline()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(64, 64, 3), (50, 90, 3)]]
    ex = ExitConfig('threshold', 0.6)
    many = pipe.infer_many(images, ex)
    for im, r in zip(images, many):
        one = pipe.infer(im, ex)
        assert np.array_equal(r.labels, one.labels)
        assert np.array_equal(r.exit_grid, one.exit_grid)
        assert r.tokens_per_stage == one.tokens_per_stage and r.gflops == one.gflops
        np.testing.assert_allclose(r.confidence, one.confidence, atol=1e-5)
    proc = FrameProcessor(pipe)
    frames = proc.segment_many(images, ex, [{'labels'}, {'color', 'exit_stage_color'}], 0.5,
                               [1.0, 2.0])
    assert set(frames[0].fields) == {'labels'}
    assert set(frames[1].fields) == {'color', 'exit_stage_color'}
    assert frames[1].fields['color']['height'] == 50 and frames[1].t_received == 2.0
