"""``tok.from_vector_quantize_pytorch`` against the real vector-quantize-pytorch.

Every case trains their quantizer a few steps first (forward, loss, backward, SGD step,
in train mode, so EMA codebooks, k-means and projections move), converts it — the module
and its state dict plus constructor arguments — and compares both libraries in eval mode
on fresh inputs: indices equal after the documented mapping, quantized outputs equal
bit for bit (both gather the same codes and apply the same Linear layer; FSQ and LFQ
compute the same float32 operations). Tests that need the package skip without it; the
state-dict form and the refusals of kwargs do not need it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tok
from tok.convert import KINDS, reverse_bits
from tok.errors import ConfigError
from tok.plugins.fsq import FSQ
from tok.plugins.lfq import LFQ
from tok.plugins.mgvq import MultiGroupVQ
from tok.plugins.rvq import ResidualVQ
from tok.plugins.vq import VQ

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vqp():
    return pytest.importorskip("vector_quantize_pytorch")


# (kind, their constructor kwargs, the tok class it becomes)
CASES = {
    "fsq": ("FSQ", {"levels": [8, 5, 5, 5]}, FSQ),
    "fsq-projection": ("FSQ", {"levels": [8, 5, 5, 5], "dim": 10}, FSQ),
    "fsq-2-codebooks": ("FSQ", {"levels": [8, 5], "num_codebooks": 2}, FSQ),
    "fsq-2-codebooks-projection-no-bias": (
        "FSQ",
        {"levels": [8, 5], "num_codebooks": 2, "dim": 6, "projection_has_bias": False},
        FSQ,
    ),
    "lfq": ("LFQ", {"codebook_size": 16}, LFQ),
    "lfq-projection": ("LFQ", {"codebook_size": 16, "dim": 10}, LFQ),
    "lfq-2-codebooks-scale": (
        "LFQ",
        {"codebook_size": 16, "num_codebooks": 2, "codebook_scale": 0.5},
        LFQ,
    ),
    "lfq-2-codebooks-projection": (
        "LFQ",
        {"codebook_size": 16, "num_codebooks": 2, "dim": 6, "commitment_loss_weight": 0.25},
        LFQ,
    ),
    "vq": ("VectorQuantize", {"dim": 8, "codebook_size": 16}, VQ),
    "vq-projection": ("VectorQuantize", {"dim": 8, "codebook_size": 16, "codebook_dim": 4}, VQ),
    "vq-kmeans-decay": (
        "VectorQuantize",
        {"dim": 8, "codebook_size": 16, "kmeans_init": True, "decay": 0.9},
        VQ,
    ),
    "vq-cosine": ("VectorQuantize", {"dim": 8, "codebook_size": 16, "use_cosine_sim": True}, VQ),
    "vq-learnable": (
        "VectorQuantize",
        {"dim": 8, "codebook_size": 16, "learnable_codebook": True, "ema_update": False},
        VQ,
    ),
    "vq-heads-separate": (
        "VectorQuantize",
        {
            "dim": 8,
            "codebook_size": 16,
            "heads": 2,
            "codebook_dim": 4,
            "separate_codebook_per_head": True,
        },
        MultiGroupVQ,
    ),
    "vq-heads-shared": (
        "VectorQuantize",
        {"dim": 8, "codebook_size": 16, "heads": 2, "codebook_dim": 4},
        MultiGroupVQ,
    ),
    "rvq": ("ResidualVQ", {"dim": 8, "codebook_size": 16, "num_quantizers": 3}, ResidualVQ),
    "rvq-shared-kmeans": (
        "ResidualVQ",
        {
            "dim": 8,
            "codebook_size": 16,
            "num_quantizers": 3,
            "shared_codebook": True,
            "kmeans_init": True,
        },
        ResidualVQ,
    ),
    "rvq-1-level-projection": (
        "ResidualVQ",
        {"dim": 8, "codebook_size": (16,), "codebook_dim": 4},
        ResidualVQ,
    ),
    "grouped": (
        "GroupedResidualVQ",
        {"dim": 8, "codebook_size": 16, "groups": 2, "num_quantizers": 1},
        MultiGroupVQ,
    ),
    "grouped-projection": (
        "GroupedResidualVQ",
        {"dim": 8, "codebook_size": 16, "groups": 2, "num_quantizers": 1, "codebook_dim": 2},
        MultiGroupVQ,
    ),
    "grouped-1-group": (
        "GroupedResidualVQ",
        {"dim": 8, "codebook_size": 16, "groups": 1, "num_quantizers": 3},
        ResidualVQ,
    ),
}


def input_dim(kind: str, kwargs: dict) -> int:
    if "dim" in kwargs:
        return kwargs["dim"]
    if kind == "FSQ":
        return len(kwargs["levels"]) * kwargs.get("num_codebooks", 1)
    return 4 * kwargs.get("num_codebooks", 1)  # LFQ, 16 codes: 4 bits per codebook


def their_forward(module: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = module(z)
    return out[0], out[1]


def their_loss(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    out = module(z)
    loss = out[0].square().mean()
    return loss + out[2].sum() if len(out) > 2 else loss


def to_tok_indices(kind: str, kwargs: dict, indices: torch.Tensor) -> torch.Tensor:
    """Their indices in tok's layout and numbering (the mapping the README documents)."""
    indices = indices.long()
    if kind == "GroupedResidualVQ":  # (groups, b, n, q)
        return indices[0] if kwargs["groups"] == 1 else indices[..., 0].movedim(0, -1)
    if kind == "LFQ":
        indices = reverse_bits(indices, 4)
    if indices.ndim == 2:  # one stream: (b, n) -> (b, n, 1)
        indices = indices.unsqueeze(-1)
    return indices


def trained(vqp, kind: str, kwargs: dict) -> nn.Module:
    """Their quantizer after three SGD steps in train mode on random inputs."""
    torch.manual_seed(0)
    module = getattr(vqp, kind)(**kwargs).train()
    params = list(module.parameters())
    opt = torch.optim.SGD(params, lr=0.5) if params else None
    for _ in range(3):
        z = torch.randn(4, 24, input_dim(kind, kwargs), requires_grad=True)
        their_loss(module, z).backward()
        if opt is not None:
            opt.step()
            opt.zero_grad()
    return module


def assert_same(kind: str, kwargs: dict, theirs: nn.Module, ours: tok.Quantizer) -> None:
    theirs.eval(), ours.eval()
    z = torch.randn(3, 40, input_dim(kind, kwargs)) * 2
    with torch.no_grad():
        their_codes, their_indices = their_forward(theirs, z)
        out = ours(z)
    assert torch.equal(out.indices, to_tok_indices(kind, kwargs, their_indices))
    assert torch.equal(out.quantized, their_codes)
    assert torch.equal(ours.indices_to_codes(out.indices), their_codes)


@pytest.mark.parametrize("case", CASES)
def test_module_converts_to_the_same_codes_and_indices(vqp, case):
    kind, kwargs, cls = CASES[case]
    theirs = trained(vqp, kind, kwargs)
    ours = tok.from_vector_quantize_pytorch(theirs)
    assert type(ours) is cls and ours.training
    assert_same(kind, kwargs, theirs, ours)


@pytest.mark.parametrize("case", CASES)
def test_state_dict_and_kwargs_convert_to_the_same_codes_and_indices(vqp, case):
    kind, kwargs, cls = CASES[case]
    theirs = trained(vqp, kind, kwargs)
    ours = tok.from_vector_quantize_pytorch(theirs.state_dict(), kind=kind, kwargs=kwargs)
    assert type(ours) is cls
    assert ours.config() == tok.from_vector_quantize_pytorch(theirs).config()
    assert_same(kind, kwargs, theirs, ours)


def test_the_training_really_moved_their_state(vqp):
    """The cases compare trained state, not the initial one."""
    vq = trained(vqp, *CASES["vq-kmeans-decay"][:2])
    assert bool(vq._codebook.initted) and not torch.equal(
        vq._codebook.cluster_size, torch.ones_like(vq._codebook.cluster_size)
    )
    torch.manual_seed(0)
    fresh = vqp.FSQ(levels=[8, 5, 5, 5], dim=10)
    moved = trained(vqp, *CASES["fsq-projection"][:2])
    assert not torch.equal(fresh.project_in.weight, moved.project_in.weight)


@pytest.mark.parametrize("case", ["vq", "vq-projection", "rvq", "grouped"])
def test_ema_state_is_copied_so_training_continues_alike(vqp, case):
    """One more training forward on each side moves the EMA statistics the same way
    (up to float32 summation order: theirs sum a one-hot product, tok sorted segments)."""
    kind, kwargs, _ = CASES[case]
    theirs = trained(vqp, kind, kwargs)
    ours = tok.from_vector_quantize_pytorch(theirs)
    z = torch.randn(4, 24, kwargs["dim"], requires_grad=True)
    their_loss(theirs.train(), z)
    ours.train()(z)
    after, checked = ours.state_dict(), 0
    for key, value in theirs.state_dict().items():
        if key.endswith(("embed", "embed_avg", "cluster_size")):
            prefix, _, name = key.rpartition(".")
            tok_prefix = {
                "VectorQuantize": "",
                "ResidualVQ": prefix.replace("layers.", "levels.").replace("._codebook", "."),
                "GroupedResidualVQ": prefix.replace("rvqs.", "vqs.").replace(
                    ".layers.0._codebook", "."
                ),
            }[kind]
            names = {"embed": "codebook", "embed_avg": "embed_sum", "cluster_size": "cluster_size"}
            tok_key = tok_prefix + names[name]
            torch.testing.assert_close(after[tok_key], value[0], rtol=0, atol=1e-5)
            checked += 1
    assert checked >= 3


def test_restart_after_reaches_every_level(vqp):
    theirs = vqp.ResidualVQ(dim=8, codebook_size=16, num_quantizers=2, threshold_ema_dead_code=2)
    ours = tok.from_vector_quantize_pytorch(theirs, restart_after=5)
    assert [ours.level(i).restart_after for i in range(2)] == [5, 5]
    assert tok.from_vector_quantize_pytorch(theirs).config()["restart_after"] == 0
    with pytest.raises(ConfigError, match="restart_after=5: FSQ has no codebook"):
        tok.from_vector_quantize_pytorch(vqp.FSQ(levels=[5, 5]), restart_after=5)


def test_their_defaults_are_carried_over_where_tok_differs(vqp):
    vq = tok.from_vector_quantize_pytorch(vqp.VectorQuantize(dim=8, codebook_size=16))
    assert (vq.decay, vq.commitment_weight, vq.ema) == (0.8, 1.0, True)
    lfq = tok.from_vector_quantize_pytorch(vqp.LFQ(codebook_size=16))
    assert (lfq.commitment_weight, lfq.entropy_weight, lfq.inv_temperature) == (0.0, 0.1, 100.0)
    learn = tok.from_vector_quantize_pytorch(
        vqp.VectorQuantize(
            dim=8,
            codebook_size=16,
            learnable_codebook=True,
            ema_update=False,
            commitment_weight=0.3,
        )
    )
    assert (learn.ema, learn.codebook_weight) == (False, 0.3)
    assert isinstance(learn.codebook, nn.Parameter)


# refused options: (kind, their kwargs, the argument the message must name)
REFUSED = [
    ("VectorQuantize", {"heads": 2}, "heads=2"),
    ("VectorQuantize", {"codebook_dim": 4, "layernorm_after_project_in": True}, "layernorm"),
    ("VectorQuantize", {"commitment_use_cross_entropy_loss": True}, "cross_entropy"),
    ("VectorQuantize", {"orthogonal_reg_weight": 0.1}, "orthogonal_reg_weight=0.1"),
    ("VectorQuantize", {"codebook_diversity_loss_weight": 0.1}, "codebook_diversity"),
    ("VectorQuantize", {"stochastic_sample_codes": True}, "stochastic_sample_codes=True"),
    (
        "VectorQuantize",
        {"directional_reparam": True, "threshold_ema_dead_code": 2},
        "directional_reparam=True",
    ),
    ("VectorQuantize", {"ema_update": False}, "ema_update=False"),
    ("VectorQuantize", {"manual_ema_update": True}, "manual_ema_update=True"),
    ("VectorQuantize", {"affine_param": True}, "affine_param=True"),
    (
        "VectorQuantize",
        {"learnable_codebook": True, "ema_update": False, "sync_update_v": 0.5},
        "sync_update_v=0.5",
    ),
    ("VectorQuantize", {"route_gradients_to_input": False}, "route_gradients_to_input"),
    ("FSQ", {"levels": [5, 5], "preserve_symmetry": True}, "preserve_symmetry=True"),
    ("FSQ", {"levels": [5, 5], "bound_hard_clamp": True}, "bound_hard_clamp=True"),
    ("FSQ", {"levels": [5, 5], "orthogonal_rotation": True}, "orthogonal_rotation=True"),
    ("LFQ", {"codebook_size": 16, "has_projections": True}, "has_projections=True"),
    ("LFQ", {"codebook_size": 16, "soft_clamp_input_value": 2.0}, "soft_clamp_input_value"),
    ("LFQ", {"codebook_size": 16, "dim": 8, "cosine_sim_project_in": True}, "cosine_sim"),
    ("LFQ", {"codebook_size": 16, "experimental_softplus_entropy_loss": True}, "softplus"),
    ("LFQ", {"codebook_size": 16, "spherical": True}, "spherical=True"),
    ("LFQ", {"codebook_size": 16, "orthogonal_rotation": True}, "orthogonal_rotation=True"),
    ("ResidualVQ", {"num_quantizers": 2, "codebook_dim": 4}, "codebook_dim=4"),
    ("ResidualVQ", {"codebook_size": (16, 32)}, "codebook_size=(16, 32)"),
    ("ResidualVQ", {"num_quantizers": 2, "quantize_dropout": True}, "quantize_dropout=True"),
    ("ResidualVQ", {"num_quantizers": 2, "beam_size": 2}, "beam_size=2"),
    ("ResidualVQ", {"num_quantizers": 2, "implicit_neural_codebook": True}, "implicit_neural"),
    ("ResidualVQ", {"num_quantizers": 2, "diveq": True}, "diveq=True"),
    ("GroupedResidualVQ", {"groups": 2, "num_quantizers": 2}, "num_quantizers=2"),
]


def full_kwargs(kind: str, kwargs: dict) -> dict:
    base = {"dim": 8, "codebook_size": 16} if kind not in ("FSQ", "LFQ") else {}
    return {**base, **kwargs}


def assert_refused(call, names: str) -> None:
    with pytest.raises(tok.TokError) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, ConfigError) and "\n" not in message
    assert names in message and "tok" in message


@pytest.mark.parametrize("kind,kwargs,names", REFUSED, ids=[r[2] for r in REFUSED])
def test_an_option_without_equivalent_is_refused_in_one_line(kind, kwargs, names):
    kwargs = full_kwargs(kind, kwargs)
    assert_refused(lambda: tok.from_vector_quantize_pytorch({}, kind=kind, kwargs=kwargs), names)


@pytest.mark.parametrize("kind,kwargs,names", REFUSED, ids=[r[2] for r in REFUSED])
def test_a_module_with_an_option_without_equivalent_is_refused(vqp, kind, kwargs, names):
    module = getattr(vqp, kind)(**full_kwargs(kind, kwargs))
    assert_refused(lambda: tok.from_vector_quantize_pytorch(module), names)


def test_refused_options_their_constructor_only_takes_with_others():
    kwargs = {"levels": [5, 5], "noise_dropout": 0.5}  # theirs need preserve_symmetry too
    assert_refused(
        lambda: tok.from_vector_quantize_pytorch({}, kind="FSQ", kwargs=kwargs), "noise_dropout=0.5"
    )


def test_refused_options_that_need_a_callable(vqp):
    for kwargs, names in [
        ({"codebook_size": 16, "straight_through_activation": nn.Tanh()}, "=Tanh"),
    ]:
        assert_refused(lambda kw=kwargs: tok.from_vector_quantize_pytorch(vqp.LFQ(**kw)), names)
    optimizer = {
        "learnable_codebook": True,
        "ema_update": False,
        "in_place_codebook_optimizer": lambda p: torch.optim.SGD(p, lr=0.1),
    }
    module = vqp.VectorQuantize(dim=8, codebook_size=16, **optimizer)
    assert_refused(lambda: tok.from_vector_quantize_pytorch(module), "in_place_codebook_optimizer")
    bridge = {"learnable_codebook": True, "ema_update": False, "vq_bridge": nn.Identity()}
    module = vqp.VectorQuantize(dim=8, codebook_size=16, **bridge)
    assert_refused(lambda: tok.from_vector_quantize_pytorch(module), "vq_bridge=Identity")


def test_bad_calls_are_refused_in_one_line():
    convert = tok.from_vector_quantize_pytorch
    assert_refused(lambda: convert({}, kind="SimVQ", kwargs={}), "kind='SimVQ'")
    assert_refused(lambda: convert(nn.Linear(2, 2)), "Linear")
    assert_refused(lambda: convert({}, kind="FSQ", kwargs={"levels": [5], "colour": 1}), "colour")
    assert_refused(lambda: convert({}, kind="VectorQuantize", kwargs={"dim": 8}), "codebook_size")
    vq = {"dim": 8, "codebook_size": 16}
    assert_refused(lambda: convert({}, kind="VectorQuantize", kwargs=vq), "'_codebook.initted'")
    state = {
        "_codebook.embed": torch.zeros(1, 16, 4),
        "_codebook.embed_avg": torch.zeros(1, 16, 8),
        "_codebook.cluster_size": torch.ones(1, 16),
        "_codebook.initted": torch.tensor(True),
    }
    assert_refused(lambda: convert(state, kind="VectorQuantize", kwargs=vq), "(16, 4)")
    assert sorted(KINDS) == sorted(
        ["VectorQuantize", "FSQ", "LFQ", "ResidualVQ", "GroupedResidualVQ"]
    )


def test_a_module_with_kwargs_or_the_wrong_kind_is_refused(vqp):
    fsq = vqp.FSQ(levels=[5, 5])
    assert_refused(lambda: tok.from_vector_quantize_pytorch(fsq, kwargs={}), "kwargs=")
    assert_refused(lambda: tok.from_vector_quantize_pytorch(fsq, kind="LFQ"), "kind='LFQ'")
    assert type(tok.from_vector_quantize_pytorch(fsq, kind="FSQ")) is FSQ


def test_state_dict_form_needs_no_package(monkeypatch):
    """A hand-made state dict converts with vector_quantize_pytorch unimportable."""
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", None)
    torch.manual_seed(0)
    codebook = torch.randn(1, 16, 8)
    state = {
        "_codebook.embed": codebook,
        "_codebook.embed_avg": codebook * 3,
        "_codebook.cluster_size": torch.full((1, 16), 3.0),
        "_codebook.initted": torch.tensor(True),
    }
    q = tok.from_vector_quantize_pytorch(
        state, kind="VectorQuantize", kwargs={"dim": 8, "codebook_size": 16}
    ).eval()
    assert torch.equal(q.codebook, codebook[0]) and torch.equal(q.embed_sum, codebook[0] * 3)
    z = torch.randn(2, 5, 8)
    nearest = torch.cdist(z.view(-1, 8), codebook[0]).argmin(-1)
    assert torch.equal(q(z).indices.view(-1), nearest)
    proj = {"project_in.weight": torch.randn(4, 6), "project_out.weight": torch.randn(6, 4)}
    fsq = tok.from_vector_quantize_pytorch(
        proj, kind="FSQ", kwargs={"levels": [5, 5, 5, 5], "dim": 6, "projection_has_bias": False}
    )
    assert torch.equal(fsq.project_in.weight, proj["project_in.weight"])
    assert torch.equal(fsq.project_out.bias, torch.zeros(6))


def test_reverse_bits_is_its_own_inverse_and_matches_their_numbering():
    indices = torch.arange(16)
    flipped = reverse_bits(indices, 4)
    assert flipped[:4].tolist() == [0, 8, 4, 12] and torch.equal(reverse_bits(flipped, 4), indices)


def test_tok_never_imports_vector_quantize_pytorch():
    """The converter reads modules by class name and attributes; no import, not even lazily."""
    tree = ast.parse((ROOT / "tokenizers" / "convert.py").read_text())
    names = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    ]
    assert names and not any("vector_quantize" in str(n) for n in names)
    assert "from_vector_quantize_pytorch" in tok.__all__
