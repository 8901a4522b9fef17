"""Shared fixtures: tiny trained tokenizers (discrete and continuous) and a folder of real
MNIST PNGs.

Both need the real MNIST files: ``$TOK_DATA_DIR`` (torchvision layout,
``MNIST/raw/*-ubyte``). When it is unset and the workplace's shared copy
(``../shared/data`` beside the repository) exists, that copy is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "fsq_mnist.toml"
VAE_RECIPE = REPO / "recipes" / "vae_mnist.toml"

_SHARED_DATA = REPO.parent / "shared" / "data"
if not os.environ.get("TOK_DATA_DIR") and (_SHARED_DATA / "MNIST" / "raw").is_dir():
    os.environ["TOK_DATA_DIR"] = str(_SHARED_DATA)

#: how many test digits the ``mnist_pngs`` folder holds
NUM_PNGS = 1000

#: overrides that make the real fsq_mnist recipe train in seconds
TINY = [
    "train.steps=20",
    "train.batch_size=16",
    "train.eval_every=20",
    "train.eval_samples=64",
    "train.checkpoint_every=20",
]


# helpers the CLI tests share (``from conftest import tok_cli, ...``) -----------


def tok_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``tok ARGS`` in this process; return (exit code, stdout, stderr)."""
    from tok import cli

    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's --help / --version / usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def tok_subprocess(*args: object, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tok ARGS`` in a real subprocess (one thread)."""
    return subprocess.run(
        [sys.executable, "-m", "tok", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        **kwargs,
    )


def one_error(err: str, *needles: str) -> str:
    """``err`` is exactly one line ``tok: error: …`` holding every needle; return it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("tok: error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def photo_crops(size: int, n: int = 4) -> torch.Tensor:
    """Centre crops ``size × size`` of the first ``n`` real test photos
    (``$TOK_DATA_DIR/photos/test``): float ``(n, 3, size, size)`` in ``[0, 1]``."""
    import numpy as np
    from PIL import Image

    folder = Path(os.environ["TOK_DATA_DIR"]) / "photos" / "test"
    out = []
    for path in sorted(folder.glob("*.jpg"))[:n]:
        image = np.asarray(Image.open(path).convert("RGB"))
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        out.append(torch.from_numpy(image[top : top + size, left : left + size].copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255


def torchvision_alexnet_file(path: Path) -> Path:
    """torchvision's AlexNet state dict with random weights, saved at ``path`` as
    torchvision ships its ImageNet one (the LPIPS loading path, not its values)."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def fidelity_inception_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch-fidelity-shaped InceptionV3 state dict with random weights, saved at
    ``path`` (built with torch-fidelity's own download and loading stubbed out)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    with monkeypatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        torch.manual_seed(0)
        state = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(state, path)
    return path


def moving_square(t: int, h: int = 28, w: int = 28, c: int = 1) -> torch.Tensor:
    """uint8 ``(t, c, h, w)``: a white 6x6 square moving down-right over black, plus a grey bar."""
    video = torch.zeros(t, c, h, w, dtype=torch.uint8)
    for i in range(t):
        video[i, :, 2 + i : 8 + i, 3 + i : 9 + i] = 255
        video[i, :, h - 5 : h - 2, 2:10] = 128
    return video


def noise_picture(seed: int, h: int = 12, w: int = 16):
    """An RGB Pillow picture ``h x w`` of deterministic noise (to save in any format)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def mnist_dir() -> Path:
    """The folder that holds ``MNIST/raw`` (fails the test clearly if there is none)."""
    root = os.environ.get("TOK_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.fail(
            "these tests need the real MNIST files: set TOK_DATA_DIR to the folder holding MNIST/raw"
        )
    return Path(root)


def tiny_recipe(run: Path, *extra: str, steps: int = 4):
    """The real fsq_mnist recipe shrunk to train in seconds into ``run``: a small model,
    ``steps`` steps of 8 digits, evaluated and checkpointed at half time and the end,
    every step logged; ``extra`` are further ``--set`` overrides."""
    from tok.recipe import load_recipe

    half = max(1, steps // 2)
    return load_recipe(
        RECIPE,
        [
            "model.channels=[8, 16]",
            f"train.steps={steps}",
            "train.batch_size=8",
            "train.eval_samples=16",
            f"train.eval_every={half}",
            f"train.checkpoint_every={half}",
            "train.log_every=1",
            "train.collapse_threshold=0.0",
            "output.samples=4",
            f"output.dir='{run}'",
            *extra,
        ],
    )


def train_tiny(out: Path, *extra: str) -> Path:
    """Train the real fsq_mnist recipe for 20 steps into ``out``; return the run folder."""
    import warnings

    from tok.recipe import load_recipe
    from tok.train import CollapseWarning, train

    mnist_dir()
    recipe = load_recipe(RECIPE, [*TINY, *extra, f"output.dir='{out}'"])
    with warnings.catch_warnings():
        # 20 steps are far too few for a healthy codebook; that is not what is tested
        warnings.simplefilter("ignore", CollapseWarning)
        train(recipe, progress=False)
    return out


def train_tiny_vae(out: Path, *extra: str) -> Path:
    """Train the real vae_mnist recipe (MLP 784-400-20, Gaussian latent) for 20 steps into
    ``out``; return the run folder."""
    import warnings

    from tok.recipe import load_recipe
    from tok.train import CollapseWarning, train

    mnist_dir()
    sets = [*TINY, "train.eval_samples=200", "train.log_every=20"]
    recipe = load_recipe(VAE_RECIPE, [*sets, *extra, f"output.dir='{out}'"])
    with warnings.catch_warnings():
        # 20 steps may leave latent dimensions inactive; that is not what is tested
        warnings.simplefilter("ignore", CollapseWarning)
        train(recipe, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of the vae_mnist recipe (a continuous tokenizer) trained for 20 steps."""
    return train_tiny_vae(tmp_path_factory.mktemp("trained_vae") / "vae_mnist")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of the fsq_mnist recipe trained for 20 steps (model.safetensors, tokenizer.json…)."""
    return train_tiny(tmp_path_factory.mktemp("trained") / "fsq_mnist")


def photos_dir() -> Path:
    """The real photos (``photos/train`` 45, ``photos/test`` 11 RGB JPEGs of different
    sizes) under ``$TOK_DATA_DIR`` (fails the test clearly if they are missing)."""
    root = Path(os.environ.get("TOK_DATA_DIR") or _SHARED_DATA) / "photos"
    if not (root / "test").is_dir():
        pytest.fail("these tests need the real photos: set TOK_DATA_DIR to the folder of photos/")
    return root


#: a tiny conv + FSQ tokenizer (stride 4) trained on 64x64 centre crops of the real photos
PHOTO_RECIPE = """
[data]
name = "imagefolder"
path = "{photos}"
size = [64, 64]
resize = "center-crop"

[model]
name = "conv"
channels = [16, 32, 32]
blocks = [0, 1, 1]
latent_dim = 4

[quantizer]
name = "fsq"
levels = [8, 5, 5, 5]

[train]
steps = 40
batch_size = 8
lr = 2e-3
warmup_steps = 5
eval_every = 40
eval_samples = 11
checkpoint_every = 40

[output]
dir = "{out}"
"""


@pytest.fixture(scope="session")
def photo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of a tiny conv + FSQ tokenizer trained for 40 steps on 64x64 crops of
    the real photos (``photos/train``): a tokenizer trained on crops, for full-size photos."""
    from tok.recipe import load_recipe
    from tok.train import CollapseWarning, train

    work = tmp_path_factory.mktemp("photo_run")
    recipe = work / "photos.toml"
    recipe.write_text(PHOTO_RECIPE.format(photos=photos_dir(), out=work / "run"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)  # 40 steps: not what is tested
        train(load_recipe(recipe, []), progress=False)
    return work / "run"


@pytest.fixture(scope="session")
def mnist_pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 real MNIST test digits as grayscale PNGs, ``<label>/<index>.png`` (keys like ``7/00000``)."""
    import torchvision
    from torchvision.io import write_png

    from tok.media import quiet_torchvision_io

    ds = torchvision.datasets.MNIST(str(mnist_dir()), train=False, download=False)
    root = tmp_path_factory.mktemp("digits")
    with quiet_torchvision_io():
        for i in range(NUM_PNGS):
            folder = root / str(int(ds.targets[i]))
            folder.mkdir(exist_ok=True)
            write_png(ds.data[i].unsqueeze(0), str(folder / f"{i:05d}.png"))
    return root


@pytest.fixture
def torchrun() -> Callable[[Path], subprocess.CompletedProcess[str]]:
    """Run a worker script in 2 real processes with ``torchrun`` (gloo, CPU); return the result."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is missing")

    def run(worker: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(worker),
        ]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    return run
