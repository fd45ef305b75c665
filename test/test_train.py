"""Training loop, checkpoints, export and model loading: resume equals an uninterrupted run,
phase 2 (annealed exits + distillation), DDP on CPU, atomic checkpoints, exported model
directories, and rejection of bad model files.

Everything runs a tiny ViT (dim 32, depth 4) for a few steps on a generated 'folder' dataset.
"""
import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from dovit_ros.cli import export as export_cli
from dovit_ros.data import ClassInfo, load_dataset
from dovit_ros.data.transforms import to_tensor
from dovit_ros.model import DoViTSegmenter, ExitConfig, ViTConfig
from dovit_ros.model import vit
from dovit_ros.runtime.artifacts import (META, WEIGHTS, ModelLoadError, ModelMeta, load_model,
                                         load_tensors, save_model_dir)
from dovit_ros.runtime.pipeline import Pipeline
from dovit_ros.train import checkpoint as ckpt_mod
from dovit_ros.train.ema import EMA_FILE, WeightEMA
from dovit_ros.train.evaluate import evaluate
from dovit_ros.train.config import OptimConfig, load_train_config
from dovit_ros.train.loop import build_optimizer, params_sha256, train
from dovit_ros.train.run_folder import CSV_FIELDS, open_metrics_csv

ARCH = {'dim': 32, 'depth': 4, 'heads': 2, 'decision_points': [1, 2, 3], 'img_size': [64, 64],
        'decoder_dim': 16}
CLASSES = {'names': ['ground', 'wall', 'sky'],
           'palette': [[128, 64, 128], [70, 70, 70], [70, 130, 180]], 'ignore_index': 255}


pytestmark = pytest.mark.usefixtures('one_thread')


def make_folder_dataset(root: Path, n_train: int = 4, n_val: int = 2, seed: int = 0) -> Path:
    """root/{train,val}/{images,labels} of 64x96 images whose three horizontal bands (plus
    noise) are the classes, with a few ignored pixels; root/classes.yaml."""
    rng = np.random.default_rng(seed)
    colours = np.array(CLASSES['palette'], np.float32)
    for split, n in (('train', n_train), ('val', n_val)):
        for d in ('images', 'labels'):
            (root / split / d).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cuts = np.sort(rng.integers(8, 56, 2))
            label = np.zeros((64, 96), np.uint8)
            label[cuts[0]:cuts[1]] = 1
            label[cuts[1]:] = 2
            label = np.roll(label, int(rng.integers(0, 64)), 0)
            rgb = colours[label] + rng.normal(0, 25, (64, 96, 3))
            label[rng.random((64, 96)) < 0.02] = 255
            name = f'{split}_{i:03d}.png'
            assert cv2.imwrite(str(root / split / 'images' / name),
                               cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8),
                                            cv2.COLOR_RGB2BGR))
            assert cv2.imwrite(str(root / split / 'labels' / name), label)
    (root / 'classes.yaml').write_text(yaml.safe_dump(CLASSES))
    return root


def write_config(path: Path, data_root: Path, **overrides) -> Path:
    d = {'name': 'tiny', 'model': dict(ARCH),
         'data': {'dataset': 'folder', 'root': str(data_root), 'crop': [64, 64],
                  'scale_range': [0.75, 1.25], 'workers': 0},
         'optim': {'lr': 0.002, 'warmup_steps': 2},
         'batch_size': 2, 'steps': 6, 'eval_every': 100, 'checkpoint_every': 3,
         'keep_checkpoints': 2, 'seed': 0, 'amp': False}
    for k, v in overrides.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    path.write_text(yaml.safe_dump(d))
    return path


def run(cfg, out, **kw) -> dict:
    return train(cfg, out, device='cpu', progress=False, log=lambda *a: None, **kw)


def assert_same_checkpoint(a: Path, b: Path) -> None:
    assert (a / EMA_FILE).exists() == (b / EMA_FILE).exists()
    for name in (WEIGHTS, ckpt_mod.STATE_T) + ((EMA_FILE,) if (a / EMA_FILE).exists() else ()):
        ta, tb = load_tensors(a / name), load_tensors(b / name)
        assert sorted(ta) == sorted(tb), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f'{name}: {k} differs'
    ya = yaml.safe_load((a / ckpt_mod.STATE_Y).read_text())
    yb = yaml.safe_load((b / ckpt_mod.STATE_Y).read_text())
    assert ya == yb


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root) -> Path:
    """A finished 6-step run: ckpt-0000003, ckpt-0000006, best/, latest, metrics.csv."""
    tmp = tmp_path_factory.mktemp('run')
    cfg = load_train_config(write_config(tmp / 'cfg.yaml', data_root))
    summary = run(cfg, tmp / 'run')
    assert summary['step'] == 6 and not summary['stopped_early']
    return tmp / 'run'


def tiny_model_dir(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = ViTConfig(num_classes=3, **{k: v for k, v in ARCH.items()})
    model = DoViTSegmenter(cfg).eval()
    return save_model_dir(path, model, ModelMeta(architecture=cfg,
                                                 classes=ClassInfo.from_dict(CLASSES)))


# ------------------------------------------------------------------ training loop

def test_a_new_run_refuses_a_folder_in_use(tmp_path, data_root, trained, capsys):
    """Without --resume, a run folder that holds a run (or anything else) is refused before a
    file is written: a second run there would append its metrics to the first's."""
    from dovit_ros.cli import train as train_cli
    from dovit_ros.train.run_folder import RunFolderError
    cfg_path = write_config(tmp_path / 'cfg.yaml', data_root)
    before = {p: p.read_bytes() for p in trained.rglob('*') if p.is_file()}
    with pytest.raises(RunFolderError, match='--resume'):
        run(load_train_config(cfg_path), trained)
    rc = train_cli.main(['--config', str(cfg_path), '--out', str(trained), '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and f'run folder {trained} is not empty' in err, err
    assert {p: p.read_bytes() for p in trained.rglob('*') if p.is_file()} == before
    # a parent of runs (what an empty name once made `--out runs/`) is refused alike
    parent = tmp_path / 'runs'
    (parent / 'other_run').mkdir(parents=True)
    with pytest.raises(RunFolderError):
        run(load_train_config(cfg_path), parent)
    assert [p.name for p in parent.iterdir()] == ['other_run']
    empty = tmp_path / 'empty'   # a new or empty folder is what a new run takes
    empty.mkdir()
    assert run(load_train_config(cfg_path, ['steps=1']), empty)['step'] == 1


def test_resume_equals_uninterrupted_run(tmp_path, data_root, trained):
    cfg = load_train_config(write_config(tmp_path / 'cfg.yaml', data_root))
    # A zero time budget stops (at a checkpoint) after one step: three interrupted calls.
    for want in (1, 2, 3):
        s = run(cfg, tmp_path / 'b', resume=True, time_budget_min=0)
        assert s['step'] == want and s['stopped_early']
        assert (tmp_path / 'b' / 'latest').read_text() == f'ckpt-{want:07d}'
    s = run(cfg, tmp_path / 'b', resume=True)
    assert s['step'] == 6 and not s['stopped_early']
    assert_same_checkpoint(trained / 'ckpt-0000006', tmp_path / 'b' / 'ckpt-0000006')
    # metrics.csv holds each step once, in order
    steps = [int(r.split(',')[0]) for r in
             (tmp_path / 'b' / 'metrics.csv').read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_signal_stops_at_a_checkpoint_and_resume_loses_nothing(
        tmp_path, data_root, trained, monkeypatch):
    """SIGTERM (a scheduler's preemption; Ctrl-C is SIGINT) during step 2: the run ends after
    that step with its checkpoint, puts the signal handlers back, and a resumed run ends where
    an uninterrupted one does."""
    import signal

    from dovit_ros.train.loop import Trainer
    cfg = load_train_config(write_config(tmp_path / 'cfg.yaml', data_root))
    real_step, handler = Trainer.train_step, signal.getsignal(signal.SIGTERM)

    def step_then_signal(self, step, images, labels):
        parts = real_step(self, step, images, labels)
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return parts
    monkeypatch.setattr(Trainer, 'train_step', step_then_signal)
    logged = []
    s = train(cfg, tmp_path / 'r', device='cpu', progress=False, log=logged.append)
    assert s['step'] == 2 and s['stopped_early']
    assert (tmp_path / 'r' / 'latest').read_text() == 'ckpt-0000002'
    assert any('SIGTERM received: stopped at step 2' in line for line in logged)
    assert signal.getsignal(signal.SIGTERM) is handler
    monkeypatch.setattr(Trainer, 'train_step', real_step)
    s = run(cfg, tmp_path / 'r', resume=True)
    assert s['step'] == 6 and not s['stopped_early']
    assert_same_checkpoint(trained / 'ckpt-0000006', tmp_path / 'r' / 'ckpt-0000006')


def test_the_same_signal_twice_interrupts_at_once():
    import signal

    from dovit_ros.train.stop import StopRequest
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == 'SIGINT'
        os.kill(os.getpid(), signal.SIGTERM)   # torchrun's forward of a Ctrl-C: still a stop
        assert stop.requested == 'SIGINT'
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_attention_core_is_the_configs_and_a_resumed_run_keeps_it(tmp_path, data_root,
                                                                  monkeypatch):
    calls = {core: 0 for core in vit.ATTENTION_CORES}
    for core, fn in list(vit.ATTENTION_CORES.items()):
        def counted(*a, _fn=fn, _core=core, **kw):
            calls[_core] += 1
            return _fn(*a, **kw)
        monkeypatch.setitem(vit.ATTENTION_CORES, core, counted)

    def recorded(run_dir: Path) -> str:
        ck = run_dir / (run_dir / 'latest').read_text()
        return yaml.safe_load((ck / ckpt_mod.STATE_Y).read_text())['extra']['attention']

    cfg = load_train_config(write_config(tmp_path / 'cfg.yaml', data_root), ['attention=matmul'])
    run(cfg, tmp_path / 'r', resume=True, time_budget_min=0)
    assert recorded(tmp_path / 'r') == 'matmul'
    assert calls['matmul'] > 0 and calls['sdpa'] == 0
    # 'auto' on resume: the interrupted run's core, not a new measurement (nor the suite's
    # DOVIT_ATTENTION=sdpa), so the resumed run computes as the first part did
    auto = load_train_config(write_config(tmp_path / 'cfg.yaml', data_root))
    assert auto.attention == 'auto'
    run(auto, tmp_path / 'r', resume=True)
    assert recorded(tmp_path / 'r') == 'matmul' and calls['sdpa'] == 0
    run(auto, tmp_path / 'fresh', resume=True, time_budget_min=0)
    assert recorded(tmp_path / 'fresh') == 'sdpa' and calls['sdpa'] > 0


def test_loader_workers_do_not_change_the_result(tmp_path, data_root, trained):
    cfg = load_train_config(write_config(tmp_path / 'cfg.yaml', data_root), ['data.workers=1'])
    run(cfg, tmp_path / 'w1')
    assert_same_checkpoint(trained / 'ckpt-0000006', tmp_path / 'w1' / 'ckpt-0000006')


def test_weight_ema_update_by_hand():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(net, 0.75)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(4.0)
    net(torch.randn(5, 3))   # training mode: BN running stats and step counter move
    ema.update(net)
    now, new = ema.model.state_dict(), net.state_dict()
    for k in ('0.weight', '0.bias', '1.running_mean', '1.running_var'):
        assert torch.allclose(now[k], 0.75 * before[k] + 0.25 * new[k]), k
    assert torch.allclose(now['0.weight'], before['0.weight'] + 1.0)
    assert int(now['1.num_batches_tracked']) == 1   # integers are copied
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError, match='decay'):
        WeightEMA(net, 1.0)


def test_ema_and_classmix_resume_exactly_and_best_is_the_average(tmp_path, data_root):
    """A run with a weight average and ClassMix: interrupted and resumed, it ends on the same
    checkpoint (the average included); best/ holds the average, not the raw weights."""
    cfg = load_train_config(write_config(tmp_path / 'cfg.yaml', data_root, ema_decay=0.5,
                                         eval_every=3, data={'classmix': 1.0}))
    run(cfg, tmp_path / 'a')
    for want in (1, 2):
        assert run(cfg, tmp_path / 'b', resume=True, time_budget_min=0)['step'] == want
    run(cfg, tmp_path / 'b', resume=True)
    assert_same_checkpoint(tmp_path / 'a' / 'ckpt-0000006', tmp_path / 'b' / 'ckpt-0000006')
    best = tmp_path / 'a' / 'best'
    step = yaml.safe_load((best / 'model.yaml').read_text())['metrics']['step']
    avg = load_tensors(tmp_path / 'a' / f'ckpt-{step:07d}' / EMA_FILE)
    raw = load_tensors(tmp_path / 'a' / f'ckpt-{step:07d}' / WEIGHTS)
    kept = load_tensors(best / WEIGHTS)
    assert all(torch.equal(kept[k], avg[k]) for k in avg)
    assert not all(torch.equal(kept[k], raw[k]) for k in raw)
    # ClassMix changes what is trained on: the raw weights differ from a run without it
    plain = load_train_config(write_config(tmp_path / 'p.yaml', data_root, ema_decay=0.5,
                                           eval_every=3))
    run(plain, tmp_path / 'p')
    other = load_tensors(tmp_path / 'p' / 'ckpt-0000006' / WEIGHTS)
    final = load_tensors(tmp_path / 'a' / 'ckpt-0000006' / WEIGHTS)
    assert not all(torch.equal(other[k], final[k]) for k in final)


def test_phase2_annealed_exits_with_distillation(tmp_path, data_root, trained):
    phase1 = trained / 'best'
    cfg = load_train_config(write_config(
        tmp_path / 'cfg.yaml', data_root, name='tiny_p2', init_from=str(phase1),
        teacher=str(phase1), distill_weight=0.4, steps=4, checkpoint_every=4,
        exits={'policy': 'threshold', 'threshold': 0.5, 'anneal_from': 1.0,
               'anneal_fraction': 0.5}, default_threshold=0.5, select_best='default'))
    s = run(cfg, tmp_path / 'p2')
    assert s['step'] == 4
    with open(tmp_path / 'p2' / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    xi = [float(r['xi']) for r in rows]
    assert xi == pytest.approx([1.0, 0.75, 0.5, 0.5])   # annealed over half the run, then held
    for r in rows:
        for k in ('loss', 'ce', 'aux', 'kl'):
            assert r[k] != '' and np.isfinite(float(r[k])), (k, r)
        assert float(r['kl']) >= 0
    model, meta = load_model(tmp_path / 'p2' / 'best')
    assert meta.recipe['train_config']['exits']['policy'] == 'threshold'
    for r in rows:   # loss = ce + alpha * aux + beta * KL, beta 0.4 on every step
        parts = float(r['ce']) + float(r['aux']) + 0.4 * float(r['kl'])
        assert float(r['loss']) == pytest.approx(parts, rel=1e-5)
    # every 2nd step without exits: xi 1 there, the annealed schedule elsewhere; beta 2 on
    # those full-token steps, 0.4 on the others
    full = load_train_config(write_config(
        tmp_path / 'full.yaml', data_root, name='tiny_p2f', init_from=str(phase1), steps=4,
        teacher=str(phase1), distill_weight=0.4, checkpoint_every=4,
        exits={'policy': 'threshold', 'threshold': 0.5, 'anneal_from': 1.0,
               'anneal_fraction': 0.5, 'full_every': 2, 'full_distill_weight': 2.0}))
    assert run(full, tmp_path / 'p2f')['step'] == 4
    with open(tmp_path / 'p2f' / 'metrics.csv') as f:
        frows = list(csv.DictReader(f))
    assert [float(r['xi']) for r in frows] == pytest.approx([1.0, 1.0, 0.5, 1.0])
    for r, beta in zip(frows, (0.4, 2.0, 0.4, 2.0)):
        parts = float(r['ce']) + float(r['aux']) + beta * float(r['kl'])
        assert float(r['loss']) == pytest.approx(parts, rel=1e-5), (r, beta)
    # best/ was chosen by val at the default exits (xi 0.5), logged beside the full-token val
    assert rows[-1]['val_miou'] != '' and rows[-1]['val_miou_default'] != ''
    assert meta.metrics['val_miou_default'] == pytest.approx(float(rows[-1]['val_miou_default']))
    val = load_dataset('folder', data_root, 'val')
    again = evaluate(model, val, ExitConfig('threshold', 0.5), meta.mean, meta.std, 'cpu')
    assert again.miou == pytest.approx(meta.metrics['val_miou_default'])


def test_metrics_csv_of_an_older_run_gets_the_new_columns_on_resume(tmp_path):
    path = tmp_path / 'metrics.csv'
    old = CSV_FIELDS[:-1]
    path.write_text(','.join(old) + '\n' + '1,' * (len(old) - 1) + '1\n'
                    + '2,' * (len(old) - 1) + '2\n')
    open_metrics_csv(path, start=1, resume=True)   # step 2 is past the checkpoint
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_FIELDS and len(rows) == 1
    assert rows[0]['step'] == '1' and rows[0][CSV_FIELDS[-1]] is None   # old rows lack it


def test_ddp_two_cpu_processes_agree(tmp_path, data_root):
    cfg = write_config(tmp_path / 'cfg.yaml', data_root, steps=3)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node',
           '2', '-m', 'dovit_ros.cli.train', '--config', str(cfg), '--out',
           str(tmp_path / 'ddp'), '--device', 'cpu', '--threads', '1', '--no-progress']
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summaries = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{')]
    by_rank = {s['rank']: s for s in summaries}
    assert sorted(by_rank) == [0, 1] and all(s['world'] == 2 for s in summaries)
    assert all(s['step'] == 3 for s in summaries)
    assert by_rank[0]['params_sha256'] == by_rank[1]['params_sha256']
    # ... and rank 0 saved exactly those parameters
    model, _ = load_model(tmp_path / 'ddp' / 'ckpt-0000003')
    assert params_sha256(model) == by_rank[0]['params_sha256']


# ------------------------------------------------------------------ checkpoints

def _model_opt(seed: int):
    torch.manual_seed(seed)
    cfg = ViTConfig(num_classes=3, **ARCH)
    model = DoViTSegmenter(cfg)
    opt = build_optimizer(model, OptimConfig())
    x = torch.randn(2, 3, 64, 64)
    model.forward_train(x).logits.square().mean().backward()
    opt.step()
    return model, opt, ModelMeta(architecture=cfg, classes=ClassInfo.from_dict(CLASSES))


@pytest.mark.parametrize('fail_at', [1, 2, 3, 4, 5])
def test_checkpoint_is_atomic(tmp_path, monkeypatch, fail_at):
    """A save that dies at any of its five file replacements (model weights, model.yaml,
    train-state tensors, train_state.yaml, `latest`) leaves the previous checkpoint named in
    `latest` and loadable, and no half-written file under a final name."""
    model, opt, meta = _model_opt(0)
    first = ckpt_mod.save_checkpoint(tmp_path, 1, model, meta, opt)
    saved = {n: load_tensors(first / n) for n in (WEIGHTS, ckpt_mod.STATE_T)}
    model2, opt2, _ = _model_opt(1)

    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError('simulated crash during save')
        return real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', flaky_replace)
    with pytest.raises(OSError, match='simulated'):
        ckpt_mod.save_checkpoint(tmp_path, 2, model2, meta, opt2)
    monkeypatch.undo()
    assert Path(calls[-1]).name == [WEIGHTS, META, ckpt_mod.STATE_T, ckpt_mod.STATE_Y,
                                    'latest'][fail_at - 1]
    assert (tmp_path / 'latest').read_text() == 'ckpt-0000001'
    ck = ckpt_mod.latest_checkpoint(tmp_path)
    assert ck == first
    assert not [p for p in tmp_path.rglob('*') if p.name.endswith('.tmp')]   # temp files gone
    fresh, fresh_opt, _ = _model_opt(2)
    state = ckpt_mod.load_train_state(ck, fresh, fresh_opt)
    assert state['step'] == 1
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[WEIGHTS][k]), k
    load_model(first)   # still a valid model directory
    # the interrupted folder is not a checkpoint anyone resumes from, and is replaced later
    ckpt_mod.save_checkpoint(tmp_path, 2, model2, meta, opt2)
    assert ckpt_mod.latest_checkpoint(tmp_path).name == 'ckpt-0000002'


def test_latest_naming_an_incomplete_folder_is_an_error(tmp_path):
    (tmp_path / 'ckpt-0000009').mkdir()
    (tmp_path / 'latest').write_text('ckpt-0000009')
    with pytest.raises(ModelLoadError, match='ckpt-0000009'):
        ckpt_mod.latest_checkpoint(tmp_path)


# ------------------------------------------------------------------ export

def _val_image(data_root: Path) -> np.ndarray:
    return load_dataset('folder', data_root, 'val')[0][0]


def test_export_reloads_to_identical_outputs(tmp_path, data_root, trained):
    out = tmp_path / 'model'
    rc = export_cli.main([str(trained / 'ckpt-0000006'), '--out', str(out), '--threshold',
                          '0.9', '--policy', 'dtop', '--topk', '2', '--input-size', '64', '96',
                          '--name', 'tiny-test'])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS, META]   # no optimiser state
    text = (out / META).read_text()
    assert '!!python' not in text
    src, _ = load_model(trained / 'ckpt-0000006')
    model, meta = load_model(out)
    assert meta.name == 'tiny-test' and meta.input_size == (64, 96)
    assert (meta.exits.policy, meta.exits.threshold, meta.exits.topk_per_class) == \
        ('dtop', 0.9, 2)
    assert meta.architecture == src.cfg and meta.classes.names == tuple(CLASSES['names'])
    assert meta.recipe['export']['step'] == 6
    assert meta.recipe['train_config']['steps'] == 6
    for k, v in src.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    image = _val_image(data_root)
    x = to_tensor(image, meta.mean, meta.std)[None]
    for ex in (ExitConfig('none'), meta.exits, ExitConfig('threshold', 0.5)):
        a, b = src(x, ex), model(x, ex)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.exit_stage, b.exit_stage)
    pipe = Pipeline.from_path(str(out))
    res = pipe.infer(image)   # the model's default exits: dtop, xi 0.9, k 2
    want = model(x, meta.exits)
    assert np.array_equal(res.labels, want.logits.argmax(1)[0].numpy())
    assert res.tokens_per_stage == want.tokens_per_stage[0].tolist()


def test_export_resolves_run_folders(tmp_path, trained, capsys):
    assert export_cli.main([str(trained), '--out', str(tmp_path / 'a')]) == 0
    assert json.loads(capsys.readouterr().out)['source'] == str(trained / 'best')
    meta = load_model(tmp_path / 'a')[1]
    assert meta.metrics['step'] == 6 and 'val_miou_full' in meta.metrics
    assert meta.exits.threshold == 0.95 and meta.input_size == (64, 64)   # config defaults
    run_copy = tmp_path / 'run'
    shutil.copytree(trained, run_copy)
    shutil.rmtree(run_copy / 'best')
    assert export_cli.main([str(run_copy), '--out', str(tmp_path / 'b')]) == 0
    assert json.loads(capsys.readouterr().out)['source'] == str(run_copy / 'ckpt-0000006')
    assert export_cli.main([str(tmp_path / 'nothing'), '--out', str(tmp_path / 'c')]) == 2
    assert 'not a checkpoint' in capsys.readouterr().err


def test_export_stages_without_backend_is_a_clear_error(tmp_path, trained, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'dovit_ros.runtime.backends.export', None)
    rc = export_cli.main([str(trained), '--out', str(tmp_path / 'm'), '--stages',
                          str(tmp_path / 'stages')])
    assert rc == 2
    assert 'dovit_ros.runtime.backends.export' in capsys.readouterr().err
    load_model(tmp_path / 'm')   # the model directory itself was written


def test_export_stages_with_backend(tmp_path, capsys):
    pytest.importorskip('dovit_ros.runtime.backends.export')
    d = tiny_model_dir(tmp_path / 'm')
    rc = export_cli.main([str(d), '--out', str(tmp_path / 'o'), '--input-size', '64', '96',
                          '--stages', str(tmp_path / 'stages')])
    assert rc == 0, capsys.readouterr().err
    assert list((tmp_path / 'stages').iterdir())


# ------------------------------------------------------------------ bad model directories

class MarkerPayload:
    """Unpickling this creates `path`: proof that a loader ran pickle."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _edit_yaml(d: Path, edit) -> None:
    meta = yaml.safe_load((d / META).read_text())
    edit(meta)
    (d / META).write_text(yaml.safe_dump(meta))


def _set(path: str, value):
    def edit(meta):
        *parents, last = path.split('.')
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


BAD_YAML = {
    'dim_is_a_string': (_set('architecture.dim', 'big'), ['architecture.dim', "'big'"]),
    'unknown_architecture_field': (_set('architecture.preset', 'tiny'), ['preset']),
    'unknown_top_level_field': (_set('exit', {'policy': 'dtop'}), ['exit']),
    'unknown_exits_field': (_set('exits.thresold', 0.9), ['exits.thresold']),
    'threshold_is_a_string': (_set('exits.threshold', 'high'), ['exits', 'threshold']),
    'input_size_is_a_string': (_set('input_size', '64x96'), ['input_size']),
    'palette_too_short': (_set('classes.palette', [[0, 0, 0]]), ['classes', 'palette']),
    'bad_decision_points': (_set('architecture.decision_points', [3, 1]),
                            ['decision_points']),
}


@pytest.mark.parametrize('case', sorted(BAD_YAML))
def test_bad_model_yaml_names_file_and_field(tmp_path, case):
    d = tiny_model_dir(tmp_path / 'm')
    edit, words = BAD_YAML[case]
    _edit_yaml(d, edit)
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    msg = str(e.value)
    assert str(d / META) in msg
    for w in words:
        assert w in msg, msg


def test_shapes_that_disagree_with_the_config(tmp_path):
    d = tiny_model_dir(tmp_path / 'm')
    _edit_yaml(d, _set('architecture.decoder_dim', 8))
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    assert str(d / WEIGHTS) in str(e.value) and "tensor 'decoder." in str(e.value)
    d2 = tiny_model_dir(tmp_path / 'm2')
    _edit_yaml(d2, _set('architecture.depth', 5))   # a block more than the weights hold
    with pytest.raises(ModelLoadError, match='missing'):
        load_model(d2)


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty', 'missing'])
def test_corrupt_weights(tmp_path, damage):
    d = tiny_model_dir(tmp_path / 'm')
    f = d / WEIGHTS
    data = f.read_bytes()
    if damage == 'garbage':
        f.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == 'truncated':
        f.write_bytes(data[:len(data) // 2])
    elif damage == 'empty':
        f.write_bytes(b'')
    else:
        f.unlink()
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    assert str(f) in str(e.value)


@pytest.mark.parametrize('kind', ['pickle', 'torch_save'])
def test_pickle_named_model_safetensors_is_never_unpickled(tmp_path, kind):
    d = tiny_model_dir(tmp_path / 'm')
    marker = tmp_path / 'PWNED'
    # the payload is live: plain unpickling does create its marker
    probe = tmp_path / 'probe'
    pickle.loads(pickle.dumps(MarkerPayload(probe)))
    assert probe.exists()
    if kind == 'pickle':
        (d / WEIGHTS).write_bytes(pickle.dumps({'w': MarkerPayload(marker)}))
    else:
        torch.save({'w': MarkerPayload(marker)}, d / WEIGHTS)
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    assert str(d / WEIGHTS) in str(e.value)
    with pytest.raises(ModelLoadError):
        Pipeline.from_path(str(d))
    assert not marker.exists()


def test_shipped_train_configs_load():
    """Every config in config/train/ (the probes and held-out twins in its folders too) parses,
    validates and builds its model config; the recipes at the top keep the default exits."""
    from pathlib import Path

    from dovit_ros.train.config import load_train_config
    top = Path(__file__).resolve().parents[1] / 'config' / 'train'
    files = sorted(top.rglob('*.yaml'))
    assert len(files) >= 4 and any(f.parent != top for f in files)
    for f in files:
        cfg = load_train_config(f)
        arch = cfg.model_config(19 if cfg.data.dataset == 'cityscapes' else 11)
        assert f.parent != top or arch.decision_points == (3, 6, 9), f
        if 'phase2' in f.name:
            assert cfg.exits.policy in ('threshold', 'dtop') and cfg.init_from, f


@pytest.mark.parametrize('override, message', [
    ('exits.full_every=-1', 'full_every must be >= 0'),
    ('exits.full_distill_weight=1.0', 'full_distill_weight needs exits.full_every > 0'),
    ('exits.full_distill_weight=-1', 'full_distill_weight must be a number >= 0'),
    ('select_best=last', 'select_best must be full or default'),
    ('exits.policy=random', 'exits.policy must be none, threshold or dtop'),
    ('ema_decay=1.0', 'ema_decay must be 0'),
    ('data.classmix=1.5', 'data.classmix must be a probability'),
    ('attention=flash', 'attention must be auto, sdpa or matmul'),
])
def test_bad_train_config_values_are_named(tmp_path, data_root, override, message):
    with pytest.raises(ValueError, match=message):
        load_train_config(write_config(tmp_path / 'cfg.yaml', data_root), [override])


# ------------------------------------------------------------------ warm start, deeper decoder
REFINE_ARCH = {**ARCH, 'conv_stem': True, 'decoder': 'refine', 'refine_dims': [8, 8]}


def test_copy_matching_extends_a_model_and_refuses_another():
    torch.manual_seed(0)
    src = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH)).eval()
    with torch.no_grad():   # a trained high-resolution path, not the zero-initialised one
        src.refine.cls.weight.normal_(0, 0.5)
    deep = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH, refine_blocks=[2, 1])).eval()
    fresh = ckpt_mod.copy_matching(deep, src.state_dict())
    assert fresh and all(k.startswith(('refine.blocks8.', 'refine.blocks4.')) for k in fresh)
    assert {k.split('.')[2] for k in fresh} == {'0', '1'}
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():   # new blocks start as the identity: the same model at step 0
        torch.testing.assert_close(deep(x).logits, src(x).logits)
    with pytest.raises(ValueError, match='not in this model: refine.blocks'):
        ckpt_mod.copy_matching(src, deep.state_dict())
    wide = DoViTSegmenter(ViTConfig(num_classes=3, **{**REFINE_ARCH, 'refine_dims': [8, 16]}))
    with pytest.raises(ValueError, match='other shapes: refine.'):
        ckpt_mod.copy_matching(wide, src.state_dict())


def test_copy_matching_leaves_behind_only_what_init_drop_names():
    torch.manual_seed(0)
    src = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH, refine_blocks=[2, 1])).eval()
    moved = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH, refine_blocks=[1, 2])).eval()
    with pytest.raises(ValueError, match='not in this model: refine.blocks8.1'):
        ckpt_mod.copy_matching(moved, src.state_dict())
    fresh = ckpt_mod.copy_matching(moved, src.state_dict(), drop=['refine.blocks8.1.'])
    assert fresh and all(k.startswith('refine.blocks4.1.') for k in fresh)
    kept = moved.state_dict()
    for k, v in src.state_dict().items():   # everything else came over unchanged
        if not k.startswith('refine.blocks8.1.'):
            assert torch.equal(kept[k], v), k
    # a prefix that leaves nothing behind is refused: a typo, or a block the model still has
    for drop in (['refine.blocks8.7.'], ['refine.blocks8.0.']):
        with pytest.raises(ValueError, match='init_drop: ' + drop[0]):
            ckpt_mod.copy_matching(moved, src.state_dict(), drop=drop)


def test_init_drop_needs_init_from(tmp_path, data_root):
    with pytest.raises(ValueError, match='init_drop needs init_from'):
        load_train_config(write_config(tmp_path / 'cfg.yaml', data_root),
                          ['init_drop=[refine.blocks8.1.]'])


def test_phase1_warm_start_with_a_deeper_decoder(tmp_path, data_root):
    src = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH)).eval()
    src_dir = save_model_dir(tmp_path / 'src', src, ModelMeta(
        architecture=src.cfg, classes=ClassInfo.from_dict(CLASSES)))
    cfg = load_train_config(write_config(
        tmp_path / 'cfg.yaml', data_root, name='deep', init_from=str(src_dir), steps=2,
        checkpoint_every=2, model={**REFINE_ARCH, 'refine_blocks': [1, 1]}))
    lines: list[str] = []
    s = train(cfg, tmp_path / 'deep', device='cpu', progress=False, log=lines.append)
    assert s['step'] == 2
    assert any('start fresh' in t and 'refine.blocks8.0.conv1.0.weight' in t for t in lines)
    model, _ = load_model(tmp_path / 'deep' / 'ckpt-0000002')
    assert model.cfg.refine_blocks == (1, 1)
    # trained: the new blocks left the identity
    assert float(model.refine.blocks8[0].bn2.weight.detach().abs().sum()) > 0


def test_fresh_parameters_get_their_own_learning_rate():
    """optim.fresh_lr_scale: the parameters a warm start did not supply sit in groups whose
    lr_scale is the multiplier, decay and no-decay kept apart; without fresh names the groups
    are the usual two."""
    model = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH, refine_strip=[3, 3]))
    fresh = {n for n, _ in model.named_parameters() if n.startswith('refine.strip')}
    opt = build_optimizer(model, OptimConfig(fresh_lr_scale=10.0), fresh)
    ids = {id(p): n for n, p in model.named_parameters()}
    by_group = [({ids[id(p)] for p in g['params']}, g['lr_scale'], g['weight_decay'])
                for g in opt.param_groups]
    assert sorted((scale, wd > 0) for _, scale, wd in by_group) == [
        (1.0, False), (1.0, True), (10.0, False), (10.0, True)]
    for names, scale, wd in by_group:
        assert all((n in fresh) == (scale == 10.0) for n in names)
        assert all((n.endswith('.weight') and 'bn' not in n and '.1.' not in n) == (wd > 0)
                   for n in names if n.startswith('refine.strip'))
    assert sum(len(g['params']) for g in opt.param_groups) == len(ids)
    plain = build_optimizer(model, OptimConfig(fresh_lr_scale=10.0))
    assert [g['lr_scale'] for g in plain.param_groups] == [1.0, 1.0]


def test_fresh_lr_scale_is_validated(tmp_path, data_root):
    cfg_file = write_config(tmp_path / 'cfg.yaml', data_root)
    with pytest.raises(ValueError, match='fresh_lr_scale needs init_from'):
        load_train_config(cfg_file, ['optim.fresh_lr_scale=10'])
    for bad in ('0', '-1', '.nan', '.inf', 'ten', 'true'):
        with pytest.raises(ValueError, match='fresh_lr_scale must be a number > 0'):
            load_train_config(cfg_file, ['init_from=x', f'optim.fresh_lr_scale={bad}'])


def test_warm_start_with_strip_blocks_at_a_higher_rate_resumes(tmp_path, data_root):
    """A strip block added to a trained model starts as the identity, learns at
    fresh_lr_scale times the schedule's rate, and a resumed run keeps that split."""
    src = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH)).eval()
    src_dir = save_model_dir(tmp_path / 'src', src, ModelMeta(
        architecture=src.cfg, classes=ClassInfo.from_dict(CLASSES)))
    overrides = dict(name='strip', init_from=str(src_dir), checkpoint_every=1,
                     model={**REFINE_ARCH, 'refine_strip': [3, 5]},
                     optim={'lr': 1e-3, 'warmup_steps': 0, 'fresh_lr_scale': 4.0})
    run = tmp_path / 'strip'
    cfg = load_train_config(write_config(tmp_path / 'cfg.yaml', data_root, steps=3,
                                         **overrides))
    lines: list[str] = []
    assert train(cfg, run, device='cpu', progress=False, time_budget_min=0,
                 log=lines.append)['step'] == 1
    assert any('start fresh' in t and 'refine.strip4.pw.weight' in t for t in lines)
    assert train(cfg, run, device='cpu', resume=True, progress=False,
                 log=lambda t: None)['step'] == 3
    groups = yaml.safe_load((run / 'ckpt-0000003' / ckpt_mod.STATE_Y).read_text())[
        'param_groups']
    base = {g['lr'] for g in groups if g['lr_scale'] == 1.0}
    high = {g['lr'] for g in groups if g['lr_scale'] == 4.0}
    assert len(base) == len(high) == 1 and high.pop() == pytest.approx(4 * base.pop())
    model, _ = load_model(run / 'ckpt-0000003')
    assert model.cfg.refine_strip == (3, 5)
    assert float(model.refine.strip4.bn2.weight.detach().abs().sum()) > 0


def test_warm_start_that_moves_a_block(tmp_path, data_root):
    src = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH, refine_blocks=[1, 0])).eval()
    src_dir = save_model_dir(tmp_path / 'src', src, ModelMeta(
        architecture=src.cfg, classes=ClassInfo.from_dict(CLASSES)))
    cfg = load_train_config(write_config(
        tmp_path / 'cfg.yaml', data_root, name='moved', init_from=str(src_dir), steps=1,
        checkpoint_every=1, init_drop=['refine.blocks8.0.'],
        model={**REFINE_ARCH, 'refine_blocks': [0, 1]}))
    lines: list[str] = []
    assert train(cfg, tmp_path / 'moved', device='cpu', progress=False,
                 log=lines.append)['step'] == 1
    assert any(t.endswith('left behind refine.blocks8.0.*') for t in lines)
    assert any('start fresh' in t and 'refine.blocks4.0.conv1.0.weight' in t for t in lines)


def test_a_model_dir_from_before_refine_blocks_loads_unchanged(tmp_path):
    """model.yaml files written before `refine_blocks` existed (no such key) load as a refine
    decoder without blocks, with the same outputs."""
    torch.manual_seed(0)
    src = DoViTSegmenter(ViTConfig(num_classes=3, **REFINE_ARCH)).eval()
    d = save_model_dir(tmp_path / 'old', src, ModelMeta(
        architecture=src.cfg, classes=ClassInfo.from_dict(CLASSES)))
    meta = yaml.safe_load((d / 'model.yaml').read_text())
    del meta['architecture']['refine_blocks']
    (d / 'model.yaml').write_text(yaml.safe_dump(meta))
    model, _ = load_model(d)
    assert model.cfg.refine_blocks == (0, 0) and len(model.refine.blocks8) == 0
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, src(x).logits)
