"""Lookup-Free Quantization (LFQ).

Yu, Lezama, Gundavarapu, et al.: "Language Model Beats Diffusion —
Tokenizer is Key to Visual Generation" (MAGVIT-v2), 2023.
https://arxiv.org/abs/2310.05737

Every latent channel is quantized to one bit, ``-s`` or ``+s``
(``s = codebook_scale``): the codebook is the implicit set of ``2^bits`` sign
patterns, so there is no lookup and nothing to collapse. Channel ``i`` of a
stream is bit ``i`` of its index (the first channel is the least significant
bit; vector-quantize-pytorch uses the opposite order). A channel exactly at 0
becomes ``-s`` (bit 0), as in vector-quantize-pytorch.

Training adds the paper's entropy loss: with the soft assignment
``p(c | z) = softmax_c(-inv_temperature * ||z - c||^2)`` over the codes of a
stream, minimise the mean per-sample entropy ``H[p(c | z)]`` (confident
assignments) and maximise ``diversity_gamma`` times the entropy of the batch
mean ``H[mean_z p(c | z)]`` (every code used). Because ``||c||^2`` is the same
for every code, ``p(c | z)`` factorises into independent bits,
``p(bit_i = 1 | z) = sigmoid(4 * inv_temperature * s * z_i)``, so:

- the per-sample entropy is exactly the sum of per-bit binary entropies, for
  any codebook size, at ``O(bits)`` cost per position;
- the batch entropy does not factorise. Up to ``2^14`` codes per stream it is
  exact: the distribution over the codes is the product of the distributions
  over the low and the high half of the bits, so the batch mean is one
  ``(2^hi, n) @ (n, 2^lo)`` matrix product per stream and the ``(n, 2^bits)``
  table is never built. Above ``2^14`` codes it is the sum of the per-bit
  entropies of the batch-mean bit probabilities, an upper bound on the exact
  value that is maximal when every bit is balanced over the batch (but does
  not see correlations between bits).

Entropies are in nats, averaged over streams, as in vector-quantize-pytorch.
Under ``torch.distributed`` the batch term is taken over every rank's batch
(a differentiable all-reduce, so with DDP's gradient averaging the loss and
its gradient are those of one process holding all the batches); the
per-sample and commitment terms are per rank.

Axis legend: ``b`` batch, ``...`` grid axes, ``n`` positions (batch and grid
flattened), ``d`` latent channels, ``c`` codebooks (streams), ``k`` bits per
codebook, ``h``/``l`` codes of the high/low half of a codebook's bits.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from tok import Quantizer, QuantizerOutput, hookimpl
from tok.errors import ConfigError
from tok.helpers import all_reduce_sum, exists, is_distributed
from tok.metrics import batch_code_metrics
from tok.quantizer import mask_nonfinite, nonfinite_positions, projection

__all__ = ["LFQ", "binary_entropy", "exact_batch_entropy", "factorised_batch_entropy"]

#: Above this many bits per codebook the batch entropy is the per-bit factorised bound.
EXACT_BATCH_ENTROPY_BITS = 14
# Indices fit in int64 (and ``codebook_sizes`` in a signed int64 tensor) up to 62 bits.
_MAX_BITS = 62
# Indices are computed as float32 sums of powers of two (exact below 2**24).
_EXACT_FLOAT32_BITS = 24
# Bit logits and the log-probabilities of half-codebook codes are clamped to
# [-30, 30] (e^-30 ≈ 9.4e-14): what is cut off changes an entropy by no more than
# float32 rounding does (measured against float64 at 2^14 codes: < 4e-7 nats).
# Without it the sharp default temperature fills the forward and
# backward tensors with subnormal float32 numbers, which make exp, products and
# matrix products over ten times slower on CPUs.
_MAX_LOGIT = 30.0


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def binary_entropy(logits: Tensor) -> Tensor:
    """Entropy in nats of ``Bernoulli(sigmoid(logits))``, elementwise.

    ``softplus(-|x|) + |x| sigmoid(-|x|)``: no cancellation for large ``|x|``
    (where the entropy is about ``|x| e^-|x|``), finite gradients everywhere.
    """
    a = logits.abs()
    return F.softplus(-a) + a * torch.sigmoid(-a)


def _entropy(p: Tensor) -> Tensor:
    """``-sum p log p`` over the last axis, with a finite gradient where ``p == 0``."""
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)


@functools.lru_cache(maxsize=64)
def _bit_table(bits: int, device: torch.device) -> Tensor:
    """``(bits, 2^bits)`` float32: entry ``(i, j)`` is bit ``i`` of ``j`` (cached, read-only)."""
    j = torch.arange(2**bits, device=device)
    return ((j >> torch.arange(bits, device=device).unsqueeze(-1)) & 1).float()


def _code_probs(logits: Tensor) -> Tensor:
    """Bit logits ``(n, c, k)`` → probabilities of all ``2^k`` codes ``(n, c, 2^k)``.

    ``log p(code) = sum_i log sigmoid(-x_i) + sum_i bit_i(code) x_i``.
    """
    table = _bit_table(logits.shape[-1], logits.device)
    log_p = logits @ table + F.logsigmoid(-logits).sum(-1, keepdim=True)
    return log_p.clamp_min(-_MAX_LOGIT).exp()


def _batch_mean(total: Tensor, n: int) -> Tensor:
    """``total / n``; under ``torch.distributed`` both are summed over ranks first.

    The sum is differentiable (its backward all-reduces the gradients), so under
    DDP, which averages gradients over ranks, the batch entropy and its gradient
    are those of one process holding every rank's batch.
    """
    if is_distributed():
        total = all_reduce_sum(total)
        count = torch.tensor([float(n)], device=total.device, dtype=torch.float64)
        torch.distributed.all_reduce(count)
        n = int(count.item())
    return total / max(n, 1)


def exact_batch_entropy(logits: Tensor) -> Tensor:
    """Entropy of the batch-mean code distribution, per codebook: ``(n, c, k)`` → ``(c,)``.

    Bits are independent given ``z``, so ``p(code) = p(high half) p(low half)``
    and the batch mean is ``P_high^T P_low / n`` for each codebook — ``O(n 2^k)``
    work in one matrix product, with ``O(n 2^(k/2) + 2^k)`` memory.
    """
    n, c, k = logits.shape
    lo = k // 2
    p_lo = rearrange(_code_probs(logits[..., :lo]), "n c l -> c n l")
    p_hi = rearrange(_code_probs(logits[..., lo:]), "n c h -> c h n")
    mean = _batch_mean(torch.bmm(p_hi, p_lo), n)  # c h l
    return _entropy(mean.flatten(1))


def factorised_batch_entropy(logits: Tensor) -> Tensor:
    """Sum over bits of the entropy of the batch-mean bit probability: ``(n, c, k)`` → ``(c,)``.

    An upper bound on :func:`exact_batch_entropy`, equal to it when the bits
    are independent over the batch.
    """
    q = _batch_mean(torch.sigmoid(logits).sum(0), logits.shape[0])  # c k
    return _entropy(torch.stack([q, 1 - q], -1)).sum(-1)


class LFQ(Quantizer):
    """Lookup-free quantization: one bit per channel, ``2^bits`` implicit codes per codebook.

    :param codebook_size: codes per codebook, a power of two (``2^bits``).
    :param bits: instead of ``codebook_size``, bits (channels) per codebook, 1…62.
    :param dim: latent channels of the input; a linear projection in and out is
        added when it differs from ``num_codebooks * bits``.
    :param num_codebooks: independent codebooks, one index stream each.
    :param entropy_weight: weight of the entropy loss (per-sample entropy minus
        ``diversity_gamma`` times batch entropy).
    :param commitment_weight: weight of the commitment loss, the mean squared
        distance between the (projected) input and its codes.
    :param diversity_gamma: weight of the batch entropy inside the entropy loss.
    :param inv_temperature: sharpness of the soft assignment used by the entropy loss.
    :param codebook_scale: the codes are ``±codebook_scale``.

    ``aux_loss`` is computed in train mode only (zero in eval mode).
    Quantization and losses run in float32, also under autocast.
    """

    paper = "https://arxiv.org/abs/2310.05737"

    def __init__(
        self,
        *,
        codebook_size: int | None = None,
        bits: int | None = None,
        dim: int | None = None,
        num_codebooks: int = 1,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        codebook_scale: float = 1.0,
    ) -> None:
        if exists(codebook_size) == exists(bits):
            raise ConfigError("LFQ needs exactly one of codebook_size=... or bits=...")
        if exists(codebook_size):
            if (
                not _is_int(codebook_size)
                or codebook_size < 2
                or codebook_size.bit_length() - 1 > _MAX_BITS
            ):
                raise ConfigError(
                    f"LFQ codebook_size must be a power of two from 2 to 2^{_MAX_BITS}, "
                    f"got {codebook_size!r}"
                )
            if codebook_size & (codebook_size - 1):
                raise ConfigError(
                    f"LFQ codebook_size must be a power of two (one bit per channel), got "
                    f"{codebook_size} (nearest: {2 ** (codebook_size.bit_length() - 1)} or "
                    f"{2 ** codebook_size.bit_length()})"
                )
            bits = codebook_size.bit_length() - 1
        if not _is_int(bits) or not 1 <= bits <= _MAX_BITS:
            raise ConfigError(f"LFQ bits must be an integer from 1 to {_MAX_BITS}, got {bits!r}")
        if not _is_int(num_codebooks) or num_codebooks < 1:
            raise ConfigError(
                f"LFQ num_codebooks must be a positive integer, got {num_codebooks!r}"
            )
        for name, value in (
            ("entropy_weight", entropy_weight),
            ("commitment_weight", commitment_weight),
            ("diversity_gamma", diversity_gamma),
        ):
            if not _is_number(value) or value < 0:
                raise ConfigError(f"LFQ {name} must be a finite number ≥ 0, got {value!r}")
        for name, value in (
            ("inv_temperature", inv_temperature),
            ("codebook_scale", codebook_scale),
        ):
            if not _is_number(value) or value <= 0:
                raise ConfigError(f"LFQ {name} must be a finite number > 0, got {value!r}")

        self.bits = bits
        self.num_codebooks = num_codebooks
        self.entropy_weight = float(entropy_weight)
        self.commitment_weight = float(commitment_weight)
        self.diversity_gamma = float(diversity_gamma)
        self.inv_temperature = float(inv_temperature)
        self.codebook_scale = float(codebook_scale)
        self._code_dim = code_dim = bits * num_codebooks
        dim = code_dim if dim is None else dim
        super().__init__(dim=dim, codebook_sizes=(2**bits,) * num_codebooks)

        self.project_in = projection(dim, code_dim)
        self.project_out = projection(code_dim, dim)
        # Derived from the config, so not saved with the weights; integer, so
        # ``module.to(dtype)`` leaves them alone.
        self.register_buffer("_shifts", torch.arange(bits), persistent=False)
        self._powers_by_device: dict[torch.device, Tensor] = {}

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Two 2^4-code streams behind a projection (6 → 8 channels), exact batch entropy."""
        return {"codebook_size": 16, "num_codebooks": 2, "dim": 6}

    def config(self) -> dict[str, Any]:
        return {
            "codebook_size": 2**self.bits,
            "dim": self.dim,
            "num_codebooks": self.num_codebooks,
            "entropy_weight": self.entropy_weight,
            "commitment_weight": self.commitment_weight,
            "diversity_gamma": self.diversity_gamma,
            "inv_temperature": self.inv_temperature,
            "codebook_scale": self.codebook_scale,
        }

    # the method, in small steps ------------------------------------------

    def _powers(self, device: torch.device) -> Tensor:
        """``(c k, c)`` float32 block matrix: bit ``i`` of codebook ``s`` weighs ``2^i`` in column ``s``."""
        m = self._powers_by_device.get(device)
        if m is None:
            c, k = self.num_codebooks, self.bits
            m = torch.zeros(c, k, c)
            for s in range(c):
                m[s, :, s] = 2.0 ** torch.arange(k)
            m = self._powers_by_device[device] = m.reshape(c * k, c).to(device)
        return m

    def _bits_to_indices(self, ones: Tensor) -> Tensor:
        """Bits ``(..., c k)`` (0./1. floats) → ``(..., c)`` int64 indices, channel ``i`` → bit ``i``."""
        lead = ones.shape[:-1]
        if self.bits <= _EXACT_FLOAT32_BITS:
            flat = ones.reshape(-1, self._code_dim)
            indices = torch.mm(flat, self._powers(ones.device)).long()
        else:
            digits = ones.reshape(-1, self.num_codebooks, self.bits).long()
            indices = (digits << self._shifts).sum(-1)
        return indices.view(*lead, self.num_codebooks)

    def _indices_to_bits(self, indices: Tensor) -> Tensor:
        """``(..., c)`` int64 indices → ``(..., c k)`` bits as 0./1. float32."""
        return ((indices.unsqueeze(-1) >> self._shifts) & 1).flatten(-2).float()

    def _codes(self, ones: Tensor) -> Tensor:
        """Bits (0./1. floats) → float32 codes ``±codebook_scale`` (exact: ``2s - s == s``)."""
        s = self.codebook_scale
        return ones.mul(2 * s).sub_(s)

    def _entropy_loss(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample entropy, batch entropy (means over codebooks) and the weighted loss."""
        logits = z.reshape(-1, self.num_codebooks, self.bits) * (
            4 * self.inv_temperature * self.codebook_scale
        )  # n c k
        logits = logits.clamp(-_MAX_LOGIT, _MAX_LOGIT)
        per_sample = binary_entropy(logits).sum(-1).mean()
        if self.bits <= EXACT_BATCH_ENTROPY_BITS:
            batch = exact_batch_entropy(logits).mean()
        else:
            batch = factorised_batch_entropy(logits).mean()
        return per_sample, batch, per_sample - self.diversity_gamma * batch

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (b, ..., d)``; returns float32 codes and ``(b, ..., c)`` indices."""
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = self.project_in(z.float())  # b ... (c k)
            bad = nonfinite_positions(z)  # b ...
            ones = (z > 0).float()  # a channel at exactly 0 is bit 0
            indices = self._bits_to_indices(ones)  # b ... c
            codes = self._codes(ones)
            indices = indices.masked_fill(bad.unsqueeze(-1), 0)
            metrics = batch_code_metrics(indices, self.codebook_sizes, nonfinite=bad)
            aux_loss = z.new_zeros(())
            if self.training:
                if self.entropy_weight > 0:
                    per_sample, batch, entropy_loss = self._entropy_loss(z)
                    aux_loss = aux_loss + self.entropy_weight * entropy_loss
                    metrics["per_sample_entropy"] = per_sample.detach()
                    metrics["batch_entropy"] = batch.detach()
                if self.commitment_weight > 0:
                    aux_loss = aux_loss + self.commitment_weight * F.mse_loss(z, codes)
            if torch.is_grad_enabled() and z.requires_grad:
                # straight-through: ``z - z.detach()`` is exactly zero, so the
                # values stay exactly ``codes`` while the gradient is the identity
                codes = codes + (z - z.detach())
            indices, quantized = mask_nonfinite(bad, indices, self.project_out(codes))
        return QuantizerOutput(
            quantized=quantized, indices=indices, aux_loss=aux_loss, metrics=metrics
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(b, ..., c)`` indices → ``(b, ..., d)`` codes (out-of-range indices raise)."""
        indices = self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self.project_out(self._codes(self._indices_to_bits(indices)))


@hookimpl
def register_quantizers(register):
    register(LFQ, name="lfq")
