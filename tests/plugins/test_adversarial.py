"""Tests for tok.plugins.adversarial: VQGAN's adaptive weight, hinge / non-saturating
losses, LeCam regularisation, the start step, and exact resume with a discriminator."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file
from torch import nn

from tok.components import build
from tok.errors import ConfigError, RecipeError
from tok.losses import LossInputs, compute_losses
from tok.plugins.adversarial import Adversarial, PatchGAN, adaptive_weight, lecam_regularizer
from tok.run import Run
from tok.train import train


def test_adaptive_weight_is_the_ratio_of_the_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3, bias=False)
    x, y = torch.randn(4, 5), torch.randn(4, 3)
    out = layer(x)
    rec = (out - y).pow(2).sum()
    gan = (out * torch.tensor([1.0, -2.0, 0.5])).sum()
    # by hand: d rec / dW = 2 (Wx - y)^T x, d gan / dW = c^T (sum of x)
    g_rec = 2 * (out.detach() - y).T @ x
    g_gan = torch.tensor([1.0, -2.0, 0.5])[:, None] * x.sum(0)[None, :]
    expected = g_rec.norm() / (g_gan.norm() + 1e-4)
    got = adaptive_weight(rec, gan, layer.weight)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not got.requires_grad
    (rec + got * gan).backward()  # the graphs were kept for the step's own backward
    assert layer.weight.grad is not None


def test_adaptive_weight_is_clamped_to_ten_thousand():
    w = nn.Parameter(torch.ones(2, 2))
    big = (w * 1e6).sum()
    tiny = (w * 1e-9).sum()
    assert adaptive_weight(big, tiny, w).item() == 1e4


def test_hinge_and_non_saturating_losses_by_hand():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.3])
    hinge = Adversarial(objective="hinge")
    # D: mean(relu(1 - r)) + mean(relu(1 + f)) = mean(0.5, 0) + mean(0, 1.3)
    assert hinge.discriminator_loss(real, fake).item() == pytest.approx(0.25 + 0.65)
    assert hinge.generator_loss(fake).item() == pytest.approx(0.85)  # -mean(f)
    ns = Adversarial(objective="non_saturating")

    def softplus(v):
        return math.log1p(math.exp(v))

    d = (softplus(-0.5) + softplus(-2.0)) / 2 + (softplus(-2.0) + softplus(0.3)) / 2
    assert ns.discriminator_loss(real, fake).item() == pytest.approx(d, rel=1e-6)
    g = (softplus(2.0) + softplus(-0.3)) / 2
    assert ns.generator_loss(fake).item() == pytest.approx(g, rel=1e-6)


def test_lecam_regularizer_by_hand():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    # mean((r - a_F)^2) + mean((f - a_R)^2) with a_R = 0.5, a_F = -0.5
    value = lecam_regularizer(real, fake, torch.tensor(0.5), torch.tensor(-0.5))
    assert value.item() == pytest.approx((2.25 + 12.25) / 2 + (2.25 + 0.25) / 2)


def _batch(step, others=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 32, 32, generator=g)
    recon = (x + 0.2 * torch.randn(4, 3, 32, 32, generator=g)).requires_grad_(True)
    return LossInputs(x, recon, None, step, others=others)


def test_nothing_happens_before_the_start_step_then_the_discriminator_trains():
    torch.manual_seed(0)
    loss = Adversarial(start_step=5, adaptive=False, lecam_weight=0.1, lecam_decay=0.9)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    out = loss(_batch(4))
    assert out.loss.item() == 0.0
    assert loss.update(_batch(4)) == {}
    assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())
    out = loss(_batch(5))
    assert out.loss.item() != 0.0 and out.loss.requires_grad
    with torch.no_grad():
        real = loss.discriminator(_batch(5).inputs).mean()
        fake = loss.discriminator(_batch(5).reconstruction).mean()
    metrics = loss.update(_batch(5))
    assert {"d_loss", "lecam", "real_logits", "fake_logits"} <= set(metrics)
    # the moving averages took one step of decay 0.9 from 0
    assert loss.ema_real.item() == pytest.approx(0.1 * real.item(), rel=1e-4)
    assert loss.ema_fake.item() == pytest.approx(0.1 * fake.item(), rel=1e-4)
    assert not torch.equal(before["discriminator.net.0.weight"], loss.discriminator.net[0].weight)


def test_the_generator_step_leaves_no_gradient_on_the_discriminator():
    loss = Adversarial(adaptive=False)
    loss(_batch(0)).loss.backward()
    assert all(p.grad is None for p in loss.discriminator.parameters())


def test_patchgan_gives_one_logit_per_patch_and_judges_videos_frame_by_frame():
    d = PatchGAN(in_channels=3, channels=8, layers=3)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert d(torch.rand(2, 3, 5, 64, 64)).shape == (10, 1, 6, 6)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="objective"):
        Adversarial(objective="wasserstein")
    with pytest.raises(ConfigError, match="lecam_decay"):
        Adversarial(lecam_decay=1.0)
    with pytest.raises(ConfigError, match="disc_lr"):
        Adversarial(disc_lr=0)


def test_compute_losses_hands_the_other_terms_to_the_adversarial_loss():
    losses = {"l1": build("losses", "l1", {}), "adversarial": Adversarial(adaptive=False)}
    seen = {}
    original = losses["adversarial"].forward

    def spy(batch):
        seen["others"] = batch.others
        return original(batch)

    losses["adversarial"].forward = spy
    batch = _batch(0)
    terms = compute_losses(losses, batch)
    assert list(terms) == ["l1", "adversarial"]
    assert seen["others"].item() == pytest.approx(terms["l1"].loss.item())


ADVERSARIAL = [
    "losses.adversarial.start_step=2",
    "losses.adversarial.lecam_weight=0.01",
    "losses.adversarial.disc_channels=8",
    "train.ema_decay=0.9",
]


def _recipe(tmp_path, name, *extra):
    return tiny_recipe(tmp_path / name, *ADVERSARIAL, *extra, steps=6)


def test_a_run_with_a_discriminator_and_ema_resumes_exactly(tmp_path):
    straight = train(_recipe(tmp_path, "a"), progress=False)
    stopped = train(_recipe(tmp_path, "b"), progress=False, stop_after=3)
    resumed = train(Run.open(stopped.run_dir).recipe(), resume=True, progress=False)
    assert resumed.step == 6
    a = load_file(straight.run_dir / "state.safetensors")
    b = load_file(resumed.run_dir / "state.safetensors")
    assert a.keys() == b.keys()
    assert "loss/adversarial/model.discriminator.net.0.weight" in a
    assert any(k.startswith("loss/adversarial/optim/discriminator.") for k in a)
    assert "ema.updates" in a and int(a["ema.updates"]) == 6
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the adaptive weight and the discriminator's numbers are logged from the start step on
    rows = Run.open(resumed.run_dir).log_rows()
    logged = [r["losses"]["adversarial"] for r in rows if r["split"] == "train"]
    assert "adaptive_weight" not in logged[0] and "adaptive_weight" in logged[2]
    assert "d_loss" in logged[2]


def test_a_misspelt_adversarial_key_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="start_stp"):
        _recipe(tmp_path, "c", "losses.adversarial.start_stp=3")
