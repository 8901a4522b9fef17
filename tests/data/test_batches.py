"""Training batches, preloaded and streamed (tok.data.batches), on real PNG files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import RECIPE, TINY, mnist_dir
from safetensors.torch import load_file

from tok.data import Dataset, ImageFolder, ImageShards, VideoFolder, VideoShards
from tok.data.batches import Augment, Streamed, global_batch, item_generator
from tok.data.pack import pack_folder
from tok.recipe import load_recipe
from tok.train import CollapseWarning, train


def test_global_batches_cover_each_epoch_once():
    """10 items, batches of 4: positions 0–9 are epoch 0, 10–19 epoch 1, each a permutation."""
    seq = torch.cat([global_batch(10, 4, 7, step) for step in range(5)])
    assert sorted(seq[:10].tolist()) == list(range(10))
    assert sorted(seq[10:20].tolist()) == list(range(10))
    assert not torch.equal(seq[:10], seq[10:20])  # a new order each epoch
    assert torch.equal(global_batch(10, 4, 7, 2), global_batch(10, 4, 7, 2))  # a function of it
    assert not torch.equal(global_batch(10, 4, 7, 0), global_batch(10, 4, 8, 0))  # the seed


def test_a_batch_split_into_shares_is_the_batch():
    """A world of W takes contiguous shares of the same global batch: concatenated, they are
    the batch one process trains on (so the items never depend on the world size)."""
    batch = global_batch(1000, 12, 0, 5)
    for world in (1, 2, 3, 4):
        shares = [batch.view(world, -1)[r] for r in range(world)]
        assert torch.equal(torch.cat(shares), batch)


def test_augmentations_depend_on_seed_and_position_only():
    x = torch.arange(2 * 6 * 8, dtype=torch.uint8).view(2, 6, 8)
    aug = Augment(random_crop=(4, 4), hflip=True)
    a = aug(x, item_generator(0, 17))
    assert a.shape == (2, 4, 4)
    assert torch.equal(a, aug(x, item_generator(0, 17)))
    outs = {aug(x, item_generator(0, p)).numpy().tobytes() for p in range(64)}
    assert len(outs) > 8  # places and flips vary with the position
    flips = sum(
        torch.equal(Augment(hflip=True)(x, item_generator(0, p)), x.flip(-1)) for p in range(400)
    )
    assert 150 < flips < 250  # about half
    assert Augment(random_crop=(4, 4)).center(x).shape == (2, 4, 4)
    with pytest.raises(Exception, match="larger than the training images"):
        Augment(random_crop=(7, 4)).check((2, 6, 8))


@pytest.fixture(scope="module")
def sources(mnist_pngs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    """The four file datasets over real files: MNIST PNGs as a folder and packed into tar
    shards by ``tok shards``' packer; 24 mp4 clips as a folder and as shards."""
    from conftest import moving_square

    from tok.media import write_video

    tmp = tmp_path_factory.mktemp("sources")
    clips = tmp / "clips"
    for i in range(24):
        write_video(clips / f"c{i:02d}.mp4", moving_square(4).roll(i, dims=-1), fps=4)
    pack_folder(mnist_pngs, out=tmp / "png-shards", per_shard=300, progress=False)
    pack_folder(clips, out=tmp / "clip-shards", per_shard=10, progress=False)
    return {
        "imagefolder": ImageFolder(path=str(mnist_pngs), channels=1),
        "imageshards": ImageShards(path=str(tmp / "png-shards"), channels=1),
        "videofolder": VideoFolder(path=str(clips), channels=1, frames=4),
        "videoshards": VideoShards(path=str(tmp / "clip-shards"), channels=1, frames=4),
    }


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["imagefolder", "imageshards", "videofolder", "videoshards"])
def test_streamed_batches_are_the_files_of_the_global_batch(sources, kind, workers):
    """Image and video folders and shards stream alike: the batches of steps 4–6 are the
    items of those global batches, read directly."""
    dataset = sources[kind]
    keys = dataset.keys("test")
    stream = Streamed(
        dataset, keys, split="test", batch_size=16, seed=3, augment=Augment(), step=4,
        workers=workers, pin_memory=False,
    )  # fmt: skip
    try:
        for step in (4, 5, 6):
            want = dataset.read("test", [keys[i] for i in global_batch(len(keys), 16, 3, step)])
            got = next(stream)
            assert got.shape == want.images.shape and torch.equal(got, want.images)
    finally:
        stream.close()


def digits(mnist_pngs: Path, dest: Path, n: int) -> Path:
    """A flat folder of ``n`` real MNIST PNGs (the 1,000 of the fixture, repeated)."""
    files = sorted(mnist_pngs.rglob("*.png"))
    dest.mkdir()
    for i in range(n):
        shutil.copyfile(files[i % len(files)], dest / f"{i:05d}.png")
    return dest


FOLDER = [
    *TINY,
    "model.channels=[8, 16]",
    "train.batch_size=8",
    "train.threads=1",
    "train.loader='stream'",
    "train.workers=2",
]


def folder_recipe(path: Path, out: Path, *extra: str):
    return load_recipe(
        RECIPE,
        [
            *FOLDER,
            "data.name='imagefolder'",
            f"data.path='{path}'",
            "data.channels=1",
            *extra,
            f"output.dir='{out}'",
        ],
    )


def test_a_streamed_run_resumes_exactly(mnist_pngs, tmp_path):
    """Streamed batches are a function of the seed and the step: stopped at step 12 and
    resumed, the run ends with the weights of one never stopped, bit for bit."""
    data = digits(mnist_pngs, tmp_path / "d", 300)
    sets = ("train.steps=24", "train.checkpoint_every=12", "train.random_crop=[24, 24]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)
        train(folder_recipe(data, tmp_path / "a", *sets), progress=False)
        train(folder_recipe(data, tmp_path / "b", *sets), progress=False, stop_after=12)
        train(folder_recipe(data, tmp_path / "b", *sets), progress=False, resume=True)
    a, b = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "a" / "tokenizer.json").read_text())
    assert config["input_shape"] == [1, 24, 24]  # the crop's size


PEAK_RSS = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if proc.returncode:
    sys.exit(proc.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_kib(cmd: list[str]) -> int:
    """The peak resident memory (KiB) of the largest process ``cmd`` started, itself or one
    of its DataLoader workers (a fresh parent, so nothing else is counted)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *cmd], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_streaming_memory_does_not_grow_with_the_dataset(mnist_pngs, tmp_path):
    """Peak memory training on 4,000 files stays within 10 % of training on 400."""
    mnist_dir()
    peaks = []
    for n in (400, 4000):
        data = digits(mnist_pngs, tmp_path / f"d{n}", n)
        args = ["train", str(RECIPE), "--no-progress"]
        sets = [*FOLDER, "data.name='imagefolder'", f"data.path='{data}'", "data.channels=1"]
        sets += [f"output.dir='{tmp_path / f'r{n}'}'"]
        args += [a for s in sets for a in ("--set", s)]
        peaks.append(peak_rss_kib([sys.executable, "-m", "tok", *args]))
    assert peaks[1] <= peaks[0] * 1.10, peaks
