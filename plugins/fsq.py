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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tok import Quantizer, QuantizerOutput, hookimpl
from tok.errors import ConfigError
from tok.helpers import exists
from tok.metrics import batch_code_metrics
from tok.quantizer import mask_nonfinite, nonfinite_positions, projection

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


def round_ste(x: Tensor) -> Tensor:
    """``x.round()`` with a straight-through gradient (plain ``round`` when no gradient is needed)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoundSTE.apply(x)
    return x.round()


# Per-channel constants are repeated this many times along the channel axis, so
# that ``x + c`` runs over a long contiguous inner axis (``(n, 64)`` rather than
# ``(16 n, 4)``): PyTorch's CPU kernels are several times faster that way.
_TILE = 16
# Indices are summed as float64 (exact below 2**53); larger codebooks use int64.
_EXACT_FLOAT64 = 2**53


@dataclass(frozen=True)
class _Constants:
    """FSQ's per-channel constants on one device (``p = num_codebooks * len(levels)``).

    Kept out of the module's buffers so that ``module.to(torch.bfloat16)``
    cannot round them.
    """

    shift: Tensor  # float32 (_TILE * p,): atanh(offset / half_l)
    half_l: Tensor  # float32 (_TILE * p,): (L - 1) (1 + eps) / 2
    offset: Tensor  # float32 (_TILE * p,): 0.5 for even L, else 0
    half_width: Tensor  # float32 (_TILE * p,): L // 2
    index_matrix: Tensor  # float64 (p, c): the mixed-radix basis of each codebook
    index_offset: float  # sum over one codebook of (L // 2) * basis


class FSQ(Quantizer):
    """Finite scalar quantization with an implicit codebook of ``prod(levels)`` codes.

    :param levels: levels per channel, each ≥ 2 (e.g. ``[8, 5, 5, 5]``).
    :param codebook_size: instead of ``levels``, a size from the paper's table.
    :param dim: latent channels of the input; a linear projection in and out is
        added when it differs from ``num_codebooks * len(levels)``.
    :param num_codebooks: independent FSQ codebooks, one index stream each.
    :param eps: how far the bound extends past the outermost levels, in
        ``(0, 1 / (max(levels) - 1))``.

    The codebook is never materialised: ``prod(levels)`` may be as large as
    int64 indices allow. Quantization runs in float32, also under autocast.
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
        if math.prod(levels) > 2**63 - 1:
            raise ConfigError(
                f"FSQ levels {list(levels)} give {math.prod(levels)} codes, more than int64 "
                f"indices can hold; use fewer levels or num_codebooks > 1"
            )
        if (
            isinstance(num_codebooks, bool)
            or not isinstance(num_codebooks, int)
            or num_codebooks < 1
        ):
            raise ConfigError(
                f"FSQ num_codebooks must be a positive integer, got {num_codebooks!r}"
            )
        max_eps = 1 / (max(levels) - 1)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < max_eps:
            raise ConfigError(
                f"FSQ eps must be in (0, {max_eps:.4g}) for levels {list(levels)} (beyond that "
                f"the bound reaches past the outermost level), got {eps!r}"
            )
        self.levels = [int(v) for v in levels]
        self.num_codebooks = num_codebooks
        self.eps = float(eps)
        self._code_dim = code_dim = len(self.levels) * num_codebooks
        dim = code_dim if dim is None else dim
        size = math.prod(self.levels)
        super().__init__(dim=dim, codebook_sizes=(size,) * num_codebooks)

        self.project_in = projection(dim, code_dim)
        self.project_out = projection(code_dim, dim)

        lv = torch.tensor(self.levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor([1, *self.levels[:-1]], dtype=torch.int64), 0)
        # Derived from the config, so not saved with the weights; integer, so
        # ``module.to(dtype)`` leaves them alone.
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_half_width", lv // 2, persistent=False)
        self._constants_by_device: dict[torch.device, _Constants] = {}

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

    # constants ------------------------------------------------------------

    def _constants(self, device: torch.device) -> _Constants:
        k = self._constants_by_device.get(device)
        if k is None:
            k = self._constants_by_device[device] = self._make_constants(device)
        return k

    def _make_constants(self, device: torch.device) -> _Constants:
        lv = torch.tensor(self.levels, dtype=torch.float64)
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = (lv % 2 == 0).double() * 0.5
        shift = torch.atanh(offset / half_l)
        half_width = torch.floor(lv / 2)
        basis = self._basis.cpu().double()
        c, n_levels = self.num_codebooks, len(self.levels)
        matrix = torch.zeros(c, n_levels, c, dtype=torch.float64)
        for i in range(c):
            matrix[i, :, i] = basis

        def tiled(x: Tensor) -> Tensor:
            return x.repeat(c * _TILE).float().to(device)

        return _Constants(
            shift=tiled(shift),
            half_l=tiled(half_l),
            offset=tiled(offset),
            half_width=tiled(half_width),
            index_matrix=matrix.reshape(c * n_levels, c).to(device),
            index_offset=float((half_width * basis).sum()),
        )

    def _tiled(self, x: Tensor) -> tuple[Tensor, int]:
        """View ``x (..., p)`` as ``(rows, m p)`` for the largest ``m ≤ _TILE`` that divides."""
        p = self._code_dim
        m = math.gcd(x.numel() // p, _TILE)
        return x.reshape(-1, m * p), m * p

    # the method, in small steps ------------------------------------------

    def bound(self, z: Tensor) -> Tensor:
        """Squash ``z (..., c l)`` into ``(-L/2, L/2)`` per channel, shifted half a step for even ``L``."""
        k = self._constants(z.device)
        x, n = self._tiled(z)
        return (torch.tanh(x + k.shift[:n]) * k.half_l[:n] - k.offset[:n]).view(z.shape)

    def _levels_to_indices(self, r: Tensor) -> Tensor:
        """Integer levels ``r (..., c l)`` → ``(..., c)`` mixed-radix indices."""
        r = r.detach()
        lead = r.shape[:-1]
        if self.codebook_sizes[0] <= _EXACT_FLOAT64:
            k = self._constants(r.device)
            flat = r.reshape(-1, self._code_dim).double()
            indices = torch.mm(flat, k.index_matrix).add_(k.index_offset).long()
        else:
            digits = r.reshape(-1, self.num_codebooks, len(self.levels)).long() + self._half_width
            indices = (digits * self._basis).sum(-1)
        return indices.view(*lead, self.num_codebooks)

    def _indices_to_levels(self, indices: Tensor) -> Tensor:
        """``(..., c)`` indices → float integer levels ``(..., c l)``."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels
        return (digits - self._half_width).flatten(-2).float()

    def _normalise(self, r: Tensor) -> Tensor:
        """Integer levels → codes in ``[-1, 1]``: ``r / (L // 2)``."""
        k = self._constants(r.device)
        x, n = self._tiled(r)
        return (x / k.half_width[:n]).view(r.shape)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (b, ..., d)``; returns float32 codes and ``(b, ..., c)`` indices."""
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = self.project_in(z.float())
            bad = nonfinite_positions(z)  # b ...
            r = round_ste(self.bound(z))  # b ... (c l), integer levels
            indices = self._levels_to_indices(r)  # b ... c
            quantized = self.project_out(self._normalise(r))
            indices, quantized = mask_nonfinite(bad, indices, quantized)
        return QuantizerOutput(
            quantized=quantized,
            indices=indices,
            aux_loss=quantized.new_zeros(()),
            metrics=batch_code_metrics(indices, self.codebook_sizes, nonfinite=bad),
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(b, ..., c)`` indices → ``(b, ..., d)`` codes (out-of-range indices raise)."""
        indices = self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self.project_out(self._normalise(self._indices_to_levels(indices)))


@hookimpl
def register_quantizers(register):
    register(FSQ, name="fsq")
