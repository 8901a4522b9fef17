"""Plugin loading and the registries (tok.registry).

In-process plugins are added with ``register_plugin`` and removed again by the
``add_plugin`` fixture; every test leaves the plugin state as it found it.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import tok
from tok import Quantizer, QuantizerOutput, hookimpl
from tok.bottleneck import ContinuousBottleneck, LatentOutput
from tok.components import build
from tok.data import Dataset, Samples
from tok.errors import DuplicateNameError, PluginError, RecipeError, UnknownNameError
from tok.models import Architecture, Tokenizer
from tok.quantizer import mask_nonfinite, nonfinite_positions
from tok.recipe import parse_recipe
from tok.registry import (
    PluginWarning,
    register_plugin,
    registry,
    reload_plugins,
    unregister_plugin,
)

ENV_VARS = ("TOK_PLUGINS", "TOK_STRICT_PLUGINS", "TOK_TRACE_HOOKS")


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch):
    """No plugin env vars from outside; plugins reload after each test."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    reload_plugins()
    yield
    reload_plugins()


@pytest.fixture
def add_plugin():
    """``add_plugin(obj, name)`` registers an in-process plugin until the test ends."""
    added: list[str] = []

    def add(obj: object, name: str) -> None:
        register_plugin(obj, name=name)
        added.append(name)

    yield add
    for name in added:
        unregister_plugin(name)
    reload_plugins()


def load_quietly() -> list[tok.registry.PluginInfo]:
    """Load plugins now, failing the test on any PluginWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        return tok.list_plugins()


def info(name: str) -> tok.registry.PluginInfo:
    return next(p for p in tok.list_plugins() if p.name == name)


# small components for the in-process plugins ---------------------------------


class Sign(Quantizer):
    """Each channel to ±1, one stream of ``2 ** dim`` codes."""

    def __init__(self, *, dim: int = 3) -> None:
        super().__init__(dim=dim, codebook_sizes=(2**dim,))
        self.register_buffer("powers", 2 ** torch.arange(dim), persistent=False)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def forward(self, z: Tensor) -> QuantizerOutput:
        self.check_input(z)
        z = z.float()
        bad = nonfinite_positions(z)
        codes = torch.where(z >= 0, 1.0, -1.0)
        indices = ((codes > 0).long() * self.powers).sum(-1, keepdim=True)
        indices, codes = mask_nonfinite(bad, indices, codes)
        return QuantizerOutput(
            quantized=codes + (z - z.detach()),
            indices=indices,
            aux_loss=z.new_zeros(()),
            metrics={"nonfinite": bad.sum().float()},
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        indices = self.check_indices(indices)
        return ((indices // self.powers) % 2 * 2 - 1).float()


class NamedSign(Sign):
    name = "sign-by-attribute"


class LowerCased(Sign):
    pass


class Patches(Architecture):
    """Non-overlapping ``patch``×``patch`` patches to latents and back."""

    def __init__(self, *, in_channels: int = 1, latent_dim: int = 2, patch: int = 4) -> None:
        super().__init__()
        self.in_channels, self.latent_dim, self.patch = in_channels, latent_dim, patch
        self.down = nn.Conv2d(in_channels, latent_dim, patch, stride=patch)
        self.up = nn.ConvTranspose2d(latent_dim, in_channels, patch, stride=patch)

    def encode(self, x: Tensor) -> Tensor:
        return self.down(x).permute(0, 2, 3, 1)

    def decode(self, z: Tensor) -> Tensor:
        return self.up(z.permute(0, 3, 1, 2))

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        _, h, w = input_shape
        return (h // self.patch, w // self.patch)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "latent_dim": self.latent_dim, "patch": self.patch}


class Stripes(Dataset):
    """``count`` synthetic 8×8 grayscale images per split."""

    def __init__(self, *, count: int = 4) -> None:
        self.count = count

    def keys(self, split: str) -> list[str]:
        self.check_split(split)
        return [f"{split}/{i:03d}" for i in range(self.count)]

    def read(self, split: str, keys: list[str]) -> Samples:
        self.check_split(split)
        rows = [int(k.rsplit("/", 1)[1]) for k in keys]
        images = torch.zeros(len(rows), 1, 8, 8, dtype=torch.uint8)
        for n, i in enumerate(rows):
            images[n, 0, :, i % 8] = 255
        return Samples(images=images, keys=list(keys))

    def input_shape(self) -> tuple[int, int, int]:
        return (1, 8, 8)


class QuantizerPlugin:
    @hookimpl
    def register_quantizers(register):
        register(Sign, name="test-sign", aliases=("test-sign-alias", "tsa"))
        register(NamedSign)  # name from the class attribute
        register(LowerCased)  # the lower-cased class name


class EverythingPlugin:
    @hookimpl
    def register_quantizers(register):
        register(Sign, name="test-sign")

    @hookimpl
    def register_architectures(register):
        register(Patches, name="test-patches", aliases=("test-patch",))

    @hookimpl
    def register_datasets(register):
        register(Stripes, name="test-stripes", aliases=("stripes",))


# built-ins ---------------------------------------------------------------------


def test_builtin_plugins_come_from_entry_points():
    infos = {p.name: p for p in load_quietly()}
    for name, provides in {
        "fsq": {"quantizers": ["fsq"]},
        "conv": {"architectures": ["conv"]},
        "seq1d": {"architectures": ["seq1d"]},
        "causal3d": {"architectures": ["causal3d"]},
        "datasets": {
            "datasets": [
                "fashionmnist",
                "image_crops",
                "imagefolder",
                "imageshards",
                "mnist",
                "movingmnist",
                "video_crops",
                "videofolder",
                "videoshards",
            ]
        },
        "losses": {"losses": ["bernoulli_nll", "gaussian_nll", "l1", "mse"]},
        "perceptual": {"losses": ["perceptual"]},
        "adversarial": {"losses": ["adversarial"]},
        "lpips": {"losses": ["lpips"]},
        "gaussian": {"bottlenecks": ["gaussian"]},
        "mlp": {"architectures": ["mlp"]},
    }.items():
        p = infos[name]
        assert p.source == "builtin"
        assert p.distribution == "tok-vision"
        assert p.version == tok.__version__
        assert p.status == "ok" and p.error is None
        assert p.provides == provides
    assert registry("quantizers").entry("fsq").owner == "fsq"
    assert registry("datasets").entry("mnist").owner == "datasets"


def test_register_quantizers_builtin_fsq():
    from tok.plugins.fsq import FSQ

    assert tok.get_quantizer("fsq") is FSQ
    q = tok.create_quantizer("fsq", levels=[5, 5], dim=2)
    assert isinstance(q, FSQ) and q.codebook_sizes == (25,)


def test_register_architectures_builtin_conv():
    from tok.plugins.conv import ConvImage

    assert tok.get_architecture("conv") is ConvImage
    assert "conv" in tok.list_architectures()


def test_register_datasets_builtin_with_alias():
    from tok.data import MNIST, ImageFolder

    assert tok.get_dataset("mnist") is MNIST
    assert tok.get_dataset("imagefolder") is ImageFolder
    assert tok.get_dataset("folder") is ImageFolder
    assert "folder" not in tok.list_datasets()  # aliases are not listed as names


# the hooks, through in-process plugins ----------------------------------------------


def test_register_quantizers_names_aliases_and_owner(add_plugin):
    add_plugin(QuantizerPlugin, "test-quantizers")
    load_quietly()
    assert tok.get_quantizer("test-sign") is Sign
    assert tok.get_quantizer("test-sign-alias") is Sign
    assert tok.get_quantizer("tsa") is Sign
    assert tok.get_quantizer("sign-by-attribute") is NamedSign
    assert tok.get_quantizer("lowercased") is LowerCased
    entry = registry("quantizers").entry("tsa")
    assert entry.name == "test-sign"
    assert entry.owner == "test-quantizers"
    assert entry.aliases == ("test-sign-alias", "tsa")
    p = info("test-quantizers")
    assert p.source == "registered" and p.status == "ok"
    assert p.provides == {"quantizers": ["lowercased", "sign-by-attribute", "test-sign"]}
    q = tok.create_quantizer("tsa", dim=2)
    assert q.codebook_sizes == (4,)
    assert registry("quantizers").name_of(q) == "test-sign"


def test_register_quantizers_passes_the_conformance_suite(add_plugin):
    from tok.testing import check_quantizer

    add_plugin(QuantizerPlugin, "test-quantizers")
    check_quantizer("test-sign-alias")


def test_register_architectures_builds_a_tokenizer(add_plugin):
    add_plugin(EverythingPlugin, "test-everything")
    load_quietly()
    assert tok.get_architecture("test-patch") is Patches
    assert info("test-everything").provides["architectures"] == ["test-patches"]
    tokenizer = Tokenizer.from_config(
        {
            "architecture": {"name": "test-patch", "config": {"latent_dim": 3}},
            "quantizer": {"name": "test-sign"},
            "input_shape": [1, 8, 8],
        }
    )
    assert tokenizer.grid == (2, 2)
    assert tokenizer.config()["architecture"]["name"] == "test-patches"
    images = torch.rand(2, 1, 8, 8)
    indices = tokenizer.encode(images)
    assert indices.shape == (2, 2, 2, 1)
    assert tokenizer.decode(indices).shape == (2, 1, 8, 8)


def test_register_datasets_options_are_recipe_keys(add_plugin):
    add_plugin(EverythingPlugin, "test-everything")
    load_quietly()
    assert tok.get_dataset("stripes") is Stripes
    dataset = build("datasets", "stripes", {"count": 3})
    samples = dataset.load("test")
    assert samples.keys == ["test/000", "test/001", "test/002"]
    assert samples.images.shape == (3, 1, 8, 8)
    with pytest.raises(RecipeError, match=r"unknown key 'colour' \(valid keys: count\)"):
        parse_recipe(
            {
                "data": {"name": "test-stripes", "colour": "red"},
                "model": {"name": "test-patches"},
                "quantizer": {"name": "test-sign"},
            }
        )


def test_register_hooks_together_train_a_tokenizer(add_plugin, tmp_path):
    from tok.train import train

    add_plugin(EverythingPlugin, "test-everything")
    recipe = parse_recipe(
        {
            "data": {"name": "stripes", "count": 8},
            "model": {"name": "test-patch", "latent_dim": 2},
            "quantizer": {"name": "test-sign"},
            "train": {
                "steps": 2,
                "batch_size": 4,
                "eval_every": 2,
                "eval_samples": 4,
                "checkpoint_every": 2,
                "device": "cpu",
                "warmup_steps": 1,
            },
            "output": {"dir": str(tmp_path / "run"), "samples": 4},
        }
    )
    result = train(recipe, progress=False)
    assert result.step == 2
    assert (tmp_path / "run" / "model.safetensors").exists()
    reloaded = Tokenizer.load(tmp_path / "run")
    assert reloaded.config()["quantizer"] == {"name": "test-sign", "config": {"dim": 2}}


def test_list_plugins_survives_importing_the_plugins_package():
    import tok.plugins.fsq  # noqa: F401 - rebinds the attribute tok.plugins

    first = tok.list_plugins()
    assert [p.name for p in tok.list_plugins()] == [p.name for p in first]
    assert tok.list_plugins is tok.registry.plugins


# look-ups ----------------------------------------------------------------------


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError) as excinfo:
        tok.get_quantizer("fqs")
    message = str(excinfo.value)
    assert "unknown quantizer 'fqs'" in message
    assert "did you mean 'fsq'" in message
    assert "available: " in message and "tok quantizers" in message
    assert isinstance(excinfo.value, KeyError) and isinstance(excinfo.value, tok.TokError)
    with pytest.raises(UnknownNameError, match="did you mean 'conv'"):
        tok.get_architecture("cnov")
    with pytest.raises(UnknownNameError, match="did you mean 'mnist'"):
        tok.get_dataset("mnsit")


def test_unknown_name_without_close_match_lists_what_exists():
    with pytest.raises(UnknownNameError) as excinfo:
        tok.get_quantizer("zzzzzz")
    assert "did you mean" not in str(excinfo.value)
    assert "fsq" in str(excinfo.value)


def test_list_with_glob(add_plugin):
    assert "fsq" in tok.list_quantizers("fs*")
    assert all(n.startswith("fs") for n in tok.list_quantizers("fs*"))
    assert tok.list_quantizers("no-such-*") == []

    class Plugin:
        @hookimpl
        def register_quantizers(register):
            register(Sign, name="zz-beta")
            register(Sign, name="zz-alpha", aliases=("zz-gamma",))
            register(Sign, name="zy")

    add_plugin(Plugin, "globs")
    assert tok.list_quantizers("zz-*") == ["zz-alpha", "zz-beta"]  # sorted, no aliases
    assert tok.list_quantizers("z?-alpha") == ["zz-alpha"]
    assert set(tok.list_quantizers()) >= {"fsq", "zz-alpha", "zz-beta", "zy"}


# duplicates and failures ---------------------------------------------------------------


def test_duplicate_name_is_an_error_naming_both_owners(add_plugin):
    class Clash:
        @hookimpl
        def register_quantizers(register):
            register(Sign, name="fsq")
            register(Sign, name="clash-only")

    add_plugin(Clash, "clash")
    with pytest.warns(
        PluginWarning, match=r"'fsq' is registered by both plugin 'fsq' and plugin 'clash'"
    ):
        tok.list_plugins()
    with pytest.raises(DuplicateNameError) as excinfo:
        tok.get_quantizer("fsq")
    assert "'fsq' and 'clash'" in str(excinfo.value)
    with pytest.raises(DuplicateNameError):
        tok.create_quantizer("fsq", levels=[5, 5])
    # every other name keeps working, the clashing plugin's included
    assert tok.get_quantizer("clash-only") is Sign
    assert tok.get_architecture("conv") is not None
    assert registry("quantizers").conflicts() == {"fsq": ["fsq", "clash"]}
    # the name stays with the plugin that loaded first (entry points, then in-process)
    assert info("fsq").provides == {"quantizers": ["fsq"]}
    assert info("clash").provides == {"quantizers": ["clash-only"]}


def test_alias_clashing_with_a_name_is_a_duplicate(add_plugin):
    class Clash:
        @hookimpl
        def register_datasets(register):
            register(Stripes, name="my-stripes", aliases=("mnist",))

    add_plugin(Clash, "alias-clash")
    with pytest.warns(PluginWarning, match="'mnist'"):
        tok.list_plugins()
    with pytest.raises(DuplicateNameError, match="'datasets' and 'alias-clash'"):
        tok.get_dataset("mnist")
    assert tok.get_dataset("my-stripes") is Stripes
    assert tok.get_dataset("imagefolder") is not None


class Exploding:
    @hookimpl
    def register_quantizers(register):
        register(Sign, name="half-registered")
        raise RuntimeError("kaput")


def test_failing_hook_warns_and_is_listed_as_failed(add_plugin):
    add_plugin(Exploding, "exploding")
    with pytest.warns(PluginWarning) as record:
        infos = {p.name: p for p in tok.list_plugins()}
    messages = [str(w.message) for w in record if issubclass(w.category, PluginWarning)]
    assert len(messages) == 1
    assert "'exploding'" in messages[0] and "RuntimeError: kaput" in messages[0]
    assert infos["exploding"].status == "failed"
    assert "kaput" in infos["exploding"].error
    assert infos["exploding"].provides == {}
    # what it registered before failing is gone; everything else works
    assert "half-registered" not in tok.list_quantizers()
    with pytest.raises(UnknownNameError):
        tok.get_quantizer("half-registered")
    assert infos["fsq"].status == "ok"
    assert tok.get_quantizer("fsq") is not None


def test_strict_plugins_reraises(add_plugin, monkeypatch):
    monkeypatch.setenv("TOK_STRICT_PLUGINS", "1")
    add_plugin(Exploding, "exploding")
    with pytest.raises(PluginError, match="'exploding'.*kaput") as excinfo:
        tok.list_plugins()
    assert isinstance(excinfo.value.__cause__, RuntimeError)


def write_dist(site: Path, dist: str, entry_point: str, module: str, source: str) -> None:
    """A minimal installed distribution (dist-info + module) under ``site``."""
    info_dir = site / f"{dist.replace('-', '_')}-0.3.1.dist-info"
    info_dir.mkdir(parents=True)
    (info_dir / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.1\n")
    (info_dir / "entry_points.txt").write_text(f"[tok]\n{entry_point} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


def test_entry_point_that_fails_to_import(tmp_path, monkeypatch):
    write_dist(tmp_path, "tok-unimportable", "unimportable", "tok_unimportable_mod", "1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reload_plugins()
    with pytest.warns(PluginWarning) as record:
        infos = {p.name: p for p in tok.list_plugins()}
    (message,) = [str(w.message) for w in record if issubclass(w.category, PluginWarning)]
    assert "'unimportable'" in message
    assert "tok-unimportable 0.3.1" in message
    assert "ZeroDivisionError" in message
    p = infos["unimportable"]
    assert (p.status, p.source, p.distribution, p.version) == (
        "failed",
        "entry point",
        "tok-unimportable",
        "0.3.1",
    )
    assert tok.get_quantizer("fsq") is not None

    monkeypatch.setenv("TOK_STRICT_PLUGINS", "1")
    reload_plugins()
    with pytest.raises(PluginError, match=r"'unimportable' \(tok-unimportable 0.3.1\)"):
        tok.list_plugins()


def test_plugins_allow_list(tmp_path, monkeypatch, add_plugin):
    write_dist(
        tmp_path,
        "tok-extra",
        "extra",
        "tok_extra_mod",
        """
        from tok import hookimpl
        from tok.plugins.fsq import FSQ

        @hookimpl
        def register_quantizers(register):
            register(FSQ, name="extra-fsq")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    add_plugin(EverythingPlugin, "test-everything")
    reload_plugins()
    assert {"fsq", "conv", "datasets", "extra"} <= {p.name for p in load_quietly()}
    assert "extra-fsq" in tok.list_quantizers()

    monkeypatch.setenv("TOK_PLUGINS", "fsq, extra")
    reload_plugins()
    names = {p.name for p in load_quietly()}
    assert names == {"fsq", "extra", "test-everything"}  # in-process plugins always load
    assert tok.list_quantizers() == ["extra-fsq", "fsq", "test-sign"]
    assert tok.list_architectures() == ["test-patches"]

    monkeypatch.setenv("TOK_PLUGINS", "")
    reload_plugins()
    assert {p.name for p in load_quietly()} == {"test-everything"}
    with pytest.raises(UnknownNameError):
        tok.get_quantizer("fsq")

    monkeypatch.delenv("TOK_PLUGINS")
    reload_plugins()
    assert {"fsq", "conv", "datasets", "extra"} <= {p.name for p in load_quietly()}


def test_trace_hooks(monkeypatch, capsys):
    monkeypatch.setenv("TOK_TRACE_HOOKS", "1")
    reload_plugins()
    tok.list_plugins()
    err = capsys.readouterr().err
    assert "tok: hook register_quantizers() -> plugin 'fsq'" in err
    assert "tok: hook register_architectures() -> plugin 'conv'" in err
    assert "tok: hook register_datasets() -> plugin 'datasets'" in err


def test_unregister_plugin_removes_its_names(add_plugin):
    add_plugin(QuantizerPlugin, "test-quantizers")
    assert "test-sign" in tok.list_quantizers()
    unregister_plugin("test-quantizers")
    assert "test-sign" not in tok.list_quantizers()
    assert "test-quantizers" not in {p.name for p in tok.list_plugins()}


# hooks are checked when a plugin loads; implementations get only what they name ------------


def test_a_misspelled_hook_fails_its_plugin_with_a_message(tmp_path, monkeypatch):
    write_dist(
        tmp_path,
        "tok-typo",
        "typo",
        "tok_typo_mod",
        """
        from tok import hookimpl
        from tok.plugins.fsq import FSQ

        @hookimpl
        def register_quantizer(register):  # the hook is register_quantizers
            register(FSQ, name="typo-fsq")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reload_plugins()
    with pytest.warns(PluginWarning) as record:
        infos = {p.name: p for p in tok.list_plugins()}
    (message,) = [str(w.message) for w in record if issubclass(w.category, PluginWarning)]
    assert "'typo' (tok-typo 0.3.1)" in message
    assert "'register_quantizer' (did you mean 'register_quantizers'?) is not a tok hook" in message
    assert infos["typo"].status == "failed" and infos["typo"].provides == {}
    assert "register_quantizer" in infos["typo"].error
    assert "typo-fsq" not in tok.list_quantizers() and infos["fsq"].status == "ok"


def test_a_hook_asking_for_an_argument_tok_does_not_offer_fails_its_plugin(add_plugin):
    class Greedy:
        @hookimpl
        def register_quantizers(register, settings):
            register(Sign, name="greedy-sign")

    add_plugin(Greedy, "greedy")
    with pytest.warns(PluginWarning, match="'greedy'.*settings"):
        infos = {p.name: p for p in tok.list_plugins()}
    assert infos["greedy"].status == "failed"
    assert "greedy-sign" not in tok.list_quantizers()


def test_an_installed_plugin_keeps_working_when_a_hook_spec_gains_an_argument(
    tmp_path, monkeypatch
):
    """tok calls each implementation with only the arguments it names (pluggy's rule): the
    built-in plugins and an installed one, all taking just ``register``, keep working when
    every hook spec gains an argument; a newer plugin that names it receives it."""
    import types

    import pluggy

    write_dist(
        tmp_path,
        "tok-old",
        "old",
        "tok_old_mod",
        """
        from tok import hookimpl
        from tok.plugins.fsq import FSQ

        @hookimpl
        def register_quantizers(register):
            register(FSQ, name="old-fsq")
        """,
    )
    write_dist(
        tmp_path,
        "tok-new",
        "new",
        "tok_new_mod",
        """
        from tok import hookimpl
        from tok.plugins.fsq import FSQ

        SEEN = []

        @hookimpl
        def register_quantizers(register, tok_version):
            SEEN.append(tok_version)
            register(FSQ, name="new-fsq")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    grown = types.ModuleType("grown_hookspecs")
    grown.PROJECT_NAME = "tok"
    marker = pluggy.HookspecMarker("tok")
    for hook in tok.registry.KINDS.values():
        exec(f"def {hook[0]}(register, tok_version):\n    pass", vars(grown))
        marker(vars(grown)[hook[0]])
    offered = tok.registry._hook_arguments
    monkeypatch.setattr(tok.registry, "hookspecs", grown)
    monkeypatch.setattr(
        tok.registry,
        "_hook_arguments",
        lambda hook, register: {**offered(hook, register), "tok_version": "9.9"},
    )
    reload_plugins()
    infos = {p.name: p for p in load_quietly()}
    assert all(info.status == "ok" for info in infos.values()), infos
    assert {"old-fsq", "new-fsq", "fsq", "vq"} <= set(tok.list_quantizers())
    assert "conv" in tok.list_architectures() and "mse" in tok.list_losses()
    import tok_new_mod

    assert tok_new_mod.SEEN == ["9.9"]


def test_the_allow_list_says_what_it_leaves_out(monkeypatch, capsys):
    monkeypatch.setenv("TOK_PLUGINS", "fsq,conv,nosuch")
    reload_plugins()
    with pytest.warns(PluginWarning, match="TOK_PLUGINS names 'nosuch'"):
        names = {p.name for p in tok.list_plugins()}
    assert names == {"fsq", "conv"}
    assert {"vq", "losses", "datasets"} <= set(tok.registry.left_out())
    with pytest.raises(UnknownNameError, match="TOK_PLUGINS=fsq,conv,nosuch limits"):
        tok.get_quantizer("vq")
    # a run made with a plugin the allow-list leaves out says so, not "unknown"
    recorded = {"plugin": "vq", "distribution": "tok-vision", "version": tok.__version__}
    message = tok.registry.missing_plugin("quantizers", "vq", recorded)
    assert message == (
        f"quantizer 'vq' comes from plugin 'vq' (tok-vision {tok.__version__}), which "
        "TOK_PLUGINS=fsq,conv,nosuch leaves out"
    )
    from tok import cli

    capsys.readouterr()
    assert cli.main(["plugins"]) == 0
    assert "left out by TOK_PLUGINS: " in capsys.readouterr().out


class Identity(ContinuousBottleneck):
    """A plain autoencoder's bottleneck: the latent is ``z`` itself, its KL 0."""

    stochastic = False

    def __init__(self, *, dim: int) -> None:
        super().__init__(dim=dim, latent_dim=dim)

    def forward(self, z: Tensor) -> LatentOutput:
        self.check_input(z)
        z = z.float()
        return LatentOutput(z, z, torch.zeros_like(z), z.new_zeros(()), {})

    def latent_to_codes(self, latent: Tensor) -> Tensor:
        self.check_latent(latent)
        return latent.float()

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim}


class LaplacePlugin:
    """A third-party continuous bottleneck (``register_bottlenecks``) beside a test
    architecture: a recipe's ``[bottleneck]`` table trains it like a quantizer."""

    @hookimpl
    def register_bottlenecks(register):
        register(Identity, name="test-identity")

    @hookimpl
    def register_architectures(register):
        register(Patches, name="test-patches")

    @hookimpl
    def register_datasets(register):
        register(Stripes, name="test-stripes")


def test_register_bottlenecks_trains_encodes_and_reloads_a_continuous_tokenizer(
    add_plugin, tmp_path, capsys
):
    from tok.train import train

    add_plugin(LaplacePlugin, "test-laplace")
    assert info("test-laplace").provides["bottlenecks"] == ["test-identity"]
    recipe = parse_recipe(
        {
            "data": {"name": "test-stripes", "count": 8},
            "model": {"name": "test-patches", "latent_dim": 4},
            "bottleneck": {"name": "test-identity"},
            "train": {
                "steps": 2, "batch_size": 4, "eval_every": 2, "eval_samples": 4,
                "checkpoint_every": 2, "device": "cpu", "warmup_steps": 1,
            },
            "output": {"dir": str(tmp_path / "run"), "samples": 4},
        }
    )  # fmt: skip
    assert recipe.role == "bottleneck" and recipe.quantizer is None
    result = train(recipe, progress=False)
    assert result.eval["kl"] == 0 and result.eval["active_dims"] == 0  # deterministic: no KL
    reloaded = Tokenizer.load(tmp_path / "run")
    assert reloaded.continuous and reloaded.quantizer is None
    assert reloaded.config()["bottleneck"] == {"name": "test-identity", "config": {"dim": 4}}
    x = torch.rand(3, 1, 8, 8)
    latents = reloaded.encode(x)
    assert latents.dtype == torch.float32 and latents.shape == (3, 2, 2, 4)
    assert torch.allclose(reloaded.decode(latents), reloaded.reconstruct(x), atol=1e-6)
    # tok inspect judges no dimension of a deterministic bottleneck: it has no KL
    from tok import cli

    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "run"), "--out", str(tmp_path / "h")]) == 0
    text = capsys.readouterr().out
    assert "test-identity is deterministic: no KL, no posterior to collapse" in text
    assert "INACTIVE" not in text and "STATUS" not in text
    report = json.loads((tmp_path / "h" / "health.json").read_text())
    assert report["stochastic"] is False and report["kl_dims"] == [0.0] * 4
    assert report["inactive"] == [] and report["active_dims"] is None


def test_a_recipe_names_a_quantizer_or_a_bottleneck_not_both():
    base = {"data": {"name": "mnist"}, "model": {"name": "mlp"}}
    with pytest.raises(RecipeError, match=r"\[quantizer\] and \[bottleneck\]"):
        parse_recipe({**base, "quantizer": {"name": "fsq"}, "bottleneck": {"name": "gaussian"}})
    with pytest.raises(RecipeError, match=r"missing table \[quantizer\] \(or \[bottleneck\]"):
        parse_recipe(base)
    with pytest.raises(RecipeError, match="gaussian"):  # a bottleneck is no quantizer
        parse_recipe({**base, "quantizer": {"name": "gaussian"}})
