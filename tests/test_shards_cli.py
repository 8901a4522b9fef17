"""``tok shards``: packing real MNIST digit PNGs into webdataset shards, then encoding and
training from the shards as from the folder; its refusals, each one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import RECIPE, TINY, noise_picture, one_error, tok_cli

from tok.models import Tokenizer
from tok.tokens import load_tokens


def digits(mnist_pngs: Path, dst: Path, *, train: int, test: int) -> Path:
    """``dst/train/<label>/…png`` and ``dst/test/<label>/…png``: the first real test digits
    (of every class), in subfolders by class."""
    files = sorted(mnist_pngs.rglob("*.png"), key=lambda p: p.name)
    for split, chosen in (("train", files[:train]), ("test", files[train : train + test])):
        for p in chosen:
            (dst / split / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst / split / p.parent.name / p.name)
    return dst


def test_encoding_the_shards_gives_the_tokens_of_the_folder(
    trained_run, mnist_pngs, tmp_path, capsys
):
    src = digits(mnist_pngs, tmp_path / "digits", train=10, test=40)
    (src / "test" / "notes.txt").write_text("not a digit")
    shards = tmp_path / "shards"
    code, out, err = tok_cli(
        capsys, "shards", src, "--out", shards, "--per-shard", "16", "--no-progress"
    )
    assert code == 0, err
    assert out.strip() == f"wrote 50 samples in 4 shards to {shards}"
    [line] = err.strip().splitlines()  # the skipped file, in one warning line
    assert line.startswith("tok: warning: skipped 1 file(s)") and "notes.txt" in line
    assert sorted(p.name for p in (shards / "test").iterdir()) == [
        f"shard-00000{i}.tar" for i in range(3)
    ]
    tokens = {}
    for name, source in (("folder", src), ("shards", shards)):
        code, out, err = tok_cli(
            capsys, "encode", source, "--out", tmp_path / f"tokens-{name}", "--tokenizer", trained_run,
            "--shard-size", "16", "--no-progress",
        )  # fmt: skip
        assert code == 0, err
        assert "wrote 40 rows" in out
        tokens[name] = load_tokens(tmp_path / f"tokens-{name}")
    folder, packed = tokens["folder"], tokens["shards"]
    assert sorted(folder.keys) == packed.keys and len(packed.keys) == 40
    order = [folder.keys.index(k) for k in packed.keys]
    assert torch.equal(packed.tokens, folder.tokens[order])
    # the train split, and one shard on its own
    code, _, err = tok_cli(
        capsys, "encode", shards / "train" / "shard-000000.tar", "--out", tmp_path / "one",
        "--tokenizer", trained_run, "--split", "train", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert len(load_tokens(tmp_path / "one").keys) == 10


def test_train_reads_image_shards_named_in_a_recipe(mnist_pngs, tmp_path, capsys):
    src = digits(mnist_pngs, tmp_path / "digits", train=64, test=32)
    code, _, err = tok_cli(capsys, "shards", src, "--out", tmp_path / "shards", "--no-progress")
    assert code == 0, err
    recipe = tmp_path / "shards.toml"
    text = RECIPE.read_text().replace(
        'name = "mnist"', f'name = "imageshards"\npath = "{tmp_path / "shards"}"\nchannels = 1'
    )
    assert 'name = "imageshards"' in text
    recipe.write_text(text)
    run = tmp_path / "run"
    sets = [*TINY, "train.collapse_threshold=0.0", "model.channels=[8, 16]"]
    code, out, err = tok_cli(
        capsys, "train", recipe, "--no-progress", "--set", f"output.dir='{run}'",
        *(a for s in sets for a in ("--set", s)),
    )  # fmt: skip
    assert code == 0, err
    assert f"run folder: {run}" in out and "(step 20)" in out and "(32 images)" in out
    assert Tokenizer.load(run).input_shape == (1, 28, 28)


def test_video_folders_are_packed_too(tmp_path, capsys):
    from conftest import moving_square

    from tok.data import VideoShards
    from tok.media import write_video

    for name in ("a.mp4", "b.gif", "c.mp4"):
        write_video(tmp_path / "clips" / name, moving_square(6), fps=6)
    code, out, err = tok_cli(
        capsys, "shards", tmp_path / "clips", "--out", tmp_path / "s", "--per-shard", "2"
    )
    assert code == 0, err
    assert out.strip() == f"wrote 3 samples in 2 shards to {tmp_path / 's'}"
    assert "shards: 100%" in err  # the progress bar, on stderr
    ds = VideoShards(path=str(tmp_path / "s"), channels=1, frames=6)
    assert ds.keys("test") == ["a", "b", "c"]


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing", ["nothing", "is not a folder"]),
        ("no media", ["no images (.png", "videos (.mp4"]),
        ("not empty", ["output folder", "already exists and is not empty"]),
        ("collision", ["a.b.png and a_b.png would both be the sample 'a_b'", "rename one"]),
        ("per shard", ["--per-shard must be at least 1, got 0"]),
        ("empty split", ["none of the 1 image files", "test"]),
    ],
)
def test_refusals_are_one_line_and_write_nothing(case, needles, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    noise_picture(0).save(src / "a.b.png")
    args = ["--per-shard", "0"] if case == "per shard" else []
    if case == "missing":
        src = tmp_path / "nothing"
    elif case == "no media":
        (src / "a.b.png").unlink()
        (src / "notes.txt").write_text("hi")
    elif case == "not empty":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    elif case == "collision":
        noise_picture(1).save(src / "a_b.png")
    elif case == "empty split":
        (src / "a.b.png").rename(src / "train.png")
        for split in ("train", "test"):
            (src / split).mkdir()
            noise_picture(2).save(src / split / "x.png")
        (src / "test" / "x.png").write_bytes(b"\x89PNG broken")
    code, _, err = tok_cli(capsys, "shards", src, "--out", out, *args, "--no-progress")
    assert code == 1
    if case == "empty split":  # the broken file is named in the warning, then the error
        warning, err = err.strip().splitlines()
        assert warning.startswith("tok: warning: skipped 1 file(s)") and "x.png" in warning
    one_error(err, *needles)
    if case == "not empty":
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
    else:
        assert not out.exists()
