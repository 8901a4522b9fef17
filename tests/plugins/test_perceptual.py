"""Tests for tok.plugins.perceptual: the EfficientNet-Lite feature distance loss."""

from __future__ import annotations

import pytest
import torch

from tok.components import build
from tok.errors import ConfigError
from tok.features import efficientnet_lite
from tok.image_metrics import features_distance
from tok.losses import LossInputs
from tok.plugins.perceptual import Perceptual


def test_feature_distance_is_zero_for_equal_features_symmetric_and_bounded():
    torch.manual_seed(0)
    a = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2), torch.randn(2, 4, 1, 1)]  # + head
    b = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2), torch.randn(2, 4, 1, 1)]
    assert torch.equal(features_distance(a, a), torch.zeros(2))
    assert torch.allclose(features_distance(a, b), features_distance(b, a))
    assert ((features_distance(a, b) > 0) & (features_distance(a, b) <= 4)).all()
    # opposite unit vectors everywhere: the largest distance, 4
    assert torch.allclose(features_distance(a, [-f for f in a]), torch.full((2,), 4.0))


def test_the_loss_ranks_a_blurred_photo_crop_further_than_a_slightly_noisy_one_and_trains():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    x = torch.nn.functional.interpolate(x, size=64, mode="bilinear")  # smooth "image"
    x = (x + 0.3 * torch.rand(1, 3, 64, 64)).clamp(0, 1)  # with texture
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    noisy = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    loss = build("losses", "perceptual", {"weight": 2.0})
    far = loss(LossInputs(x, blurred, None, 0)).loss
    near = loss(LossInputs(x, noisy, None, 0)).loss
    assert far > near > 0
    recon = blurred.clone().requires_grad_(True)
    loss(LossInputs(x, recon, None, 0)).loss.backward()
    assert recon.grad.abs().sum() > 0
    # the backbone is frozen and is not part of the loss's state (not in checkpoints)
    assert loss.state_dict() == {}
    assert not any(p.requires_grad for p in efficientnet_lite("lite0").parameters())


def test_videos_are_judged_frame_by_frame():
    loss = Perceptual()
    x = torch.rand(1, 3, 2, 32, 32)
    per_frame = [loss(LossInputs(x[:, :, t], x[:, :, t].flip(-1), None, 0)).loss for t in range(2)]
    both = loss(LossInputs(x, x.flip(-1), None, 0)).loss
    assert both.item() == pytest.approx(sum(per_frame).item() / 2, rel=1e-5)


def test_an_unknown_network_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="lite0, lite1, lite2.*'lite9'"):
        Perceptual(network="lite9")
