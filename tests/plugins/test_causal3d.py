"""The causal3d video architecture: causality, one-frame videos, token files, grids, options."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from tok.components import build
from tok.data import MovingMNIST
from tok.errors import ConfigError
from tok.models import Tokenizer
from tok.plugins.causal3d import Causal3D
from tok.registry import registry
from tok.tokens import TokenHeader, read_tokens, write_tokens

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "video_fsq_movingmnist.toml"
SMALL = {"channels": [8, 16, 16], "blocks": [0, 1, 1], "patch_size": 2, "latent_dim": 4}
FRAMES = 13  # 1 + 4·3: latent frames 0 (frame 0), 1 (1-4), 2 (5-8), 3 (9-12)
SIZE = 32


@pytest.fixture(scope="module")
def videos() -> torch.Tensor:
    """Six real Moving MNIST videos, ``(6, 1, 13, 32, 32)`` floats in ``[0, 1]``."""
    ds = MovingMNIST(frames=FRAMES, size=SIZE, train_videos=6, test_videos=6, download=False)
    return ds.load("train").floats()


def small_tokenizer(frames: int = FRAMES, seed: int = 0, **options) -> Tokenizer:
    torch.manual_seed(seed)
    arch = build("architectures", "causal3d", {"in_channels": 1, **SMALL, **options})
    quantizer = build("quantizers", "fsq", {"levels": [8, 5, 5, 5], "dim": 4})
    return Tokenizer(architecture=arch, quantizer=quantizer, input_shape=(1, frames, SIZE, SIZE))


def check_causal(tokenizer: Tokenizer, x: torch.Tensor) -> None:
    """Changing frames ``1 + 4k …`` leaves the tokens of latent frames ``0 … k`` (and the
    decoded frames ``0 … 4k``) unchanged, and changes later ones (so the check can fail)."""
    tokenizer.eval()
    tokens = tokenizer.encode(x)
    decoded = tokenizer.decode(tokens)
    gen = torch.Generator().manual_seed(1)
    for k in range(3):
        cut = 1 + 4 * k
        other = x.clone()
        other[:, :, cut:] = torch.rand(other[:, :, cut:].shape, generator=gen)
        changed = tokenizer.encode(other)
        assert torch.equal(changed[:, : k + 1], tokens[:, : k + 1]), f"k={k}: tokens changed"
        assert not torch.equal(changed[:, k + 1 :], tokens[:, k + 1 :]), f"k={k}: insensitive"
        redecoded = tokenizer.decode(changed)
        assert torch.equal(redecoded[:, :, :cut], decoded[:, :, :cut]), f"k={k}: decoder"


def test_registered_with_paper():
    assert registry("architectures").get("causal3d") is Causal3D
    assert Causal3D.paper == "https://arxiv.org/abs/2501.03575"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"factorized": True},
        {"time_patch": 2, "channels": [8, 16], "blocks": 1},
        {"time_patch": 4, "patch_size": 4, "channels": [16], "blocks": 1},
    ],
)
def test_causal_with_random_weights(videos, options):
    check_causal(small_tokenizer(**options), videos[:2])


@pytest.mark.parametrize("options", [{}, {"time_patch": 2, "channels": [8, 16], "blocks": 1}])
def test_causal_after_training(videos, options):
    tokenizer = small_tokenizer(**options).train()
    opt = torch.optim.AdamW(tokenizer.parameters(), lr=3e-3)
    before = tokenizer.encode(videos[:2])
    tokenizer.train()
    for _ in range(4):
        out = tokenizer(videos)
        loss = (out.reconstruction - videos).pow(2).mean() + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(tokenizer.encode(videos[:2]), before)  # the weights moved
    check_causal(tokenizer, videos[:2])


def test_image_as_one_frame_video_round_trips(videos, tmp_path):
    tokenizer = small_tokenizer(frames=1).eval()
    images = videos[:, :, 0]  # (6, 1, 32, 32): the first frames, real MNIST digits
    clip = images.unsqueeze(2)  # (6, 1, 1, 32, 32)
    assert tokenizer.grid == (1, 8, 8)
    tokens = tokenizer.encode(clip)
    assert tokens.shape == (6, 1, 8, 8, 1) and tokens.dtype == torch.int64
    tokenizer.save(tmp_path / "run")  # token files name the weights that made them
    header = TokenHeader.for_tokenizer(tokenizer)
    keys = [f"image/{i}" for i in range(6)]
    back = read_tokens(write_tokens(tmp_path / "t.safetensors", tokens, keys=keys, header=header))
    assert back.header.grid == (1, 8, 8) and back.keys == keys
    assert torch.equal(back.tokens.long(), tokens)
    decoded = tokenizer.decode(back.tokens)
    assert decoded.shape == clip.shape
    assert torch.equal(decoded, tokenizer.reconstruct(clip))
    # the image's tokens are the first latent frame of any video that starts with it
    video_tokens = small_tokenizer().eval().encode(videos)
    assert torch.equal(video_tokens[:, :1], tokens)
    # and a rebuilt tokenizer (config + weights) gives the same tokens
    rebuilt = Tokenizer.from_config(tokenizer.config())
    rebuilt.load_state_dict(tokenizer.state_dict())
    assert torch.equal(rebuilt.eval().encode(clip), tokens)


def test_shapes_and_grid():
    arch = build("architectures", "causal3d", {"in_channels": 1, **SMALL})
    assert arch.grid((1, 17, 64, 64)) == (5, 16, 16)
    assert arch.grid((1, 1, 64, 32)) == (1, 16, 8)
    x = torch.rand(2, 1, 9, 32, 16) * 2 - 1
    z = arch.encode(x)
    assert z.shape == (2, 3, 8, 4, 4)
    assert arch.decode(z).shape == x.shape
    two = build(
        "architectures",
        "causal3d",
        {"in_channels": 3, "channels": [8, 8], "temporal_factor": 2, "spatial_factor": 2},
    )
    assert two.grid((3, 7, 8, 8)) == (4, 4, 4)
    assert two.encode(torch.zeros(1, 3, 7, 8, 8)).shape == (1, 4, 4, 4, 4)
    still = build(
        "architectures",
        "causal3d",
        {"in_channels": 1, "channels": [8, 8], "temporal_factor": 1, "spatial_factor": 2},
    )
    assert still.grid((1, 6, 8, 8)) == (6, 4, 4)


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((1, 16, 64, 64), ["16 frames", "temporal_factor 4"]),
        ((1, 17, 62, 64), ["62x64", "spatial_factor 4"]),
        ((3, 17, 64, 64), ["1 channels"]),
        ((1, 64, 64), ["(c, t, h, w)", "(1, 64, 64)"]),
    ],
)
def test_grid_rejects_sizes_it_cannot_take(shape, words):
    arch = build("architectures", "causal3d", {"in_channels": 1, **SMALL})
    with pytest.raises(ConfigError) as info:
        arch.grid(shape)
    for word in words:
        assert word in str(info.value)


def test_encode_rejects_images_and_bad_frame_counts():
    arch = build("architectures", "causal3d", {"in_channels": 1, **SMALL})
    with pytest.raises(ConfigError, match=r"\(b, c, t, h, w\)"):
        arch.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="4 frames"):
        arch.encode(torch.zeros(1, 1, 4, 32, 32))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"temporal_factor": 3}, ["temporal_factor", "power of 2", "3"]),
        ({"spatial_factor": 6}, ["spatial_factor", "6"]),
        ({"channels": [8, 16], "blocks": 1}, ["2 channels entries", "need 2", "3 entries"]),
        ({"patch_size": 8}, ["patch_size 8", "spatial_factor 4"]),
        ({"time_patch": 8}, ["time_patch 8", "temporal_factor 4"]),
        ({"time_patch": 2}, ["3 channels entries", "time_patch 2", "need 1"]),
        ({"blocks": [1, 1]}, ["blocks", "[1, 1]"]),
        ({"channels": [8, 0, 16]}, ["channels", "[8, 0, 16]"]),
        ({"norm": "batch"}, ["norm", "'batch'"]),
    ],
)
def test_bad_options_are_config_errors(options, words):
    with pytest.raises(ConfigError) as info:
        build("architectures", "causal3d", {"in_channels": 1, **{**SMALL, **options}})
    for word in words:
        assert word in str(info.value)


def test_config_round_trip():
    arch = build("architectures", "causal3d", {"in_channels": 1, **SMALL, "factorized": True})
    again = Causal3D(**arch.config())
    assert again.config() == arch.config()
    assert [p.shape for p in again.parameters()] == [p.shape for p in arch.parameters()]


def test_recipe_trains_and_writes_video_samples(tmp_path):
    """The real recipe, shrunk to seconds: run folder with recon.gif and recon_frames.png."""
    from tok.recipe import load_recipe
    from tok.train import CollapseWarning, train

    recipe = load_recipe(
        RECIPE,
        [
            "data.train_videos=8",
            "data.test_videos=4",
            "model.channels=[8, 16]",
            "train.steps=2",
            "train.batch_size=2",
            "train.eval_every=2",
            "train.eval_samples=4",
            "train.log_every=1",
            f"output.dir='{tmp_path / 'run'}'",
        ],
    )
    with warnings.catch_warnings():  # two steps are far too few for a healthy codebook
        warnings.simplefilter("ignore", CollapseWarning)
        result = train(recipe, progress=False)
    run = result.run_dir
    assert result.eval["psnr"] > 0
    for name in ("recon.gif", "recon_frames.png", "usage.png", "model.safetensors"):
        assert (run / name).is_file(), name
    tokenizer = Tokenizer.load(run)
    assert tokenizer.grid == (5, 16, 16) and tokenizer.input_shape == (1, 17, 64, 64)
    with Image.open(run / "recon.gif") as gif:
        assert gif.n_frames == 17
