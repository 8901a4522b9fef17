"""Finite scalar quantization (tok.plugins.fsq)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from tok.errors import ConfigError, IndexRangeError
from tok.metrics import code_counts, codebook_stats
from tok.plugins.fsq import FSQ, PAPER_LEVELS, levels_for
from tok.testing import check_quantizer

ALL_PAPER_LEVELS = [list(v) for v in PAPER_LEVELS.values()]


def inverse_bound(q: FSQ, levels: torch.Tensor) -> torch.Tensor:
    """An input ``z`` whose bound is the integer ``levels`` (the centre of each bin).

    ``forward`` squashes its input with ``tanh`` before rounding, so codes are
    fed back through the inverse of that bound rather than as they are.
    """
    lv = torch.tensor(q.levels * q.num_codebooks, dtype=torch.float64)
    half_l = (lv - 1) * (1 + q.eps) / 2
    offset = (lv % 2 == 0).double() * 0.5
    shift = torch.atanh(offset / half_l)
    return (torch.atanh((levels.double() + offset) / half_l) - shift).float()


def all_indices(q: FSQ) -> torch.Tensor:
    return torch.arange(q.codebook_sizes[0]).view(-1, 1)


@pytest.mark.parametrize("levels", ALL_PAPER_LEVELS, ids=str)
def test_every_code_round_trips(levels: list[int]) -> None:
    q = FSQ(levels=levels).eval()
    assert q.codebook_sizes == (math.prod(levels),)
    indices = all_indices(q)  # (K, 1): every code of the set
    codes = q.indices_to_codes(indices)
    assert codes.shape == (len(indices), len(levels))
    assert codes.dtype == torch.float32
    assert len(torch.unique(codes, dim=0)) == len(indices)  # distinct codes
    assert codes.abs().max() <= 1
    half_width = torch.tensor([v // 2 for v in levels], dtype=torch.float32)
    levels_of_codes = codes * half_width
    assert torch.equal(levels_of_codes, levels_of_codes.round())  # integer levels
    with torch.no_grad():
        out = q(inverse_bound(q, levels_of_codes))
    assert torch.equal(out.indices, indices)
    assert torch.equal(out.quantized, codes)


@pytest.mark.parametrize("levels", ALL_PAPER_LEVELS, ids=str)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_forward_matches_indices_to_codes_exactly(levels: list[int], train: bool) -> None:
    torch.manual_seed(0)
    for q in (FSQ(levels=levels), FSQ(levels=levels, dim=16, num_codebooks=2)):
        q.train(train)
        z = torch.randn(2, 5, 3, q.dim) * 2
        out = q(z)
        assert out.indices.shape == (2, 5, 3, q.num_streams)
        assert torch.equal(q.indices_to_codes(out.indices), out.quantized)


@pytest.mark.parametrize(
    "config",
    [{"levels": [8, 5, 5, 5]}, {"codebook_size": 2**16, "num_codebooks": 2, "dim": 5}],
    ids=["no-projection", "projection-2-codebooks"],
)
def test_conformance(config: dict) -> None:
    check_quantizer(FSQ, config=config, grids=((5,), (2, 3)))


def test_levels_for_the_papers_table() -> None:
    assert levels_for(2**8) == [8, 6, 5]
    assert levels_for(2**10) == [8, 5, 5, 5]
    assert levels_for(2**12) == [7, 5, 5, 5, 5]
    assert levels_for(2**14) == [8, 8, 8, 6, 5]
    assert levels_for(2**16) == [8, 8, 8, 5, 5, 5]
    assert FSQ(codebook_size=2**10).levels == [8, 5, 5, 5]
    for size in (2**9, 1000, 0):
        with pytest.raises(
            ConfigError, match=f"no recommended FSQ levels for codebook_size {size}"
        ):
            levels_for(size)
    with pytest.raises(ConfigError, match="2\\^8, 2\\^10"):
        FSQ(codebook_size=12345)


def test_several_codebooks_are_independent_streams() -> None:
    q = FSQ(levels=[8, 5, 5, 5], num_codebooks=3)
    assert q.codebook_sizes == (1000, 1000, 1000)
    assert q.num_streams == 3
    assert q.dim == 12
    assert isinstance(q.project_in, torch.nn.Identity)
    torch.manual_seed(0)
    z = torch.randn(4, 6, 12)
    a = q(z).indices
    changed = z.clone()
    changed[..., 4:8] = torch.randn(4, 6, 4) * 3  # only the second codebook's channels
    b = q(changed).indices
    assert torch.equal(a[..., 0], b[..., 0])
    assert torch.equal(a[..., 2], b[..., 2])
    assert not torch.equal(a[..., 1], b[..., 1])
    # each stream is the one-codebook FSQ of its own channels
    single = FSQ(levels=[8, 5, 5, 5])
    for s in range(3):
        assert torch.equal(single(z[..., 4 * s : 4 * s + 4]).indices[..., 0], a[..., s])


def test_projection_when_dim_differs() -> None:
    q = FSQ(levels=[8, 5, 5, 5], dim=64)
    assert isinstance(q.project_in, torch.nn.Linear)
    assert (q.project_in.in_features, q.project_in.out_features) == (64, 4)
    assert (q.project_out.in_features, q.project_out.out_features) == (4, 64)
    assert set(q.state_dict()) == {
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    out = q(torch.randn(2, 3, 64))
    assert out.quantized.shape == (2, 3, 64)
    assert out.indices.shape == (2, 3, 1)
    plain = FSQ(levels=[8, 5, 5, 5])
    assert isinstance(plain.project_in, torch.nn.Identity)
    assert plain.state_dict() == {}
    assert plain.config() == {"levels": [8, 5, 5, 5], "dim": 4, "num_codebooks": 1, "eps": 1e-3}


@pytest.mark.parametrize("dim", [4, 64], ids=["no-projection", "projection-64"])
def test_bf16_autocast_gives_the_float32_indices(dim: int) -> None:
    torch.manual_seed(0)
    q = FSQ(levels=[8, 5, 5, 5], dim=dim)
    z = torch.randn(2, 8, 8, dim) * 2
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = q(z)
        codes = q.indices_to_codes(auto.indices)
    assert torch.equal(auto.indices, ref.indices)
    assert auto.quantized.dtype == torch.float32
    assert torch.equal(auto.quantized, ref.quantized)
    assert codes.dtype == torch.float32
    assert torch.equal(codes, ref.quantized)


@pytest.mark.parametrize("dim", [4, 64], ids=["no-projection", "projection-64"])
def test_bf16_input_matches_the_same_values_in_float32(dim: int) -> None:
    torch.manual_seed(0)
    q = FSQ(levels=[8, 5, 5, 5], dim=dim)
    z16 = (torch.randn(2, 8, 8, dim) * 2).bfloat16()
    a, b = q(z16), q(z16.float())
    assert torch.equal(a.indices, b.indices)
    assert a.quantized.dtype == torch.float32
    assert torch.equal(a.quantized, b.quantized)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q(z16).indices, b.indices)


@pytest.mark.parametrize("levels", [[8] * 10, [16] * 8, [16] * 14], ids=["8^10", "16^8", "16^14"])
def test_huge_codebooks_are_never_materialised(levels: list[int]) -> None:
    q = FSQ(levels=levels)
    size = math.prod(levels)
    assert q.codebook_sizes == (size,)
    assert all(t.numel() <= 64 for t in (*q.buffers(), *q.parameters()))
    torch.manual_seed(0)
    z = torch.randn(2, 5, len(levels)) * 3
    out = q(z)
    assert out.indices.dtype == torch.int64
    assert bool((out.indices >= 0).all()) and bool((out.indices < size).all())
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    assert set(out.metrics) >= {"usage", "perplexity"}
    # the extreme codes and a few in between round trip with int64 precision
    picks = torch.tensor([0, 1, size // 3, size // 2 + 7, size - 2, size - 1]).view(-1, 1)
    codes = q.indices_to_codes(picks)
    half_width = torch.tensor([v // 2 for v in levels], dtype=torch.float32)
    with torch.no_grad():
        again = q(inverse_bound(q, codes * half_width))
    assert torch.equal(again.indices, picks)
    assert torch.equal(again.quantized, codes)


_GROWTH = """
import json, sys, torch
from tok.plugins.fsq import FSQ

def peak_kib():  # VmHWM: this process's own peak (ru_maxrss would carry pytest's over)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

levels = json.loads(sys.argv[1])
FSQ(levels=[8, 5])(torch.randn(2, 3, 2))  # torch's own first-call allocations
before = peak_kib()
q = FSQ(levels=levels)
out = q(torch.randn(2, 5, len(levels)) * 3)
q.indices_to_codes(out.indices)
print((peak_kib() - before) / 1024)
"""


@pytest.mark.parametrize("levels", [[8] * 10, [16] * 8, [16] * 14], ids=["8^10", "16^8", "16^14"])
def test_huge_codebooks_need_no_memory_per_code(levels: list[int]) -> None:
    """Measured in a fresh process: one byte per code would be 1 GiB already."""
    proc = subprocess.run(
        [sys.executable, "-c", _GROWTH, json.dumps(levels)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 256  # MiB


@pytest.mark.parametrize("levels", [[1, 5], [], [2.5], "abc", [True, 4], [0], None], ids=repr)
def test_invalid_levels_name_the_levels(levels) -> None:
    if levels is None:
        with pytest.raises(ConfigError, match="exactly one of levels"):
            FSQ()
        return
    with pytest.raises(ConfigError, match=re.escape(f"invalid FSQ levels {levels!r}")):
        FSQ(levels=levels)


def test_other_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="exactly one of levels"):
        FSQ(levels=[8, 5], codebook_size=2**10)
    with pytest.raises(ConfigError, match="num_codebooks must be a positive integer, got 0"):
        FSQ(levels=[8, 5], num_codebooks=0)
    with pytest.raises(ConfigError, match="dim must be a positive integer"):
        FSQ(levels=[8, 5], dim=0)
    with pytest.raises(ConfigError, match="more than int64"):
        FSQ(levels=[2] * 64)
    for eps in (0, -0.1, 0.2, "x"):
        with pytest.raises(ConfigError, match=r"eps must be in \(0, 0.1429\)"):
            FSQ(levels=[8, 5, 5, 5], eps=eps)
    FSQ(levels=[8, 5, 5, 5], eps=0.1)
    with pytest.raises(ConfigError, match=r"expects a float tensor \(batch, \*grid, 4\)"):
        FSQ(levels=[8, 5, 5, 5])(torch.randn(2, 3, 5))


def test_bad_indices_raise() -> None:
    q = FSQ(levels=[8, 5, 5, 5], num_codebooks=2)
    with pytest.raises(IndexRangeError, match="token index 1000 in stream 1"):
        q.indices_to_codes(torch.tensor([[0, 1000]]))
    with pytest.raises(IndexRangeError, match="token index -1 in stream 0"):
        q.indices_to_codes(torch.tensor([[-1, 0]]))


@pytest.mark.parametrize("n_levels", range(2, 10))
def test_bound_covers_exactly_the_levels(n_levels: int) -> None:
    q = FSQ(levels=[n_levels])
    z = torch.linspace(-30, 30, 20001).view(-1, 1)
    out = q(z)
    values = torch.unique(out.quantized)
    half_width = n_levels // 2
    low = -half_width
    expected = torch.arange(low, low + n_levels, dtype=torch.float32) / half_width
    assert torch.equal(values, expected)  # L distinct values, half-step offset for even L
    assert torch.equal(torch.unique(out.indices), torch.arange(n_levels))
    # monotone: a larger input never gets a smaller level
    assert bool((out.quantized[1:] >= out.quantized[:-1]).all())


def test_gradient_is_straight_through() -> None:
    q = FSQ(levels=[8, 5, 5, 5])
    z = (torch.randn(3, 7, 4) * 2).requires_grad_(True)
    q(z).quantized.sum().backward()
    # d quantized / d z is the derivative of the bound: rounding passes gradients unchanged
    lv = torch.tensor([8.0, 5, 5, 5], dtype=torch.float64)
    half_l = (lv - 1) * (1 + q.eps) / 2
    shift = torch.atanh((lv % 2 == 0).double() * 0.5 / half_l)
    t = torch.tanh(z.detach().double() + shift)
    expected = (1 - t**2) * half_l / torch.floor(lv / 2)
    assert z.grad is not None and bool((z.grad != 0).any())
    torch.testing.assert_close(z.grad.double(), expected, rtol=1e-5, atol=1e-6)


def test_metrics_match_tok_metrics() -> None:
    torch.manual_seed(0)
    for q in (FSQ(levels=[8, 5, 5, 5]), FSQ(levels=[8, 6, 5], num_codebooks=3)):
        out = q(torch.randn(4, 9, q.dim))
        counts = code_counts(out.indices, q.codebook_sizes)  # the evaluation's exact counts
        streams = [codebook_stats(c) for c in counts]
        ref = {
            k: torch.tensor(sum(s[k] for s in streams) / len(streams))
            for k in ("usage", "perplexity")
        }
        assert set(out.metrics) == {"usage", "perplexity", "nonfinite"}
        for key, value in ref.items():
            assert out.metrics[key].ndim == 0 and not out.metrics[key].requires_grad
            torch.testing.assert_close(out.metrics[key].cpu(), value.float(), rtol=1e-5, atol=0)
    empty = FSQ(levels=[8, 5, 5, 5])(torch.zeros(0, 3, 4))
    assert empty.indices.shape == (0, 3, 1)
    assert empty.metrics["usage"].item() == 0 and empty.metrics["perplexity"].item() == 1


def test_module_to_bfloat16_keeps_the_constants_exact() -> None:
    torch.manual_seed(0)
    q = FSQ(levels=[8, 5, 5, 5])
    z = torch.randn(2, 9, 4) * 2
    ref = q(z)
    q.to(torch.bfloat16)
    out = q(z)
    assert torch.equal(out.indices, ref.indices)
    assert torch.equal(out.quantized, ref.quantized)


def test_indices_equal_vector_quantize_pytorch() -> None:
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    ours = FSQ(levels=[8, 5, 5, 5])
    theirs = vqp.FSQ(levels=[8, 5, 5, 5])
    z = torch.randn(4, 50, 4) * 2  # (b, n, d): channel-last for both
    out = ours(z)
    their_codes, their_indices = theirs(z)
    # Same convention: digits ``level + L // 2`` in mixed radix, first channel least
    # significant. Theirs are int32 (b, n) for one codebook; ours int64 (b, n, 1).
    assert torch.equal(out.indices[..., 0], their_indices.long())
    torch.testing.assert_close(out.quantized, their_codes, rtol=0, atol=1e-6)
    assert torch.equal(theirs.indices_to_codes(out.indices[..., 0]), out.quantized)
