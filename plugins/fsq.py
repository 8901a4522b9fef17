"""Finite Scalar Quantization (FSQ).

Mentzer, Minnen, Agustsson, Tschannen: "Finite Scalar Quantization: VQ-VAE
Made Simple", 2023. https://arxiv.org/abs/2309.15505

Each latent channel is bounded to a small range and rounded to one of
``L_i`` levels; the codebook is the implicit product grid of the levels, so
there is nothing to learn, collapse or synchronise. Indices are the mixed-radix
number of the per-channel digits.

Axis legend: ``b`` batch, ``...`` grid axes, ``d`` latent channels,
``c`` codebooks (streams), ``l`` channels per codebook (``len(levels)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from tok import Quantizer, QuantizerOutput, hookimpl
from tok.errors import ConfigError
from tok.metrics import batch_code_metrics

__all__ = ["FSQ", "PAPER_LEVELS", "levels_for"]

#: Recommended levels per target codebook size (the paper's Table 1).
PAPER_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def levels_for(codebook_size: int) -> list[int]:
    """The paper's recommended levels for a target codebook size (2^8 … 2^16).

    The product of the returned levels is close to, not always equal to,
    ``codebook_size`` (2^10 → ``[8, 5, 5, 5]``, 1000 codes).
    """
    if codebook_size not in PAPER_LEVELS:
        sizes = ", ".join(f"2^{int(math.log2(k))}" for k in PAPER_LEVELS)
        raise ConfigError(
            f"no recommended FSQ levels for codebook_size {codebook_size}; "
            f"the paper gives levels for {sizes} — or pass levels=[...] yourself"
        )
    return list(PAPER_LEVELS[codebook_size])


def exists(x: Any) -> bool:
    return x is not None


class _RoundSTE(torch.autograd.Function):
    """Round in the forward pass, identity gradient in the backward pass.

    Unlike ``z + (z.round() - z).detach()`` this returns exactly the rounded
    values, so ``quantized`` equals ``indices_to_codes(indices)`` bit for bit.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.round()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


round_ste = _RoundSTE.apply


class FSQ(Quantizer):
    """Finite scalar quantization with an implicit codebook of ``prod(levels)`` codes.

    :param levels: levels per channel, each ≥ 2 (e.g. ``[8, 5, 5, 5]``).
    :param codebook_size: instead of ``levels``, a size from the paper's table.
    :param dim: latent channels of the input; a linear projection in and out is
        added when it differs from ``num_codebooks * len(levels)``.
    :param num_codebooks: independent FSQ codebooks, one index stream each.
    :param eps: how far the bound extends past the outermost levels.
    """

    paper = "https://arxiv.org/abs/2309.15505"

    def __init__(
        self,
        *,
        levels: list[int] | None = None,
        codebook_size: int | None = None,
        dim: int | None = None,
        num_codebooks: int = 1,
        eps: float = 1e-3,
    ) -> None:
        if exists(levels) == exists(codebook_size):
            raise ConfigError("FSQ needs exactly one of levels=[...] or codebook_size=...")
        if exists(codebook_size):
            levels = levels_for(codebook_size)
        if (
            not isinstance(levels, (list, tuple))
            or not levels
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in levels)
        ):
            raise ConfigError(
                f"invalid FSQ levels {levels!r}: give a non-empty list of integers, each at least 2"
            )
        if not isinstance(num_codebooks, int) or num_codebooks < 1:
            raise ConfigError(f"FSQ num_codebooks must be a positive integer, got {num_codebooks!r}")
        self.levels = [int(v) for v in levels]
        self.num_codebooks = num_codebooks
        self.eps = float(eps)
        code_dim = len(self.levels) * num_codebooks
        dim = code_dim if dim is None else dim
        size = math.prod(self.levels)
        super().__init__(dim=dim, codebook_sizes=(size,) * num_codebooks)

        self.project_in = nn.Linear(dim, code_dim) if dim != code_dim else nn.Identity()
        self.project_out = nn.Linear(code_dim, dim) if dim != code_dim else nn.Identity()

        lv = torch.tensor(self.levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor([1, *self.levels[:-1]], dtype=torch.int64), 0)
        half_l = (lv.double() - 1) * (1 + self.eps) / 2
        offset = (lv % 2 == 0).double() * 0.5
        # Derived from the config, so not saved with the weights.
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).float(), persistent=False)

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """The paper's 2^10 levels behind a projection (6 → 4 channels)."""
        return {"levels": [8, 5, 5, 5], "dim": 6}

    def config(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "dim": self.dim,
            "num_codebooks": self.num_codebooks,
            "eps": self.eps,
        }

    # the method, in small steps ------------------------------------------

    def bound(self, z: Tensor) -> Tensor:
        """Squash each channel into ``(-L/2, L/2)``, shifted by half a step for even ``L``."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def _round(self, z: Tensor) -> Tensor:
        """Integer levels ``r`` in ``[-(L//2), (L-1)//2]`` with a straight-through gradient."""
        return round_ste(self.bound(z))

    def _levels_to_indices(self, r: Tensor) -> Tensor:
        digits = (r.detach() + self._half_width).long()
        return (digits * self._basis).sum(-1)

    def _indices_to_levels(self, indices: Tensor) -> Tensor:
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels
        return (digits - self._half_width.long()).float()

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (b, ..., d)``; returns float32 codes and ``(b, ..., c)`` indices."""
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = self.project_in(z.float())
            z = rearrange(z, "b ... (c l) -> b ... c l", c=self.num_codebooks)
            r = self._round(z)
            indices = self._levels_to_indices(r)
            codes = rearrange(r / self._half_width, "b ... c l -> b ... (c l)")
            quantized = self.project_out(codes)
        return QuantizerOutput(
            quantized=quantized,
            indices=indices,
            aux_loss=quantized.new_zeros(()),
            metrics=batch_code_metrics(indices, self.codebook_sizes),
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(b, ..., c)`` indices → ``(b, ..., d)`` codes (out-of-range indices raise)."""
        indices = self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            r = self._indices_to_levels(indices)
            codes = rearrange(r / self._half_width, "b ... c l -> b ... (c l)")
            return self.project_out(codes)


@hookimpl
def register_quantizers(register):
    register(FSQ, name="fsq")
