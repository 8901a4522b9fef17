"""Reconstruction and codebook-health metrics.

- :func:`psnr`: peak signal-to-noise ratio for images in ``[0, 1]``.
- :func:`code_counts`: how often each code of each stream was used.
- :func:`codebook_stats`: usage (fraction of codes used), perplexity, its
  ratio to the codebook size, dead codes — from counts.
- :func:`batch_stream_stats`: per-stream usage, perplexity and dead codes of
  one batch of indices (cheap; the training log's per-stream columns).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "psnr",
    "code_counts",
    "codebook_stats",
    "batch_code_metrics",
    "batch_stream_stats",
]

# Above this size a batch's indices are counted with ``unique`` instead of a dense histogram.
_DENSE_LIMIT = 1 << 20


def psnr(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Per-sample PSNR in dB of ``x`` against ``y`` (``(b, ...)``, values in ``[0, data_range]``)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-10))


def code_counts(indices: Tensor, codebook_sizes: tuple[int, ...]) -> list[Tensor]:
    """One int64 histogram per stream: how often each code appears in ``indices (..., s)``."""
    flat = indices.reshape(-1, len(codebook_sizes))
    return [torch.bincount(flat[:, s], minlength=k) for s, k in enumerate(codebook_sizes)]


def codebook_stats(counts: Tensor) -> dict[str, float]:
    """Health of one codebook from its code counts.

    Returns

    - ``usage``: fraction of the ``K`` codes used at least once;
    - ``perplexity``: ``2 ** H`` for the entropy ``H`` (bits) of the code
      distribution — the effective number of codes;
    - ``entropy_bits``: ``H = log2 perplexity``;
    - ``perplexity_ratio``: ``log2 perplexity / log2 K`` (``H`` over its
      maximum): 1 means uniform use of every code, 0 a single code;
    - ``perplexity_fraction``: ``perplexity / K``, the effective fraction of
      the codebook (harsher than the log ratio: half of the codes used
      uniformly gives 0.5 where the log ratio is close to 1);
    - ``dead``: codes never used; ``size``: ``K``.
    """
    counts = counts.double()
    total = counts.sum()
    size = counts.numel()
    used = int((counts > 0).sum())
    if total == 0:
        return {
            "usage": 0.0,
            "perplexity": 0.0,
            "entropy_bits": 0.0,
            "perplexity_ratio": 0.0,
            "perplexity_fraction": 0.0,
            "dead": size,
            "size": size,
        }
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()  # nats
    perplexity = math.exp(entropy)
    return {
        "usage": used / size,
        "perplexity": perplexity,
        "entropy_bits": entropy / math.log(2),
        "perplexity_ratio": entropy / math.log(size) if size > 1 else 1.0,
        "perplexity_fraction": perplexity / size,
        "dead": size - used,
        "size": size,
    }


def batch_code_metrics(
    indices: Tensor, codebook_sizes: tuple[int, ...], *, nonfinite: Tensor | None = None
) -> dict[str, Tensor]:
    """Detached ``usage``, ``perplexity`` and ``nonfinite`` of one batch of ``indices
    (..., s)``: what quantizers report in ``QuantizerOutput.metrics``.

    :param nonfinite: optional bool ``(...)``, the positions whose input held a NaN or
        ±inf (:func:`tok.quantizer.nonfinite_positions`): they are left out of the
        counts, and ``nonfinite`` (float32 scalar) says how many there were (0 without).

    ``usage`` (fraction of each stream's codes used) and ``perplexity`` are averaged
    over the streams. Cheap and free of host syncs: while the codebooks hold at most
    2^20 codes in all, one weighted histogram counts every stream (stream ``s`` offset
    by the sizes before it; ``scatter_add`` on CUDA, whose ``bincount`` waits for the
    device); above that, each stream's codes are counted with ``unique``.
    """
    sizes = tuple(int(k) for k in codebook_sizes)
    flat = indices.detach().reshape(-1, len(sizes))
    if nonfinite is None:
        keep = torch.ones(flat.shape[0], device=flat.device)
        bad = torch.zeros((), device=flat.device)
    else:
        keep = (~nonfinite.detach().reshape(-1)).float()
        bad = flat.shape[0] - keep.sum()
    n = keep.sum().clamp_min(1)
    if sum(sizes) > _DENSE_LIMIT:
        rows = flat if nonfinite is None else flat[keep.bool()]
        usage, perplexity = [], []
        for s, k in enumerate(sizes):
            counts = torch.unique(rows[:, s], return_counts=True)[1].float()
            usage.append(torch.tensor(counts.numel() / k, device=flat.device))
            perplexity.append(torch.special.entr(counts / n).sum().exp())
        usage_t, perplexity_t = torch.stack(usage), torch.stack(perplexity)
    else:
        starts = [0]
        for k in sizes[:-1]:
            starts.append(starts[-1] + k)
        ids = (flat + torch.tensor(starts, device=flat.device)).flatten()
        weights = keep.repeat_interleave(len(sizes))
        if ids.is_cuda:
            counts = torch.zeros(sum(sizes), device=ids.device).scatter_add_(0, ids, weights)
        else:
            counts = torch.bincount(ids, weights=weights, minlength=sum(sizes)).float()
        streams = counts.split(sizes)
        usage_t = torch.stack([(c > 0).float().mean() for c in streams])
        perplexity_t = torch.stack([torch.special.entr(c / n).sum().exp() for c in streams])
    return {
        "usage": usage_t.mean(),
        "perplexity": perplexity_t.mean(),
        "nonfinite": bad.float(),
    }


def batch_stream_stats(indices: Tensor, codebook_sizes: tuple[int, ...]) -> list[dict[str, float]]:
    """Per-stream ``usage``, ``perplexity`` and ``dead`` of one batch of ``indices (..., s)``.

    Counts with ``unique`` (never a ``K``-long histogram), so it is cheap for any
    codebook size. A batch of ``n`` positions can use at most ``n`` codes, so
    these are lower bounds of the codebook's health, not estimates of it.
    """
    flat = indices.detach().reshape(-1, len(codebook_sizes))
    stats = []
    for s, k in enumerate(codebook_sizes):
        counts = torch.unique(flat[:, s], return_counts=True)[1].double()
        p = counts / counts.sum().clamp_min(1)
        used = counts.numel()
        stats.append(
            {
                "usage": used / k,
                "perplexity": math.exp(-(p * p.log()).sum().item()) if used else 0.0,
                "dead": k - used,
            }
        )
    return stats
