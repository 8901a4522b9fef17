"""Gaussian (VAE) bottleneck: a continuous latent in place of a quantizer.

Kingma & Welling 2013, "Auto-Encoding Variational Bayes", https://arxiv.org/abs/1312.6114.
Two linear heads (one projection to 2·l channels) turn the encoder's ``z`` into the
posterior's mean μ and log-variance log σ² per latent dimension; in train mode the
latent is the reparameterised sample μ + σ·ε, in eval mode μ itself; everything runs in
float32, also under autocast. The KL to N(0, I) is in closed form per latent unit
(:func:`tok.kl.gaussian_kl`); ``aux_loss`` is β·β(t)·KL, with β(t) from the KL schedule
(:class:`tok.kl.KLSchedule`, t counted by the bottleneck itself in a buffer, so a
checkpoint resumes it) and, with ``free_bits`` λ > 0, each unit's batch-mean KL floored
at λ nats (:func:`tok.kl.free_bits_kl`).

Axis legend: ``b`` batch, ``...`` grid axes, ``d`` the encoder's channels (``dim``),
``l`` latent dimensions (``latent_dim``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tok import hookimpl
from tok.bottleneck import ContinuousBottleneck, LatentOutput
from tok.errors import ConfigError
from tok.kl import KLSchedule, free_bits_kl, gaussian_kl, reparameterize
from tok.quantizer import Projection, projection

__all__ = ["Gaussian"]

#: log σ² is clamped to this range before it is used: exp(±30) keeps σ² and its
#: gradient finite in float32, far outside what a trained posterior holds
LOGVAR_RANGE = (-30.0, 20.0)


class Gaussian(ContinuousBottleneck):
    """A diagonal-Gaussian posterior with a N(0, I) prior.

    :param dim: channels of the encoder output ``z`` (``d``; supplied by tok from the
        architecture's ``latent_dim``).
    :param latent_dim: latent dimensions ``l`` (default ``dim``).
    :param beta: the KL weight (1: the ELBO).
    :param kl_schedule: ``"constant"``, ``"linear"``, ``"sigmoid"`` or ``"cyclical"``.
    :param kl_fraction: f of ``linear`` (β(t) reaches 1 after f·steps).
    :param kl_steepness: k of ``sigmoid``, per step.
    :param kl_midpoint: t0 of ``sigmoid``, in steps.
    :param kl_period: P of ``cyclical``, in steps.
    :param steps: the run's training steps T (supplied by tok from ``train.steps``).
    :param free_bits: λ, nats per latent unit (0: none).
    :raises ConfigError: a parameter out of range, naming it.
    """

    paper = "https://arxiv.org/abs/1312.6114"
    supplied_args = ("dim", "steps")

    def __init__(
        self,
        *,
        dim: int,
        latent_dim: int | None = None,
        beta: float = 1.0,
        kl_schedule: str = "constant",
        kl_fraction: float = 0.5,
        kl_steepness: float = 0.01,
        kl_midpoint: float = 0.0,
        kl_period: int = 1000,
        steps: int = 1,
        free_bits: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, latent_dim=dim if latent_dim is None else latent_dim)
        if not math.isfinite(beta) or beta < 0:
            raise ConfigError(f"gaussian: beta must be a finite number ≥ 0, got {beta}")
        if not math.isfinite(free_bits) or free_bits < 0:
            raise ConfigError(f"gaussian: free_bits must be a finite number ≥ 0, got {free_bits}")
        self.beta, self.free_bits = beta, free_bits
        self.schedule = KLSchedule(
            name=kl_schedule, steps=steps, fraction=kl_fraction, steepness=kl_steepness,
            midpoint=kl_midpoint, period=kl_period,
        )  # fmt: skip
        #: one projection to [μ, log σ²] (2·l channels): the two heads in one matmul
        self.to_moments = Projection(dim, 2 * self.latent_dim)
        self.out = projection(self.latent_dim, dim)
        #: training steps taken (train-mode forwards): t of the KL schedule
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """A small instance with a latent narrower than its input and annealing."""
        return {"dim": 8, "latent_dim": 3, "kl_schedule": "linear", "steps": 10}

    def forward(self, z: Tensor) -> LatentOutput:
        """``z``: float ``(b, ..., d)`` → :class:`tok.bottleneck.LatentOutput` with
        ``mean`` μ and ``kl`` per unit; ``metrics``: ``kl`` (nats per item), ``beta``
        (the weight used this step) and ``kl_dim{j}`` (dimension j's KL averaged over the
        batch and grid positions). In train mode the latent is a sample and the step
        counter advances."""
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):  # float32 throughout
            mean, logvar = self.to_moments(z.float()).chunk(2, dim=-1)
            logvar = logvar.clamp(*LOGVAR_RANGE)
            sample = reparameterize(mean, logvar) if self.training else mean
            latent = self.out(sample).float()
        kl = gaussian_kl(mean, logvar)
        weight = self.beta * self.schedule(int(self.step))
        aux = weight * free_bits_kl(kl, self.free_bits)
        if self.training:
            self.step += 1
        per_dim = kl.detach().reshape(-1, self.latent_dim).mean(0)
        metrics = {
            "kl": per_dim.sum() * (kl[0].numel() // self.latent_dim),  # per item
            "beta": torch.tensor(weight),
            **{f"kl_dim{j}": v for j, v in enumerate(per_dim.unbind())},
        }
        return LatentOutput(latent=latent, mean=mean, kl=kl, aux_loss=aux, metrics=metrics)

    @torch.no_grad()
    def sample(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """μ + σ·ε brought to the decoder's ``d`` channels, ε drawn with ``generator``:
        float32 ``(b, ..., d)``; the step counter does not move."""
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            mean, logvar = self.to_moments(z.float()).chunk(2, dim=-1)
            return self.out(reparameterize(mean, logvar.clamp(*LOGVAR_RANGE), generator)).float()

    def latent_to_codes(self, latent: Tensor) -> Tensor:
        """Stored latents (means, ``(b, ..., l)``) → what the decoder reads,
        ``(b, ..., d)`` float32: equal to ``forward(z).latent`` in eval mode."""
        self.check_latent(latent)
        with torch.autocast(device_type=latent.device.type, enabled=False):
            return self.out(latent.float()).float()

    def config(self) -> dict[str, Any]:
        """JSON-serialisable keyword arguments that rebuild this bottleneck."""
        s = self.schedule
        return {
            "dim": self.dim, "latent_dim": self.latent_dim, "beta": self.beta,
            "kl_schedule": s.name, "kl_fraction": s.fraction, "kl_steepness": s.steepness,
            "kl_midpoint": s.midpoint, "kl_period": s.period, "steps": s.steps,
            "free_bits": self.free_bits,
        }  # fmt: skip


@hookimpl
def register_bottlenecks(register):
    register(Gaussian, name="gaussian", aliases=("vae",))
