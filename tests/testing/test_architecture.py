"""tok.testing.check_architecture: every registered architecture passes it, and each
deliberately broken architecture below fails it, naming the promise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

import tok
from tok import hookimpl
from tok.errors import ConfigError
from tok.models import Architecture
from tok.plugins.conv import ConvImage
from tok.registry import unregister_plugin
from tok.testing import check_architecture


@pytest.mark.parametrize("name", tok.list_architectures())
def test_every_registered_architecture_conforms(name: str) -> None:
    check_architecture(name)


@pytest.mark.parametrize("name", tok.list_architectures())
def test_example_input_shape_fits_the_example_config(name: str) -> None:
    cls = tok.get_architecture(name)
    arch = cls(**cls.example_config())
    assert len(arch.grid(cls.example_input_shape())) >= 1
    assert cls.example_input_shape()[0] == arch.in_channels


class TinyConv(Architecture):
    """A small but correct architecture: one stride-2 convolution each way."""

    def __init__(self, *, in_channels: int = 1, latent_dim: int = 3, width: int = 8) -> None:
        super().__init__()
        self.in_channels, self.latent_dim, self.width = in_channels, latent_dim, width
        self.enc = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, latent_dim, 1),
        )
        self.dec = nn.Sequential(
            nn.Conv2d(latent_dim, width, 1),
            nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, in_channels, 3, padding=1),
        )

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        return {"in_channels": 1, "latent_dim": 3, "width": 8}

    @classmethod
    def example_input_shape(cls) -> tuple[int, ...]:
        return (1, 8, 8)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "latent_dim": self.latent_dim, "width": self.width}

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ConfigError(
                f"tinyconv: built for {self.in_channels}-channel images, got {input_shape}"
            )
        _, h, w = input_shape
        if h % 2 or w % 2:
            raise ConfigError(f"tinyconv: image size {h}x{w} is not even")
        return (h // 2, w // 2)

    def encode(self, x: Tensor) -> Tensor:
        self.grid(tuple(x.shape[1:]))
        return rearrange(self.features(x), "b d h w -> b h w d")

    def features(self, x: Tensor) -> Tensor:
        return self.enc(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(rearrange(z, "b h w d -> b d h w"))


def test_tiny_conv_conforms() -> None:
    check_architecture(TinyConv)
    check_architecture(TinyConv, config={"in_channels": 3, "latent_dim": 2}, input_shape=(3, 6, 4))


class GridDisagrees(TinyConv):
    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w = super().grid(input_shape)
        return (h // 2, w // 2)  # says 4x downsampling; encode does 2x


class NotChannelLast(TinyConv):
    def encode(self, x: Tensor) -> Tensor:
        return self.features(x)  # (b, d, h, w)

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z)


class ConfigDoesNotRebuild(TinyConv):
    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "latent_dim": self.latent_dim}  # no width

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        return {"in_channels": 1, "latent_dim": 3, "width": 6}


class DropoutInEval(TinyConv):
    def features(self, x: Tensor) -> Tensor:
        return F.dropout(super().features(x), p=0.5, training=True)  # ignores eval()


class StateOutsideStateDict(TinyConv):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = torch.rand(())  # learned-looking state the state dict does not hold

    def features(self, x: Tensor) -> Tensor:
        return super().features(x) * self.scale


class RawTorchError(TinyConv):
    def encode(self, x: Tensor) -> Tensor:  # grid() refuses 2 channels, encode never asks it
        return rearrange(self.features(x), "b d h w -> b h w d")


class GridIgnoresChannels(TinyConv):
    """What ``conv`` did before: ``grid`` looked at the size only, so a 3-channel input to a
    1-channel model got a grid and then a raw torch error from ``encode``."""

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        _, h, w = input_shape
        return (h // 2, w // 2)

    def encode(self, x: Tensor) -> Tensor:
        return rearrange(self.features(x), "b d h w -> b h w d")


class GridRaisesValueError(TinyConv):
    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if input_shape[0] != self.in_channels:
            raise ValueError("wrong channels")
        return super().grid(input_shape)


class UnusedParameter(TinyConv):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unused = nn.Parameter(torch.zeros(3))


class UpdatesInEval(TinyConv):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("calls", torch.zeros(()))

    def features(self, x: Tensor) -> Tensor:
        self.calls += 1
        return super().features(x)


class ConfigNotJson(TinyConv):
    def config(self) -> dict[str, Any]:
        return {**super().config(), "dtype": torch.float32}


class CrashesUnderAutocast(TinyConv):
    """Mixes a float32 buffer into the decoder's (bf16 under autocast) output."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("background", torch.zeros(()))

    def decode(self, z: Tensor) -> Tensor:
        y = super().decode(z)
        return torch.lerp(y, self.background.expand_as(y), 0.0)


class LatentDimNotInt(TinyConv):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latent_dim = 3.0  # type: ignore[assignment]


class GridErrorWithoutTheSize(TinyConv):
    """Refuses other sizes without saying which size it got."""

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return super().grid(input_shape)
        except ConfigError:
            raise ConfigError("tinyconv: wrong input") from None


class BreaksWhenCast(TinyConv):
    """Mixes in a float32 constant kept outside the buffers: fine until the module is cast."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mix = torch.eye(self.latent_dim)  # not a buffer: .to(bfloat16) leaves it float32

    def encode(self, x: Tensor) -> Tensor:
        return super().encode(x) @ self.mix


BROKEN = [
    (GridErrorWithoutTheSize, "grid(input_shape)'s error names the size it received"),
    (BreaksWhenCast, "encode and decode work after module.to(bfloat16)"),
    (GridDisagrees, "encode(x) produces the grid that grid(input_shape) states"),
    (NotChannelLast, "channel-last latents (batch, *grid, latent_dim)"),
    (ConfigDoesNotRebuild, "cls(**config()) rebuilds the architecture"),
    (DropoutInEval, "eval mode is deterministic (encode)"),
    (StateOutsideStateDict, "with the state dict gives the same outputs"),
    (RawTorchError, "encode of an input that grid() refuses raises a tok.TokError"),
    (GridIgnoresChannels, "grid(input_shape) agrees with encode for other input sizes"),
    (GridRaisesValueError, "never another exception"),
    (UnusedParameter, "gradients reach every parameter"),
    (UpdatesInEval, "eval-mode encode and decode leave buffers and parameters unchanged"),
    (ConfigNotJson, "config() is JSON-serialisable"),
    (CrashesUnderAutocast, "run under torch.autocast (bf16)"),
    (LatentDimNotInt, "latent_dim is an int ≥ 1"),
]


@pytest.fixture(scope="module")
def broken_plugin() -> Iterator[None]:
    """Every broken architecture registered in-process, under its lower-cased class name."""

    class Plugin:
        @staticmethod
        @hookimpl
        def register_architectures(register):
            register(TinyConv, name="tinyconv-test")
            for cls, _ in BROKEN:
                register(cls, name=cls.__name__.lower())

    tok.register_plugin(Plugin(), name="broken-architectures-test")
    yield
    unregister_plugin("broken-architectures-test")


@pytest.mark.parametrize(("cls", "promise"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_broken_architecture_fails_naming_the_promise(
    broken_plugin: None, cls: type, promise: str
) -> None:
    name = cls.__name__.lower()
    assert tok.get_architecture(name) is cls
    with pytest.raises(AssertionError, match="breaks the Architecture contract") as info:
        check_architecture(name)
    assert promise in str(info.value)
    assert f"architecture {name!r} ({cls.__name__})" in str(info.value)


def test_a_correct_architecture_by_registered_name(broken_plugin: None) -> None:
    check_architecture("tinyconv-test")


def test_old_conv_behaviour_fails_and_names_the_torch_error() -> None:
    class OldConv(ConvImage):
        def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
            c, h, w = input_shape
            return (h // self.factor, w // self.factor)

        def encode(self, x: Tensor) -> Tensor:
            return rearrange(self.encoder(x), "b d h w -> b h w d")

    with pytest.raises(AssertionError, match="agrees with encode.*raised RuntimeError"):
        check_architecture(OldConv)


def test_not_an_architecture_subclass() -> None:
    class Plain(nn.Module):
        pass

    with pytest.raises(AssertionError, match="subclass of tok.models.Architecture"):
        check_architecture(Plain)


def test_config_and_input_shape_arguments_are_used() -> None:
    with pytest.raises(AssertionError, match="it builds from its config.*unexpected keyword"):
        check_architecture(TinyConv, config={"channels": 3})
    with pytest.raises(AssertionError, match=r"grid\(input_shape\) gives the latent grid"):
        check_architecture(TinyConv, input_shape=(1, 7, 8))


def test_base_class_defaults() -> None:
    assert Architecture.example_config() == {}
    assert Architecture.example_input_shape() == (3, 32, 32)

    class Defaults(TinyConv):  # the base class's example: {} on (3, 32, 32)
        example_config = Architecture.example_config
        example_input_shape = Architecture.example_input_shape

        def __init__(self, *, in_channels: int = 3, latent_dim: int = 2, width: int = 4) -> None:
            super().__init__(in_channels=in_channels, latent_dim=latent_dim, width=width)

    check_architecture(Defaults)


def test_leaves_the_callers_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_architecture(TinyConv)
    assert torch.equal(torch.rand(3), expected)
