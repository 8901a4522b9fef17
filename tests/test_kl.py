"""tok.kl: the closed-form KL against a Monte-Carlo estimate, the KL schedules at chosen
steps, free bits per unit."""

from __future__ import annotations

import math

import pytest
import torch

from tok.errors import ConfigError
from tok.kl import KLSchedule, free_bits_kl, gaussian_kl, reparameterize


def test_closed_form_kl_matches_a_monte_carlo_estimate():
    """E_q[log q(z) − log p(z)] over 400,000 reparameterised samples per unit agrees with
    ½ (μ² + σ² − log σ² − 1) within 4 standard errors of the estimate."""
    mean = torch.tensor([0.0, 1.5, -0.7, 0.3, 2.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, -1.0, 0.8, -2.5, 0.4], dtype=torch.float64)
    n = 400_000
    g = torch.Generator().manual_seed(0)
    z = reparameterize(mean.expand(n, -1), logvar.expand(n, -1), generator=g)
    log_q = -0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    samples = log_q - log_p
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    closed = gaussian_kl(mean, logvar).double()
    assert torch.all((estimate - closed).abs() < 4 * stderr + 1e-9), (estimate, closed)
    assert closed[0] == 0 and torch.all(closed[1:] > 0)


def test_reparameterised_sample_carries_gradients_to_mean_and_logvar():
    mean = torch.zeros(3, 4, requires_grad=True)
    logvar = torch.zeros(3, 4, requires_grad=True)
    reparameterize(mean, logvar).pow(2).sum().backward()
    assert mean.grad is not None and logvar.grad is not None
    assert logvar.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("schedule", "values"),
    [
        (KLSchedule(name="constant"), {0: 1.0, 500: 1.0}),
        (
            KLSchedule(name="linear", steps=1000, fraction=0.5),
            {0: 0.0, 250: 0.5, 499: 0.998, 500: 1.0, 999: 1.0},
        ),
        (
            KLSchedule(name="sigmoid", steepness=0.01, midpoint=500),
            {0: 1 / (1 + math.exp(5)), 500: 0.5, 1000: 1 / (1 + math.exp(-5))},
        ),
        (KLSchedule(name="cyclical", period=100), {0: 0.0, 50: 0.5, 99: 0.99, 100: 0.0, 150: 0.5}),
    ],
    ids=["constant", "linear", "sigmoid", "cyclical"],
)
def test_schedules_give_their_beta_at_chosen_steps(schedule, values):
    for step, beta in values.items():
        assert schedule(step) == pytest.approx(beta), step


def test_sigmoid_far_before_its_midpoint_is_zero_not_an_overflow():
    assert KLSchedule(name="sigmoid", steepness=1.0, midpoint=10_000)(0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "cosine"}, "use one of constant, linear, sigmoid, cyclical"),
        ({"name": "linear", "fraction": 0.0}, "fraction = 0.0"),
        ({"name": "sigmoid", "steepness": -1.0}, "steepness = -1.0"),
        ({"name": "cyclical", "period": 0}, "period = 0"),
    ],
)
def test_bad_schedules_name_the_bad_value(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        KLSchedule(**kwargs)


def test_free_bits_clamp_each_unit_not_the_sum():
    """Batch-mean KLs 0.1 and 2.0 nats with a floor of 0.5: 0.5 + 2.0 = 2.5 (a floor on
    the sum would give max(0.5, 2.1) = 2.1); the clamped unit gets no gradient, the
    other its full one."""
    kl = torch.tensor([[0.05, 1.5], [0.15, 2.5]], requires_grad=True)  # (b=2, d=2)
    loss = free_bits_kl(kl, 0.5)
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert torch.equal(kl.grad[:, 0], torch.zeros(2))
    assert torch.allclose(kl.grad[:, 1], torch.full((2,), 0.5))
    assert free_bits_kl(kl, 0.0).item() == pytest.approx(0.1 + 2.0)


def test_free_bits_apply_per_grid_position_too():
    """A latent grid ``(b, h, w, d)``: each (position, dimension) is a unit of its own."""
    kl = torch.zeros(4, 2, 3, 5)
    kl[..., 0] = 1.0
    assert free_bits_kl(kl, 0.25).item() == pytest.approx(2 * 3 * (1.0 + 4 * 0.25))


def test_free_bits_must_be_a_finite_nonnegative_number():
    with pytest.raises(ConfigError, match="free bits"):
        free_bits_kl(torch.zeros(2, 3), -0.1)
