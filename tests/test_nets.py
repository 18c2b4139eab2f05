"""The nets' own behaviour: what their layers compute, not only the shapes they return."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softcal.model.nets import DigitCNN, ResNet
from softcal.model.whitened_cnn import WhitenedCNN, conv3x3


def _patches(images: torch.Tensor) -> torch.Tensor:
    """Every 2x2 patch of every channel, as rows (the whitening layer's view of the data)."""
    p = images.double().unfold(2, 2, 1).unfold(3, 2, 1)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * 4)


def test_whitening_filters_decorrelate_the_training_patches():
    # Strongly correlated neighbouring pixels, as in natural images.
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(200, 3, 33, 33, generator=gen)
    images = (base[..., 1:, 1:] + base[..., :-1, 1:] + base[..., 1:, :-1]) / 3
    net = WhitenedCNN(3, 10, widths=(8, 16, 16))
    assert not net.whitening_fitted
    patches = _patches(images)
    assert (torch.corrcoef(patches.T) - torch.eye(12, dtype=torch.float64)).abs().max() > 0.3
    net.fit_whitening(images)
    assert net.whitening_fitted
    filters = net.whiten.weight.double().reshape(24, 12)
    responses = patches @ filters[:12].T  # the first 12 filters; the other 12 are their negatives
    covariance = responses.T @ responses / len(responses)
    # Unit variance along every direction the data has (eps only shrinks near-empty ones).
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=0.02)
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad


def test_convolutions_start_as_identities_on_shared_channels():
    conv = conv3x3(4, 6)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(conv(x)[:, :4], x)  # the first 4 output channels copy the input
    assert not torch.allclose(conv(x)[:, 4:], torch.zeros(2, 2, 5, 5))  # the rest: random init


def test_flip_averaging_applies_in_eval_only():
    torch.manual_seed(0)
    net = WhitenedCNN(3, 10, widths=(8, 16, 16))
    net.fit_whitening(torch.randn(64, 3, 32, 32))
    x = torch.randn(5, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        averaged = net(x)
        views = (net.logits(x), net.logits(x.flip(3)))
    assert torch.allclose(averaged, (views[0] + views[1]) / 2, atol=1e-5)
    assert not torch.allclose(averaged, views[0], atol=1e-3)
    net.flip_average = False
    with torch.no_grad():
        assert torch.allclose(net(x), views[0])


def test_translate_averaging_adds_the_one_pixel_shifts_of_each_view():
    torch.manual_seed(0)
    net = WhitenedCNN(3, 10, widths=(8, 16, 16), translate_average=True)
    net.fit_whitening(torch.randn(64, 3, 32, 32))
    x = torch.randn(5, 3, 32, 32)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, 2:, 2:], padded[:, :, :-2, :-2]
    assert torch.equal(up_left[:, :, 0, 0], x[:, :, 1, 1])
    assert torch.equal(down_right[:, :, 1, 1], x[:, :, 0, 0])
    views = [x, x.flip(3), up_left, down_right, up_left.flip(3), down_right.flip(3)]
    net.eval()
    with torch.no_grad():
        expected = torch.stack([net.logits(v) for v in views]).mean(0)
        assert torch.allclose(net(x), expected, atol=1e-5)
        net.flip_average = False  # the image and its two shifts
        unmirrored = torch.stack([net.logits(v) for v in (x, up_left, down_right)]).mean(0)
        assert torch.allclose(net(x), unmirrored, atol=1e-5)
    net.train()  # training sees the image alone, whatever the test-time views
    assert len(net.test_views(x)) == 1


def test_small_nets_and_resnet_start_sensibly():
    # DigitCNN refuses images its poolings would erase; ResNet's residual branches start at
    # zero, so each block is the identity plus its shortcut at initialisation.
    with pytest.raises(ValueError, match="poolings leave nothing"):
        DigitCNN(1, 10, image_size=4, widths=(8, 8, 8))
    net = ResNet(3, 10, base_width=8, blocks=(1, 1))
    assert all(not block.body[2].weight.detach().any() for block in net.stages)


def test_digit_cnn_strided_stem_and_pool_before_norm_compute_their_layers():
    """configs/mnist.yaml's DigitCNN: a stride-2 first conv (no pool after it), then blocks
    that pool before the BatchNorm and ReLU; the defaults keep the original layout."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    net = DigitCNN(1, 10, widths=(8, 16, 32), stem_stride=2, pool_before_norm=True).eval()
    stem, block = net.features[0], net.features[1]
    assert stem[0].stride == (2, 2) and not any(isinstance(m, torch.nn.MaxPool2d) for m in stem)
    h = F.relu(stem[1](F.conv2d(x, stem[0].weight, stride=2, padding=1)))
    assert h.shape[-1] == 14  # 28 -> 14 by the stride alone
    expected = F.relu(block[2](F.max_pool2d(F.conv2d(h, block[0].weight, padding=1), 2)))
    assert torch.allclose(block(h), expected, atol=1e-6)
    assert net.classifier.in_features == 32 * 3 * 3  # 28 -> 14 -> 7 -> 3
    assert net(x).shape == (4, 10)
    # The defaults: conv-BN-ReLU then a pool per width, as checkpoints of that layout expect.
    plain = DigitCNN(1, 10, widths=(8, 16, 32))
    assert [type(m).__name__ for m in plain.features] == ["Sequential", "MaxPool2d"] * 3
    assert "features.0.1.running_mean" in plain.state_dict()
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        DigitCNN(1, 10, stem_stride=3)


@pytest.mark.slow
def test_compiled_bf16_training_step_has_finite_gradients():
    """torch.compile + bf16 autocast (configs/gpu.yaml's settings) on this net: the global
    max-pool must not be the form whose compiled backward returns NaN."""
    torch.manual_seed(0)
    net = WhitenedCNN(3, 10, widths=(16, 32, 32))
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    net.fit_whitening(x)
    with torch.autocast("cpu", torch.bfloat16):
        out = torch.compile(net)(x)
    F.cross_entropy(out.float(), y).backward()
    bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad
