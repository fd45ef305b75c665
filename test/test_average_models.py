"""scripts/average_models.py: the weighted average of model directories' weights."""
import math

import pytest
import torch
from script_module import load_script

from dovit_ros.ros.harness import make_test_model
from dovit_ros.runtime.artifacts import load_model, read_meta

avg = load_script('average_models')


def test_weights_are_normalised_and_checked():
    assert avg.check_weights([1, 3], 2) == [0.25, 0.75]
    for bad in ([1, -1], [0, 0], [1, math.nan], [1, math.inf]):
        with pytest.raises(ValueError, match='finite'):
            avg.check_weights(bad, 2)
    with pytest.raises(ValueError, match='2 models but 3 weights'):
        avg.check_weights([1, 1, 1], 2)


def test_floating_tensors_are_mixed_in_their_own_dtype():
    a = {'w': torch.tensor([0.0, 2.0]), 'h': torch.tensor([1.0, 3.0], dtype=torch.bfloat16),
         'bn.num_batches_tracked': torch.tensor(125), 'k': torch.tensor([4, 5])}
    b = {'w': torch.tensor([4.0, 6.0]), 'h': torch.tensor([3.0, 5.0], dtype=torch.bfloat16),
         'bn.num_batches_tracked': torch.tensor(500), 'k': torch.tensor([4, 5])}
    out = avg.average_state([a, b], [0.25, 0.75])
    assert torch.equal(out['w'], torch.tensor([3.0, 5.0]))            # 0.25 a + 0.75 b
    assert out['h'].dtype == torch.bfloat16
    assert torch.equal(out['h'], torch.tensor([2.5, 4.5], dtype=torch.bfloat16))
    assert int(out['bn.num_batches_tracked']) == 500                   # a counter: the largest
    assert torch.equal(out['k'], a['k'])


@pytest.mark.parametrize('change, message', [
    ({'k': torch.tensor([4, 6])}, 'integer tensor differs'),
    ({'w': torch.zeros(3)}, 'shapes differ'),
    ({'extra': torch.zeros(1)}, 'other tensors'),
])
def test_models_that_do_not_match_are_refused(change, message):
    a = {'w': torch.zeros(2), 'k': torch.tensor([4, 5])}
    with pytest.raises(ValueError, match=message):
        avg.average_state([a, {**a, **change}], [0.5, 0.5])


def test_average_of_two_model_directories_loads_and_names_its_inputs(tmp_path):
    p0 = make_test_model(tmp_path / 'a', seed=0)
    p1 = make_test_model(tmp_path / 'b', seed=1)
    out = tmp_path / 'soup'
    assert avg.main([str(p0), str(p1), '--out', str(out), '--weights', '1', '3']) == 0
    m, meta = load_model(out)
    m0, _ = load_model(p0)
    m1, _ = load_model(p1)
    k = 'blocks.0.attn.qkv.weight'
    want = 0.25 * m0.state_dict()[k] + 0.75 * m1.state_dict()[k]
    torch.testing.assert_close(m.state_dict()[k], want)
    assert meta.name == 'soup'
    assert [e['weight'] for e in meta.recipe['average_of']] == [0.25, 0.75]
    assert meta.recipe['average_of'][1]['sha256'] == read_meta(p1).weights_sha256
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 3, 64, 64)).logits).all()


def test_other_architectures_are_refused(tmp_path, capsys):
    p0 = make_test_model(tmp_path / 'a', dim=32)
    p1 = make_test_model(tmp_path / 'b', dim=48)
    assert avg.main([str(p0), str(p1), '--out', str(tmp_path / 'soup')]) == 2
    assert 'another architecture' in capsys.readouterr().err
    assert not (tmp_path / 'soup').exists()


def test_an_existing_model_is_never_overwritten(tmp_path, capsys):
    p0 = make_test_model(tmp_path / 'a', seed=0)
    p1 = make_test_model(tmp_path / 'b', seed=1)
    before = (p0 / 'model.safetensors').read_bytes()
    assert avg.main([str(p0), str(p1), '--out', str(p0)]) == 2
    assert 'not an empty folder' in capsys.readouterr().err
    assert (p0 / 'model.safetensors').read_bytes() == before
