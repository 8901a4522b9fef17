"""Vector quantization with an EMA codebook (tok.plugins.vq)."""

from __future__ import annotations

import math

import pytest
import torch

from tok.errors import ConfigError, IndexRangeError
from tok.metrics import batch_code_metrics
from tok.plugins.vq import VQ, _sample_proportional, cluster_sums, kmeans, kmeans_plus_plus, nearest
from tok.testing import check_quantizer


def clustered(n: int, centres: torch.Tensor, noise: float = 0.05) -> torch.Tensor:
    """``n`` vectors, each a random one of ``centres`` plus Gaussian noise."""
    pick = torch.randint(len(centres), (n,))
    return centres[pick] + noise * torch.randn(n, centres.shape[1])


def train_steps(q: VQ, batches: int, make_batch) -> None:
    q.train()
    for _ in range(batches):
        q(make_batch())


@pytest.mark.parametrize(
    "config",
    [
        {"dim": 8, "codebook_size": 32},
        {"dim": 8, "codebook_size": 32, "ema": False, "restart_after": 1},
        {"dim": 8, "codebook_size": 5, "cosine": True, "kmeans_init": True},
        {"dim": 6, "codebook_size": 64, "codebook_dim": 3, "cosine": True, "ema": False},
        {"dim": 4, "codebook_size": 8, "commitment_weight": 0.0, "decay": 0.0},
    ],
    ids=["plain", "no-ema-restart", "cosine-kmeans", "projection-cosine-no-ema", "no-commitment"],
)
def test_conformance(config: dict) -> None:
    check_quantizer(VQ, config=config, grids=((5,), (2, 3)))


def test_nearest_matches_brute_force() -> None:
    torch.manual_seed(0)
    codebook = torch.randn(300, 16)
    x = torch.randn(2500, 16)  # more rows than one block
    brute = torch.cdist(x.double(), codebook.double()).argmin(-1)
    assert torch.equal(nearest(x, codebook), brute)
    assert nearest(x[:0], codebook).shape == (0,)


def test_nearest_picks_the_first_of_tied_codes() -> None:
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    assert nearest(x, codebook).tolist() == [0, 1, 0]


def test_cluster_sums_match_index_add() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000, 5)
    idx = torch.randint(0, 40, (1000,)) * 2  # odd codes are never used
    counts = torch.bincount(idx, minlength=81)
    expected = torch.zeros(81, 5, dtype=torch.float64).index_add_(0, idx, x.double())
    sums = cluster_sums(x, idx, counts)
    assert sums.shape == (81, 5) and sums.dtype == torch.float32
    torch.testing.assert_close(sums.double(), expected, rtol=1e-5, atol=1e-5)
    assert bool((sums[1::2] == 0).all())


def test_quantized_is_the_nearest_code_and_round_trips() -> None:
    torch.manual_seed(0)
    q = VQ(dim=8, codebook_size=64)
    z = torch.randn(2, 5, 3, 8)
    for train in (True, False):
        q.train(train)
        out = q(z)
        assert out.indices.shape == (2, 5, 3, 1) and out.indices.dtype == torch.int64
        assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
        if not train:
            brute = torch.cdist(z.reshape(-1, 8).double(), q.codebook.double()).argmin(-1)
            assert torch.equal(out.indices.flatten(), brute)
            assert torch.equal(q.indices_to_codes(out.indices), out.quantized)


def test_projection_and_state() -> None:
    q = VQ(dim=32, codebook_size=16, codebook_dim=4)
    assert (q.project_in.in_features, q.project_in.out_features) == (32, 4)
    assert (q.project_out.in_features, q.project_out.out_features) == (4, 32)
    assert set(q.state_dict()) == {
        "codebook",
        "cluster_size",
        "embed_sum",
        "unused_steps",
        "initted",
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    assert dict(q.named_buffers())["codebook"].shape == (16, 4)
    plain = VQ(dim=8, codebook_size=16)
    assert isinstance(plain.project_in, torch.nn.Identity)
    assert plain.codebook_dim == 8
    assert not any(True for _ in plain.parameters())  # EMA: nothing for an optimiser
    learned = VQ(dim=8, codebook_size=16, ema=False)
    assert [n for n, _ in learned.named_parameters()] == ["codebook"]


def test_config_names_the_keyword_arguments() -> None:
    q = VQ(dim=8, codebook_size=16, restart_after=None)
    assert q.config() == {
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
    }
    assert VQ(**q.config()).config() == q.config()


def test_ema_update_follows_the_formula() -> None:
    torch.manual_seed(0)
    decay, eps, k = 0.9, 1e-5, 8
    q = VQ(dim=4, codebook_size=k, decay=decay, eps=eps)
    codebook0 = q.codebook.clone()
    z = torch.randn(3, 10, 4)
    out = q(z)
    x = z.reshape(-1, 4)
    idx = torch.cdist(x.double(), codebook0.double()).argmin(-1)
    assert torch.equal(out.indices.flatten(), idx)
    onehot = torch.nn.functional.one_hot(idx, k).double()
    size = decay * 1.0 + (1 - decay) * onehot.sum(0)
    embed = decay * codebook0.double() + (1 - decay) * onehot.t() @ x.double()
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    torch.testing.assert_close(q.cluster_size.double(), size)
    torch.testing.assert_close(q.embed_sum.double(), embed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.codebook.double(), embed / smoothed[:, None], rtol=1e-5, atol=1e-6)
    # the returned codes are those of the codebook before the update
    torch.testing.assert_close(out.quantized.reshape(-1, 4), codebook0[idx], rtol=0, atol=0)


def test_state_changes_only_in_train_mode_with_gradients() -> None:
    torch.manual_seed(0)
    q = VQ(dim=4, codebook_size=8, kmeans_init=True, restart_after=1)
    state = {k: v.clone() for k, v in q.state_dict().items()}

    def unchanged() -> bool:
        return all(torch.equal(v, q.state_dict()[k]) for k, v in state.items())

    z = torch.randn(4, 6, 4)  # 24 vectors: k-means initialisation waits for 3 * 8
    q.eval()
    q(z)
    assert unchanged()
    q.train()
    with torch.no_grad():
        q(z)
    assert unchanged()
    q(z)
    assert not unchanged() and bool(q.initted)


def test_aux_loss_is_the_weighted_commitment() -> None:
    torch.manual_seed(0)
    q = VQ(dim=4, codebook_size=8, commitment_weight=0.5)
    z = torch.randn(2, 7, 4, requires_grad=True)
    out = q.eval()(z)
    expected = 0.5 * (z.detach() - out.quantized.detach()).pow(2).mean()
    torch.testing.assert_close(out.aux_loss, expected)
    out.aux_loss.backward()
    torch.testing.assert_close(z.grad, 0.5 * 2 * (z.detach() - out.quantized.detach()) / z.numel())


def test_gradient_is_straight_through() -> None:
    torch.manual_seed(0)
    q = VQ(dim=4, codebook_size=8)
    z = torch.randn(3, 5, 4, requires_grad=True)
    w = torch.randn(3, 5, 4)
    (q(z).quantized * w).sum().backward()
    assert torch.equal(z.grad, w)


def test_without_ema_the_codebook_learns_by_gradient() -> None:
    torch.manual_seed(0)
    q = VQ(dim=4, codebook_size=8, ema=False, commitment_weight=0.25, codebook_weight=1.0)
    assert isinstance(q.codebook, torch.nn.Parameter)
    z = torch.randn(2, 9, 4, requires_grad=True)
    out = q(z)
    (out.quantized.sum() + out.aux_loss).backward()
    idx = out.indices.flatten()
    x, c = z.detach().reshape(-1, 4), q.codebook.detach()
    expected = torch.zeros_like(c).index_add_(0, idx, 2 * (c[idx] - x) / x.numel())
    torch.testing.assert_close(q.codebook.grad, expected)  # codebook loss only
    # the codebook itself does not move in forward: the optimiser moves it
    before = q.codebook.detach().clone()
    q(z)
    assert torch.equal(q.codebook.detach(), before)


@pytest.mark.parametrize(
    "config",
    [
        {"dim": 16, "codebook_size": 64},
        {"dim": 16, "codebook_size": 64, "codebook_dim": 4},
        {"dim": 16, "codebook_size": 64, "cosine": True},
    ],
    ids=["plain", "projection", "cosine"],
)
def test_bf16_autocast_gives_the_float32_indices(config: dict) -> None:
    torch.manual_seed(0)
    q = VQ(**config).eval()
    z = torch.randn(2, 8, 8, 16)
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = q(z)
        codes = q.indices_to_codes(auto.indices)
    assert torch.equal(auto.indices, ref.indices)
    assert auto.quantized.dtype == torch.float32
    assert torch.equal(auto.quantized, ref.quantized)
    assert codes.dtype == torch.float32 and torch.equal(codes, ref.quantized)
    z16 = z.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q(z16).indices, q(z16.float()).indices)


def test_bf16_autocast_training_matches_float32() -> None:
    torch.manual_seed(0)
    a = VQ(dim=8, codebook_size=32, kmeans_init=True, restart_after=2)
    b = VQ(**a.config())
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        z = torch.randn(4, 16, 8)
        torch.manual_seed(1)
        ref = a(z)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = b(z)
        assert torch.equal(ref.indices, auto.indices)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_kmeans_init_finds_the_clusters() -> None:
    torch.manual_seed(0)
    centres = torch.randn(8, 6) * 10
    q = VQ(dim=6, codebook_size=8, kmeans_init=True, decay=0.0)
    assert not bool(q.initted)
    out = q(clustered(400, centres)[None])
    assert bool(q.initted)
    assert out.metrics["usage"].item() == 1.0
    # every centre has a code next to it
    gap = torch.cdist(centres, q.codebook).min(-1).values
    assert bool((gap < 0.1).all()), gap


def test_kmeans_plus_plus_seeds_every_separated_cluster() -> None:
    torch.manual_seed(0)
    centres = torch.randn(10, 4) * 1000
    x = clustered(500, centres, noise=0.01)
    seeds = kmeans_plus_plus(x, 10)
    assert torch.cdist(seeds, x).min(-1).values.max() == 0  # seeds are data points
    assert sorted(torch.cdist(seeds, centres).argmin(-1).tolist()) == list(range(10))


def test_sampling_proportional_to_weights() -> None:
    torch.manual_seed(0)
    weights = torch.tensor([0.0, 1.0, 0.0, 3.0, 0.0])
    draws = torch.tensor([_sample_proportional(weights) for _ in range(2000)])
    assert set(draws.tolist()) == {1, 3}
    assert 0.7 < (draws == 3).float().mean() < 0.8
    assert 0 <= _sample_proportional(torch.zeros(4)) < 4


def test_kmeans_with_fewer_vectors_than_codes() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    centres = kmeans(x, 8, iters=2)
    assert centres.shape == (8, 4)
    assert bool(torch.isfinite(centres).all())
    assert torch.cdist(centres, x).min(-1).values.max() < 1e-6  # every centroid is a data point


@pytest.mark.parametrize("cosine", [False, True], ids=["euclidean", "cosine"])
def test_dead_code_restart_revives_a_codebook_far_from_the_data(cosine: bool) -> None:
    torch.manual_seed(0)
    k, dim = 64, 8
    centres = torch.randn(256, dim) * 3
    if cosine:
        centres[:, 0] = 20.0

    def batch() -> torch.Tensor:
        return clustered(512, centres, noise=0.3).view(8, 64, dim)

    usage = {}
    for restart in (4, None):
        torch.manual_seed(1)
        q = VQ(dim=dim, codebook_size=k, restart_after=restart, cosine=cosine)
        with torch.no_grad():  # every code far away from the data, in one corner
            far = torch.randn(k, dim) * 0.01 + 100.0
            if cosine:  # ... or all pointing away from it (the data lies around +e0)
                far = -torch.eye(dim)[:1].expand(k, dim)
            q.codebook.copy_(far)
            q.embed_sum.copy_(far)
        train_steps(q, 40, batch)
        with torch.no_grad():
            usage[restart] = q.eval()(clustered(4096, centres, noise=0.3)[None]).metrics["usage"]
    assert usage[4] >= 0.9, usage
    assert usage[None] < 0.2, usage


def test_cosine_codes_are_unit_vectors() -> None:
    torch.manual_seed(0)
    q = VQ(dim=8, codebook_size=16, cosine=True, kmeans_init=True, restart_after=1)
    train_steps(q, 3, lambda: torch.randn(4, 10, 8))
    torch.testing.assert_close(q.codebook.norm(dim=-1), torch.ones(16))


def test_metrics_match_tok_metrics() -> None:
    torch.manual_seed(0)
    q = VQ(dim=4, codebook_size=32)
    out = q(torch.randn(4, 9, 4))
    ref = batch_code_metrics(out.indices, q.codebook_sizes)
    assert set(out.metrics) == {"usage", "perplexity", "nonfinite"}
    for key, value in ref.items():
        assert out.metrics[key].ndim == 0 and not out.metrics[key].requires_grad
        torch.testing.assert_close(out.metrics[key], value.float(), rtol=1e-5, atol=0)


def test_empty_input() -> None:
    q = VQ(dim=4, codebook_size=8)
    out = q(torch.zeros(0, 3, 4))
    assert out.indices.shape == (0, 3, 1) and out.quantized.shape == (0, 3, 4)
    assert out.aux_loss.item() == 0
    assert out.metrics["usage"].item() == 0


def test_invalid_arguments_raise_config_error() -> None:
    bad = [
        ({"codebook_size": 0}, "codebook_size must be an integer >= 1"),
        ({"codebook_size": 2.5}, "codebook_size must be an integer"),
        ({"codebook_dim": 0}, "codebook_dim must be an integer >= 1"),
        ({"decay": 1.0}, r"decay must be a number in \[0, 1\)"),
        ({"decay": -0.1}, "decay"),
        ({"eps": 0}, "eps must be a number in > 0"),
        ({"commitment_weight": -1}, "commitment_weight"),
        ({"ema": 1}, "ema must be true or false"),
        ({"kmeans_init": "yes"}, "kmeans_init must be true or false"),
        ({"restart_after": -1}, "restart_after must be an integer >= 0"),
        ({"kmeans_iters": True}, "kmeans_iters"),
        ({"dim": 0}, "dim must be a positive integer"),
    ]
    for override, message in bad:
        with pytest.raises(ConfigError, match=message):
            VQ(**{"dim": 4, "codebook_size": 8, **override})
    with pytest.raises(ConfigError, match=r"expects a float tensor \(batch, \*grid, 4\)"):
        VQ(dim=4, codebook_size=8)(torch.randn(2, 3, 5))


def test_bad_indices_raise() -> None:
    q = VQ(dim=4, codebook_size=8)
    with pytest.raises(IndexRangeError, match="token index 8 in stream 0"):
        q.indices_to_codes(torch.tensor([[0], [8]]))
    with pytest.raises(IndexRangeError, match="token index -1"):
        q.indices_to_codes(torch.tensor([[-1]]))


def test_registered_as_vq() -> None:
    import tok

    assert tok.get_quantizer("vq") is VQ
    q = tok.create_quantizer("vq", dim=8, codebook_size=16, codebook_dim=4)
    assert q.codebook_sizes == (16,) and q.num_streams == 1


def test_indices_equal_vector_quantize_pytorch() -> None:
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    ours = VQ(dim=16, codebook_size=64).eval()
    theirs = vqp.VectorQuantize(dim=16, codebook_size=64, decay=0.99).eval()
    with torch.no_grad():
        theirs._codebook.embed.copy_(ours.codebook[None])
    z = clustered(200, ours.codebook, noise=0.3).view(4, 50, 16)
    out = ours(z)
    their_codes, their_indices, _ = theirs(z)
    assert torch.equal(out.indices[..., 0], their_indices.long())
    torch.testing.assert_close(out.quantized, their_codes, rtol=0, atol=1e-6)


def test_kmeans_init_on_tiny_first_batches_reaches_the_usage_of_large_ones() -> None:
    """k-means initialisation gathers vectors over as many batches as it needs: with batches of
    8 real MNIST digits (392 vectors of 4x4 patches for 1,024 codes) and no dead-code
    restart, the test usage right after initialisation matches that of batches of 64. It
    used to run k-means on the first 392 vectors alone: at most 392 distinct codes (38 %)."""
    from einops import rearrange

    import tok
    from tok.plugins.vq import KMEANS_VECTORS_PER_CODE

    mnist = tok.get_dataset("mnist")()
    train, test = (mnist.images(split)[:4000].float() / 255 for split in ("train", "test"))

    def patches(x: torch.Tensor) -> torch.Tensor:  # (n, 1, 28, 28) -> (n, 7, 7, 16)
        return rearrange(x, "n c (h p) (w q) -> n h w (c p q)", p=4, q=4)

    def after_init(batch: int) -> tuple[int, float]:
        torch.manual_seed(0)
        q = VQ(dim=16, codebook_size=1024, kmeans_init=True, restart_after=0).train()
        batches = torch.Generator().manual_seed(0)
        steps = 0
        while not bool(q.initted):
            idx = torch.randint(0, len(train), (batch,), generator=batches)
            out = q(patches(train[idx]).requires_grad_())
            assert out.indices.shape == (batch, 7, 7, 1)  # every batch is quantized as it comes
            steps += 1
        q.eval()
        with torch.no_grad():
            used = q(patches(test[:1000])).indices.unique().numel() / 1024
        return steps, used

    small_steps, small = after_init(8)
    large_steps, large = after_init(64)
    assert large_steps == 1  # 64 x 49 = 3,136 vectors >= 3 x 1,024: the first batch suffices
    assert small_steps == math.ceil(KMEANS_VECTORS_PER_CODE * 1024 / (8 * 49))
    assert small > 0.95 and abs(small - large) < 0.02, (small, large)
