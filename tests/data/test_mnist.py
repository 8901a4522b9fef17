"""tok.data.MNIST on the real files ($TOK_DATA_DIR) and without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from tok.data import MNIST
from tok.data.mnist import FILES
from tok.errors import DatasetError, DatasetMissingError


@pytest.fixture(scope="module")
def root() -> Path:
    root = os.environ.get("TOK_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.fail("set TOK_DATA_DIR to the folder holding MNIST/raw (the real MNIST files)")
    return Path(root)


@pytest.fixture(scope="module")
def reference(root):
    return {
        split: torchvision.datasets.MNIST(str(root), train=split == "train", download=False).data
        for split in ("train", "test")
    }


def test_missing_offline_names_the_folder_and_the_files(tmp_path):
    ds = MNIST(root=str(tmp_path), download=False)
    with pytest.raises(DatasetMissingError) as info:
        ds.keys("test")
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in FILES:
        assert name in message
    assert "TOK_DATA_DIR" in message and "download" in message
    assert isinstance(info.value, DatasetError)


def test_missing_offline_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TOK_DATA_DIR", str(tmp_path / "nowhere"))
    ds = MNIST(download=False)
    assert ds.root == tmp_path / "nowhere"
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "nowhere" / "MNIST" / "raw")):
        ds.load("train")


@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_loads_every_image_as_uint8(root, reference, split, n):
    ds = MNIST(root=str(root), download=False)
    samples = ds.load(split)
    assert samples.images.shape == (n, 1, 28, 28)
    assert samples.images.dtype == torch.uint8
    assert torch.equal(samples.images[:, 0], reference[split])
    assert len(samples) == n
    assert samples.keys[0] == f"mnist/{split}/00000"
    assert samples.keys[-1] == f"mnist/{split}/{n - 1:05d}"
    assert len(set(samples.keys)) == n
    assert ds.keys(split) == samples.keys
    assert ds.input_shape() == (1, 28, 28)


def test_read_returns_the_keys_in_the_given_order(root, reference):
    ds = MNIST(root=str(root), download=False)
    keys = ["mnist/test/00042", "mnist/test/00007", "mnist/test/09999"]
    samples = ds.read("test", keys)
    assert samples.keys == keys
    assert torch.equal(samples.images[:, 0], reference["test"][[42, 7, 9999]])


@pytest.mark.parametrize("key", ["mnist/test/10000", "mnist/train/00001", "7", "mnist/test/-0001"])
def test_read_of_an_unknown_key_names_it(root, key):
    ds = MNIST(root=str(root), download=False)
    with pytest.raises(DatasetError, match=key):
        ds.read("test", [key])


def test_three_channels_repeat_the_gray_value(root, reference):
    ds = MNIST(root=str(root), download=False, channels=3)
    samples = ds.read("test", ["mnist/test/00000", "mnist/test/00001"])
    assert samples.images.shape == (2, 3, 28, 28) and samples.images.dtype == torch.uint8
    for c in range(3):
        assert torch.equal(samples.images[:, c], reference["test"][:2])
    assert ds.input_shape() == (3, 28, 28)
    assert ds.load("test").images.shape == (10000, 3, 28, 28)


def test_bad_split_and_channels(root):
    ds = MNIST(root=str(root), download=False)
    with pytest.raises(DatasetError, match="'val'"):
        ds.keys("val")
    with pytest.raises(DatasetError, match="channels"):
        MNIST(root=str(root), download=False, channels=2)


def test_labels_are_the_digits_of_the_keys_in_their_order(root):
    ds = MNIST(root=str(root), download=False)
    targets = torchvision.datasets.MNIST(str(root), train=False, download=False).targets
    keys = ["mnist/test/00042", "mnist/test/00007", "mnist/test/09999"]
    labels = ds.labels("test", keys)
    assert labels.dtype == torch.int64 and torch.equal(labels, targets[[42, 7, 9999]])
    assert ds.labels("test", []).shape == (0,)
    with pytest.raises(DatasetError, match="mnist/test/10000"):
        ds.labels("test", ["mnist/test/10000"])


def test_a_dataset_without_labels_says_none(root):
    from tok.data import Dataset

    assert Dataset().labels("test", ["a"]) is None
