"""The ``Quantizer`` interface every quantizer plugin implements.

Shapes (einops legend used across tok):

- ``b`` batch, ``...`` the grid axes (1 for sequences, 2 for images, 3 for
  video), ``d`` latent channels, ``s`` streams (codebooks).

A quantizer maps ``z: (b, ..., d)`` to a :class:`QuantizerOutput` whose
``indices`` are ``(b, ..., s)`` int64, and maps indices back with
:meth:`Quantizer.indices_to_codes`.

Robustness rules every quantizer keeps (and :func:`tok.testing.check_quantizer`
checks), with the helpers here that make them one line each:

- **Non-finite input** (:func:`nonfinite_positions`, :func:`mask_nonfinite`): a
  position whose input vector holds a NaN or ±inf gets index 0 in every stream
  whose input it reached and a NaN ``quantized`` vector — indices never leave
  ``[0, K)``, and the NaN is never hidden. Such positions are left out of the
  usage metrics, counted in ``metrics["nonfinite"]``, and never reach learned
  state (EMA statistics, k-means, dead-code restart).
- **Cast modules** (:class:`Projection`, :attr:`Quantizer.float32_buffers`): after
  ``module.to(torch.bfloat16)`` or ``.half()`` a quantizer still quantizes in
  float32 and returns float32 ``quantized``; learned statistics stay float32
  buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bottleneck import Bottleneck
from .errors import IndexRangeError

__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "Projection",
    "projection",
    "nonfinite_positions",
    "mask_nonfinite",
]


def nonfinite_positions(z: Tensor) -> Tensor:
    """Bool ``(b, ...)``: true where the vector ``z[b, ..., :]`` holds a NaN or ±inf.

    ``isnan(sum(z * 0))``: ``0 * x`` is 0 for finite ``x`` and NaN for NaN and ±inf, so
    the sum is exact (it cannot overflow); on a CPU it is over ten times faster than
    ``isfinite(z).all(-1)``, whose boolean reduction over a short last axis is slow.
    """
    return torch.isnan(z.detach().mul(0).sum(-1))


def mask_nonfinite(bad: Tensor, indices: Tensor, quantized: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the rule for non-finite inputs: index 0 and a NaN ``quantized`` where ``bad``.

    :param bad: bool ``(b, ...)`` (:func:`nonfinite_positions`).
    :param indices: int64 ``(b, ..., s)``; whatever they hold at ``bad`` becomes 0.
    :param quantized: float ``(b, ..., d)``; NaN at ``bad`` (the gradient there is zero).
    :returns: ``(indices, quantized)``: new tensors, or the same ones on a CPU when
        nothing is ``bad`` (there the check is cheaper than the masking; on other devices
        the masking always runs, to avoid a host synchronisation).
    """
    if bad.device.type == "cpu" and not bool(bad.any()):
        return indices, quantized
    mask = bad.unsqueeze(-1)
    return indices.masked_fill(mask, 0), quantized.masked_fill(mask, float("nan"))


class Projection(nn.Linear):
    """``nn.Linear`` that computes in float32 whatever dtype its module was cast to.

    Quantizers project into and out of their code space with it, so that
    ``quantizer.to(torch.bfloat16)`` keeps quantization in float32: the input and
    the (possibly bf16) weights are promoted, the output is float32. Its state
    dict is ``nn.Linear``'s (``weight``, ``bias``).
    """

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias)


def projection(in_features: int, out_features: int) -> nn.Module:
    """A :class:`Projection` from ``in_features`` to ``out_features`` channels, or
    ``nn.Identity`` when they are equal."""
    if in_features == out_features:
        return nn.Identity()
    return Projection(in_features, out_features)


@dataclass(frozen=True)
class QuantizerOutput:
    """What every quantizer returns from ``forward``.

    - ``quantized``: same shape as the input ``z``, float32 (or wider);
      gradients reach ``z``.
    - ``indices``: int64 ``(b, ..., s)``, one index per stream.
    - ``aux_loss``: scalar tensor already weighted (zero where the method has none).
    - ``metrics``: detached scalar tensors (``usage``, ``perplexity``,
      ``nonfinite`` — how many positions of ``z`` held a NaN or ±inf —, …).
    """

    quantized: Tensor
    indices: Tensor
    aux_loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def latent(self) -> Tensor:
        """What the decoder reads: ``quantized`` (the name every bottleneck output shares,
        :class:`tok.bottleneck.LatentOutput`)."""
        return self.quantized


class Quantizer(Bottleneck):
    """Base class of quantizers: the discrete :class:`tok.bottleneck.Bottleneck`.
    Subclasses set ``codebook_sizes`` and implement ``forward``, ``indices_to_codes``
    and ``config``.

    Constructors take keyword-only arguments, and ``cls(**q.config())`` rebuilds an
    equivalent quantizer; all learned state lives in parameters and buffers
    (``paper``, ``supplied_args`` and ``float32_buffers``: see
    :class:`tok.bottleneck.Bottleneck`).
    """

    discrete: ClassVar[bool] = True

    def __init__(self, *, dim: int, codebook_sizes: tuple[int, ...]) -> None:
        super().__init__(dim=dim)
        self.codebook_sizes = tuple(int(k) for k in codebook_sizes)

    @property
    def num_streams(self) -> int:
        """How many indices each position carries (``s``)."""
        return len(self.codebook_sizes)

    @property
    def bits_per_position(self) -> float:
        """Information per grid position: ``sum(log2 K)`` over streams."""
        import math

        return sum(math.log2(k) for k in self.codebook_sizes)

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(b, ..., s)`` indices → ``(b, ..., d)`` codes, equal to ``quantized`` in eval mode."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """JSON-serialisable keyword arguments that rebuild this quantizer."""
        raise NotImplementedError

    # helpers for subclasses -------------------------------------------------

    def check_indices(self, indices: Tensor) -> Tensor:
        """Validate ``(b, ..., s)`` indices against the codebook sizes; return them as int64."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.is_complex():
            raise IndexRangeError(f"token indices must be integers, got {indices.dtype}")
        if indices.ndim < 2 or indices.shape[-1] != self.num_streams:
            raise IndexRangeError(
                f"token indices must have shape (batch, *grid, {self.num_streams}), "
                f"got {tuple(indices.shape)}"
            )
        indices = indices.long()
        if indices.numel():
            sizes = torch.tensor(self.codebook_sizes, device=indices.device)
            flat = indices.reshape(-1, self.num_streams)
            bad = (flat < 0) | (flat >= sizes)
            if bool(bad.any()):
                row, stream = (int(i) for i in bad.nonzero()[0])
                raise IndexRangeError(
                    f"token index {int(flat[row, stream])} in stream {stream} is out of range "
                    f"for codebook size {self.codebook_sizes[stream]} (valid: 0..{self.codebook_sizes[stream] - 1})"
                )
        return indices
