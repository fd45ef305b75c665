"""The mIoU-aimed losses (class weights by hand, OHEM, Lovasz-softmax against a brute-force
Jaccard), the bf16 CPU training step, and the config plumbing of both."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dovit_ros.model import DoViTSegmenter, ViTConfig
from dovit_ros.train.losses import (LossConfig, class_frequencies, dovit_loss, lovasz_grad,
                                    lovasz_softmax, median_frequency_weights, seg_ce)

pytestmark = pytest.mark.usefixtures('one_thread')


def test_median_frequency_weights_by_hand():
    # two 4-pixel images: A = [0, 0, 0, 1], B = [0, 2, 2, 255 (ignored)]
    labels = [np.array([[0, 0], [0, 1]], np.uint8), np.array([[0, 2], [2, 255]], np.uint8)]
    pixels, image_pixels = class_frequencies(labels, 4)
    assert pixels.tolist() == [4, 1, 2, 0]
    assert image_pixels.tolist() == [7, 4, 3, 0]   # class 0 in both (4 + 3 labelled pixels)
    f = np.array([4 / 7, 1 / 4, 2 / 3])            # median 4/7
    w = median_frequency_weights(pixels, image_pixels)
    np.testing.assert_allclose(w, [1.0, (4 / 7) / f[1], (4 / 7) / f[2], 0.0])
    np.testing.assert_allclose(median_frequency_weights(pixels, image_pixels, 0.5), np.sqrt(w))
    np.testing.assert_allclose(median_frequency_weights(pixels, image_pixels, 0.0),
                               [1, 1, 1, 0])   # power 0: plain CE, unseen classes still 0


def test_weighted_ce_and_ohem_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]]).T[None, :, None]
    target = torch.tensor([[[0, 1, 0, 255]]])   # (1, 1, 4); last pixel ignored
    px = -F.log_softmax(logits, 1).gather(1, target.clamp(max=1)[:, None])[0, 0, 0]  # (4,)
    w = torch.tensor([1.0, 3.0])
    want = (px[0] * 1 + px[1] * 3 + px[2] * 1) / 5
    assert float(seg_ce(logits, target, 255, w)) == pytest.approx(float(want))
    hardest = sorted(px[:3].tolist())[-2:]     # 2 of 3 labelled pixels (fraction 0.67)
    assert float(seg_ce(logits, target, 255, None, 0.67)) == pytest.approx(np.mean(hardest))


def brute_force_lovasz(p: torch.Tensor, y: torch.Tensor) -> float:
    """The Lovasz extension of 1 - Jaccard at the error vector, by its definition as the
    greedy sum over the sorted errors: sum_i err_(i) * (J(prefix_i) - J(prefix_{i-1}))."""
    total, classes = 0.0, y.unique().tolist()
    for c in classes:
        fg = (y == c).float()
        err = (fg - p[:, c]).abs()
        order = sorted(range(len(err)), key=lambda i: -float(err[i]))
        prev = 0.0
        for i in range(1, len(order) + 1):
            pred_wrong = set(order[:i])   # pixels counted as errors in this prefix
            inter = sum(1 for j in range(len(y)) if fg[j] and j not in pred_wrong)
            union = fg.sum().item() + sum(1 for j in pred_wrong if not fg[j])
            jl = 1 - inter / union
            total += float(err[order[i - 1]]) * (jl - prev) / len(classes)
            prev = jl
    return total


def test_lovasz_softmax_matches_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, 5, generator=g)
    target = torch.randint(0, 3, (1, 2, 5), generator=g)
    target[0, 0, 0] = 255
    got = float(lovasz_softmax(logits, target))
    keep = target.flatten() != 255
    p = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 3)[keep]
    assert got == pytest.approx(brute_force_lovasz(p, target.flatten()[keep]), rel=1e-5)
    # a perfect, confident prediction has zero loss; the gradient is a partition of J
    perfect = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    assert float(lovasz_softmax(perfect, target)) == pytest.approx(0, abs=1e-6)
    for gt in itertools.product([0.0, 1.0], repeat=4):
        t = torch.tensor(gt)
        if t.sum() > 0:
            assert float(lovasz_grad(t).sum()) == pytest.approx(1.0)


def test_lovasz_on_a_pixel_sample_estimates_the_full_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 60, 80, generator=g)
    target = torch.randint(0, 4, (2, 60, 80), generator=g)
    target[:, :5] = 255
    full = float(lovasz_softmax(logits, target))
    # a sample at least as large as the labelled pixels is all of them
    assert float(lovasz_softmax(logits, target, max_pixels=2 * 60 * 80)) == pytest.approx(full)
    torch.manual_seed(0)
    sampled = [float(lovasz_softmax(logits, target, max_pixels=2000)) for _ in range(4)]
    assert len(set(sampled)) > 1                       # a new sample each call
    assert sum(sampled) / 4 == pytest.approx(full, rel=0.03)
    with pytest.raises(ValueError, match='lovasz_pixels'):
        LossConfig(lovasz_pixels=-1)


def test_loss_config_is_validated():
    with pytest.raises(ValueError, match='class_weights'):
        LossConfig(class_weights='inverse')
    with pytest.raises(ValueError, match='ohem_fraction'):
        LossConfig(ohem_fraction=0)
    with pytest.raises(ValueError, match='lovasz_weight'):
        LossConfig(lovasz_weight=-1)


def _refine_model() -> DoViTSegmenter:
    torch.manual_seed(0)
    cfg = ViTConfig(num_classes=4, dim=32, depth=4, heads=2, decision_points=(1, 2, 3),
                    img_size=(64, 64), conv_stem=True, decoder='refine', refine_dims=(16, 8),
                    decoder_dim=16)
    return DoViTSegmenter(cfg).train()


def test_bf16_cpu_training_step_tracks_fp32():
    """The CPU bf16 path (autocast, channels-last stem): finite, its loss and gradients close
    to fp32's, and it trains (loss falls over a few steps on a fixed batch)."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    cfg = LossConfig(class_weights='median_frequency', power=0.5, lovasz_weight=0.5)
    w = [1.0, 2.0, 0.5, 1.5]
    grads, losses = {}, {}
    for bf16 in (False, True):
        m = _refine_model()
        m.patch_embed.to(memory_format=torch.channels_last)
        m.refine.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        seq = []
        for _ in range(6):
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
                out = m.forward_train(xc)
            loss, _ = dovit_loss(out, y, 1.0, loss=cfg, class_weight=w)
            opt.zero_grad()
            loss.backward()
            if not seq:
                grads[bf16] = torch.cat([p.grad.flatten() for p in m.parameters()])
            opt.step()
            seq.append(loss.item())
        losses[bf16] = seq
        assert all(np.isfinite(seq)) and seq[-1] < seq[0]
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.02)
    cos = F.cosine_similarity(grads[True], grads[False], dim=0)
    assert float(cos) > 0.98
