"""The seq1d architecture (TiTok-style 1D tokens): every quantizer, token files, the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tok.components import build
from tok.data import MNIST
from tok.errors import ConfigError
from tok.models import Tokenizer
from tok.registry import registry
from tok.tokens import TokenHeader, read_tokens, write_tokens

REPO = Path(__file__).resolve().parents[2]
QUANTIZERS = registry("quantizers").names()
SMALL = {"patch_size": 7, "num_tokens": 8, "width": 32, "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Sixteen real MNIST test digits as floats in [0, 1], ``(16, 1, 28, 28)``."""
    return MNIST(download=False).load("test").floats(slice(0, 16))


def small_tokenizer(quantizer: str) -> Tokenizer:
    """A small seq1d tokenizer around the quantizer's own example configuration."""
    torch.manual_seed(0)
    q_config = registry("quantizers").get(quantizer).example_config()
    arch = build(
        "architectures",
        "seq1d",
        {"in_channels": 1, "image_size": [28, 28], "latent_dim": q_config["dim"], **SMALL},
    )
    return Tokenizer(
        architecture=arch,
        quantizer=build("quantizers", quantizer, q_config),
        input_shape=(1, 28, 28),
    )


def test_every_registered_quantizer_is_covered():
    assert {"fsq", "vq", "lfq", "rvq", "mgvq"} <= set(QUANTIZERS)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_trains_a_step_with_every_quantizer(quantizer, digits):
    tokenizer = small_tokenizer(quantizer).train()
    opt = torch.optim.AdamW(tokenizer.parameters(), lr=1e-3)
    before = {k: v.detach().clone() for k, v in tokenizer.architecture.named_parameters()}
    out = tokenizer(digits)
    assert out.reconstruction.shape == digits.shape
    loss = (out.reconstruction - digits).pow(2).mean() + out.aux_loss
    assert torch.isfinite(loss)
    loss.backward()
    # the gradient reaches the encoder through the quantizer, down to the latent tokens
    arch = tokenizer.architecture
    for name in ("latent_tokens", "patch_pos", "mask_token"):
        grad = getattr(arch, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    opt.step()
    changed = [k for k, v in arch.named_parameters() if not torch.equal(v, before[k])]
    assert set(changed) == set(before)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_tokens_round_trip_through_a_token_file_with_every_quantizer(quantizer, digits, tmp_path):
    tokenizer = small_tokenizer(quantizer).eval()
    s = tokenizer.quantizer.num_streams
    assert tokenizer.grid == (8,)
    tokens = tokenizer.encode(digits)
    assert tokens.shape == (16, 8, s) and tokens.dtype == torch.int64
    tokenizer.save(tmp_path / "run")  # token files name the weights that made them
    header = TokenHeader.for_tokenizer(tokenizer)
    keys = [f"digit/{i}" for i in range(16)]
    back = read_tokens(write_tokens(tmp_path / "t.safetensors", tokens, keys=keys, header=header))
    assert back.header.grid == (8,) and back.header.quantizer == quantizer
    assert back.keys == keys
    assert torch.equal(back.tokens.long(), tokens)
    images = tokenizer.decode(back.tokens)
    assert images.shape == digits.shape
    assert torch.equal(images, tokenizer.decode(tokens))
    # decoding the tokens is the forward pass's reconstruction
    torch.testing.assert_close(images, tokenizer.reconstruct(digits), atol=1e-5, rtol=0)


def test_save_and_load_rebuild_the_same_tokenizer(tmp_path, digits):
    tokenizer = small_tokenizer("fsq").eval()
    tokenizer.save(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    assert config["architecture"]["name"] == "seq1d"
    assert config["architecture"]["config"]["image_size"] == [28, 28]
    assert config["grid"] == [8]
    loaded = Tokenizer.load(tmp_path / "run")
    assert torch.equal(loaded.encode(digits), tokenizer.encode(digits))


def test_the_titok_alias_names_the_same_architecture():
    assert registry("architectures").get("titok") is registry("architectures").get("seq1d")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch_size": 5}, "patch_size 5 does not divide the image size 28x28"),
        ({"heads": 3}, "heads (3) must divide width (32)"),
        ({"num_tokens": 0}, "num_tokens must be ≥ 1"),
        ({"image_size": [28]}, "image_size must be a positive integer or [h, w]"),
    ],
)
def test_bad_options_are_config_errors_naming_them(options, message):
    kwargs = {"in_channels": 1, "image_size": [28, 28], **SMALL, **options}
    with pytest.raises(ConfigError, match=re.escape(message)):
        build("architectures", "seq1d", kwargs)


def test_input_of_another_size_is_refused_naming_both():
    arch = build("architectures", "seq1d", {"in_channels": 1, "image_size": [28, 28], **SMALL})
    with pytest.raises(ConfigError, match="built for 1x28x28 .* got input shape 3x32x32"):
        arch.grid((3, 32, 32))


def tok(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tok", *args], cwd=cwd, capture_output=True, text=True
    )


def test_recipe_trains_encodes_and_decodes_through_the_cli(tmp_path, mnist_pngs):
    """The real recipe, a few steps: image_size comes from the data; token files have grid (K,)."""
    run = tmp_path / "run"
    overrides = ["train.steps=4", "train.batch_size=8", "train.eval_samples=32"]
    train = tok(
        "train",
        str(REPO / "recipes" / "seq1d_mnist.toml"),
        "--no-progress",
        *[arg for o in [*overrides, f"output.dir='{run}'"] for arg in ("--set", o)],
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    config = json.loads((run / "tokenizer.json").read_text())
    assert config["architecture"]["config"]["image_size"] == [28, 28]
    assert config["grid"] == [32]
    enc = tok("encode", str(mnist_pngs), "--run", str(run), "--out", "tokens", cwd=tmp_path)
    assert enc.returncode == 0, enc.stderr
    first = sorted((tmp_path / "tokens").glob("*.safetensors"))[0]
    tf = read_tokens(first)
    assert tf.header.grid == (32,)
    assert tf.tokens.shape[1:] == (32, 1)
    dec = tok("decode", str(first), "--out", "images", cwd=tmp_path)
    assert dec.returncode == 0, dec.stderr
    assert len(list((tmp_path / "images").rglob("*.png"))) == len(tf.keys) > 0
    ev = tok("eval", str(run), "--json", "--samples", "64", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["bits_per_pixel"] == pytest.approx(32 * math.log2(1000) / 784)
