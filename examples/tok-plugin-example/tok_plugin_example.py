"""An example tok plugin: binary (sign) quantization.

Each latent channel is quantized to ``-1`` or ``+1``, one bit per channel,
as in binary autoencoders and the "lookup-free" quantizer of MAGVIT-v2
(Yu et al., "Language Model Beats Diffusion — Tokenizer Is Key to Visual
Generation", 2023, https://arxiv.org/abs/2310.05737) without its entropy loss.

The ``dim`` channels are split into ``dim // bits`` groups of ``bits``
channels; each group is one index stream with ``2 ** bits`` codes, the
index being the group's bits read as a binary number (channel ``i`` of a
group is bit ``i``, ``+1`` is a one). Grouping keeps codebooks a sane size
for a language model (``bits=4`` → 16 codes per stream) while the number of
bits per position stays ``dim``.

Axis legend: ``b`` batch, ``...`` grid axes, ``d`` latent channels,
``s`` streams (groups), ``k`` bits per stream.

The whole plugin is this module plus two lines of ``pyproject.toml``::

    [project.entry-points.tok]
    example = "tok_plugin_example"
"""

from __future__ import annotations

from typing import Any

import torch
from tok import Quantizer, QuantizerOutput, hookimpl
from tok.errors import ConfigError
from tok.metrics import batch_code_metrics
from tok.quantizer import mask_nonfinite, nonfinite_positions
from torch import Tensor

__all__ = ["BinaryQuantizer"]


def sign_codes(z: Tensor) -> Tensor:
    """``+1`` where ``z >= 0``, else ``-1`` (never 0, unlike ``torch.sign``)."""
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def straight_through(z: Tensor, codes: Tensor) -> Tensor:
    """``codes`` in value, the identity in the backward pass.

    ``z - z.detach()`` is exactly zero, so the result equals ``codes`` bit for
    bit, which keeps ``indices_to_codes(indices) == quantized`` exact.
    """
    return codes + (z - z.detach())


class BinaryQuantizer(Quantizer):
    """Quantize every channel to ``±1``; ``bits`` channels form one index stream.

    :param dim: latent channels; must be divisible by ``bits``.
    :param bits: channels (bits) per stream, so each stream has ``2 ** bits``
        codes; between 1 and 16.
    :param commitment: weight of ``mean((z - codes) ** 2)``, which pulls the
        latents towards ``±1`` (0 turns it off).
    """

    paper = "https://arxiv.org/abs/2310.05737"

    def __init__(self, *, dim: int, bits: int = 4, commitment: float = 0.0) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ConfigError(f"example-binary: bits must be an integer in 1..16, got {bits!r}")
        if isinstance(dim, int) and dim % bits:
            raise ConfigError(
                f"example-binary: dim {dim} is not divisible by bits {bits}; "
                f"choose bits from the divisors of dim"
            )
        if (
            isinstance(commitment, bool)
            or not isinstance(commitment, (int, float))
            or commitment < 0
        ):
            raise ConfigError(
                f"example-binary: commitment must be a number >= 0, got {commitment!r}"
            )
        super().__init__(dim=dim, codebook_sizes=(2**bits,) * (dim // bits))
        self.bits = bits
        self.commitment = float(commitment)
        # 1, 2, 4, … : the value of each bit within a stream. Derived from the
        # config, so not part of the saved weights.
        self.register_buffer("_powers", 2 ** torch.arange(bits), persistent=False)

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Three streams of 2 bits with a commitment loss, for ``check_quantizer``."""
        return {"dim": 6, "bits": 2, "commitment": 0.25}

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "bits": self.bits, "commitment": self.commitment}

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (b, ..., d)``; returns ``±1`` codes and ``(b, ..., s)`` indices."""
        self.check_input(z)
        z = z.float()
        bad = nonfinite_positions(z)  # b ...: a NaN or ±inf somewhere in the vector
        codes = sign_codes(z)  # b ... d
        ones = (codes.detach() > 0).long().unflatten(-1, (self.num_streams, self.bits))  # b ... s k
        # non-finite vectors: index 0 and a NaN code (tok's rule; the NaN is never hidden)
        indices, quantized = mask_nonfinite(bad, (ones * self._powers).sum(-1), codes)
        if self.commitment:
            aux_loss = self.commitment * (z - codes).pow(2).mean()
        else:
            aux_loss = z.new_zeros(())
        return QuantizerOutput(
            quantized=straight_through(z, quantized),
            indices=indices,
            aux_loss=aux_loss,
            metrics=batch_code_metrics(indices, self.codebook_sizes, nonfinite=bad),
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(b, ..., s)`` indices → ``(b, ..., d)`` ``±1`` codes (out-of-range indices raise)."""
        indices = self.check_indices(indices)
        ones = (indices.unsqueeze(-1) // self._powers) % 2  # b ... s k
        return (ones.flatten(-2) * 2 - 1).float()


@hookimpl
def register_quantizers(register):
    register(BinaryQuantizer, name="example-binary", aliases=("example-sign",))
