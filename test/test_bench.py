"""dovit-bench (JSON report, argument errors, the --model branch) and its exit patterns."""
import json
import re

import cv2
import numpy as np
import pytest
import torch

from dovit_ros.cli.bench import main
from dovit_ros.model.plans import coherent_plan

FIELDS = {'preset', 'height', 'width', 'device', 'threads', 'runs', 'full_ms', 'pruned_ms',
          'full_gflops', 'pruned_gflops', 'speedup', 'flops_ratio', 'realisation',
          'tokens_per_stage', 'keep', 'torch', 'backend', 'attention'}


def bench(capsys, *args) -> dict:
    assert main([*args, '--runs', '1', '--warmup', '0', '--threads', '1', '--json']) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report(capsys):
    n = torch.get_num_threads()
    try:
        r = bench(capsys, '--preset', 'tiny', '--height', '64', '--width', '130',
                  '--keep', '0.5,0.25,0.1')
    finally:
        torch.set_num_threads(n)
    assert FIELDS <= set(r)
    assert (r['preset'], r['height'], r['width'], r['device']) == ('tiny', 64, 130, 'cpu')
    assert r['threads'] == 1 and r['runs'] == 1 and r['torch'] == torch.__version__
    assert r['keep'] == [0.5, 0.25, 0.1]
    N = 4 * 9
    assert r['tokens_per_stage'] == [N] + [round(k * N) for k in r['keep']]
    assert r['flops_ratio'] == pytest.approx(r['full_gflops'] / r['pruned_gflops'])
    assert r['speedup'] == pytest.approx(r['full_ms'] / r['pruned_ms'])
    assert r['realisation'] == pytest.approx(r['speedup'] / r['flops_ratio'])
    assert r['full_gflops'] > r['pruned_gflops'] > 0 and r['full_ms'] > 0


def test_backend_compile_is_timed_the_same_way(capsys):
    n = torch.get_num_threads()
    try:
        e = bench(capsys, '--preset', 'tiny', '--height', '48', '--width', '64')
        c = bench(capsys, '--preset', 'tiny', '--height', '48', '--width', '64',
                  '--backend', 'compile')
    finally:
        torch.set_num_threads(n)
    assert (e['backend'], c['backend']) == ('eager', 'compile')
    # same model, input and exit pattern: same token counts and FLOPs through either runner
    assert c['tokens_per_stage'] == e['tokens_per_stage']
    assert c['pruned_gflops'] == pytest.approx(e['pruned_gflops'])


def test_backend_tensorrt_unavailable_is_one_clear_error(capsys):
    assert main(['--preset', 'tiny', '--height', '32', '--width', '32', '--runs', '1',
                 '--backend', 'tensorrt', '--json']) == 2
    err = capsys.readouterr().err
    assert 'tensorrt' in err and ('torch_tensorrt' in err or 'CUDA' in err)


def test_readable_table(capsys):
    n = torch.get_num_threads()
    try:
        assert main(['--height', '32', '--width', '48', '--runs', '1', '--warmup', '0',
                     '--threads', '1']) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert 'full' in out and 'pruned' in out and 'realisation' in out


@pytest.mark.parametrize('args, message', [
    (['--keep', '0.3,0.5,0.1'], 'non-increasing'),
    (['--keep', '0.5,0.3'], '2 fractions given'),
    (['--keep', '0.5,x,0.1'], 'comma-separated'),
    (['--keep', '0.5,0.3,1.2'], r'\[0, 1\]'),
    (['--device', 'gpu'], 'cpu, cuda or cuda:N'),
    (['--preset', 'huge'], 'unknown preset'),
    (['--runs', '0'], '--runs'),
    (['--model', 'somewhere'], '--model needs --image'),
    (['--batch', '0'], '--batch must be >= 1'),
])
def test_argument_errors(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('dovit-bench: ')
    assert re.search(message, err), err


def test_real_model_branch(capsys, tmp_path):
    artifacts = pytest.importorskip('dovit_ros.runtime.artifacts')
    from dovit_ros.data.classes import ClassInfo
    from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig
    cfg = ViTConfig(num_classes=3, dim=32, depth=4, heads=2, decoder_dim=16, img_size=(64, 64))
    torch.manual_seed(0)
    meta = artifacts.ModelMeta(
        architecture=cfg, classes=ClassInfo(('a', 'b', 'c'), ((0, 0, 0), (1, 1, 1), (2, 2, 2))),
        exits=ExitConfig('threshold', 0.9))
    artifacts.save_model_dir(tmp_path / 'm', DoViTSegmenter(cfg), meta)
    img = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / 'f.png'), img)
    n = torch.get_num_threads()
    try:
        r = bench(capsys, '--model', str(tmp_path / 'm'), '--image', str(tmp_path / 'f.png'),
                  '--threshold', '0.0', '--policy', 'threshold')
    finally:
        torch.set_num_threads(n)
    assert (r['height'], r['width'], r['policy'], r['threshold']) == (40, 70, 'threshold', 0.0)
    assert r['tokens_per_stage'] == [3 * 5, 0, 0, 0]   # xi = 0: all leave at the first point
    assert r['flops_ratio'] == pytest.approx(r['full_gflops'] / r['pruned_gflops'])
    assert main(['--model', str(tmp_path / 'm'), '--image', str(tmp_path / 'nope.png')]) == 2
    assert 'nope.png' in capsys.readouterr().err
    # --input-scale: the model sees the resized image (20 x 35: a 2 x 3 token grid)
    try:
        half = bench(capsys, '--model', str(tmp_path / 'm'), '--image', str(tmp_path / 'f.png'),
                     '--threshold', '0.0', '--policy', 'threshold', '--input-scale', '0.5')
    finally:
        torch.set_num_threads(n)
    assert (half['height'], half['width'], half['input_scale']) == (20, 35, 0.5)
    assert half['tokens_per_stage'] == [2 * 3, 0, 0, 0] and half['full_gflops'] < r['full_gflops']
    assert main(['--model', str(tmp_path / 'm'), '--image', str(tmp_path / 'f.png'),
                 '--input-scale', '3']) == 2
    assert 'input scale must be a number in [0.25, 2]' in capsys.readouterr().err


# ------------------------------------------------------------------ coherent_plan
def neighbours_kept(mask: torch.Tensor) -> float:
    """Mean number of kept 4-neighbours of a kept token, on an (h, w) bool grid."""
    m = mask.float()
    p = torch.nn.functional.pad(m, (1, 1, 1, 1))
    nb = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    return float((nb * m).sum() / m.sum())


@pytest.mark.parametrize('h, w', [(32, 64), (7, 5), (1, 9)])
def test_coherent_plan_counts_and_nesting(h, w):
    keep = [0.8, 0.5, 0.5, 0.1, 0.0]
    plan = coherent_plan(h, w, keep, seed=3)
    assert len(plan) == len(keep)
    for k, m in zip(keep, plan):
        assert m.shape == (h * w,) and m.dtype == torch.bool
        assert int(m.sum()) == round(k * h * w)
    for a, b in zip(plan, plan[1:]):
        assert not bool((b & ~a).any())   # nested: nobody comes back
    assert all(torch.equal(a, b) for a, b in zip(plan, coherent_plan(h, w, keep, seed=3)))
    assert coherent_plan(h, w, [1.0], seed=0)[0].all()


def test_coherent_plan_is_spatially_coherent():
    h, w = 32, 64
    g = torch.Generator().manual_seed(0)
    for seed in range(3):
        for k in (0.5, 0.3, 0.1):
            m = coherent_plan(h, w, [k], seed)[0].reshape(h, w)
            rand = torch.zeros(h * w, dtype=torch.bool)
            rand[torch.randperm(h * w, generator=g)[:int(m.sum())]] = True
            # uniform choice: about 4k kept neighbours; regions: most neighbours kept
            assert neighbours_kept(m) > 2.5
            assert neighbours_kept(m) > neighbours_kept(rand.reshape(h, w)) + 1.0
    assert not torch.equal(coherent_plan(h, w, [0.5], 0)[0], coherent_plan(h, w, [0.5], 1)[0])


def test_coherent_plan_rejects_bad_keep():
    with pytest.raises(ValueError, match='non-increasing'):
        coherent_plan(4, 4, [0.2, 0.5])
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        coherent_plan(4, 4, [1.5])
    with pytest.raises(ValueError, match='grid'):
        coherent_plan(0, 4, [0.5])


def test_batch_is_one_packed_forward_of_n_frames(capsys):
    n = torch.get_num_threads()
    try:
        r = bench(capsys, '--preset', 'tiny', '--height', '64', '--width', '130',
                  '--keep', '0.5,0.25,0.1', '--batch', '3')
    finally:
        torch.set_num_threads(n)
    N = 4 * 9   # per frame: the same counts and FLOPs as one frame alone
    assert r['batch'] == 3
    assert r['tokens_per_stage'] == [N] + [round(k * N) for k in r['keep']]
    assert r['fps_pruned'] == pytest.approx(3e3 / r['pruned_ms'])


def test_precision_is_recorded_and_auto_resolves(capsys):
    from dovit_ros.runtime.device import resolve_precision
    n = torch.get_num_threads()
    try:
        r = bench(capsys, '--height', '64', '--width', '96', '--precision', 'auto')
        assert r['precision'] == resolve_precision('auto', 'cpu') in ('fp32', 'bf16')
        r = bench(capsys, '--height', '64', '--width', '96', '--precision', 'bf16')
    finally:
        torch.set_num_threads(n)
    assert r['precision'] == 'bf16' and r['pruned_gflops'] < r['full_gflops']


@pytest.mark.parametrize('core', ['sdpa', 'matmul'])
def test_attention_core_is_the_one_asked_for_and_reported(capsys, core):
    n = torch.get_num_threads()
    try:
        r = bench(capsys, '--preset', 'tiny', '--height', '64', '--width', '64',
                  '--attention', core)
    finally:
        torch.set_num_threads(n)
    assert r['attention'] == core and r['attention_ms'] == {}
