"""tok.data.MovingMNIST, generated from the real MNIST digits ($TOK_DATA_DIR)."""

from __future__ import annotations

import pytest
import torch

from tok.data import MNIST, MovingMNIST
from tok.data.moving_mnist import DIGIT, _bounce
from tok.errors import DatasetError
from tok.registry import registry

SMALL = {"train_videos": 12, "test_videos": 6, "download": False}


@pytest.fixture(scope="module")
def mnist() -> dict[str, torch.Tensor]:
    ds = MNIST(download=False)
    return {split: ds.load(split).images[:, 0] for split in ("train", "test")}


def paste(digit: torch.Tensor, y: int, x: int, size: int) -> torch.Tensor:
    canvas = torch.zeros(size, size, dtype=torch.uint8)
    canvas[y : y + DIGIT, x : x + DIGIT] = digit
    return canvas


def test_registered_under_both_names():
    assert registry("datasets").get("movingmnist") is MovingMNIST
    assert registry("datasets").get("moving-mnist") is MovingMNIST


def test_shapes_keys_and_dtype():
    ds = MovingMNIST(**SMALL)
    assert ds.input_shape() == (1, 20, 64, 64)
    train = ds.load("train")
    assert train.images.shape == (12, 1, 20, 64, 64) and train.images.dtype == torch.uint8
    assert train.keys == ds.keys("train")
    assert (
        train.keys[0] == "movingmnist/train/00000" and train.keys[-1] == "movingmnist/train/00011"
    )
    assert len(ds.keys("test")) == 6
    picked = ds.read("train", ["movingmnist/train/00007", "movingmnist/train/00002"])
    assert torch.equal(picked.images, train.images[[7, 2]])
    rgb = MovingMNIST(channels=3, **SMALL)
    assert rgb.input_shape() == (3, 20, 64, 64)
    images = rgb.load("test").images
    assert images.shape == (6, 3, 20, 64, 64)
    assert torch.equal(images[:, 1:2], ds.load("test").images)


def test_frames_are_real_mnist_digits_of_the_split(mnist):
    """Every frame is exactly the max of the chosen digits pasted at their positions."""
    for digits in (1, 2):
        ds = MovingMNIST(digits=digits, **SMALL)
        for split in ("train", "test"):
            videos = ds.load(split).images[:, 0]
            which, ys, xs = ds._trajectories(split)
            for i in range(len(videos)):
                for t in (0, 7, 19):
                    expected = torch.zeros(64, 64, dtype=torch.uint8)
                    for j in range(digits):
                        pasted = paste(mnist[split][which[i, j]], ys[i, j, t], xs[i, j, t], 64)
                        expected = torch.maximum(expected, pasted)
                    assert torch.equal(videos[i, t], expected), (digits, split, i, t)
    one = MovingMNIST(digits=1, **SMALL).load("test").images.float()
    # a whole digit in every frame: its ink never leaves the canvas
    mass = one.sum(dim=(1, 3, 4))  # (n, t)
    assert torch.equal(mass, mass[:, :1].expand_as(mass))
    assert one.amax() == 255 and mass.min() > 40 * 255 and mass.max() < 300 * 255


def test_digits_move_and_bounce_inside_the_frame():
    ds = MovingMNIST(frames=200, **SMALL)
    _, ys, xs = ds._trajectories("train")
    limit = 64 - DIGIT
    for pos in (ys, xs):
        assert pos.min() >= 0 and pos.max() <= limit
        step = (pos[..., 1:] - pos[..., :-1]).abs()
        assert step.max() <= 5  # speed ≤ 4 px/frame, plus rounding
    assert (ys == 0).any() and (ys == limit).any() and (xs == 0).any() and (xs == limit).any()
    moving = (ys[..., 1:] != ys[..., :-1]) | (xs[..., 1:] != xs[..., :-1])
    assert moving.float().mean() > 0.9
    # the reflection itself: 10 → 38 at 7 px/frame with the wall at 36
    assert _bounce(torch.tensor([10.0]), torch.tensor([7.0]), 6, 36).tolist() == [
        [10, 17, 24, 31, 34, 27]
    ]


def test_deterministic_per_seed_and_frames_are_a_prefix():
    a = MovingMNIST(seed=3, **SMALL).load("train").images
    b = MovingMNIST(seed=3, **SMALL).load("train").images
    assert torch.equal(a, b)
    assert not torch.equal(a, MovingMNIST(seed=4, **SMALL).load("train").images)
    short = MovingMNIST(seed=3, frames=17, **SMALL).load("train").images
    assert torch.equal(short, a[:, :, :17])
    # train and test differ, and the test split does not depend on the train size
    test = MovingMNIST(seed=3, **SMALL).load("test").images
    assert torch.equal(
        test, MovingMNIST(seed=3, **{**SMALL, "train_videos": 3}).load("test").images
    )


def test_bad_keys_splits_and_options_are_dataset_errors():
    ds = MovingMNIST(**SMALL)
    for key in ["movingmnist/train/00012", "movingmnist/test/00000", "mnist/train/00000", "x"]:
        with pytest.raises(DatasetError, match="movingmnist/train/00011"):
            ds.read("train", [key])
    with pytest.raises(DatasetError, match="'valid'"):
        ds.keys("valid")
    for options, word in [
        ({"frames": 0}, "frames"),
        ({"size": 20}, "size"),
        ({"digits": 0}, "digits"),
        ({"train_videos": 0}, "train_videos"),
        ({"speed": [3.0, 1.0]}, "speed"),
        ({"channels": 2}, "channels"),
    ]:
        with pytest.raises(DatasetError, match=word):
            MovingMNIST(**{**SMALL, **options})
