"""Reliability and security of model directories: no pickle anywhere, corrupt files refused.

Already covered in test/test_train.py (not repeated here): load_model refuses a pickle or
torch.save file named model.safetensors without unpickling it
(test_pickle_named_model_safetensors_is_never_unpickled), garbage/half/empty/missing weights
(test_corrupt_weights), wrong YAML types and unknown fields (test_bad_model_yaml_names_file_and_
field) and shapes that disagree with model.yaml (test_shapes_that_disagree_with_the_config);
test/test_node.py checks that segment_node exits 2 on a missing, garbage or incompatible model.

Here: loading works with pickle disabled; a malicious pickle dropped into a model directory
(as model.safetensors, or as a model.pt beside model.yaml) or a python-object tag in model.yaml
is refused by segment_node (exit 2, an error naming the file, no marker file: nothing ran), by
dovit-eval and by dovit-train (as init_from); truncation at any point and random bit flips in
the safetensors header and in the tensor data are all refused, the data flips by the
weights_sha256 that save_model_dir records in model.yaml (segment_node too; without it most
data flips load silently: counted and printed, see docs/reliability.md); wrong YAML types,
shape mismatches and unknown presets exit 2 from the CLIs with the file and field named.
"""
from __future__ import annotations

import pickle
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dovit_ros.cli import eval as eval_cli
from dovit_ros.cli import train as train_cli
from dovit_ros.ros.harness import NodeProcess, fresh_domain_id, make_test_model, ros_env
from dovit_ros.ros.node import EXIT_STARTUP
from dovit_ros.runtime.artifacts import (META, WEIGHTS, ModelLoadError, file_sha256, load_model,
                                         read_meta)

DOMAIN = fresh_domain_id()


pytestmark = pytest.mark.usefixtures('one_thread')


class MarkerPayload:
    """Unpickling this creates `path`: proof that a loader ran pickle."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope='module')
def good(tmp_path_factory) -> Path:
    return make_test_model(tmp_path_factory.mktemp('good') / 'm')


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in (WEIGHTS, META):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_model_directory_loads_with_pickle_disabled(good, monkeypatch):
    assert sorted(p.name for p in good.iterdir()) == [WEIGHTS, META]
    text = (good / META).read_text()
    assert '!!python' not in text
    assert yaml.safe_load(text)['weights_sha256'] == file_sha256(good / WEIGHTS)

    def no_pickle(*a, **k):
        raise AssertionError('pickle used while loading a model directory')
    for mod, name in ((pickle, 'load'), (pickle, 'loads'), (pickle, 'Unpickler'),
                      (torch, 'load')):
        monkeypatch.setattr(mod, name, no_pickle)
    model, meta = load_model(good)
    assert meta.weights_sha256 == file_sha256(good / WEIGHTS)


@pytest.fixture(scope='module')
def malicious(tmp_path_factory, good):
    """Model directories that would create `marker` if anything unpickled or ran them."""
    root = tmp_path_factory.mktemp('malicious')
    marker = root / 'PWNED'
    probe = root / 'probe'
    pickle.loads(pickle.dumps(MarkerPayload(probe)))   # the payload is live
    assert probe.exists()
    dirs = {}
    d = dirs['pickle_as_safetensors'] = copy_model(good, root / 'a')
    (d / WEIGHTS).write_bytes(pickle.dumps({'w': MarkerPayload(marker)}))
    d = dirs['torch_save_as_safetensors'] = copy_model(good, root / 'b')
    torch.save({'w': MarkerPayload(marker)}, d / WEIGHTS)
    d = dirs['model_pt_only'] = copy_model(good, root / 'c')   # a PyTorch checkpoint dropped in
    (d / WEIGHTS).unlink()
    torch.save({'state_dict': MarkerPayload(marker)}, d / 'model.pt')
    d = dirs['python_tag_in_yaml'] = copy_model(good, root / 'd')
    (d / META).write_text(f'!!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n'
                          + (d / META).read_text())
    return dirs, marker


EXPECT = {   # case: (file named in the error, words in it)
    'pickle_as_safetensors': (WEIGHTS, 'not a readable safetensors file'),
    'torch_save_as_safetensors': (WEIGHTS, 'not a readable safetensors file'),
    'model_pt_only': (WEIGHTS, 'file not found'),
    'python_tag_in_yaml': (META, 'not valid YAML'),
}


def test_malicious_or_corrupt_model_refused_by_segment_node(malicious, good, tmp_path):
    dirs, marker = malicious
    dirs = dict(dirs)
    d = dirs['bit_flip_in_tensor_data'] = copy_model(good, tmp_path / 'flipped')
    _, h1 = header_span(good / WEIGHTS)
    flip(good / WEIGHTS, d / WEIGHTS, h1 + 4 * 10 + 1, 0)   # a low mantissa bit: finite
    expect = {**EXPECT, 'bit_flip_in_tensor_data': (WEIGHTS, 'differs from weights_sha256')}
    env = ros_env(DOMAIN)
    procs = {case: NodeProcess(['-p', f'model:={d}'], env) for case, d in dirs.items()}
    try:
        for case, proc in procs.items():
            rc = proc.proc.wait(120)
            proc.stop()
            name, words = expect[case]
            out = proc.output
            assert rc == EXIT_STARTUP, (case, out)
            assert str(dirs[case] / name) in out and words in out, (case, out)
            assert 'ready' not in out and 'Traceback' not in out, (case, out)
    finally:
        for proc in procs.values():
            proc.stop(signal.SIGKILL, timeout=0)
    assert not marker.exists()


def _eval(model, tmp_path, capsys) -> tuple[int, str]:
    rc = eval_cli.main(['--model', str(model), '--dataset', 'folder', '--data-root',
                        str(tmp_path / 'no_data'), '--split', 'val', '--json',
                        str(tmp_path / 'report.json')])
    return rc, capsys.readouterr().err


def test_malicious_pickle_refused_by_dovit_eval(malicious, tmp_path, capsys):
    dirs, marker = malicious
    for case, d in dirs.items():
        rc, err = _eval(d, tmp_path, capsys)
        name, words = EXPECT[case]
        assert rc == 2 and str(d / name) in err and words in err, (case, err)
    assert not marker.exists()


# ------------------------------------------------------------------ corrupt weights

def header_span(path: Path) -> tuple[int, int]:
    """[start, end) of the JSON header of a safetensors file (after its 8-byte length)."""
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
    return 8, 8 + n


def flip(src: Path, dst: Path, pos: int, bit: int) -> None:
    data = bytearray(src.read_bytes())
    data[pos] ^= 1 << bit
    dst.write_bytes(bytes(data))


def flip_survey(good: Path, work: Path, n: int, seed: int = 0, checksum: bool = True) -> dict:
    """Flip one random bit n times in the header JSON and n times in the tensor data; how
    many load_model refuses, and with which message. Shared with scripts/soak.py."""
    rng = np.random.default_rng(seed)
    d = copy_model(good, work)
    if not checksum:   # a model.yaml written before weights_sha256 existed
        meta = yaml.safe_load((d / META).read_text())
        meta.pop('weights_sha256')
        (d / META).write_text(yaml.safe_dump(meta, sort_keys=False))
    size = (good / WEIGHTS).stat().st_size
    h0, h1 = header_span(good / WEIGHTS)
    out = {}
    for region, (lo, hi) in (('header', (h0, h1)), ('data', (h1, size))):
        r = out[region] = {'flips': n, 'refused': 0, 'by': {}, 'file_named': 0}
        for _ in range(n):
            flip(good / WEIGHTS, d / WEIGHTS, int(rng.integers(lo, hi)), int(rng.integers(8)))
            try:
                load_model(d)
            except ModelLoadError as e:
                msg = str(e)
                r['refused'] += 1
                r['file_named'] += str(d / WEIGHTS) in msg
                kind = ('sha256' if 'differs from weights_sha256' in msg else
                        'NaN/Inf' if 'NaN or Inf' in msg else
                        'tensors do not match' if 'do not match' in msg else
                        'shape' if 'has shape' in msg else
                        'unreadable' if 'not a readable' in msg else 'other')
                r['by'][kind] = r['by'].get(kind, 0) + 1
    return out


def test_bit_flips_in_header_and_data_are_refused(good, tmp_path):
    with_sum = flip_survey(good, tmp_path / 'sum', n=30)
    without = flip_survey(good, tmp_path / 'nosum', n=30, checksum=False)
    print('with weights_sha256:', with_sum)
    print('without weights_sha256:', without)
    for region in ('header', 'data'):
        r = with_sum[region]
        assert r['refused'] == r['flips'] == r['file_named'], (region, r)
    # without the checksum, a flipped mantissa or sign bit is just another valid float
    assert without['data']['refused'] < without['data']['flips']


@pytest.mark.parametrize('where', ['length', 'header', 'first_tensor', 'last_byte'])
def test_truncated_weights_are_refused(good, tmp_path, where):
    d = copy_model(good, tmp_path / 'm')
    data = (good / WEIGHTS).read_bytes()
    h0, h1 = header_span(good / WEIGHTS)
    cut = {'length': 5, 'header': (h0 + h1) // 2, 'first_tensor': h1 + 3,
           'last_byte': len(data) - 1}[where]
    (d / WEIGHTS).write_bytes(data[:cut])
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    assert str(d / WEIGHTS) in str(e.value)


# ------------------------------------------------------------------ model.yaml and presets

def _edit(d: Path, path: str, value) -> None:
    meta = yaml.safe_load((d / META).read_text())
    *parents, last = path.split('.')
    node = meta
    for p in parents:
        node = node[p]
    node[last] = value
    (d / META).write_text(yaml.safe_dump(meta, sort_keys=False))


BAD_META = {   # case: (field, value, file named, words in the error)
    'dim_is_a_string': ('architecture.dim', 'big', META, 'architecture.dim'),
    'unknown_preset_field': ('architecture.preset', 'huge', META, 'preset'),
    'shapes_disagree': ('architecture.decoder_dim', 16, WEIGHTS, 'has shape'),
    'unknown_policy': ('exits.policy', 'fastest', META, 'exits'),
    'bad_sha256': ('weights_sha256', 'not-a-digest', META, 'weights_sha256'),
    'other_weights': ('weights_sha256', '0' * 64, WEIGHTS, 'weights_sha256'),
}


@pytest.mark.parametrize('case', sorted(BAD_META))
def test_bad_model_yaml_exits_2_from_dovit_eval(good, tmp_path, capsys, case):
    field, value, name, words = BAD_META[case]
    d = copy_model(good, tmp_path / 'm')
    _edit(d, field, value)
    rc, err = _eval(d, tmp_path, capsys)
    assert rc == 2 and str(d / name) in err and words in err, err
    with pytest.raises(ModelLoadError):
        load_model(d)


def test_read_meta_keeps_the_digest(good):
    assert read_meta(good).weights_sha256 == file_sha256(good / WEIGHTS)


def test_unknown_preset_in_train_config_exits_2(tmp_path, capsys):
    cfg = tmp_path / 'train.yaml'
    cfg.write_text(yaml.safe_dump({'name': 'x', 'model': {'preset': 'huge'},
                                   'data': {'dataset': 'folder', 'root': str(tmp_path)}}))
    rc = train_cli.main(['--config', str(cfg), '--out', str(tmp_path / 'run'),
                         '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and str(cfg) in err and "unknown preset 'huge'" in err, err
    assert not (tmp_path / 'run').exists()


def test_train_init_from_a_malicious_model_exits_2(malicious, tmp_path, capsys):
    import cv2
    data = tmp_path / 'data'
    for sub in ('images', 'labels'):
        (data / 'train' / sub).mkdir(parents=True)
    cv2.imwrite(str(data / 'train' / 'images' / 'a.png'), np.zeros((64, 96, 3), np.uint8))
    cv2.imwrite(str(data / 'train' / 'labels' / 'a.png'), np.zeros((64, 96), np.uint8))
    (data / 'classes.yaml').write_text(yaml.safe_dump(
        {'names': ['a', 'b'], 'palette': [[0, 0, 0], [255, 255, 255]], 'ignore_index': 255}))
    dirs, marker = malicious
    for case in ('pickle_as_safetensors', 'model_pt_only'):
        cfg = tmp_path / f'{case}.yaml'
        cfg.write_text(yaml.safe_dump({
            'name': 'x', 'model': {'dim': 32, 'depth': 4, 'heads': 2, 'img_size': [64, 64],
                                   'decision_points': [1, 2, 3]},
            'init_from': str(dirs[case]),
            'data': {'dataset': 'folder', 'root': str(data), 'val_split': None}}))
        rc = train_cli.main(['--config', str(cfg), '--out', str(tmp_path / 'run'),
                             '--no-progress'])
        err = capsys.readouterr().err
        name, words = EXPECT[case]
        assert rc == 2 and str(dirs[case] / name) in err and words in err, err
    assert not marker.exists()
