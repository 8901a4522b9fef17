"""Vector quantization (VQ-VAE) with an EMA codebook.

van den Oord, Vinyals, Kavukcuoglu: "Neural Discrete Representation
Learning", 2017. https://arxiv.org/abs/1711.00937 — the EMA codebook update
is the paper's appendix A.1; dead-code restart and k-means initialisation are
the usual practice (e.g. Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021,
SoundStream).

Each position's latent vector is replaced by its nearest code in a learned
codebook of ``codebook_size`` vectors; the index of that code is the token.

Axis legend: ``b`` batch, ``...`` grid axes, ``n`` flattened positions
(``b ...``), ``d`` latent channels, ``c`` code-space channels
(``codebook_dim``), ``k`` codes.

State (all buffers, so a safetensors file of the state dict restores it):
``codebook (k, c)`` (a parameter instead when ``ema=False``),
``cluster_size (k,)`` and ``embed_sum (k, c)`` — the EMA statistics —,
``unused_steps (k,)`` for dead-code restart and ``initted`` for k-means.
Under ``torch.distributed`` the statistics are all-reduced and every random
choice (k-means, restart) is made on rank 0 and broadcast, so every rank
holds the identical codebook.

Robustness (the rules of :mod:`tok.quantizer`):

- **k-means sees enough vectors.** Initialisation waits until the training
  batches so far hold ``3 k`` vectors (summed over ranks; at most 65,536 kept)
  and runs on all of them, so a small first batch (392 vectors for 1,024 codes)
  no longer leaves most codes duplicates. Until then a training forward passes
  its input on unquantized, detached, with no aux loss, so the encoder waits
  (vectors of a moving encoder fit no codebook, and a commitment to random codes
  collapses it onto a few), and the EMA waits; the gathered vectors are not
  state (a run resumed before initialisation gathers again).
- **Non-finite vectors** (NaN, ±inf, in the input or after the projection) get
  index 0 and a NaN ``quantized`` row, are left out of the counts, the EMA
  statistics, k-means and dead-code restart, and an EMA update whose result
  would not be finite (an overflow) leaves the codes it touches unchanged.
- **Cast modules.** ``codebook`` (with EMA), ``cluster_size`` and ``embed_sum``
  stay float32 under ``.to(bf16)``; the projections compute in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tok import Quantizer, QuantizerOutput, hookimpl
from tok.errors import ConfigError
from tok.helpers import all_reduce_, broadcast_, exists, is_distributed, rank
from tok.quantizer import mask_nonfinite, nonfinite_positions, projection

__all__ = ["VQ", "cluster_sums", "kmeans", "kmeans_plus_plus", "nearest"]

# Distances computed per block (rows x codes): 8 MiB on the CPU, so the block
# stays in cache; 1 GiB on a GPU.
_CPU_BLOCK = 1 << 21
_GPU_BLOCK = 1 << 28
# k-means waits for at least this many vectors per code (summed over the first batches) …
KMEANS_VECTORS_PER_CODE = 3
# … and uses at most this many (a random subset; at least one per code).
_KMEANS_MAX_SAMPLES = 1 << 16


def nearest(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code (Euclidean) for each row of ``x (n, c)``: int64 ``(n,)``.

    ``argmin_k |c_k|^2 - 2 x·c_k`` (``|x|^2`` does not change the argmin) as
    one matrix product per block of rows, ``[x, 1] @ [-2 C, |C|^2]^T``, whose
    ``(rows, k)`` distances stay in cache; no one-hot, no ``cdist``.
    ``torch.min`` rather than ``argmin``: the same first-minimum index,
    several times faster on the CPU. Few, large blocks keep the number of
    parallel regions low, which matters on a CPU shared with other work.
    """
    n, k = x.shape[0], codebook.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    x1 = torch.cat([x, x.new_ones(n, 1)], 1)  # n (c+1)
    weights = torch.cat([codebook * -2, codebook.pow(2).sum(-1, keepdim=True)], 1).t()
    block = _CPU_BLOCK if x.device.type == "cpu" else _GPU_BLOCK
    rows = min(n, max(1, block // k))
    dist = x.new_empty(rows, k)
    values = x.new_empty(rows)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        m = stop - start
        torch.mm(x1[start:stop], weights, out=dist[:m])
        torch.min(dist[:m], dim=1, out=(values[:m], out[start:stop]))
    return out


def cluster_sums(x: Tensor, idx: Tensor, counts: Tensor) -> Tensor:
    """Sum of the rows of ``x (n, c)`` assigned to each code: ``(k, c)``; ``counts = bincount(idx)``.

    On the CPU the rows are sorted by code and summed per segment (deterministic
    and ~10x faster than ``index_add_``); elsewhere ``index_add_``.
    """
    if x.device.type != "cpu":
        return x.new_zeros(counts.shape[0], x.shape[1]).index_add_(0, idx, x)
    order = torch.argsort(idx)
    return torch.segment_reduce(x.index_select(0, order), "sum", lengths=counts)


def _sample_proportional(weights: Tensor) -> int:
    """A random index drawn with probability ``weights / weights.sum()`` (uniform if all zero).

    ``cumsum`` + ``searchsorted``: one draw costs ~15x less than ``torch.multinomial``.
    """
    cum = weights.cumsum(0)
    total = float(cum[-1])
    if not total > 0:
        return int(torch.randint(weights.shape[0], ()))
    u = torch.rand((), dtype=cum.dtype, device=cum.device) * total
    return min(int(torch.searchsorted(cum, u, right=True)), weights.shape[0] - 1)


def kmeans_plus_plus(x: Tensor, k: int) -> Tensor:
    """``k`` seeds drawn from the rows of ``x (n, c)`` by k-means++ (global torch RNG).

    Each seed is drawn with probability proportional to the squared distance
    to the nearest seed so far (uniformly once every row is a seed).
    """
    n = x.shape[0]
    x_sq = x.pow(2).sum(-1)
    seeds = x.new_empty(k, x.shape[1])
    d2 = torch.full_like(x_sq, float("inf"))
    j = int(torch.randint(n, ()))
    for i in range(k):
        seeds[i] = x[j]
        # |x - s|^2 = |x|^2 + |s|^2 - 2 x·s, one matrix-vector product
        dist = torch.addmv(x_sq + x_sq[j], x, x[j], alpha=-2).clamp_min_(0)
        torch.minimum(d2, dist, out=d2)
        if i + 1 < k:
            j = _sample_proportional(d2)
    return seeds


def kmeans(x: Tensor, k: int, *, iters: int = 10) -> Tensor:
    """``k`` centroids of ``x (n, c)``: k-means++ seeding, then ``iters`` Lloyd iterations.

    Seeds come from a random subset of at most ``16 k`` rows; Lloyd uses all.
    Uses the global torch RNG. With fewer than ``k`` distinct vectors some
    centroids repeat. An empty cluster keeps its centroid.
    """
    subset = x[torch.randperm(x.shape[0], device=x.device)[: 16 * k]]
    centers = kmeans_plus_plus(subset, k)
    for _ in range(iters):
        idx = nearest(x, centers)
        counts = torch.bincount(idx, minlength=k)
        sums = cluster_sums(x, idx, counts)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    return centers


class VQ(Quantizer):
    """Nearest-neighbour vector quantization with one codebook (one index stream).

    :param dim: latent channels of the input.
    :param codebook_size: number of codes ``k``.
    :param codebook_dim: channels of the code space; when it differs from
        ``dim`` a linear projection in and out is added (a low-dimensional
        code space improves codebook usage).
    :param decay: EMA decay of the codebook statistics (``ema=True``).
    :param eps: Laplace smoothing of the EMA cluster sizes.
    :param commitment_weight: weight of the commitment loss
        ``mse(z_e, sg[q])`` (in code space).
    :param ema: update the codebook by EMA (default); ``False`` makes it a
        parameter learned through the codebook loss ``mse(q, sg[z_e])``.
    :param codebook_weight: weight of that codebook loss (``ema=False`` only).
    :param kmeans_init: initialise the codebook by k-means++ and k-means on the
        first training batches — as many as it takes to see ``3 * codebook_size``
        vectors (:data:`KMEANS_VECTORS_PER_CODE`).
    :param kmeans_iters: Lloyd iterations of that k-means.
    :param restart_after: re-seed a code from a random current encoder output
        when it has been unused for this many training steps (0 or ``None``: never).
    :param cosine: l2-normalise inputs and codes (nearest by cosine similarity).

    Distances are computed in float32, also under bf16 autocast, so bf16
    gives the same indices as float32. The codebook changes only in train
    mode with gradients enabled. Under ``torch.distributed`` every rank must
    run the same number of training forwards (each one is a collective), as
    with DDP itself.
    """

    paper = "https://arxiv.org/abs/1711.00937"

    float32_buffers = ("codebook", "cluster_size", "embed_sum")

    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 0.25,
        ema: bool = True,
        codebook_weight: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_after: int | None = None,
        cosine: bool = False,
    ) -> None:
        _check_int("codebook_size", codebook_size, low=1)
        if exists(codebook_dim):
            _check_int("codebook_dim", codebook_dim, low=1)
        _check_float("decay", decay, 0.0, 1.0, "[0, 1)", upper_open=True)
        _check_float("eps", eps, 0.0, None, "> 0", lower_open=True)
        _check_float("commitment_weight", commitment_weight, 0.0, None, ">= 0")
        _check_float("codebook_weight", codebook_weight, 0.0, None, ">= 0")
        _check_bool("ema", ema)
        _check_bool("kmeans_init", kmeans_init)
        _check_bool("cosine", cosine)
        _check_int("kmeans_iters", kmeans_iters, low=0)
        if exists(restart_after):
            _check_int("restart_after", restart_after, low=0)
        super().__init__(dim=dim, codebook_sizes=(codebook_size,))
        self.codebook_size = codebook_size
        self.codebook_dim = cd = codebook_dim if exists(codebook_dim) else dim
        self.decay = float(decay)
        self.eps = float(eps)
        self.commitment_weight = float(commitment_weight)
        self.ema = ema
        self.codebook_weight = float(codebook_weight)
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.restart_after = int(restart_after or 0)
        self.cosine = cosine

        self.project_in = projection(dim, cd)
        self.project_out = projection(cd, dim)

        codebook = torch.randn(codebook_size, cd)
        if cosine:
            codebook = F.normalize(codebook, dim=-1)
        if ema:
            self.register_buffer("codebook", codebook)
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self._kmeans_pending: list[Tensor] = []  # finite vectors gathered for k-means
        self._kmeans_paused = False

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """16 codes in a 4-channel code space behind a projection, k-means init and restart."""
        return {
            "dim": 12,
            "codebook_size": 16,
            "codebook_dim": 4,
            "kmeans_init": True,
            "kmeans_iters": 2,
            "restart_after": 2,
        }

    def config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "decay": self.decay,
            "eps": self.eps,
            "commitment_weight": self.commitment_weight,
            "ema": self.ema,
            "codebook_weight": self.codebook_weight,
            "kmeans_init": self.kmeans_init,
            "kmeans_iters": self.kmeans_iters,
            "restart_after": self.restart_after,
            "cosine": self.cosine,
        }

    # the method, in small steps ------------------------------------------

    def _to_code_space(self, z: Tensor) -> Tensor:
        """``z (..., d)`` → float32 ``(n, c)``: projected, l2-normalised when ``cosine``."""
        x = self.project_in(z.float().reshape(-1, self.dim))
        return F.normalize(x, dim=-1) if self.cosine else x

    def _codes(self, idx: Tensor) -> Tensor:
        """``(n,)`` indices → float32 codes ``(n, c)`` (no gradient to the codebook)."""
        return self.codebook.detach().float().index_select(0, idx)

    @property
    def kmeans_vectors_needed(self) -> int:
        """How many vectors (over all ranks) k-means initialisation waits for: ``3 k``,
        capped at 65,536 but never below ``k``."""
        k = self.codebook_size
        return max(k, min(KMEANS_VECTORS_PER_CODE * k, _KMEANS_MAX_SAMPLES))

    @contextlib.contextmanager
    def kmeans_paused(self) -> Iterator[None]:
        """Inside this block a training forward gathers nothing for k-means: ResidualVQ
        pauses a level until the one before it is initialised."""
        before, self._kmeans_paused = self._kmeans_paused, True
        try:
            yield
        finally:
            self._kmeans_paused = before

    @torch.no_grad()
    def _gather_kmeans(self, x: Tensor) -> None:
        """Keep ``x (m, c)``; once all ranks hold :attr:`kmeans_vectors_needed`, initialise."""
        self._kmeans_pending.append(x)
        held = sum(v.shape[0] for v in self._kmeans_pending)
        total = all_reduce_(torch.tensor(float(held), device=x.device))
        if int(total) >= self.kmeans_vectors_needed:
            pending, self._kmeans_pending = self._kmeans_pending, []
            self._init_kmeans(torch.cat(pending))

    @torch.no_grad()
    def _init_kmeans(self, x: Tensor) -> None:
        """k-means on the gathered vectors (all ranks'), computed on rank 0 and broadcast."""
        cap = max(_KMEANS_MAX_SAMPLES, self.codebook_size)
        local = x[torch.randperm(x.shape[0], device=x.device)[:cap]]
        if is_distributed():
            world = torch.distributed.get_world_size()
            m = all_reduce_(
                torch.tensor(local.shape[0], device=x.device), torch.distributed.ReduceOp.MIN
            )
            m = int(m) if world * int(m) <= cap else cap // world
            parts = [local.new_empty(m, local.shape[1]) for _ in range(world)]
            torch.distributed.all_gather(parts, local[:m].contiguous())
            local = torch.cat(parts)
        if local.shape[0] == 0:
            return  # nothing to learn from yet (on some rank): try again next batch
        centers = self.codebook.new_empty(self.codebook.shape)
        if rank() == 0:
            centers.copy_(kmeans(local, self.codebook_size, iters=self.kmeans_iters))
            if self.cosine:
                centers = F.normalize(centers, dim=-1)
        broadcast_(centers)
        self.codebook.data.copy_(centers)
        self.embed_sum.copy_(centers)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def _update(self, x: Tensor, bad: Tensor, idx: Tensor, counts: Tensor) -> None:
        """One training step of the codebook: EMA statistics, then dead-code restart.

        ``x (n, c)`` holds zeros in the ``bad`` (non-finite) rows, which ``idx`` sends to
        code 0 and ``counts`` (the bincount of ``idx``) counts there; neither their
        zeros nor their count enters the statistics.
        """
        k = self.codebook_size
        sums = cluster_sums(x, idx, counts) if self.ema else None
        counts = counts.float()
        counts[0] -= bad.sum()  # the non-finite rows' count
        if self.ema:
            stats = all_reduce_(torch.cat([counts[:, None], sums], 1))
            counts, sums = stats[:, 0], stats[:, 1:]
            cluster_size = self.cluster_size * self.decay + counts * (1 - self.decay)
            embed_sum = self.embed_sum * self.decay + sums * (1 - self.decay)
            n = cluster_size.sum()
            smoothed = (cluster_size + self.eps) / (n + k * self.eps) * n
            codebook = embed_sum / smoothed[:, None]
            if self.cosine:
                codebook = F.normalize(codebook, dim=-1)
            # an overflow must not reach the state: codes whose update is not finite keep theirs
            ok = (
                torch.isfinite(cluster_size)
                & torch.isfinite(embed_sum).all(-1)
                & torch.isfinite(codebook).all(-1)
            )
            self.cluster_size.copy_(torch.where(ok, cluster_size, self.cluster_size))
            self.embed_sum.copy_(torch.where(ok[:, None], embed_sum, self.embed_sum))
            self.codebook.copy_(torch.where(ok[:, None], codebook, self.codebook))
        elif self.restart_after:
            counts = all_reduce_(counts)
        if self.restart_after:
            self._restart_dead_codes(x, bad, counts)

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor, bad: Tensor, counts: Tensor) -> None:
        """Re-seed codes unused for ``restart_after`` steps from random finite rows of ``x``."""
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_steps >= self.restart_after
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        fresh = self.codebook.detach()[dead].float()  # rank 0 overwrites these
        x = x[~bad]
        if rank() == 0 and x.shape[0] > 0:
            if x.shape[0] >= num_dead:
                rows = torch.randperm(x.shape[0], device=x.device)[:num_dead]
            else:
                rows = torch.randint(x.shape[0], (num_dead,), device=x.device)
            fresh = x[rows]
        fresh = broadcast_(fresh.contiguous())
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        self.embed_sum[dead] = fresh
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

    def _aux_loss(self, x: Tensor, q: Tensor, idx: Tensor) -> Tensor:
        """Commitment loss ``mse(x, sg[q])``, plus the codebook loss ``mse(q, sg[x])`` without EMA."""
        if idx.numel() == 0:
            return x.new_zeros(())
        aux = self.commitment_weight * F.mse_loss(x, q)
        if not self.ema:
            # the same codes, but the gradient of this term reaches the codebook
            q_learn = self.codebook.float().index_select(0, idx)
            aux = aux + self.codebook_weight * F.mse_loss(q_learn, x.detach())
        return aux

    def _metrics(self, counts: Tensor, bad: Tensor) -> dict[str, Tensor]:
        """Batch ``usage`` (fraction of codes used), ``perplexity`` and ``nonfinite`` from the
        local counts of every row (``bad`` rows counted at code 0, taken out here)."""
        nonfinite = bad.sum().float()
        counts = counts.float()
        counts[0] -= nonfinite
        p = counts / (bad.numel() - nonfinite).clamp_min(1)
        return {
            "usage": (counts > 0).float().mean(),
            "perplexity": torch.special.entr(p).sum().exp(),
            "nonfinite": nonfinite,
        }

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (b, ..., d)``; returns float32 codes and ``(b, ..., 1)`` indices."""
        self.check_input(z)
        lead = z.shape[:-1]
        update = self.training and torch.is_grad_enabled()
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = self._to_code_space(z)  # n c
            bad = nonfinite_positions(x)  # n
            clean = x.detach().masked_fill(bad.unsqueeze(-1), 0.0)  # what the codebook sees
            initted = bool(self.initted)
            if update and not initted and not self._kmeans_paused:
                self._gather_kmeans(clean[~bad])
                initted = bool(self.initted)
            idx = nearest(clean, self.codebook.detach().float()).masked_fill_(bad, 0)  # n
            counts = torch.bincount(idx, minlength=self.codebook_size)
            if update and not initted:  # no codebook yet: the encoder waits for it (see above)
                q, aux = x.detach(), x.new_zeros(())
            else:
                q = self._codes(idx)  # n c
                aux = self._aux_loss(x, q, idx)
                if update:
                    self._update(clean, bad, idx, counts)
                if x.requires_grad:
                    q = q + (x - x.detach())  # exactly q, with the gradient of x (straight-through)
            indices, quantized = mask_nonfinite(bad, idx.unsqueeze(-1), self.project_out(q))
        return QuantizerOutput(
            quantized=quantized.view(*lead, self.dim),
            indices=indices.view(*lead, 1),
            aux_loss=aux,
            metrics=self._metrics(counts, bad),
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(b, ..., 1)`` indices → ``(b, ..., d)`` codes (out-of-range indices raise)."""
        indices = self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            q = self._codes(indices.reshape(-1))
            return self.project_out(q).view(*indices.shape[:-1], self.dim)


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"VQ {name} must be an integer >= {low}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"VQ {name} must be true or false, got {value!r}")


def _check_float(
    name: str,
    value: Any,
    low: float,
    high: float | None,
    where: str,
    *,
    lower_open: bool = False,
    upper_open: bool = False,
) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = value > low if lower_open else value >= low
    if ok and exists(high):
        ok = value < high if upper_open else value <= high
    if not ok:
        raise ConfigError(f"VQ {name} must be a number in {where}, got {value!r}")


@hookimpl
def register_quantizers(register):
    register(VQ, name="vq")
