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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

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
    for name in ("latent_tokens", "patch_pos", "mask_token", "latent_mixer", "mask_mixer"):
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


# -- the start-up plateau ------------------------------------------------------------------
# Attention starts near uniform, so without a path that does not wait for it every latent
# token read the same average and the decoder's mask tokens the average of all latents: FSQ
# gave all digits the same codes, the decoder drew a mean digit, and within ten steps the
# latents sat in FSQ's saturated outermost level, for as long as floating-point rounding
# decided. The token mixers give the image a path into the tokens and the tokens one into the
# patches from step 0. The recipes' model at K = 32; "before" is the same model with both
# mixers zero, which is exactly the architecture before the mixers (every other parameter is
# drawn first, so the seeds give the same weights).
RECIPE_MODEL = {"patch_size": 7, "num_tokens": 32, "width": 128, "depth": 4, "heads": 4}


def recipe_tokenizer(seed: int) -> Tokenizer:
    torch.manual_seed(seed)
    arch = build(
        "architectures",
        "seq1d",
        {"in_channels": 1, "image_size": [28, 28], "latent_dim": 4, **RECIPE_MODEL},
    )
    return Tokenizer(
        architecture=arch,
        quantizer=build("quantizers", "fsq", {"levels": [8, 5, 5, 5]}),
        input_shape=(1, 28, 28),
    )


def codes_per_token(tokenizer: Tokenizer, images: torch.Tensor) -> float:
    """How many different codes a token position takes over ``images``, mean over positions."""
    with torch.no_grad():
        indices = tokenizer.eval().encode(images)[..., 0]  # b k
    return sum(indices[:, k].unique().numel() for k in range(indices.shape[1])) / indices.shape[1]


@pytest.fixture(scope="module")
def digits64() -> torch.Tensor:
    return MNIST(download=False).load("test").floats(slice(0, 64))


@pytest.mark.parametrize("seed", [0, 1])
def test_seq1d_plateau_tokens_tell_digits_apart_at_initialisation(seed, digits64):
    # before: 5.6 and 2.3 codes per token over 64 digits (seeds 0, 1); with the mixers 30.5, 25.3
    assert codes_per_token(recipe_tokenizer(seed), digits64) >= 10


@pytest.mark.parametrize("seed", [0, 1])
def test_seq1d_plateau_reconstructions_follow_the_tokens_at_initialisation(seed, digits64):
    with torch.no_grad():
        images = recipe_tokenizer(seed).eval().reconstruct(digits64)
    # spread across the 64 digits relative to the mean level: before 0.044 and 0.024 (all
    # digits decoded alike), with the mixers 0.160 and 0.145
    assert images.std(0).mean() / images.abs().mean() >= 0.1


def test_seq1d_plateau_tokens_still_tell_digits_apart_after_the_first_steps(digits64):
    """The recipe's first 16 steps (lr warm-up to 3e-3 over 100, clipping at 1) on real digits."""
    torch.manual_seed(0)
    train = MNIST(download=False).load("train").floats(slice(0, 1024))
    tokenizer = recipe_tokenizer(0).train()
    opt = torch.optim.AdamW(tokenizer.parameters(), lr=3e-3, betas=(0.9, 0.99))
    for step, batch in enumerate(train.split(64)):
        opt.param_groups[0]["lr"] = 3e-3 * (step + 1) / 100
        out = tokenizer(batch)
        loss = (out.reconstruction - batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        used = tokenizer.eval().encode(digits64).unique().numel()
    # before: 2 codes for all 64 digits and 32 tokens (every latent in the saturated level)
    assert used >= 10, used


def test_weights_saved_before_the_token_mixers_load_as_that_model(tmp_path, digits):
    tokenizer = small_tokenizer("fsq").eval()
    with torch.no_grad():
        tokenizer.architecture.latent_mixer.zero_()
        tokenizer.architecture.mask_mixer.zero_()
    tokenizer.save(tmp_path / "run")
    weights = tmp_path / "run" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    state = load_file(weights)
    old = {k: v for k, v in state.items() if "mixer" not in k}
    assert len(old) == len(state) - 2
    save_file(old, weights, metadata=metadata)  # what a run saved before the mixers holds
    loaded = Tokenizer.load(tmp_path / "run")
    assert not loaded.architecture.latent_mixer.any() and not loaded.architecture.mask_mixer.any()
    assert torch.equal(loaded.encode(digits), tokenizer.encode(digits))
    assert torch.equal(loaded.reconstruct(digits), tokenizer.reconstruct(digits))


def test_a_run_checkpointed_before_the_token_mixers_is_refused_on_resume_in_one_line(tmp_path):
    """A training run started before the mixers: its weights load, but its AdamW state has no
    slot for them, so ``--resume`` refuses in one line and leaves the checkpoint as it was."""
    run = tmp_path / "run"
    overrides = ["train.steps=2", "train.batch_size=8", "train.eval_samples=16"]
    sets = [arg for o in [*overrides, f"output.dir='{run}'"] for arg in ("--set", o)]
    first = tok(
        "train", str(REPO / "recipes" / "seq1d_mnist.toml"), "--no-progress", *sets, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    # rewrite its checkpoint as a run from before the mixers saved it
    state_file = run / "state.safetensors"
    with safe_open(str(state_file), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    names = [n for n, _ in Tokenizer.load(run).named_parameters()]
    mixers = {i for i, n in enumerate(names) if "mixer" in n}
    assert len(mixers) == 2
    kept = [i for i in range(len(names)) if i not in mixers]
    renumber = {old: new for new, old in enumerate(kept)}
    old_state = {}
    for key, value in tensors.items():
        if key.startswith("model.") and "mixer" in key:
            continue
        if key.startswith("optim."):
            _, idx, rest = key.split(".", 2)
            if int(idx) in mixers:
                continue
            key = f"optim.{renumber[int(idx)]}.{rest}"
        old_state[key] = value
    scalars = json.loads(metadata["state"])
    scalars["param_groups"][0]["params"] = list(range(len(kept)))
    save_file(old_state, state_file, metadata={**metadata, "state": json.dumps(scalars)})
    before = state_file.read_bytes()

    again = tok(
        "train", "--resume", str(run), "--no-progress", "--set", "train.steps=4", cwd=tmp_path
    )
    assert again.returncode != 0
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tok: error: cannot resume"), again.stderr
    assert f"optimizer state for {len(kept)} parameter tensors, the model now has" in lines[0]
    assert state_file.read_bytes() == before
