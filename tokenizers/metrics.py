"""Reconstruction and codebook-health metrics.

- :func:`psnr`: peak signal-to-noise ratio for images in ``[0, 1]``.
- :func:`sample_std`: the spread of a per-image metric over the images.
- :class:`CodeCounts`: how often each code of each stream was used, over many
  batches — dense for small codebooks, by the codes seen above
  :data:`DENSE_COUNT_LIMIT` codes (memory bounded by the codes seen, not by ``K``).
- :func:`code_counts`: the dense histograms of one batch (small codebooks only).
- :func:`codebook_stats`: usage (fraction of codes used), usage of the attainable
  codes, perplexity, its ratio to the codebook size, dead codes — from counts.
  Every figure is defined in docs/codebook-health.md.
- :func:`batch_stream_stats`: per-stream usage, perplexity and dead codes of
  one batch of indices (cheap; the training log's per-stream columns).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "psnr",
    "sample_std",
    "DENSE_COUNT_LIMIT",
    "CodeCounts",
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


def sample_std(values: Tensor) -> float | None:
    """The sample standard deviation (``n − 1`` in the denominator, in float64) of per-image
    values ``(n,)``: how much a mean metric owes to which images were drawn (its standard
    error is this over ``√n``); ``None`` (JSON null) for fewer than 2 values."""
    values = values.detach().double().flatten()
    return values.std().item() if values.numel() > 1 else None


#: Streams of at most this many codes are counted densely (one int64 counter per code,
#: 8 MiB at most); larger ones sparsely, by the codes seen (:class:`CodeCounts`).
DENSE_COUNT_LIMIT = 1 << 20


def code_counts(indices: Tensor, codebook_sizes: tuple[int, ...]) -> list[Tensor]:
    """One int64 histogram of length ``K`` per stream: how often each code appears in
    ``indices (..., s)``.

    Dense by definition, so refused (``ValueError``) for a codebook of more than
    :data:`DENSE_COUNT_LIMIT` codes; :class:`CodeCounts` counts any codebook.
    """
    too_big = [int(k) for k in codebook_sizes if k > DENSE_COUNT_LIMIT]
    if too_big:
        raise ValueError(
            f"a histogram of {too_big[0]} codes is too large to build; count with CodeCounts"
        )
    flat = indices.reshape(-1, len(codebook_sizes))
    return [torch.bincount(flat[:, s], minlength=k) for s, k in enumerate(codebook_sizes)]


def codebook_stats(counts: Tensor, size: int | None = None) -> dict[str, Any]:
    """Health of one codebook of ``K`` codes from its code counts.

    ``counts`` is the whole histogram (length ``K``; leave ``size`` out) or, with
    ``size=K``, the counts of some of the codes — the codes seen, as :class:`CodeCounts`
    keeps them for a huge codebook; a code not listed counts 0. Both give the same
    numbers. With ``N`` the tokens counted (the sum of ``counts``), it returns

    - ``size``: ``K``; ``tokens``: ``N``; ``used``: the codes used at least once;
    - ``usage``: ``used / K``, the fraction of the codes used;
    - ``attainable_usage``: ``used / min(K, N)``, the fraction of the codes that ``N``
      tokens could have used at most — what the collapse alarm compares with its
      threshold. Equal to ``usage`` when ``N >= K``; for codes drawn uniformly at
      random it is at least ``1 - 1/e`` (about 0.63) for any ``K`` and ``N``;
    - ``perplexity``: ``2 ** H`` for the entropy ``H`` (bits) of the code
      distribution — the effective number of codes (at most ``min(K, N)``);
    - ``entropy_bits``: ``H = log2 perplexity``;
    - ``perplexity_ratio``: ``log2 perplexity / log2 K`` (``H`` over its
      maximum): 1 means uniform use of every code, 0 a single code;
    - ``perplexity_fraction``: ``perplexity / K``, the effective fraction of
      the codebook (harsher than the log ratio: half of the codes used
      uniformly gives 0.5 where the log ratio is close to 1);
    - ``dead``: ``K - used``, the codes never used.

    ``size``, ``tokens``, ``used`` and ``dead`` are Python ints, exact for any ``K``
    (2^40 included); the rest are floats, 0 when nothing was counted.
    """
    counts = counts.reshape(-1).double()
    if size is None:
        size = counts.numel()
    elif counts.numel() > size:
        raise ValueError(f"{counts.numel()} counts for a codebook of {size} codes")
    size = int(size)
    total = counts.sum()
    tokens = round(total.item())
    used = int((counts > 0).sum())
    if total == 0:
        return {
            "usage": 0.0,
            "attainable_usage": 0.0,
            "perplexity": 0.0,
            "entropy_bits": 0.0,
            "perplexity_ratio": 0.0,
            "perplexity_fraction": 0.0,
            "used": 0,
            "tokens": 0,
            "dead": size,
            "size": size,
        }
    p = counts[counts > 0] / total
    entropy = -(p * p.log()).sum().item()  # nats
    perplexity = math.exp(entropy)
    return {
        "usage": used / size,
        "attainable_usage": used / min(size, max(tokens, used)),  # (fractional counts: <= 1)
        "perplexity": perplexity,
        "entropy_bits": entropy / math.log(2),
        "perplexity_ratio": entropy / math.log(size) if size > 1 else 1.0,
        "perplexity_fraction": perplexity / size,
        "used": used,
        "tokens": tokens,
        "dead": size - used,
        "size": size,
    }


class CodeCounts:
    """How often each code of each stream was used, accumulated batch by batch.

    The one counter behind evaluations (:func:`tok.run.evaluate`), ``tok eval``,
    ``tok inspect`` and the usage histograms (:func:`tok.plots.save_usage_histogram`).
    A stream of at most ``dense_limit`` codes keeps one int64 counter per code; a larger
    one keeps only the codes seen, as sorted unique ids and their counts, merged with
    each batch by ``torch.unique`` — its memory grows with the codes seen (never more
    than the tokens counted), not with ``K``: a stream of 2^40 codes costs what it sees,
    where a histogram would need 8 TB. Counting happens on the CPU.

    >>> counts = CodeCounts((1 << 40,))
    >>> counts.update(torch.tensor([[5], [1 << 39], [5]]))
    >>> counts.used(0), counts.stats()[0]["dead"]
    (2, 1099511627774)
    """

    def __init__(
        self, codebook_sizes: tuple[int, ...], *, dense_limit: int = DENSE_COUNT_LIMIT
    ) -> None:
        self.sizes = tuple(int(k) for k in codebook_sizes)
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"codebook sizes must be positive, got {codebook_sizes!r}")
        #: positions counted (per stream: every stream counts one code per position)
        self.tokens = 0
        self._hist: list[Tensor | None] = [
            torch.zeros(k, dtype=torch.long) if k <= dense_limit else None for k in self.sizes
        ]
        empty = torch.zeros(0, dtype=torch.long)
        self._ids = [empty] * len(self.sizes)  # sparse streams: codes seen, ascending
        self._counts = [empty] * len(self.sizes)  # ... and how often each was seen

    def __len__(self) -> int:
        return len(self.sizes)

    def __repr__(self) -> str:
        return f"CodeCounts(sizes={self.sizes}, tokens={self.tokens})"

    def is_dense(self, stream: int) -> bool:
        """Whether ``stream`` is counted with one counter per code."""
        return self._hist[stream] is not None

    def update(self, indices: Tensor) -> None:
        """Count ``indices (..., s)``: integer codes, on any device, ``s`` = the number of
        streams. A code outside ``[0, K)`` raises ``ValueError``."""
        if indices.dim() == 0 or indices.shape[-1] != len(self.sizes):
            raise ValueError(
                f"indices of shape {tuple(indices.shape)} for {len(self.sizes)} stream(s)"
            )
        flat = indices.detach().reshape(-1, len(self.sizes)).to("cpu", torch.long)
        if flat.shape[0] == 0:
            return
        low, high = flat.min(0).values.tolist(), flat.max(0).values.tolist()
        for s, k in enumerate(self.sizes):
            if low[s] < 0 or high[s] >= k:
                bad = low[s] if low[s] < 0 else high[s]
                raise ValueError(f"code {bad} of stream {s} is outside [0, {k})")
        self.tokens += flat.shape[0]
        for s, hist in enumerate(self._hist):
            if hist is not None:
                hist += torch.bincount(flat[:, s], minlength=hist.numel())
                continue
            ids, counts = torch.unique(flat[:, s], return_counts=True)
            if self._ids[s].numel():
                both = torch.cat([self._ids[s], ids])
                ids, where = torch.unique(both, return_inverse=True)
                counts = torch.zeros(ids.numel(), dtype=torch.long).scatter_add_(
                    0, where, torch.cat([self._counts[s], counts])
                )
            self._ids[s], self._counts[s] = ids, counts

    def seen(self, stream: int) -> tuple[Tensor, Tensor]:
        """The codes of ``stream`` used at least once (int64, ascending) and their counts."""
        hist = self._hist[stream]
        if hist is None:
            return self._ids[stream], self._counts[stream]
        ids = hist.nonzero().flatten()
        return ids, hist[ids]

    def used(self, stream: int) -> int:
        """How many codes of ``stream`` were used at least once."""
        hist = self._hist[stream]
        return int((hist > 0).sum()) if hist is not None else self._ids[stream].numel()

    def histogram(self, stream: int) -> Tensor:
        """The count of every code of a dense ``stream`` (a copy, length ``K``);
        ``ValueError`` for a sparse one, whose histogram is what it avoids building."""
        hist = self._hist[stream]
        if hist is None:
            raise ValueError(
                f"stream {stream} has {self.sizes[stream]} codes, too many for a histogram; "
                "use seen()"
            )
        return hist.clone()

    def stats(self) -> list[dict[str, Any]]:
        """:func:`codebook_stats` of each stream."""
        return [codebook_stats(self.seen(s)[1], size=k) for s, k in enumerate(self.sizes)]


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


def stream_row(out: Any, tokenizer: Any) -> dict[str, Any]:
    """The ``streams`` entry of a training row (:func:`batch_stream_stats` of a
    :class:`tok.models.TokenizerOutput`'s indices); empty for a continuous tokenizer,
    whose rows carry the bottleneck's ``kl``, ``beta`` and ``kl_dim{j}`` instead."""
    if tokenizer.continuous:
        return {}
    return {"streams": batch_stream_stats(out.indices, tokenizer.quantizer.codebook_sizes)}


def progress_figures(row: dict[str, Any]) -> dict[str, str]:
    """What the progress bar shows of a training row beside the loss: the batch's codebook
    usage, or a continuous tokenizer's KL (nats per item)."""
    if "kl" in row:
        return {"kl": f"{row['kl']:.2f}"}
    return {"batch_usage": f"{row.get('usage', 0):.2f}"}
