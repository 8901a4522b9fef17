"""Reconstruction and codebook-health metrics.

- :func:`psnr`: peak signal-to-noise ratio for images in ``[0, 1]``.
- :func:`code_counts`: how often each code of each stream was used.
- :func:`codebook_stats`: usage (fraction of codes used), perplexity, its
  ratio to the codebook size, dead codes — from counts.
- :func:`bits_per_pixel`: the token rate of a tokenizer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["psnr", "code_counts", "codebook_stats", "batch_code_metrics", "bits_per_pixel"]

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

    Returns ``usage`` (fraction of codes used at least once), ``perplexity``
    (``exp`` of the entropy of the code distribution — the effective number of
    codes), ``perplexity_ratio`` (``log perplexity / log K``: 1 means uniform
    use), ``dead`` (codes never used) and ``size``.
    """
    counts = counts.double()
    total = counts.sum()
    size = counts.numel()
    used = int((counts > 0).sum())
    if total == 0:
        return {
            "usage": 0.0,
            "perplexity": 0.0,
            "perplexity_ratio": 0.0,
            "dead": size,
            "size": size,
        }
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {
        "usage": used / size,
        "perplexity": math.exp(entropy),
        "perplexity_ratio": entropy / math.log(size) if size > 1 else 1.0,
        "dead": size - used,
        "size": size,
    }


def batch_code_metrics(indices: Tensor, codebook_sizes: tuple[int, ...]) -> dict[str, Tensor]:
    """Cheap detached ``usage`` and ``perplexity`` of one batch, averaged over streams."""
    flat = indices.detach().reshape(-1, len(codebook_sizes))
    usage, perplexity = [], []
    for s, k in enumerate(codebook_sizes):
        if k <= _DENSE_LIMIT:
            counts = torch.bincount(flat[:, s], minlength=k)
        else:
            counts = torch.unique(flat[:, s], return_counts=True)[1]
        p = counts[counts > 0].float() / flat.shape[0]
        usage.append(torch.tensor((counts > 0).sum().item() / k))
        perplexity.append((-(p * p.log()).sum()).exp())
    return {
        "usage": torch.stack(usage).mean(),
        "perplexity": torch.stack(perplexity).mean().cpu(),
    }


def bits_per_pixel(*, positions: int, codebook_sizes: tuple[int, ...], pixels: int) -> float:
    """Token bits per pixel: ``positions * sum(log2 K) / pixels``."""
    return positions * sum(math.log2(k) for k in codebook_sizes) / pixels
