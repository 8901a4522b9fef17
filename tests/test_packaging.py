"""The package builds as a wheel that maps tokenizers/ → tok and plugins/ → tok.plugins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("tok_vision-*.whl")  # the distribution is tok-vision
    return path


def installed(wheel: Path, target: Path) -> Path:
    """``wheel`` installed with pip into the folder ``target`` (the venv is not touched)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target)]
    subprocess.run([*cmd, str(wheel)], check=True, capture_output=True)
    return target


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "tok/__init__.py" in names
    assert "tok/__main__.py" in names
    assert "tok/plugins/fsq.py" in names
    assert "tok/models/tokenizer.py" in names
    assert "tok/data/mnist.py" in names
    # the recipes ship inside the package, so `tok train fsq_mnist` works after pip install
    assert "tok/recipes/fsq_mnist.toml" in names and "tok/recipes/__init__.py" in names
    assert "tok/tokens/manifest.py" in names and "tok/testing/quantizer.py" in names
    assert not any(n.startswith(("tokenizers/", "plugins/", "tests/")) for n in names)
    (ep,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[tok]" in text and "fsq = tok.plugins.fsq" in text
    assert "[console_scripts]" in text and "tok = tok.cli:main" in text


def test_installed_wheel_runs_python_m_tok(wheel, tmp_path):
    target = installed(wheel, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import tok, json; print(json.dumps([tok.__file__, tok.list_quantizers()]))"
    where, quantizers = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert where.startswith(str(target))
    assert "fsq" in quantizers
    proc = subprocess.run(
        [sys.executable, "-m", "tok", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    plugins = {p["name"]: p for p in json.loads(proc.stdout)}
    assert plugins["fsq"]["source"] == "builtin" and plugins["fsq"]["status"] == "ok"


def test_installed_wheel_lists_and_trains_a_shipped_recipe(wheel, tmp_path):
    """Outside any clone: `tok recipes` lists the shipped recipes, `tok train NAME` runs one."""
    target = installed(wheel, tmp_path / "site")
    work = tmp_path / "elsewhere"  # no recipes/ folder here
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def tok(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tok", *args], env=env, cwd=work, capture_output=True, text=True
        )

    listed = tok("recipes")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[2:] if line.strip()}
    assert {"fsq_mnist", "vq_mnist", "seq1d_mnist", "video_fsq_movingmnist"} <= set(rows)
    assert "MNIST" in rows["fsq_mnist"]  # its one-line purpose
    trained = tok(
        "train",
        "fsq_mnist",
        "--no-progress",
        *("--set", "train.steps=2", "--set", "train.batch_size=4"),
        *("--set", "train.eval_samples=8", "--set", "model.channels=[8, 8]"),
    )
    assert trained.returncode == 0, trained.stderr
    assert (work / "runs" / "fsq_mnist" / "model.safetensors").is_file()
    missing = tok("train", "fsq_mnsit")
    assert missing.returncode == 1
    assert missing.stderr.startswith("tok: error: ") and "fsq_mnist" in missing.stderr
