"""runtime/device.py: the one rule for 'auto' devices and precisions."""
import pytest
import torch

from dovit_ros.ros.harness import make_test_model
from dovit_ros.runtime import device as dev
from dovit_ros.runtime.pipeline import Pipeline


@pytest.mark.parametrize('has_bf16, cpu, cuda', [(True, 'bf16', 'fp32'), (False, 'fp32', 'fp32')])
def test_auto_precision_follows_the_cpu(monkeypatch, has_bf16, cpu, cuda):
    monkeypatch.setattr(dev, 'cpu_supports_bf16', lambda: has_bf16)
    assert dev.resolve_precision('auto', 'cpu') == cpu
    assert dev.resolve_precision('auto', torch.device('cpu')) == cpu
    assert dev.resolve_precision('auto', 'cuda:0') == cuda
    for p in ('fp32', 'fp16', 'bf16'):   # an explicit choice is kept
        assert dev.resolve_precision(p, 'cpu') == p


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="'fp8'"):
        dev.resolve_precision('fp8')


def test_pipeline_runs_the_resolved_precision(monkeypatch, tmp_path):
    monkeypatch.setattr(dev, 'cpu_supports_bf16', lambda: True)
    pipe = Pipeline.from_path(str(make_test_model(tmp_path / 'm')), 'cpu', 'auto')
    assert pipe.precision == 'bf16' and pipe.dtype == torch.bfloat16
    assert next(pipe.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize('name', ['gpu', 'cuda:x', 'CPU'])
def test_bad_device_is_named(name):
    with pytest.raises(ValueError, match=repr(name)):
        dev.resolve_device(name)
