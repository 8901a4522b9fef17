"""Lookup-free quantization (tok.plugins.lfq)."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from tok.errors import ConfigError, IndexRangeError
from tok.metrics import code_counts, codebook_stats
from tok.plugins.lfq import (
    LFQ,
    binary_entropy,
    exact_batch_entropy,
    factorised_batch_entropy,
)
from tok.testing import check_quantizer


def all_codes_brute_force(bits: int, scale: float = 1.0) -> torch.Tensor:
    """``(2^bits, bits)`` float64: row ``j`` is code ``j``, channel ``i`` = bit ``i`` of ``j``."""
    rows = [[scale if (j >> i) & 1 else -scale for i in range(bits)] for j in range(2**bits)]
    return torch.tensor(rows, dtype=torch.float64)


def entropy_loss_brute_force(q: LFQ, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample and batch entropy from the full softmax over every code, in float64.

    ``p(c | z) = softmax_c(-inv_temperature * ||z - c||^2)`` per codebook.
    """
    codes = all_codes_brute_force(q.bits, q.codebook_scale)
    x = z.double().reshape(-1, q.num_codebooks, q.bits)
    distance = ((x.unsqueeze(-2) - codes) ** 2).sum(-1)  # n c K
    p = torch.softmax(-q.inv_temperature * distance, -1)
    per_sample = -(torch.special.xlogy(p, p)).sum(-1).mean()
    mean = p.mean(0)  # c K
    batch = -(torch.special.xlogy(mean, mean)).sum(-1).mean()
    return per_sample, batch


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_every_code_round_trips(bits: int) -> None:
    q = LFQ(bits=bits).eval()
    assert q.codebook_sizes == (2**bits,)
    indices = torch.arange(2**bits).view(-1, 1)
    codes = q.indices_to_codes(indices)
    assert codes.dtype == torch.float32
    assert torch.equal(codes.double(), all_codes_brute_force(bits))  # channel i = bit i
    with torch.no_grad():
        out = q(codes * 0.3)
    assert torch.equal(out.indices, indices)
    assert torch.equal(out.quantized, codes)


def test_several_codebooks_and_large_bits_round_trip() -> None:
    q = LFQ(bits=3, num_codebooks=2).eval()
    indices = torch.tensor(list(itertools.product(range(8), range(8))))  # all 64 pairs
    codes = q.indices_to_codes(indices)
    assert torch.equal(codes[:, :3].double(), all_codes_brute_force(3)[indices[:, 0]])
    assert torch.equal(codes[:, 3:].double(), all_codes_brute_force(3)[indices[:, 1]])
    assert torch.equal(q(codes).indices, indices)
    # 62 bits per codebook: int64 indices, exact at the extremes
    big = LFQ(bits=62)
    picks = torch.tensor([0, 1, 2**61 + 5, 2**62 - 2, 2**62 - 1]).view(-1, 1)
    codes = big.indices_to_codes(picks)
    assert torch.equal(big(codes).indices, picks)
    assert torch.equal(big(codes).quantized, codes)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_quantized_equals_indices_to_codes_exactly(train: bool) -> None:
    torch.manual_seed(0)
    for q in (
        LFQ(bits=10),
        LFQ(codebook_size=2**6, num_codebooks=2, dim=16, codebook_scale=0.5),
    ):
        q.train(train)
        z = torch.randn(2, 5, 3, q.dim, requires_grad=True)
        out = q(z)
        assert out.indices.shape == (2, 5, 3, q.num_streams)
        assert torch.equal(q.indices_to_codes(out.indices), out.quantized)


def test_sign_convention_and_straight_through_gradient() -> None:
    q = LFQ(bits=4, codebook_scale=2.0)
    z = torch.tensor([[[0.5, -0.5, 0.0, 3.0]]], requires_grad=True)
    out = q(z)
    assert out.quantized.tolist() == [[[2.0, -2.0, -2.0, 2.0]]]  # 0 → -scale
    assert out.indices.tolist() == [[[0b1001]]]
    w = torch.randn(1, 1, 4)
    (w * out.quantized).sum().backward()
    assert torch.equal(z.grad, w)  # identity through the quantizer


@pytest.mark.parametrize(
    "config",
    [
        {"codebook_size": 2**8},
        {"bits": 3, "num_codebooks": 3, "dim": 5, "codebook_scale": 0.5},
        {"bits": 16, "dim": 4},  # factorised batch entropy
    ],
    ids=["no-projection", "projection-3-codebooks", "factorised"],
)
def test_conformance(config: dict) -> None:
    check_quantizer(LFQ, config=config, grids=((5,), (2, 3)))
    check_quantizer("lfq", config=config, grids=((4,),))


@pytest.mark.parametrize("dim", [10, 64], ids=["no-projection", "projection-64"])
def test_bf16_autocast_gives_the_float32_indices(dim: int) -> None:
    torch.manual_seed(0)
    q = LFQ(codebook_size=2**10, dim=dim)
    z = torch.randn(2, 8, 8, dim)
    for train in (True, False):
        q.train(train)
        ref = q(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = q(z)
            codes = q.indices_to_codes(auto.indices)
        assert torch.equal(auto.indices, ref.indices)
        assert auto.quantized.dtype == torch.float32
        assert torch.equal(auto.quantized, ref.quantized)
        assert torch.equal(codes, ref.quantized) or train
        assert torch.equal(auto.aux_loss, ref.aux_loss)
    # a bf16 input gives the indices of the same values in float32
    z16 = z.bfloat16()
    assert torch.equal(q(z16).indices, q(z16.float()).indices)


@pytest.mark.parametrize(
    "bits, num_codebooks, inv_temperature, scale",
    [(1, 1, 1.0, 1.0), (4, 1, 1.0, 1.0), (5, 2, 3.0, 0.5), (7, 1, 100.0, 1.0), (6, 3, 10.0, 2.0)],
)
def test_entropy_loss_matches_brute_force(
    bits: int, num_codebooks: int, inv_temperature: float, scale: float
) -> None:
    torch.manual_seed(0)
    q = LFQ(
        bits=bits,
        num_codebooks=num_codebooks,
        inv_temperature=inv_temperature,
        codebook_scale=scale,
        entropy_weight=0.3,
        commitment_weight=0.0,
        diversity_gamma=0.7,
    ).train()
    z = torch.randn(3, 40, bits * num_codebooks) * 0.3
    per_sample, batch = entropy_loss_brute_force(q, z)
    out = q(z)
    torch.testing.assert_close(
        out.metrics["per_sample_entropy"].double(), per_sample, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(out.metrics["batch_entropy"].double(), batch, rtol=1e-4, atol=1e-6)
    expected = 0.3 * (per_sample - 0.7 * batch)
    torch.testing.assert_close(out.aux_loss.double(), expected, rtol=1e-4, atol=1e-6)


def test_entropy_gradient_matches_brute_force() -> None:
    torch.manual_seed(0)
    q = LFQ(bits=5, inv_temperature=2.0, commitment_weight=0.0).train()
    z = (torch.randn(2, 30, 5) * 0.5).requires_grad_(True)
    q(z).aux_loss.backward()
    assert z.grad is not None and bool((z.grad != 0).any())
    z64 = z.detach().double().requires_grad_(True)
    per_sample, batch = entropy_loss_brute_force(q, z64)
    (0.1 * (per_sample - batch)).backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-3, atol=1e-7)


def test_commitment_loss() -> None:
    torch.manual_seed(0)
    q = LFQ(bits=4, entropy_weight=0.0, commitment_weight=0.25, codebook_scale=0.5).train()
    z = torch.randn(3, 7, 4)
    expected = 0.25 * ((z - torch.where(z > 0, 0.5, -0.5)) ** 2).mean()
    torch.testing.assert_close(q(z).aux_loss, expected)
    z.requires_grad_(True)
    q(z).aux_loss.backward()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z - torch.where(z > 0, 0.5, -0.5)) / z.numel())


def test_aux_loss_only_in_training() -> None:
    torch.manual_seed(0)
    q = LFQ(bits=6, dim=8)
    z = torch.randn(2, 9, 8)
    assert q.train()(z).aux_loss.item() != 0
    out = q.eval()(z)
    assert out.aux_loss.item() == 0 and out.aux_loss.ndim == 0
    assert set(out.metrics) == {"usage", "perplexity", "nonfinite"}


def test_gradient_flows_through_the_entropy_loss_and_projection() -> None:
    torch.manual_seed(0)
    for bits in (6, 16):  # exact and factorised batch entropy
        q = LFQ(bits=bits, dim=32, commitment_weight=0.0, inv_temperature=1.0).train()
        z = torch.randn(4, 16, 32, requires_grad=True)
        q(z).aux_loss.backward()
        assert torch.isfinite(z.grad).all() and bool((z.grad != 0).any())
        assert bool((q.project_in.weight.grad != 0).any())


def test_sharp_assignments_keep_finite_gradients() -> None:
    q = LFQ(bits=8, inv_temperature=1e4).train()
    z = (torch.randn(2, 5, 8) * 10).requires_grad_(True)
    out = q(z)
    out.aux_loss.backward()
    assert torch.isfinite(out.aux_loss) and torch.isfinite(z.grad).all()


def test_batch_entropy_helpers() -> None:
    torch.manual_seed(0)
    logits = torch.randn(50, 2, 6) * 2
    # brute force: the full (n, c, 64) product distribution
    codes = all_codes_brute_force(6, 1.0).gt(0).double()  # K k bits
    q = torch.sigmoid(logits.double()).unsqueeze(-2)  # n c 1 k
    p = torch.where(codes.bool(), q, 1 - q).prod(-1)  # n c K
    mean = p.mean(0)
    exact = -(torch.special.xlogy(mean, mean)).sum(-1)
    torch.testing.assert_close(exact_batch_entropy(logits).double(), exact, rtol=1e-5, atol=1e-6)
    bound = factorised_batch_entropy(logits)
    assert bool((bound.double() >= exact - 1e-5).all())
    # bits independent over the batch: the bound is exact
    independent = torch.tensor(list(itertools.product([-30.0, 30.0], repeat=6))).view(-1, 1, 6)
    torch.testing.assert_close(
        factorised_batch_entropy(independent), exact_batch_entropy(independent)
    )
    torch.testing.assert_close(exact_batch_entropy(independent), torch.tensor([6 * 0.6931472]))
    # binary entropy: exact, symmetric, tiny but positive for large logits
    x = torch.tensor([0.0, 1.0, -1.0, 50.0])
    qx, rx = torch.sigmoid(x.double()), torch.sigmoid(-x.double())
    log_q, log_r = (
        torch.nn.functional.logsigmoid(x.double()),
        torch.nn.functional.logsigmoid(-x.double()),
    )
    ref = -(qx * log_q + rx * log_r)
    torch.testing.assert_close(binary_entropy(x).double(), ref, rtol=1e-5, atol=1e-30)
    assert binary_entropy(torch.tensor(200.0)) >= 0


def test_metrics_match_tok_metrics() -> None:
    torch.manual_seed(0)
    for q in (LFQ(bits=4), LFQ(bits=3, num_codebooks=3)):
        out = q.eval()(torch.randn(4, 9, q.dim))
        counts = code_counts(out.indices, q.codebook_sizes)  # the evaluation's exact counts
        streams = [codebook_stats(c) for c in counts]
        ref = {
            k: torch.tensor(sum(s[k] for s in streams) / len(streams))
            for k in ("usage", "perplexity")
        }
        for key, value in ref.items():
            torch.testing.assert_close(out.metrics[key].cpu(), value.float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("size", [1000, 3, 0, 1, 2**63, 2.0, True])
def test_codebook_size_must_be_a_power_of_two(size) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(size))) as info:
        LFQ(codebook_size=size)
    assert "LFQ codebook_size must be a power of two" in str(info.value)


def test_other_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="nearest: 512 or 1024"):
        LFQ(codebook_size=1000)
    with pytest.raises(ConfigError, match="exactly one of codebook_size"):
        LFQ()
    with pytest.raises(ConfigError, match="exactly one of codebook_size"):
        LFQ(codebook_size=16, bits=4)
    for bits in (0, 63, 2.0, "4"):
        with pytest.raises(ConfigError, match="bits must be an integer from 1 to 62"):
            LFQ(bits=bits)
    with pytest.raises(ConfigError, match="num_codebooks must be a positive integer, got 0"):
        LFQ(bits=4, num_codebooks=0)
    with pytest.raises(ConfigError, match="entropy_weight must be a finite number ≥ 0"):
        LFQ(bits=4, entropy_weight=-1)
    with pytest.raises(ConfigError, match="inv_temperature must be a finite number > 0"):
        LFQ(bits=4, inv_temperature=0)
    with pytest.raises(ConfigError, match="codebook_scale must be a finite number > 0"):
        LFQ(bits=4, codebook_scale=float("nan"))
    with pytest.raises(ConfigError, match=r"expects a float tensor \(batch, \*grid, 4\)"):
        LFQ(bits=4)(torch.randn(2, 3, 5))


def test_bad_indices_raise() -> None:
    q = LFQ(bits=4, num_codebooks=2)
    with pytest.raises(IndexRangeError, match="token index 16 in stream 1"):
        q.indices_to_codes(torch.tensor([[0, 16]]))
    with pytest.raises(IndexRangeError, match="token index -1 in stream 0"):
        q.indices_to_codes(torch.tensor([[-1, 0]]))


def test_config_round_trip_and_state() -> None:
    q = LFQ(codebook_size=2**10, dim=64, num_codebooks=1, entropy_weight=0.2)
    assert q.config() == {
        "codebook_size": 1024,
        "dim": 64,
        "num_codebooks": 1,
        "entropy_weight": 0.2,
        "commitment_weight": 0.25,
        "diversity_gamma": 1.0,
        "inv_temperature": 100.0,
        "codebook_scale": 1.0,
    }
    assert LFQ(**q.config()).config() == q.config()
    assert set(q.state_dict()) == {
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    assert LFQ(bits=10).state_dict() == {}


@pytest.mark.parametrize("dim", [10, 64], ids=["no-projection", "projection-64"])
def test_equals_vector_quantize_pytorch(dim: int) -> None:
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    ours = LFQ(codebook_size=2**10, dim=dim, inv_temperature=100.0)
    theirs = vqp.LFQ(
        dim=dim,
        codebook_size=2**10,
        entropy_loss_weight=0.1,
        commitment_loss_weight=0.25,
        diversity_gamma=1.0,
    )
    theirs.load_state_dict(ours.state_dict(), strict=False)  # same projection weights
    z = torch.randn(4, 50, dim)  # (b, n, d): channel-last for both
    for train in (True, False):
        ours.train(train), theirs.train(train)
        out = ours(z)
        their_codes, their_indices, their_loss = theirs(z, inv_temperature=100.0)
        # Theirs number the first channel as the most significant bit, ours as the
        # least: the indices are the same bits in reverse order.
        bits = 10
        reversed_theirs = sum(((their_indices >> (bits - 1 - i)) & 1) << i for i in range(bits))
        assert torch.equal(out.indices[..., 0], reversed_theirs.long())
        torch.testing.assert_close(
            out.quantized, their_codes, rtol=0, atol=1e-6 if dim != 10 else 0
        )
        # Theirs clamp probabilities at 1e-5 inside the log; ours is the exact entropy.
        torch.testing.assert_close(out.aux_loss, their_loss, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 400.0], ids=["soft", "sharp"])
def test_exact_batch_entropy_at_the_largest_exact_size(scale: float) -> None:
    """2^14 codes (the largest exact size), against the full table in float64."""
    torch.manual_seed(0)
    raw = torch.randn(48, 1, 14, dtype=torch.float64) * scale
    q = LFQ(bits=14, inv_temperature=scale / 4, commitment_weight=0.0, diversity_gamma=1.0)
    bits = ((torch.arange(2**14).unsqueeze(-1) >> torch.arange(14)) & 1).bool()  # K k
    log_q = torch.nn.functional.logsigmoid(raw[:, 0]).unsqueeze(1)  # n 1 k
    log_r = torch.nn.functional.logsigmoid(-raw[:, 0]).unsqueeze(1)
    mean = torch.where(bits, log_q, log_r).sum(-1).exp().mean(0)  # K
    expected = -(torch.special.xlogy(mean, mean)).sum()
    z = (raw[:, 0] / scale).float().view(2, 24, 14)  # logits = 4 * (scale / 4) * z = raw
    out = q.train()(z)
    torch.testing.assert_close(out.metrics["batch_entropy"].double(), expected, rtol=0, atol=2e-6)
