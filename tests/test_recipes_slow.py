"""The full recipes with their quality targets (slow: run with ``pytest -m slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# recipe -> (minimum test PSNR in dB, minimum codebook usage on the test split, bits per pixel)
TARGETS = {
    "fsq_mnist": (28.0, 0.95, 0.62),
    "vq_mnist": (28.0, 0.95, 0.62),  # issue: within 1 dB of fsq_mnist, usage >= 95 % at K = 1024
    "rvq_mnist": (28.0, 0.95, 0.62),
    "mgvq_mnist": (27.0, 0.95, 0.62),
    "lfq_mnist": (22.0, 0.95, 0.62),
    # 1D tokens: 16 / 32 / 64 tokens of log2(1000) bits per 784 pixels. Sized for 10 minutes
    # on a 2-core AVX2 CPU in fp32 (bench/RESULTS.md, "Fast on every CPU"): K = 16 / 32 / 64
    # ended at 22.8 / 23.7 / 23.8 dB on 2,000 test digits (2 threads)
    "seq1d_mnist_k16": (22.0, 0.90, 0.20),
    "seq1d_mnist": (22.0, 0.90, 0.41),  # issue: >= 22 dB, usage >= 90 % at 32 tokens
    "seq1d_mnist_k64": (23.0, 0.90, 0.81),
    # video: 17 frames of 64x64 -> 5x16x16 tokens of log2(64000) bits; 1,000 test videos.
    # Usage is lower than for images: 64,000 codes against 1.28 M test tokens.
    "video_fsq_movingmnist": (24.0, 0.50, 0.29),
    # Fashion-MNIST, fsq_mnist's model: 25.39 and 25.39 dB (seeds 0 and 1, fp32, 1 thread),
    # usage 100 % and 99.9 % on the 10,000 test images (bench/RESULTS.md, "Real data")
    "fsq_fashionmnist": (25.0, 0.95, 0.62),
    # real clips: RGB 17x64x64 crops -> 5x16x16 tokens; 20.32 and 20.33 dB on the 333 test
    # crops (seeds 0 and 1, fp32, 1 thread), usage 15.6 % and 8.8 % of 64,000 codes
    "video_real": (20.0, 0.05, 0.29),
}

# recipes whose test split is not 10,000 images: the number of test items tok eval measures
TEST_ITEMS = {
    "video_fsq_movingmnist": 1000,  # Moving MNIST test videos
    "video_real": 333,  # crops of bikes.mp4 and carphone_pristine.mp4 on a grid
}


# continuous recipes -> (maximum test negative ELBO in nats per image, minimum active latent
# dimensions of the test split); measured runs in bench/RESULTS.md, "Continuous latents"
LATENT_TARGETS = {
    "vae_mnist": (106.5, 20),  # measured 105.85 (the lecture's loop: 105.44)
    "vae2d_mnist": (158.5, 2),  # measured 157.37
    # 100 nats is out of reach in 2 minutes (bench/RESULTS.md): the bar is what it reaches,
    # 104.1 measured; its two-layer decoder leaves about 7 of 16 dimensions unused
    "tiny_vae_mnist": (105.0, 8),
}


# the photo recipes: what the perceptual and adversarial losses must buy over the control
# on the 2,048 test crops (tok eval; bench/RESULTS.md, "Real photos")
PHOTO_RECIPES = ("vqgan_photos", "vqgan_photos_control")
# measured on the 2,048 crops, seeds 0 / 1: full 25.00 / 24.83 dB, control 25.78 / 25.34 dB
PHOTO_PSNR = 24.5


def train_and_eval(recipe: str, run: Path, *sets: str) -> tuple[dict, str]:
    """Train ``recipes/{recipe}.toml`` into ``run`` (``--set`` each of ``sets``), then
    ``tok eval`` it on the whole test split: ``(the eval JSON, train's stderr)``."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tok",
            "train",
            f"recipes/{recipe}.toml",
            "--no-progress",
            "--set",
            f"output.dir='{run}'",
            *[arg for s in sets for arg in ("--set", s)],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run(
        [sys.executable, "-m", "tok", "eval", str(run), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout), proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(TARGETS))
def test_recipe_reaches_its_targets(recipe, tmp_path):
    result, stderr = train_and_eval(recipe, tmp_path / recipe)
    assert "collapse" not in stderr  # the collapse warning must not fire on a default recipe
    psnr, usage, bpp = TARGETS[recipe]
    # tok eval measures the whole test split: 10,000 (Fashion-)MNIST images, or TEST_ITEMS
    assert result["images"] == TEST_ITEMS.get(recipe, 10000)
    assert result["psnr"] >= psnr
    assert result["usage"] >= usage
    assert result["bits_per_pixel"] == pytest.approx(bpp, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(LATENT_TARGETS))
def test_continuous_recipe_reaches_its_targets(recipe, tmp_path):
    result, stderr = train_and_eval(recipe, tmp_path / recipe)
    neg_elbo, active = LATENT_TARGETS[recipe]
    # the warning fires exactly when a dimension is inactive, naming the count
    assert ("posterior collapse" in stderr) == (result["active_dims"] < result["latent_dim"])
    assert result["images"] == 10000
    assert result["neg_elbo"] <= neg_elbo
    assert result["neg_elbo"] == pytest.approx(result["recon_nll"] + result["kl"])
    assert result["active_dims"] >= active


@pytest.mark.slow
def test_the_vqgan_losses_beat_their_control_on_perceptual_metrics(tmp_path):
    full, stderr = train_and_eval("vqgan_photos", tmp_path / "full")
    control, _ = train_and_eval("vqgan_photos_control", tmp_path / "control")
    assert "collapse" not in stderr
    for result in (full, control):
        assert result["images"] == 2048  # the fixed crops of photos/test
        assert result["bits_per_pixel"] == pytest.approx(0.25, abs=0.01)
        assert result["psnr"] >= PHOTO_PSNR
    # measured with Lite2, not the Lite0 the perceptual loss trains against
    assert full["feature_distance_lite2"] < control["feature_distance_lite2"]
    assert full["fd_effnet_lite2"] < control["fd_effnet_lite2"]


def test_every_recipe_has_a_target():
    """Not slow: a new recipe cannot slip past the slow suite."""
    recipes = {p.stem for p in (ROOT / "recipes").glob("*.toml")}
    assert recipes == set(TARGETS) | set(LATENT_TARGETS) | set(PHOTO_RECIPES)


SEQ1D = ("seq1d_mnist_k16", "seq1d_mnist", "seq1d_mnist_k64")  # K = 16, 32, 64


@pytest.mark.slow
def test_seq1d_plateau_recipes_rise_with_k_and_agree_across_thread_counts(tmp_path):
    """Six full runs (about 1½ hours on 2 cores). Before the token mixers the start-up
    plateau lasted as long as rounding decided: K = 64 ended 5.8 dB apart at 1 and 2 threads,
    below K = 32 at 2 threads."""
    psnr = {
        (recipe, threads): train_and_eval(
            recipe, tmp_path / f"{recipe}_t{threads}", f"train.threads={threads}"
        )[0]["psnr"]
        for recipe in SEQ1D
        for threads in (1, 2)
    }
    for recipe in SEQ1D:
        assert abs(psnr[recipe, 1] - psnr[recipe, 2]) <= 0.5, (recipe, psnr)
    for threads in (1, 2):
        k16, k32, k64 = (psnr[r, threads] for r in SEQ1D)
        assert k16 < k32 < k64, psnr
