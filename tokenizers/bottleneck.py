"""The bottleneck between an encoder and its decoder: discrete (a quantizer) or continuous.

A tokenizer's encoder gives channel-last latents ``z: (b, ..., d)``; its bottleneck
turns them into what the decoder reads, ``latent: (b, ..., d)``, and into what tok
stores: token indices for a :class:`tok.Quantizer`, latent vectors for a
:class:`ContinuousBottleneck` (the Gaussian of a VAE). Both kinds share this base —
keyword-only construction, ``config()`` that rebuilds them, ``supplied_args``,
float32 statistics — and differ only in what they store:

=====================  ===================================  ==================================
                       :class:`tok.Quantizer` (discrete)    :class:`ContinuousBottleneck`
=====================  ===================================  ==================================
registered by          ``register_quantizers``              ``register_bottlenecks``
recipe table           ``[quantizer]``                      ``[bottleneck]``
``forward`` returns    :class:`tok.QuantizerOutput`         :class:`LatentOutput`
what tok stores        ``indices`` int ``(b, ..., s)``      ``mean`` float ``(b, ..., l)``
back to the decoder    ``indices_to_codes(indices)``        ``latent_to_codes(mean)``
its rate               ``bits_per_position`` (log2 K)       ``kl`` per unit (nats)
=====================  ===================================  ==================================

Both outputs have ``latent`` (what the decoder reads), ``aux_loss`` and ``metrics``,
so the training loop treats them alike; nothing forces indices on a continuous
bottleneck or a KL on a quantizer.

Axis legend: ``b`` batch, ``...`` grid axes, ``d`` the encoder's channels, ``l`` the
continuous latent's dimensions, ``s`` streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["Bottleneck", "ContinuousBottleneck", "LatentOutput"]


class Bottleneck(nn.Module):
    """Base of every bottleneck: :class:`tok.Quantizer` and :class:`ContinuousBottleneck`.

    Constructors take keyword-only arguments and ``cls(**b.config())`` rebuilds an
    equivalent bottleneck; all learned state lives in parameters and buffers.
    """

    #: a link to the paper the method comes from (shown by ``tok quantizers``/``tok plugins``)
    paper: ClassVar[str] = ""

    #: ``True`` for quantizers (integer tokens), ``False`` for continuous bottlenecks
    discrete: ClassVar[bool] = True

    #: constructor arguments tok fills in when a recipe leaves them out: ``dim`` is the
    #: architecture's ``latent_dim``, ``steps`` the run's ``train.steps`` (see
    #: :mod:`tok.components`).
    supplied_args: ClassVar[tuple[str, ...]] = ("dim",)

    #: buffers holding learned statistics (EMA sums, counts, an EMA codebook): they stay
    #: float32 when the module is cast (``.to(torch.bfloat16)``, ``.half()``), so the
    #: statistics keep accumulating at full precision; moves between devices apply.
    float32_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"{type(self).__name__}: dim must be a positive integer, got {dim!r}")
        self.dim = dim

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Keyword arguments that build a small, representative instance (what the
        conformance checks build when given no ``config``). The default is ``{"dim": 8}``."""
        return {"dim": 8}

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """JSON-serialisable keyword arguments that rebuild this bottleneck."""
        raise NotImplementedError

    def check_input(self, z: Tensor) -> None:
        """Raise :class:`ConfigError` unless ``z`` is a float ``(b, ..., dim)`` tensor."""
        if not z.is_floating_point() or z.ndim < 2 or z.shape[-1] != self.dim:
            raise ConfigError(
                f"{type(self).__name__} expects a float tensor (batch, *grid, {self.dim}), "
                f"got {tuple(z.shape)} {z.dtype}"
            )

    def _apply(self, fn: Any, recurse: bool = True) -> Bottleneck:
        # nn.Module.to / .half / .cuda all go through _apply: keep float32_buffers float32
        kept = {
            n: self._buffers[n] for n in self.float32_buffers if self._buffers.get(n) is not None
        }
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


@dataclass(frozen=True)
class LatentOutput:
    """What every continuous bottleneck returns from ``forward``.

    - ``latent``: float32 ``(b, ..., d)``, what the decoder reads (a sample in train
      mode, for a stochastic bottleneck; in eval mode ``latent_to_codes(mean)``);
      gradients reach ``z``.
    - ``mean``: float32 ``(b, ..., l)``, the latent tok stores (``tok encode``) — the
      posterior mean of a Gaussian.
    - ``kl``: float32 ``(b, ..., l)``, each latent unit's rate in nats (the KL to the
      prior; zeros for a deterministic bottleneck), unweighted.
    - ``aux_loss``: scalar tensor, already weighted (the β-weighted KL of a VAE).
    - ``metrics``: detached scalar tensors (``kl``, ``beta``, ``kl_dim{j}`` …).
    """

    latent: Tensor
    mean: Tensor
    kl: Tensor
    aux_loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class ContinuousBottleneck(Bottleneck):
    """Base of continuous bottlenecks (registered through ``register_bottlenecks``).

    Subclasses set ``latent_dim`` (``l``) and implement ``forward`` (→
    :class:`LatentOutput`), ``latent_to_codes`` and ``config``;
    :func:`tok.testing.check_bottleneck` checks the contract.
    """

    discrete: ClassVar[bool] = False

    #: ``False`` for a deterministic bottleneck (a plain autoencoder's, ``kl`` all zeros):
    #: then no dimension counts as collapsed and training does not warn about them
    stochastic: ClassVar[bool] = True

    def __init__(self, *, dim: int, latent_dim: int) -> None:
        super().__init__(dim=dim)
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(
                f"{type(self).__name__}: latent_dim must be a positive integer, got {latent_dim!r}"
            )
        self.latent_dim = latent_dim

    def forward(self, z: Tensor) -> LatentOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def latent_to_codes(self, latent: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Stored latents ``(b, ..., l)`` → what the decoder reads, float32 ``(b, ..., d)``,
        equal to ``forward(z).latent`` in eval mode for ``latent = forward(z).mean``."""
        raise NotImplementedError

    def sample(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """A decoder input drawn from the posterior q(· | z): float32 ``(b, ..., d)``,
        without touching any state (evaluation's one-sample estimate of the ELBO's
        reconstruction term). The default, for a deterministic bottleneck, is the eval-mode
        ``latent``; a stochastic one overrides it and draws with ``generator``."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self(z).latent
        finally:
            self.train(was_training)

    def check_latent(self, latent: Tensor) -> None:
        """Raise :class:`ConfigError` unless ``latent`` is a float ``(b, ..., latent_dim)``
        tensor."""
        if not latent.is_floating_point() or latent.ndim < 2 or latent.shape[-1] != self.latent_dim:
            raise ConfigError(
                f"latents of {type(self).__name__} must be a float tensor "
                f"(batch, *grid, {self.latent_dim}), got {tuple(latent.shape)} {latent.dtype}"
            )
