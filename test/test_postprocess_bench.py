"""scripts/postprocess_bench.py compares the model's post-processing with alternatives; its
figures mean something only if every variant computes the same labels and confidence."""
import json

import torch

from script_module import load_script


def test_every_variant_gives_the_models_labels_and_confidence():
    m = load_script('postprocess_bench')
    torch.manual_seed(0)
    grid = torch.randn(2, 5, 6, 8) * 4
    ref_labels, ref_conf = None, None
    for layout in m.LAYOUTS.values():
        for reduce in m.REDUCTIONS.values():
            labels, conf = m.variant(grid, layout, reduce, (24, 32), (22, 30))()
            assert labels.shape == conf.shape == (2, 22, 30)
            if ref_labels is None:
                ref_labels, ref_conf = labels, conf
            assert torch.equal(labels, ref_labels)
            torch.testing.assert_close(conf, ref_conf)
    assert bool(((ref_conf > 1 / 5 - 1e-6) & (ref_conf <= 1)).all())


def test_runs_and_writes_its_figures(tmp_path, monkeypatch):
    m = load_script('postprocess_bench')
    monkeypatch.setattr(m, 'CASES', {'tiny': (3, (4, 6), (16, 24), (15, 22))})
    out = tmp_path / 'pp.json'
    assert m.main(['--threads', '1', '--rounds', '1', '--calls', '2', '--json', str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r['cases']['tiny']) == {'contiguous+dim1', 'contiguous+last',
                                       'channels_last+dim1', 'channels_last+last'}
    assert all(v > 0 for v in r['cases']['tiny'].values())
