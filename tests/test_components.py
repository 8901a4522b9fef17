"""tok.components: the settings tok supplies are declared by each class and filled in one place,
for recipe validation, tokenizer building and ``tok encode``'s sources alike."""

from __future__ import annotations

import pytest

from tok.components import SUPPLIED, Facts, build, fill, problems
from tok.data import MNIST, ImageFolder, MovingMNIST, VideoFolder
from tok.errors import ConfigError
from tok.models import Architecture, Tokenizer
from tok.plugins.conv import ConvImage
from tok.plugins.fsq import FSQ
from tok.plugins.seq1d import Seq1D

IMAGE = Facts(input_shape=(1, 28, 28))
VIDEO = Facts(input_shape=(3, 17, 64, 48))


def test_each_class_declares_what_tok_supplies():
    assert Architecture.supplied_args == ("in_channels",)
    assert Seq1D.supplied_args == ("in_channels", "image_size")
    assert FSQ.supplied_args == ("dim",)
    assert set(ImageFolder.supplied_args) == {"channels", "size"}
    assert set(VideoFolder.supplied_args) == {"channels", "frames", "size"}
    assert set(MovingMNIST.supplied_args) == {"channels", "frames"}  # its size is its own
    for cls in (Architecture, Seq1D, FSQ, ImageFolder, VideoFolder, MovingMNIST, MNIST):
        assert set(cls.supplied_args) <= set(SUPPLIED)


def test_fill_supplies_what_the_options_leave_out_and_nothing_else():
    assert fill(ConvImage, {}, IMAGE).options == {"in_channels": 1}
    assert fill(Seq1D, {"num_tokens": 8}, IMAGE).options == {
        "num_tokens": 8,
        "in_channels": 1,
        "image_size": [28, 28],
    }
    # what a recipe says wins
    assert fill(ConvImage, {"in_channels": 3}, IMAGE).options == {"in_channels": 3}
    assert fill(FSQ, {"levels": [8, 5]}, Facts(latent_dim=2)).options == {
        "levels": [8, 5],
        "dim": 2,
    }
    assert fill(VideoFolder, {"path": "v"}, VIDEO).options == {
        "path": "v",
        "channels": 3,
        "frames": 17,
        "size": [64, 48],
    }
    # an image tokenizer supplies no frames; MovingMNIST's int size is never overwritten
    assert "frames" not in fill(VideoFolder, {"path": "v"}, IMAGE).options
    assert fill(MovingMNIST, {}, VIDEO).options == {"channels": 3, "frames": 17}


def test_before_the_data_is_read_supplied_names_are_pending_not_missing():
    filled = fill(FSQ, {"levels": [8, 5, 5, 5]})
    assert filled.options == {"levels": [8, 5, 5, 5]} and filled.pending == ("dim",)
    # vq requires dim: a recipe may leave it out, because tok supplies it
    assert problems("quantizers", "vq", {"codebook_size": 16}, where="q") == []
    # a required argument tok does not supply is still missing
    assert problems("datasets", "imagefolder", {}, where="[data] imagefolder") == [
        "[data] imagefolder: missing required key 'path'"
    ]
    with pytest.raises(ConfigError, match="missing required key 'dim'"):
        build("quantizers", "vq", {"codebook_size": 16})  # no facts: nothing to supply
    assert build("quantizers", "vq", {"codebook_size": 16}, Facts(latent_dim=6)).dim == 6


def test_tokenizers_are_built_with_what_the_data_supplies():
    tokenizer = Tokenizer.from_config(
        {
            "architecture": {"name": "seq1d", "config": {"num_tokens": 8, "patch_size": 7}},
            "quantizer": {"name": "fsq", "config": {"levels": [8, 5, 5, 5]}},
            "input_shape": [1, 28, 28],
        }
    )
    arch = tokenizer.architecture.config()
    assert arch["in_channels"] == 1 and arch["image_size"] == [28, 28]
    assert tokenizer.quantizer.dim == tokenizer.architecture.latent_dim
    assert tokenizer.grid == (8,)


def test_a_class_declaring_a_name_tok_does_not_supply_is_a_named_error():
    class Odd(ConvImage):
        supplied_args = ("in_channels", "colour_space")

    with pytest.raises(ConfigError, match=r"Odd.supplied_args names 'colour_space'"):
        fill(Odd, {}, IMAGE)
