"""The conv image architecture: grids, size and channel errors, options, config round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import tok
from tok.errors import ConfigError
from tok.models import Tokenizer
from tok.models.blocks import ResBlock
from tok.plugins.conv import ConvImage
from tok.testing import check_architecture


def test_registered_as_conv() -> None:
    assert tok.get_architecture("conv") is ConvImage


def test_28x28_with_three_levels_is_a_7x7_grid() -> None:
    arch = ConvImage(in_channels=1, channels=[32, 64, 128], latent_dim=4)
    assert arch.grid((1, 28, 28)) == (7, 7)
    z = arch.encode(torch.rand(2, 1, 28, 28) * 2 - 1)
    assert z.shape == (2, 7, 7, 4)
    assert arch.decode(z).shape == (2, 1, 28, 28)


@pytest.mark.parametrize(("h", "w"), [(30, 28), (28, 26), (27, 27)])
def test_sizes_the_downsampling_does_not_divide_raise_naming_them(h: int, w: int) -> None:
    arch = ConvImage(in_channels=1, channels=[8, 16, 16], latent_dim=4)
    with pytest.raises(ConfigError, match=rf"image size {h}x{w} .* factor 4.* multiples of 4"):
        arch.grid((1, h, w))
    with pytest.raises(ConfigError, match=rf"image size {h}x{w}"):
        arch.encode(torch.zeros(1, 1, h, w))


def test_wrong_channel_count_raises_naming_both() -> None:
    arch = ConvImage(in_channels=1, channels=[8, 16], latent_dim=4)
    message = r"built for 1-channel images \(in_channels\), got 3 channels \(input shape 3x28x28\)"
    with pytest.raises(ConfigError, match=message):
        arch.grid((3, 28, 28))
    with pytest.raises(ConfigError, match=message):  # not a raw torch error from the conv
        arch.encode(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ConfigError, match=r"takes images \(c, h, w\)"):
        arch.grid((1, 5, 28, 28))
    with pytest.raises(ConfigError, match=r"takes images \(c, h, w\)"):
        arch.encode(torch.zeros(2, 1, 5, 28, 28))


def test_rgb_images_into_a_grayscale_tokenizer_are_one_error_line() -> None:
    tokenizer = Tokenizer(
        architecture=ConvImage(in_channels=1, channels=[8, 16], latent_dim=4),
        quantizer=tok.create_quantizer("fsq", levels=[8, 5, 5, 5], dim=4),
        input_shape=(1, 28, 28),
    )
    with pytest.raises(ConfigError) as info:
        tokenizer.encode(torch.rand(2, 3, 28, 28))
    line = f"tok: error: {info.value}"  # what the CLI prints for a TokError
    assert "\n" not in line
    assert "1-channel" in line and "got 3 channels" in line


def test_blocks_as_a_list_per_level() -> None:
    arch = ConvImage(in_channels=1, channels=[8, 16, 32], blocks=[0, 1, 2], latent_dim=4)
    enc_blocks = [m for m in arch.encoder if isinstance(m, ResBlock)]
    dec_blocks = [m for m in arch.decoder if isinstance(m, ResBlock)]
    assert len(enc_blocks) == len(dec_blocks) == 3
    assert [b.body[2].in_channels for b in enc_blocks] == [16, 32, 32]
    assert arch.config()["blocks"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="blocks"):
        ConvImage(channels=[8, 16], blocks=[1, 1, 1])
    with pytest.raises(ConfigError, match="blocks"):
        ConvImage(channels=[8, 16], blocks=[1, -1])


@pytest.mark.parametrize(
    ("norm", "layer"), [("group", nn.GroupNorm), ("batch", nn.BatchNorm2d), ("none", None)]
)
def test_norm_options(norm: str, layer: type | None) -> None:
    config = {"in_channels": 1, "channels": [8, 16], "blocks": 1, "latent_dim": 4, "norm": norm}
    arch = ConvImage(**config)
    kinds = {type(m) for m in arch.modules()}
    for other in (nn.GroupNorm, nn.BatchNorm2d):
        assert (other in kinds) == (other is layer)
    check_architecture(ConvImage, config=config, input_shape=(1, 16, 16))


def test_config_round_trip() -> None:
    arch = ConvImage(in_channels=3, channels=[8, 16, 32], blocks=[0, 1, 1], latent_dim=6)
    config = json.loads(json.dumps(arch.config()))
    assert config == {
        "in_channels": 3,
        "channels": [8, 16, 32],
        "blocks": [0, 1, 1],
        "latent_dim": 6,
        "norm": "group",
        "patch_size": 1,
    }
    rebuilt = ConvImage(**config)
    assert rebuilt.config() == arch.config()
    rebuilt.load_state_dict(arch.state_dict())
    arch.eval(), rebuilt.eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(arch.encode(x), rebuilt.encode(x))


def test_conforms_with_its_example_config() -> None:
    check_architecture("conv")
    check_architecture("conv", config={"in_channels": 1, "channels": [8]}, input_shape=(1, 5, 7))


def test_patch_size_folds_pixels_into_channels_and_back() -> None:
    arch = ConvImage(in_channels=1, channels=[16, 32], blocks=[0, 1], latent_dim=4, patch_size=2)
    assert arch.grid((1, 28, 28)) == (7, 7)  # 2 (patch) x 2 (one halving)
    assert isinstance(arch.encoder[0], nn.PixelUnshuffle)
    assert isinstance(arch.decoder[-1], nn.PixelShuffle)
    first = arch.encoder[1]
    assert isinstance(first, nn.Conv2d) and first.in_channels == 4  # 1 channel x 2 x 2 pixels
    z = arch.encode(torch.rand(3, 1, 28, 28))
    assert z.shape == (3, 7, 7, 4)
    assert arch.decode(z).shape == (3, 1, 28, 28)
    with pytest.raises(ConfigError, match=r"image size 26x26 .* factor 4"):
        arch.grid((1, 26, 26))
    with pytest.raises(ConfigError, match="patch_size"):
        ConvImage(channels=[8], patch_size=0)
    check_architecture(ConvImage, config=arch.config(), input_shape=(1, 8, 12))


def test_old_configs_without_patch_size_load_as_patch_size_1() -> None:
    old = {"in_channels": 1, "channels": [8, 16], "blocks": 1, "latent_dim": 4, "norm": "group"}
    arch = ConvImage(**old)
    assert arch.config() == {**old, "patch_size": 1}
    assert not any(isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)) for m in arch.modules())


def test_channels_last_layout_gives_the_contiguous_layouts_results() -> None:
    arch = ConvImage(in_channels=3, channels=[8, 16], blocks=1, latent_dim=4).eval()
    plain = ConvImage(in_channels=3, channels=[8, 16], blocks=1, latent_dim=4).eval()
    plain.load_state_dict(arch.state_dict())
    plain.to(memory_format=torch.contiguous_format)
    assert arch.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.encoder[0].weight.is_contiguous()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        z, z_plain = arch.encode(x), plain.encoder(x).permute(0, 2, 3, 1)
        torch.testing.assert_close(z, z_plain, rtol=1e-5, atol=1e-5)  # summation order differs
        y = arch.decode(z)
    assert y.is_contiguous()  # what callers may .view()
