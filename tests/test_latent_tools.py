"""``tok interpolate`` and ``tok latent-map`` (tok.latent_tools) on real tiny runs: a
discrete one (fsq_mnist, 20 steps) and two continuous ones (vae_mnist, 20 steps, with a
20-D and a 2-D latent)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mnist_dir, one_error, tok_cli
from PIL import Image

from tok import latent_tools
from tok.data import MNIST
from tok.media import to_uint8, write_png
from tok.run import Run

REPO = Path(__file__).resolve().parents[1]
VAE = REPO / "recipes" / "vae_mnist.toml"
TINY_VAE = [
    "train.steps=20",
    "train.batch_size=16",
    "train.eval_every=20",
    "train.eval_samples=64",
    "train.checkpoint_every=20",
    "train.log_every=10",
]


def train_vae(out: Path, *extra: str) -> Path:
    """The real vae_mnist recipe, 20 steps, into ``out``."""
    from tok.recipe import load_recipe
    from tok.train import train

    mnist_dir()
    recipe = load_recipe(VAE, [*TINY_VAE, *extra, f"output.dir='{out}'"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 steps: collapse warnings are not what is tested
        train(recipe, progress=False)
    return out


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return train_vae(tmp_path_factory.mktemp("latent") / "vae")


@pytest.fixture(scope="module")
def vae2(tmp_path_factory) -> Path:
    return train_vae(tmp_path_factory.mktemp("latent") / "vae2", "bottleneck.latent_dim=2")


@pytest.fixture(params=["vae", "fsq"])
def run(request, trained_run) -> Path:
    """A continuous and a discrete run."""
    return request.getfixturevalue("vae") if request.param == "vae" else trained_run


def digits(*index: int) -> torch.Tensor:
    """MNIST test digits ``(n, 1, 28, 28)`` in ``[0, 1]``."""
    keys = [f"mnist/test/{i:05d}" for i in index]
    return MNIST(root=str(mnist_dir()), download=False).read("test", keys).floats()


# interpolation ----------------------------------------------------------------------


def test_the_ends_of_the_walk_are_the_reconstructions_of_a_and_b(run):
    tokenizer = Run.open(run).tokenizer()
    a, b = digits(3, 7)
    decoded, t = latent_tools.interpolation(tokenizer, a, b, steps=5)
    assert decoded.shape == (5, 1, 28, 28) and t == [0, 0.25, 0.5, 0.75, 1]
    recon = tokenizer.reconstruct(torch.stack([a, b]))
    torch.testing.assert_close(decoded[0], recon[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(decoded[-1], recon[1], rtol=0, atol=1e-6)
    assert not torch.equal(decoded[0], decoded[-1])


def test_the_midpoint_decodes_the_mean_of_the_two_latents(run):
    tokenizer = Run.open(run).tokenizer()
    a, b = digits(3, 7)
    decoded, t = latent_tools.interpolation(tokenizer, a, b, steps=3)
    assert t[1] == 0.5
    za, zb = latent_tools.encode_latents(tokenizer, torch.stack([a, b]))
    if tokenizer.continuous:  # the latent means, as tok encode stores them
        torch.testing.assert_close(za, tokenizer.encode(a[None])[0])
    mid = latent_tools.decode_latents(tokenizer, ((za + zb) / 2)[None])[0]
    torch.testing.assert_close(decoded[1], mid, rtol=0, atol=1e-6)


def tile(picture: np.ndarray, corner: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    x, y = corner
    return torch.from_numpy(picture[y : y + size[0], x : x + size[1]].copy()).permute(2, 0, 1)


def upscaled(image: torch.Tensor, scale: int) -> torch.Tensor:
    u8 = to_uint8(image.expand(3, -1, -1))
    return u8.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def test_the_strip_holds_a_the_steps_and_b(vae, tmp_path, capsys):
    a, b = digits(3, 7)
    write_png(tmp_path / "b.png", to_uint8(b))  # an image file as --to
    out = tmp_path / "strip.png"
    result = latent_tools.interpolate(
        vae, "mnist:test:3", str(tmp_path / "b.png"), steps=4, out=out
    )
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert (picture.shape[1], picture.shape[0]) == tuple(result["size"])
    assert len(result["tiles"]) == 4 + 2
    h, w = result["tile"]
    scale = h // 28
    assert scale >= 2 and w == 28 * scale  # digits drawn large enough to see
    assert picture.shape[1] >= 6 * w  # the six tiles side by side
    decoded, _ = latent_tools.interpolation(Run.open(vae).tokenizer(), a, b, steps=4)
    expected = [a, *decoded, b]
    for corner, image in zip(result["tiles"], expected, strict=True):
        assert torch.equal(tile(picture, corner, (h, w)), upscaled(image, scale))
    # the command line: the same picture from the same inputs
    code, stdout, err = tok_cli(
        capsys, "interpolate", vae, "--from", "mnist:test:3", "--to", tmp_path / "b.png",
        "--steps", 4, "--out", tmp_path / "cli.png",
    )  # fmt: skip
    assert code == 0, err
    assert "4 decoded steps" in stdout and "latent mean" in stdout
    again = np.asarray(Image.open(tmp_path / "cli.png").convert("RGB"))
    assert np.array_equal(again, picture)


def test_a_discrete_walk_is_in_the_encoder_output_quantised(trained_run, tmp_path, capsys):
    code, stdout, err = tok_cli(
        capsys, "interpolate", trained_run, "--from", "mnist:test:0", "--to", "mnist:test:1",
        "--out", tmp_path / "strip.png",
    )  # fmt: skip
    assert code == 0, err
    assert "10 decoded steps" in stdout and "before quantisation" in stdout
    assert Image.open(tmp_path / "strip.png").size[0] >= 12 * 28


@pytest.fixture(scope="module")
def wrong_size(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "big.png"
    write_png(path, torch.zeros(1, 32, 30, dtype=torch.uint8))
    return path


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--from", "nonsense"], ["--from nonsense", "DATASET:SPLIT:INDEX"]),
        (["--from", "mnist:test:10000"], ["--from mnist:test:10000", "out of range", "0 to 9999"]),
        (["--to", "mnist:test:-1"], ["--to mnist:test:-1", "out of range"]),
        (["--from", "mnist:val:1"], ["--from mnist:val:1", "'val'"]),
        (["--from", "nosuch:test:1"], ["no dataset 'nosuch'", "mnist"]),
        (["--from", "WRONG_SIZE"], ["32x30 pixels", "28x28"]),
        (["--from", "FOLDER"], ["is a folder"]),
        (["--from", "NOT_AN_IMAGE"], ["--from", "not-an-image.png"]),
        (["--out", "missing/strip.png"], ["--out", "does not exist"]),
        (["--out", "strip.jpg"], ["--out", ".png"]),
        (["--steps", "1"], ["--steps", "at least 2"]),
        (["--device", "tpu"], ["--device"]),
    ],
)
def test_interpolate_errors_are_one_line(args, needles, trained_run, wrong_size, tmp_path, capsys):
    (tmp_path / "not-an-image.png").write_text("hello")
    swap = {
        "WRONG_SIZE": wrong_size,
        "FOLDER": tmp_path,
        "NOT_AN_IMAGE": tmp_path / "not-an-image.png",
    }
    given = dict(zip(args[::2], [swap.get(v, v) for v in args[1::2]], strict=True))
    options = {"--from": "mnist:test:0", "--to": "mnist:test:1", "--out": "strip.png", **given}
    if not Path(options["--out"]).is_absolute():
        options["--out"] = tmp_path / options["--out"]
    flat = [str(x) for kv in options.items() for x in kv]
    code, out, err = tok_cli(capsys, "interpolate", trained_run, *flat)
    assert code == 1 and out == ""
    one_error(err, *needles)
    assert not list(tmp_path.glob("strip*"))


# latent map ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["vae2", "vae", "fsq"])
def test_latent_map_writes_a_picture_of_its_size(which, request, trained_run, tmp_path, capsys):
    run = trained_run if which == "fsq" else request.getfixturevalue(which)
    out = tmp_path / "map.png"
    code, stdout, err = tok_cli(
        capsys, "latent-map", run, "--out", out, "--samples", 300, "--grid", 5
    )
    assert code == 0, err
    assert Image.open(out).size == latent_tools.MAP_SIZE
    assert "300 test images" in stdout and "not coloured" not in stdout
    if which == "vae2":
        assert "its 2 dimensions of the latent mean" in stdout
    elif which == "vae":
        assert "PC1 and PC2 of 20 dimensions" in stdout
    else:  # fsq_mnist: a 7x7 grid of 4 channels before quantisation
        assert "PC1 and PC2 of 196 dimensions" in stdout and "before quantisation" in stdout


def test_latent_map_of_a_dataset_without_labels_is_uncoloured(vae2, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(MNIST, "labels", lambda self, split, keys: None)
    out = tmp_path / "map.png"
    code, stdout, err = tok_cli(capsys, "latent-map", vae2, "--out", out, "--samples", 100)
    assert code == 0, err
    assert "not coloured" in stdout
    assert Image.open(out).size == latent_tools.MAP_SIZE


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--out", "missing/map.png"], ["--out", "does not exist"]),
        (["--out", "map.svg"], [".png"]),
        (["--grid", "1"], ["--grid", "2 to 40"]),
        (["--samples", "-1"], ["--samples"]),
        (["--split", "val"], ["'val'"]),
    ],
)
def test_latent_map_errors_are_one_line(args, needles, trained_run, tmp_path, capsys):
    options = {"--out": "map.png", **dict(zip(args[::2], args[1::2], strict=True))}
    options["--out"] = tmp_path / options["--out"]
    flat = [str(x) for kv in options.items() for x in kv]
    code, out, err = tok_cli(capsys, "latent-map", trained_run, *flat)
    assert code == 1 and out == ""
    one_error(err, *needles)
    assert not list(tmp_path.glob("map*"))


def test_project_finds_the_directions_of_largest_variance():
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 6
    axes = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0].T
    spread = torch.tensor([5.0, 2.0, 0.5, 0.2, 0.1, 0.1], dtype=torch.float64)
    x = 3.0 + (torch.randn(n, d, generator=g, dtype=torch.float64) * spread) @ axes
    plane = latent_tools.project(x)
    for found, true in zip(plane.basis, axes[:2], strict=True):
        assert abs(float(found @ true)) > 0.999
        assert found[found.abs().argmax()] > 0  # the sign convention
    share = (spread**2 / (spread**2).sum())[:2]
    assert plane.explained == pytest.approx(share.tolist(), abs=0.01)
    xy = plane.coordinates(x)
    assert xy.mean(0).abs().max() < 1e-9 and xy[:, 0].std() > xy[:, 1].std()
    torch.testing.assert_close(plane.coordinates(plane.point(xy[:5])), xy[:5])  # on the plane
    two = latent_tools.project(x[:, :2])  # two numbers: their own axes
    assert two.explained is None
    torch.testing.assert_close(two.coordinates(x[:, :2]), x[:, :2])
