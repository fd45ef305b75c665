"""CUDA checks, run on a lent GPU by scripts/device_check.py (`pytest -m cuda`); skipped where
CUDA is not available (conftest.py). Every test compares CUDA against the CPU reference or
against an uninterrupted run; none times anything.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dovit_ros.model import FULL, ExitConfig

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / 'config' / 'demo' / 'camvid_0016E5_30f.mcap'
MODEL = ROOT / 'models' / 'camvid-dovit-tiny'

pytestmark = pytest.mark.cuda


def demo_frames(n: int) -> list[np.ndarray]:
    """The first n frames of the shipped clip, RGB uint8 (360, 480, 3); where rosbags is
    missing (the device machine), the first n JPEGs of $DOVIT_TEST_FRAMES if set."""
    frames = os.environ.get('DOVIT_TEST_FRAMES')
    if frames and importlib.util.find_spec('rosbags') is None:
        from dovit_ros.data.base import read_image
        return [read_image(f) for f in sorted(Path(frames).glob('*.jpg'))[:n]]
    pytest.importorskip('rosbags')   # the device machine may lack it (device_check says so)
    from dovit_ros.bag.storage import BagReader
    from dovit_ros.runtime.image_codec import decode_compressed
    out = []
    with BagReader(CLIP) as bag:
        topic, _ = bag.image_topic()
        for m in bag.messages([topic]):
            out.append(decode_compressed(m.decode()))
            if len(out) == n:
                break
    return out


@pytest.fixture(scope='module')
def shipped():
    if not MODEL.is_dir():
        pytest.skip(f'{MODEL} not here')
    from dovit_ros.runtime.pipeline import Pipeline
    return Pipeline.from_path(str(MODEL), 'cpu', 'fp32'), demo_frames(4)


@pytest.mark.parametrize('precision,min_agree', [('fp32', 0.999), ('fp16', 0.99),
                                                 ('bf16', 0.98)])
def test_pipeline_on_cuda_matches_cpu(shipped, precision, min_agree):
    """The shipped model on real frames: labels on CUDA agree with CPU fp32 (share of pixels),
    and in fp32 the exit decisions and logits too."""
    from dovit_ros.runtime.pipeline import Pipeline
    cpu, frames = shipped
    gpu = Pipeline.from_path(str(MODEL), 'cuda', precision)
    for img in frames:
        a, b = cpu.infer(img), gpu.infer(img)
        agree = float((a.labels == b.labels).mean())
        assert agree >= min_agree, (precision, agree)
        if precision == 'fp32':
            assert float((a.exit_grid == b.exit_grid).mean()) >= 0.99
    if precision == 'fp32':
        # PyTorch runs cuDNN convolutions in TF32 by default (allow_tf32): on the H200 that put
        # 545 of 1.9 M stem-fed logits up to 4.8e-3 from CPU fp32. The logits check is of fp32,
        # so TF32 is off for it; the label checks above run with PyTorch's defaults.
        x = cpu.preprocess(frames[0])
        la = cpu.model(x, FULL).logits
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            lb = gpu.model(x.to('cuda'), FULL).logits.cpu()
        torch.testing.assert_close(lb, la, rtol=1e-3, atol=2e-3)


def test_compile_on_cuda_twenty_counts_without_recompiling():
    from dovit_ros.runtime.backends.compile import (CompiledRunner, CompileOptions,
                                                    compile_available)
    from test_backends import make_model, plan, small_cfg, image, same_output
    ok, why = compile_available('cuda')
    if not ok:
        pytest.skip(why)
    cfg = small_cfg(depth=4, decision_points=(1, 2, 3), class_token=True,
                    exit_semantics='predictions')
    m = make_model(cfg).cuda()
    run = CompiledRunner(m, CompileOptions(token_mode='dynamic'))
    x = image().cuda()
    seen = set()
    for i in range(20):
        k = 1 - i / 21
        p = [q.cuda() for q in plan((k, 0.7 * k, 0.5 * k), seed=i)]
        out = run(x, FULL, p)
        same_output(out, m(x, FULL, p), tol=dict(rtol=1e-3, atol=1e-3))
        seen.add(tuple(out.tokens_per_stage[0].tolist()))
    assert len(seen) == 20
    before = dict(run.graphs.per_stage)
    assert all(v <= 2 for v in before.values()), before
    run(x, FULL, [q.cuda() for q in plan((0.33, 0.2, 0.1), seed=99)])
    assert run.graphs.per_stage == before


def _train_cfg(tmp_path: Path, steps: int, **over) -> Path:
    from test_train import make_folder_dataset, write_config
    data = make_folder_dataset(tmp_path / 'data', n_train=8, n_val=2)
    return write_config(tmp_path / 'cfg.yaml', data, steps=steps, checkpoint_every=steps // 2,
                        amp=True, batch_size=4, **over)


def test_train_bf16_on_cuda_then_resume(tmp_path):
    """50 bf16 steps straight vs a run stopped at a checkpoint after its first step (a zero
    time budget) and resumed to 50: the resumed run continues the same data stream and
    optimiser state. Bit-exactness is not claimed on CUDA (train/determinism.py: three ops
    have no deterministic CUDA kernel); the parameters must agree to training rounding, and
    the measured difference is written for the device check's summary."""
    from dovit_ros.runtime.artifacts import load_tensors
    from dovit_ros.train.config import load_train_config
    from dovit_ros.train.loop import train
    cfg = load_train_config(_train_cfg(tmp_path, 50))

    def run(out, **kw):
        return train(cfg, out, device='cuda', progress=False, log=lambda *a: None, **kw)
    a = run(tmp_path / 'a')
    assert a['step'] == 50 and a['determinism']['deterministic']
    assert os.environ.get('CUBLAS_WORKSPACE_CONFIG') == ':4096:8'
    s = run(tmp_path / 'b', resume=True, time_budget_min=0)
    assert s['stopped_early'] and s['step'] < 50
    b = run(tmp_path / 'b', resume=True)
    assert b['step'] == 50
    ta = load_tensors(tmp_path / 'a' / 'ckpt-0000050' / 'model.safetensors')
    tb = load_tensors(tmp_path / 'b' / 'ckpt-0000050' / 'model.safetensors')
    diff = max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)
    scale = max(float(ta[k].float().abs().max()) for k in ta)
    out = os.environ.get('DOVIT_DEVICE_CHECK_OUT')
    if out:
        Path(out, 'resume_cuda.json').write_text(json.dumps(
            {'max_abs_param_diff': diff, 'max_abs_param': scale,
             'bit_exact': diff == 0.0, 'steps': 50}))
    assert diff <= 1e-2 * scale, (diff, scale)


NCCL_PROBE = """
import os, torch, torch.distributed as dist
dist.init_process_group('nccl')
t = torch.full((4,), float(dist.get_rank() + 1), device=f"cuda:{os.environ['LOCAL_RANK']}")
dist.all_reduce(t)
print('allreduce', t.tolist(), dist.get_backend(), dist.get_world_size(), flush=True)
dist.destroy_process_group()
"""


def test_torchrun_one_process_nccl(tmp_path):
    """torchrun with one process: an nccl process group and all-reduce on the GPU, then the
    training CLI under torchrun on CUDA (with one rank it trains without DDP)."""
    import torch.distributed as dist
    if not dist.is_nccl_available():
        pytest.skip('this torch build has no NCCL')
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    probe = tmp_path / 'probe.py'
    probe.write_text(NCCL_PROBE)
    run = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node',
           '1']
    r = subprocess.run(run + [str(probe)], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'allreduce [1.0, 1.0, 1.0, 1.0] nccl 1' in r.stdout
    cfg = _train_cfg(tmp_path, 4)
    r = subprocess.run(run + ['-m', 'dovit_ros.cli.train', '--config', str(cfg), '--out',
                              str(tmp_path / 'r'), '--device', 'cuda', '--no-progress'],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{')]
    assert len(s) == 1 and s[0]['world'] == 1 and s[0]['step'] == 4


def test_tensorrt_engines_on_real_frames(shipped, tmp_path):
    """Torch-TensorRT, where installed: fp16 engines for the shipped model, built on the
    first frame, labels against CPU fp32, and a second image size built on its own frame."""
    pytest.importorskip('torch_tensorrt')
    from dovit_ros.runtime.artifacts import load_model
    from dovit_ros.runtime.backends import make_runner
    from dovit_ros.runtime.pipeline import Pipeline
    cpu, frames = shipped
    model, meta = load_model(MODEL)
    runner, info = make_runner(model, 'tensorrt', 'cuda', 'fp16', model_path=MODEL, meta=meta,
                               cache_dir=tmp_path)
    pipe = Pipeline(model, meta, 'cuda', 'fp16', runner=runner)
    for img in frames:
        a, b = cpu.infer(img), pipe.infer(img)
        assert float((a.labels == b.labels).mean()) >= 0.99
    small = frames[0][::2, ::2].copy()   # another camera size: engines built for it
    pipe.infer(small, ExitConfig('threshold', threshold=0.9))
    assert set(runner.builds) == {(360, 480), (180, 240)}
    out = os.environ.get('DOVIT_DEVICE_CHECK_OUT')
    if out:
        b = runner.builds[(360, 480)]
        Path(out, 'tensorrt.json').write_text(json.dumps(
            {'precision': b.precision, 'build_s': b.built_s,
             'fp16_label_disagreement': b.disagreement}))
