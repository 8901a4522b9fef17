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


# Fashion-MNIST: MNIST's reader with FashionMNIST/raw, torchvision's class and its own keys


def test_fashion_mnist_is_torchvisions_fashion_mnist_with_its_own_keys(root):
    from tok.data import FashionMNIST

    if not (root / "FashionMNIST" / "raw").is_dir():
        pytest.fail("TOK_DATA_DIR must hold FashionMNIST/raw (the real Fashion-MNIST files)")
    ref = torchvision.datasets.FashionMNIST(str(root), train=False, download=False)
    ds = FashionMNIST(root=str(root), download=False)
    samples = ds.load("test")
    assert samples.images.shape == (10000, 1, 28, 28) and samples.images.dtype == torch.uint8
    assert torch.equal(samples.images[:, 0], ref.data)
    assert samples.keys[0] == "fashionmnist/test/00000" and len(ds.keys("train")) == 60000
    # not the digits: the same reader, another dataset
    assert not torch.equal(samples.images[:, 0], MNIST(root=str(root)).images("test")[:, 0])
    keys = ["fashionmnist/test/00042", "fashionmnist/test/00007"]
    assert torch.equal(ds.read("test", keys).images[:, 0], ref.data[[42, 7]])
    assert torch.equal(ds.labels("test", keys), ref.targets[[42, 7]])
    with pytest.raises(
        DatasetError, match="no Fashion-MNIST test image with key 'mnist/test/00042'"
    ):
        ds.read("test", ["mnist/test/00042"])


def test_fashion_mnist_missing_offline_names_its_folder(tmp_path):
    from tok.data import FashionMNIST

    with pytest.raises(DatasetMissingError) as info:
        FashionMNIST(root=str(tmp_path), download=False).keys("test")
    message = str(info.value)
    assert message.startswith(f"Fashion-MNIST is not in {tmp_path / 'FashionMNIST' / 'raw'}")
    assert all(name in message for name in FILES)


def test_fashion_mnist_is_the_registered_fashionmnist_dataset():
    import tok
    from tok.data import FashionMNIST

    assert tok.get_dataset("fashionmnist") is FashionMNIST
    assert tok.get_dataset("fashion-mnist") is FashionMNIST
