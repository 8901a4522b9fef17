"""Multi-group vector quantization (tok.plugins.mgvq)."""

from __future__ import annotations

import json

import pytest
import torch

import tok
from tok.errors import ConfigError
from tok.plugins.mgvq import MultiGroupVQ
from tok.plugins.vq import nearest
from tok.testing import check_quantizer


@pytest.mark.parametrize(
    "config",
    [
        {"dim": 6, "codebook_size": 8, "groups": 3},
        {"dim": 6, "codebook_size": 8, "groups": 1},
        {"dim": 6, "codebook_size": 8, "groups": 2, "shared_codebook": True, "kmeans_init": True},
        {"dim": 6, "codebook_size": 8, "groups": 2, "ema": False, "restart_after": 1},
        {"dim": 8, "codebook_size": 8, "groups": 2, "codebook_dim": 2, "shared_codebook": True},
    ],
    ids=["plain", "groups-1", "shared-kmeans", "no-ema-restart", "projection-shared"],
)
def test_conformance(config: dict) -> None:
    check_quantizer(MultiGroupVQ, config=config, grids=((5,), (2, 3)), batch=2)


def test_registered_as_mgvq() -> None:
    assert tok.get_quantizer("mgvq") is MultiGroupVQ
    assert "2507.07997" in MultiGroupVQ.paper


def test_streams_are_groups_each_with_its_own_codebook() -> None:
    torch.manual_seed(0)
    q = MultiGroupVQ(dim=12, codebook_size=16, groups=3).eval()
    assert q.num_streams == 3 and q.codebook_sizes == (16, 16, 16)
    assert len(q.vqs) == 3 and all(vq.dim == 4 for vq in q.vqs)
    z = torch.randn(2, 3, 4, 12)
    with torch.no_grad():
        out = q(z)
    assert out.indices.shape == (2, 3, 4, 3) and out.indices.dtype == torch.int64
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    for g in range(3):
        part = z[..., 4 * g : 4 * g + 4].reshape(-1, 4)
        idx = nearest(part, q.vqs[g].codebook)
        assert torch.equal(out.indices[..., g].reshape(-1), idx)
        assert torch.equal(
            out.quantized[..., 4 * g : 4 * g + 4].reshape(-1, 4), q.vqs[g].codebook[idx]
        )
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)


def test_groups_are_independent() -> None:
    torch.manual_seed(0)
    q = MultiGroupVQ(dim=12, codebook_size=16, groups=3).eval()
    z = torch.randn(50, 12)
    changed = z.clone()
    changed[:, 4:8] = torch.randn(50, 4)  # only group 1's channels
    with torch.no_grad():
        a, b = q(z), q(changed)
    assert torch.equal(a.indices[:, [0, 2]], b.indices[:, [0, 2]])
    assert not torch.equal(a.indices[:, 1], b.indices[:, 1])
    assert torch.equal(a.quantized[:, :4], b.quantized[:, :4])
    # training one group's codebook leaves the others alone
    q.train()
    before = [vq.codebook.clone() for vq in q.vqs]
    q(z)
    assert all(not torch.equal(vq.codebook, c) for vq, c in zip(q.vqs, before, strict=True))
    q.vqs[1].load_state_dict({**q.vqs[1].state_dict(), "codebook": before[1]})
    with torch.no_grad():
        q.eval()
        assert torch.equal(q(z).indices[:, 1], nearest(z[:, 4:8], before[1]))


def test_shared_codebook_is_one_module_and_pools_the_statistics() -> None:
    torch.manual_seed(0)
    q = MultiGroupVQ(dim=8, codebook_size=16, groups=4, shared_codebook=True, decay=0.0)
    assert len(q.vqs) == 1
    assert {k.split(".")[1] for k in q.state_dict()} == {"0"}
    assert len(MultiGroupVQ(dim=8, codebook_size=16, groups=4).state_dict()) == 4 * len(
        q.state_dict()
    )
    z = torch.randn(30, 8)
    codebook = q.vqs[0].codebook.clone()
    q.train()
    out = q(z)
    for g in range(4):
        assert torch.equal(out.indices[:, g], nearest(z[:, 2 * g : 2 * g + 2], codebook))
    # with decay 0 the EMA cluster sizes are exactly this batch's counts, over all groups
    counts = torch.bincount(out.indices.reshape(-1), minlength=16).float()
    assert torch.equal(q.vqs[0].cluster_size, counts)


def test_shared_equals_separate_with_identical_codebooks() -> None:
    torch.manual_seed(0)
    shared = MultiGroupVQ(dim=8, codebook_size=16, groups=4, shared_codebook=True).eval()
    separate = MultiGroupVQ(dim=8, codebook_size=16, groups=4).eval()
    for vq in separate.vqs:
        vq.load_state_dict(shared.vqs[0].state_dict())
    z = torch.randn(3, 5, 8)
    with torch.no_grad():
        a, b = shared(z), separate(z)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.quantized, b.quantized)
    assert a.aux_loss.item() == pytest.approx(b.aux_loss.item(), rel=1e-5)
    assert a.aux_loss.item() == pytest.approx(
        0.25 * (z - a.quantized).pow(2).mean().item(), rel=1e-5
    )


def test_bf16_autocast_gives_the_float32_indices() -> None:
    torch.manual_seed(0)
    for config in ({}, {"codebook_dim": 3}, {"shared_codebook": True}):
        q = MultiGroupVQ(dim=16, codebook_size=64, groups=4, **config).eval()
        z = torch.randn(4, 6, 6, 16)
        with torch.no_grad():
            ref = q(z)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = q(z)
                codes = q.indices_to_codes(low.indices)
        assert torch.equal(low.indices, ref.indices), config
        assert low.quantized.dtype == torch.float32 and torch.equal(low.quantized, ref.quantized)
        assert torch.equal(codes, ref.quantized)


def test_config_round_trip() -> None:
    q = MultiGroupVQ(dim=8, codebook_size=16, groups=2, restart_after=None)
    cfg = q.config()
    assert cfg == {
        "dim": 8,
        "codebook_size": 16,
        "codebook_dim": 4,
        "decay": 0.99,
        "eps": 1e-5,
        "commitment_weight": 0.25,
        "ema": True,
        "codebook_weight": 1.0,
        "kmeans_init": False,
        "kmeans_iters": 10,
        "restart_after": 0,
        "cosine": False,
        "groups": 2,
        "shared_codebook": False,
    }
    assert MultiGroupVQ(**json.loads(json.dumps(cfg))).config() == cfg
    assert tok.create_quantizer("mgvq", **cfg).config() == cfg


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"dim": 10, "groups": 4}, ("dim 10", "groups 4")),
        ({"groups": 0}, ("groups", "0")),
        ({"groups": 1.5}, ("groups", "1.5")),
        ({"shared_codebook": 1}, ("shared_codebook", "1")),
        ({"codebook_size": 0}, ("codebook_size", "0")),
        ({"codebook_size": 2.0}, ("codebook_size", "2.0")),
    ],
)
def test_bad_config_is_a_config_error(kwargs: dict, names: tuple[str, ...]) -> None:
    cfg = {"dim": 8, "codebook_size": 8, "groups": 2, **kwargs}
    with pytest.raises(ConfigError) as info:
        MultiGroupVQ(**cfg)
    for name in names:
        assert name in str(info.value)
