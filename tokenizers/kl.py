"""The KL term of a Gaussian (VAE) bottleneck: its closed form, its weight over training
(KL annealing) and free bits.

- :func:`reparameterize`: z = μ + σ·ε, the sample gradients flow through.
- :func:`gaussian_kl`: KL(N(μ, σ²) ‖ N(0, 1)) of every latent unit, in nats, in closed
  form — ½ (μ² + σ² − log σ² − 1) — as in Kingma & Welling 2013, "Auto-Encoding
  Variational Bayes" (https://arxiv.org/abs/1312.6114), appendix B.
- :class:`KLSchedule`: the KL weight β(t) at training step t (0-based). ``constant``:
  1; ``linear``: min(1, t / (f·T)) (the warm-up of Bowman et al. 2016,
  https://arxiv.org/abs/1511.06349); ``sigmoid``: 1 / (1 + exp(−k (t − t0)));
  ``cyclical``: (t mod P) / P (after Fu et al. 2019, https://arxiv.org/abs/1903.10145).
- :func:`free_bits_kl`: the KL with a floor of λ nats on each latent unit's batch-mean
  KL (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
  Flow", https://arxiv.org/abs/1606.04934, §C.8): a unit below the floor costs λ and
  gets no gradient, so the encoder may use it without paying for it.

Axis legend: ``b`` batch, ``...`` grid axes (none for an MLP's latent vector), ``d``
latent dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["KL_SCHEDULES", "KLSchedule", "free_bits_kl", "gaussian_kl", "reparameterize"]

#: the names :class:`KLSchedule` takes
KL_SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, 1)) of each latent unit, in nats.

    :param mean: float ``(b, ..., d)``, the posterior means μ.
    :param logvar: float, the same shape: log σ².
    :returns: float32 ``(b, ..., d)``, each ≥ 0 (0 exactly where μ = 0 and σ = 1).
    """
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - logvar - 1.0)


def free_bits_kl(kl: Tensor, floor: float) -> Tensor:
    """The KL of a batch with free bits: Σ over latent units of max(floor, batch mean of
    the unit's KL), in nats per item.

    Every unit of ``(..., d)`` — each dimension at each grid position — has its own
    floor; the floor never applies to the sum. ``floor = 0`` gives the plain batch-mean
    KL per item.

    :param kl: float ``(b, ..., d)`` per-unit KL (:func:`gaussian_kl`).
    :param floor: λ, nats per unit, ≥ 0.
    :returns: a float32 scalar.
    :raises ConfigError: a negative or non-finite ``floor``.
    """
    if not math.isfinite(floor) or floor < 0:
        raise ConfigError(f"free bits must be a finite number of nats ≥ 0, got {floor}")
    per_unit = kl.float().mean(0)  # (..., d)
    return per_unit.clamp(min=floor).sum() if floor else per_unit.sum()


@dataclass(frozen=True, kw_only=True)
class KLSchedule:
    """β(t), the weight of the KL term at training step ``t`` (0-based), in [0, 1]; the
    bottleneck multiplies it by its own weight.

    :param name: ``"constant"``, ``"linear"``, ``"sigmoid"`` or ``"cyclical"``.
    :param steps: T, the run's training steps (``linear`` only).
    :param fraction: f of ``linear``: β reaches 1 after f·T steps (0 < f ≤ 1).
    :param steepness: k of ``sigmoid``, per step (> 0).
    :param midpoint: t0 of ``sigmoid``, the step where β = ½ (≥ 0).
    :param period: P of ``cyclical``, in steps (≥ 1).
    :raises ConfigError: an unknown name or a parameter out of range, naming it.
    """

    name: str = "constant"
    steps: int = 1
    fraction: float = 0.5
    steepness: float = 0.01
    midpoint: float = 0.0
    period: int = 1000

    def __post_init__(self) -> None:
        if self.name not in KL_SCHEDULES:
            raise ConfigError(f"kl_schedule = {self.name!r}: use one of {', '.join(KL_SCHEDULES)}")
        problems = {
            "steps": self.steps >= 1,
            "fraction": 0 < self.fraction <= 1,
            "steepness": math.isfinite(self.steepness) and self.steepness > 0,
            "midpoint": math.isfinite(self.midpoint) and self.midpoint >= 0,
            "period": self.period >= 1,
        }
        bad = [k for k, ok in problems.items() if not ok]
        if bad:
            name = bad[0]
            raise ConfigError(
                f"kl_schedule {self.name}: {name} = {getattr(self, name)} is out of range"
            )

    def __call__(self, step: int) -> float:
        """β at 0-based training step ``step``."""
        if self.name == "linear":
            return min(1.0, step / (self.fraction * self.steps))
        if self.name == "sigmoid":
            x = -self.steepness * (step - self.midpoint)
            return 0.0 if x > 700 else 1.0 / (1.0 + math.exp(x))  # exp(709) overflows
        if self.name == "cyclical":
            return (step % self.period) / self.period
        return 1.0


def reparameterize(
    mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """A sample z = μ + σ·ε, ε ~ N(0, I), differentiable in μ and log σ² (the
    reparameterisation trick, Kingma & Welling 2013 §2.4). Same shape and dtype as
    ``mean``."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + (0.5 * logvar).exp() * eps
