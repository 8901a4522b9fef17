"""The Gaussian (VAE) bottleneck, tok.plugins.gaussian (not yet registered or trained:
issue 14 wires it into the registry, the recipes and the training loop)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tok.errors import ConfigError
from tok.plugins.gaussian import Gaussian


@pytest.mark.parametrize("grid", [(), (7,), (4, 4), (2, 3, 3)])
def test_shapes_dtypes_and_the_kl_of_every_unit(grid):
    g = Gaussian(**Gaussian.example_config())
    z = torch.randn(5, *grid, 8)
    out = g(z)
    assert out.latent.shape == z.shape and out.latent.dtype == torch.float32
    assert out.mean.shape == out.kl.shape == (5, *grid, 3)
    assert out.aux_loss.shape == () and torch.isfinite(out.aux_loss)
    assert torch.all(out.kl >= 0)
    per_item = out.kl.detach().sum(tuple(range(1, out.kl.ndim))).mean()
    assert out.metrics["kl"].item() == pytest.approx(per_item.item())
    assert sorted(k for k in out.metrics if k.startswith("kl_dim")) == [
        "kl_dim0",
        "kl_dim1",
        "kl_dim2",
    ]


def test_train_mode_samples_and_eval_mode_is_the_mean():
    g = Gaussian(dim=6, latent_dim=6)
    z = torch.randn(4, 3, 6)
    g.train()
    a, b = g(z).latent, g(z).latent
    assert not torch.equal(a, b)  # two samples
    g.eval()
    out = g(z)
    assert torch.equal(out.latent, g(z).latent)
    assert torch.equal(out.latent, g.latent_to_codes(out.mean))


def test_gradients_reach_the_encoder_output_through_the_sample_and_the_kl():
    g = Gaussian(dim=8, latent_dim=3)
    z = torch.randn(4, 5, 8, requires_grad=True)
    out = g(z)
    (out.latent.square().mean() + out.aux_loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_the_schedule_counts_train_steps_only_and_resumes_from_the_state(tmp_path):
    """β(t) of a linear warm-up over 10 steps (f = 0.5, T = 10): 0, 0.2, 0.4 …; eval
    forwards do not count; the counter is a buffer, so a saved state resumes it."""
    g = Gaussian(dim=4, latent_dim=2, kl_schedule="linear", kl_fraction=0.5, steps=10)
    z = torch.randn(3, 4)
    betas = [g(z).metrics["beta"].item() for _ in range(3)]
    assert betas == pytest.approx([0.0, 0.2, 0.4])
    g.eval()
    assert g(z).metrics["beta"].item() == pytest.approx(0.6) and int(g.step) == 3
    save_file(g.state_dict(), tmp_path / "g.safetensors")
    h = Gaussian(**g.config())
    h.load_state_dict(load_file(tmp_path / "g.safetensors"))
    h.train()
    assert h(z).metrics["beta"].item() == pytest.approx(0.6)
    assert h.config() == g.config()


def test_aux_loss_is_beta_times_the_free_bits_kl():
    g = Gaussian(dim=4, latent_dim=4, beta=0.5, free_bits=0.25)
    g.eval()
    out = g(torch.randn(6, 4))
    floored = out.kl.mean(0).clamp(min=0.25).sum()
    assert out.aux_loss.item() == pytest.approx(0.5 * floored.item())


def test_bf16_autocast_keeps_the_bottleneck_in_float32():
    g = Gaussian(dim=8, latent_dim=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = g(torch.randn(2, 4, 8))
    assert out.latent.dtype == out.mean.dtype == out.kl.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"dim": 4, "latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"dim": 4, "beta": -1.0}, "beta must be"),
        ({"dim": 4, "free_bits": float("nan")}, "free_bits must be"),
        ({"dim": 4, "kl_schedule": "cosine"}, "kl_schedule = 'cosine'"),
    ],
)
def test_bad_options_are_one_error_naming_them(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        Gaussian(**kwargs)


def test_wrong_input_and_latent_shapes_are_errors():
    g = Gaussian(dim=4, latent_dim=2)
    with pytest.raises(ConfigError, match=r"\(batch, \*grid, 4\)"):
        g(torch.randn(3, 5))
    with pytest.raises(ConfigError, match=r"\(batch, \*grid, 2\)"):
        g.latent_to_codes(torch.randn(3, 4))


def test_sample_draws_around_the_mean_with_the_posterior_spread_and_keeps_the_step():
    torch.manual_seed(0)
    g = Gaussian(dim=6, latent_dim=6).eval()  # latent_dim == dim: the latent is the sample
    z = torch.randn(1, 1, 6).expand(20000, 1, 6)
    draws = g.sample(z, generator=torch.Generator().manual_seed(1))
    out = g(z[:1])
    std = (0.5 * g.to_moments(z[:1]).chunk(2, -1)[1]).exp()
    assert torch.allclose(draws.mean(0), out.mean[0], atol=4 * float(std.max()) / 20000**0.5)
    assert torch.allclose(draws.std(0), std[0], rtol=0.05)
    assert int(g.step) == 0
