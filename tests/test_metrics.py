"""tok.metrics: code counting (dense and sparse) and the codebook figures built on it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tok.metrics import DENSE_COUNT_LIMIT, CodeCounts, code_counts, codebook_stats

HUGE = 1 << 40


def batches(sizes: tuple[int, ...], n: int = 4, rows: int = 300, seed: int = 0):
    """``n`` batches of ``(rows, 7, streams)`` int64 codes, skewed towards small codes."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        cols = [(torch.rand(rows, 7, generator=g).pow(3) * min(k, 5000)).long() for k in sizes]
        yield torch.stack(cols, -1)


# codebook_stats ------------------------------------------------------------------------


def test_codebook_stats_of_a_histogram_and_of_the_codes_seen_agree():
    hist = torch.tensor([5, 0, 3, 0, 0, 1, 0, 0])
    full = codebook_stats(hist)
    assert full == codebook_stats(torch.tensor([5, 3, 1]), size=8)
    shuffled = codebook_stats(torch.tensor([3, 0, 1, 5]), size=8)  # zeros, order: no matter
    assert shuffled == pytest.approx(full, rel=1e-12)  # (but the float sums' rounding)
    assert (full["used"], full["tokens"], full["dead"], full["size"]) == (3, 9, 5, 8)
    assert full["usage"] == 3 / 8 and full["attainable_usage"] == 3 / 8  # N = 9 >= K = 8
    p = torch.tensor([5, 3, 1]) / 9
    assert full["perplexity"] == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    with pytest.raises(ValueError, match="9 counts for a codebook of 8 codes"):
        codebook_stats(torch.ones(9), size=8)


def test_attainable_usage_divides_by_min_of_k_and_tokens():
    # K = 4096 codes, N = 100 tokens on 25 codes: usage 0.6 %, but a quarter of what 100 tokens allow
    stats = codebook_stats(torch.full((25,), 4), size=4096)
    assert stats["tokens"] == 100 and stats["used"] == 25
    assert stats["usage"] == 25 / 4096
    assert stats["attainable_usage"] == 0.25
    # every token a different code: attainable usage 1 whatever K
    assert codebook_stats(torch.ones(100), size=HUGE)["attainable_usage"] == 1.0
    # N >= K: the usage itself
    stats = codebook_stats(torch.tensor([10, 10, 0, 0]))
    assert stats["attainable_usage"] == stats["usage"] == 0.5


def test_codebook_stats_of_a_huge_codebook_are_exact_integers():
    stats = codebook_stats(torch.tensor([7, 2, 1]), size=HUGE)
    assert stats["dead"] == HUGE - 3 and type(stats["dead"]) is int
    assert stats["size"] == HUGE and type(stats["size"]) is int
    assert json.loads(json.dumps(stats))["dead"] == 1099511627773  # JSON keeps every digit
    assert stats["usage"] == 3 / HUGE
    assert stats["perplexity_ratio"] == pytest.approx(stats["entropy_bits"] / 40)
    assert stats["perplexity_fraction"] == pytest.approx(stats["perplexity"] / HUGE)
    empty = codebook_stats(torch.zeros(0, dtype=torch.long), size=HUGE)
    assert empty["dead"] == HUGE and empty["used"] == empty["tokens"] == 0
    assert empty["usage"] == empty["attainable_usage"] == empty["perplexity"] == 0


# code_counts --------------------------------------------------------------------------


def test_code_counts_refuses_a_histogram_of_a_huge_codebook():
    with pytest.raises(ValueError, match="1099511627776 codes is too large.*CodeCounts"):
        code_counts(torch.zeros(4, 1, dtype=torch.long), (HUGE,))
    (hist,) = code_counts(torch.tensor([[0], [2], [2]]), (4,))
    assert hist.tolist() == [1, 0, 2, 0]


# CodeCounts ----------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(1000,), (16, 4096, 3)])
def test_sparse_counts_equal_dense_counts(sizes):
    dense, sparse = CodeCounts(sizes), CodeCounts(sizes, dense_limit=0)
    for b in batches(sizes):
        dense.update(b)
        sparse.update(b)
    assert all(dense.is_dense(s) and not sparse.is_dense(s) for s in range(len(sizes)))
    assert dense.tokens == sparse.tokens == 4 * 300 * 7
    assert dense.stats() == sparse.stats()
    for s in range(len(sizes)):
        ids, counts = sparse.seen(s)
        assert torch.equal(dense.histogram(s)[ids], counts)  # same codes, same counts
        assert (ids[1:] > ids[:-1]).all() and (counts > 0).all()  # ascending, all seen
        assert int(counts.sum()) == sparse.tokens
        assert sparse.used(s) == dense.used(s) == ids.numel()
    # one update with everything equals the batches merged one by one
    once = CodeCounts(sizes, dense_limit=0)
    once.update(torch.cat(list(batches(sizes))))
    assert once.stats() == sparse.stats()


def test_codecounts_of_a_huge_codebook_hold_only_the_codes_seen():
    counts = CodeCounts((HUGE, 10))
    assert not counts.is_dense(0) and counts.is_dense(1) and DENSE_COUNT_LIMIT == 1 << 20
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        high = torch.randint(0, 1 << 20, (1000,), generator=g) << 20  # codes spread over 2^40
        counts.update(torch.stack([high, torch.randint(0, 10, (1000,), generator=g)], -1))
    ids, seen = counts.seen(0)
    assert ids.numel() == seen.numel() == counts.used(0) <= 5000  # memory: the codes seen
    assert int(ids.max()) < HUGE and int(seen.sum()) == counts.tokens == 5000
    stats = counts.stats()[0]
    assert stats["dead"] == HUGE - counts.used(0) and stats["size"] == HUGE
    assert stats["attainable_usage"] == counts.used(0) / 5000
    with pytest.raises(ValueError, match="too many for a histogram"):
        counts.histogram(0)
    assert counts.histogram(1).numel() == 10 and len(counts) == 2


def test_codecounts_refuses_codes_out_of_range_and_wrong_shapes():
    counts = CodeCounts((4, HUGE))
    for bad, message in (([[4, 0]], "code 4 of stream 0"), ([[0, -1]], "code -1 of stream 1")):
        with pytest.raises(ValueError, match=message):
            counts.update(torch.tensor(bad))
    with pytest.raises(ValueError, match=r"shape \(3, 3\) for 2 stream"):
        counts.update(torch.zeros(3, 3, dtype=torch.long))
    assert counts.tokens == 0  # a refused batch counts nothing
    counts.update(torch.zeros(0, 2, dtype=torch.long))  # an empty batch is fine
    assert counts.stats()[1]["dead"] == HUGE
    with pytest.raises(ValueError):
        CodeCounts(())
