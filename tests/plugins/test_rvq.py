"""Residual vector quantization (tok.plugins.rvq)."""

from __future__ import annotations

import json

import pytest
import torch

import tok
from tok.errors import ConfigError, IndexRangeError
from tok.plugins.rvq import ResidualVQ
from tok.plugins.vq import nearest
from tok.testing import check_quantizer


@pytest.mark.parametrize(
    "config",
    [
        {"dim": 6, "codebook_size": 8, "depth": 3},
        {"dim": 6, "codebook_size": 8, "depth": 1},
        {"dim": 6, "codebook_size": 8, "depth": 3, "shared_codebook": True, "kmeans_init": True},
        {"dim": 6, "codebook_size": 8, "depth": 2, "ema": False, "restart_after": 1},
        {"dim": 6, "codebook_size": 8, "depth": 2, "codebook_dim": 3, "cosine": True},
    ],
    ids=["plain", "depth-1", "shared-kmeans", "no-ema-restart", "projection-cosine"],
)
def test_conformance(config: dict) -> None:
    check_quantizer(ResidualVQ, config=config, grids=((5,), (2, 3)), batch=2)


def test_registered_as_rvq() -> None:
    assert tok.get_quantizer("rvq") is ResidualVQ


def test_streams_are_levels_and_each_quantizes_the_residual() -> None:
    torch.manual_seed(0)
    q = ResidualVQ(dim=4, codebook_size=16, depth=3).eval()
    assert q.num_streams == 3 and q.codebook_sizes == (16, 16, 16)
    z = torch.randn(2, 5, 3, 4)
    with torch.no_grad():
        out = q(z)
    assert out.indices.shape == (2, 5, 3, 3) and out.indices.dtype == torch.int64
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    residual = z.reshape(-1, 4)
    total = torch.zeros_like(residual)
    for i in range(3):
        codebook = q.level(i).codebook
        idx = nearest(residual, codebook)
        assert torch.equal(out.indices[..., i].reshape(-1), idx)
        residual = residual - codebook[idx]
        total = total + codebook[idx]
    assert torch.equal(out.quantized.reshape(-1, 4), total)


def test_round_trip_is_exact_with_projections() -> None:
    torch.manual_seed(0)
    q = ResidualVQ(dim=8, codebook_size=32, depth=4, codebook_dim=3)
    z = torch.randn(3, 7, 8)
    q.train()
    for _ in range(3):
        q(z)
    q.eval()
    with torch.no_grad():
        out = q(z)
        assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    with pytest.raises(IndexRangeError):
        q.indices_to_codes(out.indices[..., :3])  # one stream short


def test_residual_error_decreases_with_depth() -> None:
    torch.manual_seed(0)
    q = ResidualVQ(dim=8, codebook_size=16, depth=4, kmeans_init=True, kmeans_iters=3)
    data = torch.randn(512, 8)
    q.train()
    for _ in range(5):
        q(data[torch.randperm(512)[:256]])
    q.eval()
    with torch.no_grad():
        idx = q(data).indices
        partial = torch.zeros_like(data)
        errors = []
        for i in range(4):
            partial = partial + q.level(i).indices_to_codes(idx[..., i : i + 1])
            errors.append((data - partial).pow(2).mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.6 * errors[0], errors


def test_aux_loss_is_the_sum_of_the_levels() -> None:
    torch.manual_seed(0)
    q = ResidualVQ(dim=4, codebook_size=8, depth=3, commitment_weight=0.5).eval()
    z = torch.randn(10, 4)
    with torch.no_grad():
        out = q(z)
    residual, expected = z, 0.0
    for i in range(3):
        code = q.level(i).indices_to_codes(out.indices[..., i : i + 1])
        expected += 0.5 * (residual - code).pow(2).mean().item()
        residual = residual - code
    assert out.aux_loss.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_passes_every_level_straight_through() -> None:
    q = ResidualVQ(dim=4, codebook_size=8, depth=3, commitment_weight=0.0)
    z = torch.randn(5, 4, requires_grad=True)
    q(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.full_like(z, 3.0))


def test_shared_codebook_is_one_module() -> None:
    torch.manual_seed(0)
    q = ResidualVQ(dim=4, codebook_size=8, depth=3, shared_codebook=True)
    assert len(q.levels) == 1 and all(q.level(i) is q.levels[0] for i in range(3))
    assert {k.split(".")[1] for k in q.state_dict()} == {"0"}
    separate = ResidualVQ(dim=4, codebook_size=8, depth=3)
    assert len(separate.state_dict()) == 3 * len(q.state_dict())
    z = torch.randn(20, 4)
    q.eval()
    with torch.no_grad():
        out = q(z)
    residual, codebook = z, q.levels[0].codebook
    for i in range(3):
        idx = nearest(residual, codebook)
        assert torch.equal(out.indices[:, i], idx)
        residual = residual - codebook[idx]
    before = codebook.clone()
    q.train()
    q(z)
    assert not torch.equal(q.levels[0].codebook, before)  # trained by every level


def test_bf16_autocast_gives_the_float32_indices() -> None:
    torch.manual_seed(0)
    for config in ({}, {"codebook_dim": 3}, {"shared_codebook": True}):
        q = ResidualVQ(dim=8, codebook_size=64, depth=3, **config).eval()
        z = torch.randn(4, 6, 6, 8)
        with torch.no_grad():
            ref = q(z)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = q(z)
                codes = q.indices_to_codes(low.indices)
        assert torch.equal(low.indices, ref.indices), config
        assert low.quantized.dtype == torch.float32 and torch.equal(low.quantized, ref.quantized)
        assert torch.equal(codes, ref.quantized)


def test_config_round_trip() -> None:
    q = ResidualVQ(dim=8, codebook_size=16, depth=2, shared_codebook=True, restart_after=None)
    cfg = q.config()
    assert cfg == {
        "dim": 8,
        "codebook_size": 16,
        "codebook_dim": 8,
        "decay": 0.99,
        "eps": 1e-5,
        "commitment_weight": 0.25,
        "ema": True,
        "codebook_weight": 1.0,
        "kmeans_init": False,
        "kmeans_iters": 10,
        "restart_after": 0,
        "cosine": False,
        "depth": 2,
        "shared_codebook": True,
    }
    assert ResidualVQ(**json.loads(json.dumps(cfg))).config() == cfg
    assert tok.create_quantizer("rvq", **cfg).config() == cfg


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"depth": 0}, ("depth", "0")),
        ({"depth": -2}, ("depth", "-2")),
        ({"depth": 2.5}, ("depth", "2.5")),
        ({"depth": True}, ("depth", "True")),
        ({"shared_codebook": "yes"}, ("shared_codebook", "yes")),
        ({"codebook_size": 0}, ("codebook_size", "0")),
        ({"codebook_size": "8"}, ("codebook_size", "8")),
        ({"decay": 1.5}, ("decay", "1.5")),
    ],
)
def test_bad_config_is_a_config_error(kwargs: dict, names: tuple[str, ...]) -> None:
    cfg = {"dim": 4, "codebook_size": 8, **kwargs}
    with pytest.raises(ConfigError) as info:
        ResidualVQ(**cfg)
    for name in names:
        assert name in str(info.value)
