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
    # 1D tokens: 16 / 32 / 64 tokens of log2(1000) bits per 784 pixels
    "seq1d_mnist_k16": (21.0, 0.90, 0.20),
    "seq1d_mnist": (22.0, 0.90, 0.41),  # issue: >= 22 dB, usage >= 90 % at 32 tokens
    # K = 64 ends anywhere from 20.0 dB (2 threads) to 25.9 dB (1 thread): its start-up plateau
    # varies with rounding (README, "What you get"); this bar only catches a broken model
    "seq1d_mnist_k64": (19.5, 0.90, 0.81),
    # video: 17 frames of 64x64 -> 5x16x16 tokens of log2(64000) bits; 1,000 test videos.
    # Usage is lower than for images: 64,000 codes against 1.28 M test tokens.
    "video_fsq_movingmnist": (24.0, 0.50, 0.29),
}


def train_and_eval(recipe: str, run: Path) -> tuple[dict, str]:
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
    # tok eval measures the whole test split: 10,000 MNIST digits or 1,000 Moving MNIST videos
    assert result["images"] == (1000 if recipe.startswith("video") else 10000)
    assert result["psnr"] >= psnr
    assert result["usage"] >= usage
    assert result["bits_per_pixel"] == pytest.approx(bpp, abs=0.01)


def test_every_recipe_has_a_target():
    """Not slow: a new recipe cannot slip past the slow suite."""
    recipes = {p.stem for p in (ROOT / "recipes").glob("*.toml")}
    assert recipes == set(TARGETS)
