"""tok.data.VideoCrops on the real clips in $TOK_DATA_DIR/videos (two small ones: the tests
decode carphone_pristine.mp4, 176x144 at 29.97 fps, and tree.avi, 320x240 with 68 frames
spread over 29.5 s)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import tok
from tok.data import VideoCrops
from tok.data.batches import Augment, Streamed
from tok.errors import DatasetError, DatasetMissingError
from tok.media import read_video


@pytest.fixture(scope="module")
def videos() -> Path:
    root = os.environ.get("TOK_DATA_DIR")
    if not root or not (Path(root) / "videos" / "carphone_pristine.mp4").is_file():
        pytest.fail("set TOK_DATA_DIR to the folder holding videos/ (the real clips)")
    return Path(root) / "videos"


def crops(videos: Path, **options) -> VideoCrops:
    args = {
        "train_clips": ["carphone_pristine.mp4"],
        "test_clips": ["tree.avi"],
        "root": str(videos.parent),
        "fps": 10,
        "frames": 5,
        "size": [32, 48],
        "short_side": 72,
        "train_crops": 40,
    }
    return VideoCrops(**(args | options))


@pytest.fixture(scope="module")
def carphone(videos) -> torch.Tensor:
    """The clip as VideoCrops sees it: 10 fps, short side 72 — (40, 3, 72, 88)."""
    return read_video(videos / "carphone_pristine.mp4", fps=10, short_side=72)


def test_a_crop_is_the_window_its_key_names(videos, carphone):
    assert carphone.shape == (40, 3, 72, 88)  # 4 s at 10 fps; 176x144 halved
    ds = crops(videos)
    keys = ["carphone_pristine@t=35,y=40,x=40", "carphone_pristine@t=3,y=0,x=7"]
    samples = ds.read("train", keys)
    assert samples.keys == keys
    assert samples.images.shape == (2, 3, 5, 32, 48) and samples.images.dtype == torch.uint8
    want = carphone[35:40, :, 40:72, 40:88].permute(1, 0, 2, 3)  # c t h w
    assert torch.equal(samples.images[0], want)
    assert torch.equal(samples.images[1], carphone[3:8, :, 0:32, 7:55].permute(1, 0, 2, 3))
    assert ds.input_shape() == (3, 5, 32, 48)
    gray = crops(videos, channels=1).read("train", keys[:1]).images
    assert gray.shape == (1, 1, 5, 32, 48)


def test_training_keys_are_random_crops_fixed_by_the_seed(videos):
    keys = crops(videos).keys("train")
    assert len(keys) == 40 and len(set(keys)) > 30
    assert keys == crops(videos).keys("train")  # the same seed: the same crops
    assert keys != crops(videos, seed=1).keys("train")
    starts = [tuple(int(p.split("=")[1]) for p in k.split("@")[1].split(",")) for k in keys]
    t, y, x = zip(*starts, strict=True)
    # every position where a crop fits (40 - 5, 72 - 32, 88 - 48), and spread over them
    assert min(t) >= 0 and max(t) <= 35 and max(y) <= 40 and max(x) <= 40
    assert max(t) - min(t) > 20 and max(x) - min(x) > 20
    ds = crops(videos)
    assert ds.read("train", keys).images.shape == (40, 3, 5, 32, 48)


def test_every_training_clip_has_an_equal_share(videos):
    ds = crops(videos, train_clips=["carphone_pristine.mp4", "tree.avi"], test_clips=["x.mp4"])
    names = [k.split("@")[0] for k in ds.keys("train")]
    assert names[:4] == ["carphone_pristine", "tree", "carphone_pristine", "tree"]
    assert names.count("tree") == names.count("carphone_pristine") == 20


def test_test_keys_are_a_fixed_grid(videos):
    ds = crops(videos, test_stride=[10, 20, 30])
    tree = ds.clip("test", "tree")
    # tree.avi's 68 frames are spread over 29.5 s: 296 frames at 10 fps, 72x96
    assert tree.shape == (296, 3, 72, 96)
    keys = ds.keys("test")
    ts, ys, xs = range(0, 292, 10), range(0, 41, 20), range(0, 49, 30)
    assert keys == [f"tree@t={t},y={y},x={x}" for t in ts for y in ys for x in xs]
    assert keys == crops(videos, test_stride=[10, 20, 30], seed=5).keys("test")
    # default stride: the crop's own shape, crops that do not overlap
    assert crops(videos).keys("test")[:3] == [
        "tree@t=0,y=0,x=0",
        "tree@t=0,y=0,x=48",
        "tree@t=0,y=32,x=0",
    ]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("carphone_pristine/00001", "names no crop"),
        ("carphone_pristine@t=36,y=0,x=0", "is outside clip 'carphone_pristine'"),
        ("carphone_pristine@t=0,y=0,x=41", "x < 41"),
        ("tree@t=0,y=0,x=0", "has no clip 'tree'"),  # a test clip asked of the train split
    ],
)
def test_a_key_that_names_no_crop_is_an_error_naming_it(videos, key, message):
    with pytest.raises(DatasetError, match=message) as info:
        crops(videos).read("train", [key])
    assert key.split("@")[0] in str(info.value)


def test_bad_options_are_reported_together(videos):
    with pytest.raises(DatasetError) as info:
        VideoCrops(
            train_clips=["a.mp4", "b.mp4"], test_clips=["b.mp4"], fps=0, frames=0,
            size=[64], channels=2,
        )  # fmt: skip
    message = str(info.value)
    for part in ("b.mp4 is in both", "fps must be positive", "frames must be", "size must be",
                 "channels must be 1 or 3"):  # fmt: skip
        assert part in message


def test_a_missing_clip_names_the_file_and_the_option(videos, tmp_path):
    ds = crops(videos, root=str(tmp_path))
    with pytest.raises(DatasetMissingError, match="data.train_clips") as info:
        ds.keys("train")
    assert str(tmp_path / "videos" / "carphone_pristine.mp4") in str(info.value)


def test_a_clip_smaller_than_a_crop_is_an_error(videos, tmp_path):
    shutil.copy(videos / "carphone_pristine.mp4", tmp_path / "short.mp4")
    ds = crops(videos, path=str(tmp_path), train_clips=["short.mp4"], frames=41)
    with pytest.raises(DatasetError, match="40 frames of 72x88 at 10 fps.*41 frames of 32x48"):
        ds.keys("train")


def test_streamed_batches_are_the_crops_of_their_keys(videos):
    ds = crops(videos)
    keys = ds.keys("train")
    batches = Streamed(
        ds, keys, split="train", batch_size=4, seed=0, augment=Augment(), step=0, workers=0,
        pin_memory=False,
    )  # fmt: skip
    first = next(batches)
    assert first.shape == (4, 3, 5, 32, 48)
    from tok.data.batches import global_batch

    want = ds.read("train", [keys[i] for i in global_batch(len(keys), 4, 0, 0)]).images
    assert torch.equal(first, want)
    batches.close()


def test_registered_as_video_crops():
    assert tok.get_dataset("video_crops") is VideoCrops


def test_a_resumed_loader_gives_the_same_crops_as_one_that_ran_through(videos):
    """Resume needs no loader state: batch k is a function of the seed and k; a worker
    process (decoding its own copy of the clips) reads the same crops as this process."""
    ds = crops(videos)
    keys = ds.keys("train")
    order = {"split": "train", "batch_size": 4, "seed": 3, "augment": Augment(hflip=True)}
    through = Streamed(ds, keys, **order, step=0, workers=0, pin_memory=False)
    batches = [next(through) for _ in range(3)]
    through.close()
    resumed = Streamed(crops(videos), keys, **order, step=2, workers=1, pin_memory=False)
    assert torch.equal(next(resumed), batches[2])
    resumed.close()
    assert not torch.equal(batches[0], batches[1])
