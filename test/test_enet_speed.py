"""scripts/enet_speed.py's ENet: the reference CNN the model issue's speed bar is set against
must be the paper's network (its size and output), or the comparison means nothing."""

import torch

from script_module import load_script


def test_enet_has_the_papers_size_and_a_full_resolution_output():
    m = load_script('enet_speed')
    enet = m.ENet(11).eval()
    # Paszke et al. 2016, table 3: 0.37 M parameters
    n = sum(p.numel() for p in enet.parameters())
    assert 0.35e6 < n < 0.39e6, n
    with torch.no_grad():
        for h, w in ((360, 480), (64, 96)):
            assert enet(torch.randn(1, 3, h, w)).shape == (1, 11, h, w)
    labels, conf = m.enet_frame(enet, torch.randn(1, 3, 64, 96))
    assert labels.shape == conf.shape == (1, 64, 96)
    assert bool(((conf > 0) & (conf <= 1)).all())


def test_fastest_layout_keeps_the_outputs():
    m = load_script('enet_speed')
    enet = m.ENet(5).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = enet(x)
    fast, xf, name = m.fastest_layout(enet, x, calls=1)
    assert name in ('contiguous', 'channels_last')
    with torch.no_grad():
        torch.testing.assert_close(fast(xf), ref, rtol=1e-4, atol=1e-4)


def test_enet_folds_like_ours_and_keeps_its_outputs():
    from dovit_ros.model import fold_batchnorm
    m = load_script('enet_speed')
    torch.manual_seed(0)
    enet = m.ENet(5).eval()
    with torch.no_grad():   # trained-like statistics, so that folding has something to do
        for mod in enet.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = enet(x)
    bns = sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in enet.modules())
    # every BN but the one after the initial block's concatenation follows a layer
    assert fold_batchnorm(enet) == bns - 1
    with torch.no_grad():
        torch.testing.assert_close(enet(x), ref, rtol=1e-4, atol=1e-4)


def test_the_whole_comparison_runs_on_the_shipped_model(tmp_path):
    """main() end to end (one timed call of each): it broke once when the bench's model loader
    gained a setting the script's own arguments lacked."""
    import json

    import cv2
    import numpy as np
    m = load_script('enet_speed')
    img = tmp_path / 'frame.png'
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (360, 480, 3), np.uint8))
    out = tmp_path / 'r.json'
    assert m.main(['--image', str(img), '--threads', '1', '--runs', '1', '--warmup', '0',
                   '--json', str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r['height'], r['width'], r['threshold']) == (360, 480, 0.8)
    assert r['enet_ms'] > 0 and r['full_ms'] > 0 and r['pruned_ms'] > 0
    assert r['enet_over_pruned'] == r['enet_ms'] / r['pruned_ms']
