"""The full recipes with their quality targets (slow: run with ``pytest -m slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fsq_mnist_reaches_its_targets(tmp_path):
    run = tmp_path / "fsq_mnist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tok",
            "train",
            "recipes/fsq_mnist.toml",
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
    assert "collapse" not in proc.stderr
    out = subprocess.run(
        [sys.executable, "-m", "tok", "eval", str(run), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["images"] == 10000
    assert result["psnr"] >= 28.0
    assert result["usage"] >= 0.95
    assert result["bits_per_pixel"] == pytest.approx(49 * 9.965784 / 784, rel=1e-4)
