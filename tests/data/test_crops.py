"""Tests for tok.data.crops: the image_crops dataset of fixed crops of real photos."""

from __future__ import annotations

import pytest
import torch
from conftest import photos_dir
from PIL import Image

from tok.components import build
from tok.data import ImageCrops
from tok.errors import DatasetError
from tok.media import read_image


def test_crops_are_drawn_once_from_the_seed_spread_over_the_photos_and_cut_exactly():
    data = photos_dir()  # fails clearly without $TOK_DATA_DIR/photos
    a = ImageCrops(path="photos", train_crops=90, test_crops=22, size=[48, 64])
    b = build(
        "datasets",
        "image_crops",
        {"path": str(data), "train_crops": 90, "test_crops": 22, "size": [48, 64]},
    )
    assert a.keys("train") == b.keys("train") and len(a.keys("train")) == 90
    test = a.keys("test")
    photos = sorted(p.stem for p in (data / "test").iterdir())
    assert sorted({k.split("@")[0] for k in test}) == photos  # 22 crops: each photo twice
    assert all(sum(k.startswith(p + "@") for k in test) == 2 for p in photos)
    assert not set(a.keys("train")) & set(test)
    other = ImageCrops(path="photos", test_crops=22, seed=1)
    assert other.keys("test") != test
    samples = a.read("test", test[:3])
    assert samples.images.shape == (3, 3, 48, 64) and samples.images.dtype == torch.uint8
    name, _, at = test[0].partition("@")
    top, left = map(int, at.split(","))
    file = next((data / "test").glob(name + ".*"))
    whole = read_image(file, channels=3)
    assert torch.equal(samples.images[0], whole[:, top : top + 48, left : left + 64])
    assert a.input_shape() == (3, 48, 64)


def test_a_relative_path_is_found_in_the_data_root_and_bad_crops_are_named(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        (tmp_path / "pics" / split).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(tmp_path / "pics" / split / f"p{i}.png")
    crops = ImageCrops(path="pics", root=str(tmp_path), size=[16, 16], test_crops=3)
    assert len(crops.read("test", crops.keys("test")).images) == 3
    with pytest.raises(DatasetError, match="outside its 30x40 photo"):
        crops.read("test", ["p0@20,0"])
    with pytest.raises(DatasetError, match="no crop 'nope@1,1'"):
        crops.read("test", ["nope@1,1"])
    small = ImageCrops(path="pics", root=str(tmp_path), size=[32, 32])
    with pytest.raises(DatasetError, match="p0.png is 30x40, smaller than the crop size 32x32"):
        small.keys("train")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageCrops(path="elsewhere", root=str(tmp_path)).keys("train")
