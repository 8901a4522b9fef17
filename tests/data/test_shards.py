"""tok.data.ImageShards and the shard reading it shares with VideoShards (tok.data.shards):
real PNG, JPEG, WebP, BMP, TIFF and GIF files written here, put into ``.tar`` shards and read
back, pixel for pixel as the files themselves read."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from conftest import noise_picture

from tok.data import ImageShards, ImageSkippedWarning, VideoShards
from tok.data.shards import split_member
from tok.errors import DatasetError, ImageError
from tok.media import read_image
from tok.registry import registry

FORMATS = {"a.png": "PNG", "b.JPG": "JPEG", "c.webp": "WEBP", "d.bmp": "BMP", "e.tif": "TIFF"}


@pytest.fixture
def files(tmp_path) -> Path:
    """One picture in each format tok reads (a GIF too), 12x16."""
    folder = tmp_path / "files"
    folder.mkdir()
    for i, (name, fmt) in enumerate(FORMATS.items()):
        noise_picture(i).save(
            folder / name, format=fmt, **({"lossless": True} if fmt == "WEBP" else {})
        )
    noise_picture(9).convert("P").save(folder / "f.gif")
    return folder


def tar_of(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar file holding ``members`` (name, bytes) in this order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def skip_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ImageSkippedWarning)]


@pytest.fixture
def shards(files, tmp_path) -> Path:
    """Two shards: images with .cls/.json companions, a truncated PNG, a sample with only a
    .json, a member ``z.b.png`` (webdataset's key ``z``, field ``b.png``: no image)."""
    data = {p.name: p.read_bytes() for p in files.iterdir()}
    folder = tmp_path / "shards"
    tar_of(folder / "shard-000.tar", [
        ("img/a.png", data["a.png"]), ("img/a.cls", b"3"), ("img/a.json", b"{}"),
        ("img/b.JPG", data["b.JPG"]), ("img/c.webp", data["c.webp"]),
    ])  # fmt: skip
    tar_of(folder / "shard-001.tar", [
        ("img/d.bmp", data["d.bmp"]), ("img/e.tif", data["e.tif"]), ("img/f.gif", data["f.gif"]),
        ("img/x.png", data["a.png"][:60]), ("img/y.json", b"{}"), ("img/z.b.png", data["a.png"]),
    ])  # fmt: skip
    return folder


def test_image_shards_read_every_format_as_its_file_reads(shards, files):
    ds = ImageShards(path=str(shards), channels=3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        samples = ds.load("train")
    assert samples.keys == ["img/a", "img/b", "img/c", "img/d", "img/e", "img/f"]
    assert samples.images.dtype == torch.uint8 and samples.images.shape == (6, 3, 12, 16)
    for row, path in zip(samples.images, sorted(files.iterdir()), strict=True):
        assert torch.equal(row, read_image(path, channels=3)), path.name
    [message] = skip_warnings(record)
    assert "shard-001.tar:img/x.png (cannot decode" in message
    assert "shard-001.tar:img/y.json (a sample without an image)" in message
    assert "shard-001.tar:img/z.b.png (a sample without an image)" in message
    assert "\n" not in message
    gray = ImageShards(path=str(shards), channels=1).read("test", ["img/e"]).images
    assert torch.equal(gray[0], read_image(files / "e.tif", channels=1))
    # one shard on its own serves every split
    assert ImageShards(path=str(shards / "shard-000.tar")).keys("test") == [
        "img/a",
        "img/b",
        "img/c",
    ]


def test_each_image_is_read_at_its_offset_without_another_pass_over_the_shard(
    shards, files, monkeypatch
):
    ds = ImageShards(path=str(shards), channels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSkippedWarning)
        keys = ds.keys("test")  # lists the shards: their headers, once

    def no_tar(*args, **kwargs):
        raise AssertionError("a shard was opened as a tar file again to read one image")

    monkeypatch.setattr(tarfile, "open", no_tar)
    samples = ds.read("test", [keys[-1], keys[0]])
    assert samples.keys == ["img/f", "img/a"]
    assert torch.equal(samples.images[1], read_image(files / "a.png", channels=3))


def test_two_images_with_one_key_are_an_error(files, tmp_path):
    png, jpg = (files / "a.png").read_bytes(), (files / "b.JPG").read_bytes()
    shard = tar_of(tmp_path / "s.tar", [("k.png", png), ("k.jpg", jpg)])
    with pytest.raises(DatasetError) as info:
        ImageShards(path=str(shard)).keys("test")
    assert "s.tar:k.png and s.tar:k.jpg" in str(info.value) and "'k'" in str(info.value)


def test_member_paths_with_dotdot_are_never_read(files, tmp_path):
    png = (files / "a.png").read_bytes()
    shard = tar_of(tmp_path / "s.tar", [("../up.png", png), ("a/../b.png", png), ("ok.png", png)])
    assert ImageShards(path=str(shard)).keys("test") == ["ok"]
    assert split_member("../up.png") is None and split_member("a/../b.png") is None


@pytest.mark.parametrize(
    "name",
    [
        "a.png",
        "a.b.png",
        "dir/a.png",
        "./000001.png",
        "v1.2/x.JPG",
        "._a.png",
        "noext",
        "d/._x.gif",
    ],
)
def test_split_member_is_webdatasets_base_plus_ext(name):
    tariterators = pytest.importorskip("webdataset.tariterators")
    key, field = tariterators.base_plus_ext(name)
    assert split_member(name) == ((key, field) if key is not None else None)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
def test_keys_of_a_folder_tarred_by_tar_are_webdatasets(files, tmp_path):
    wds = pytest.importorskip("webdataset")
    (files / "sub").mkdir()
    shutil.copy(files / "a.png", files / "sub" / "000001.png")
    (files / "sub" / "000001.json").write_text("{}")
    shard = tmp_path / "t.tar"
    made = subprocess.run(["tar", "-C", str(files), "-cf", str(shard), "."], capture_output=True)
    assert made.returncode == 0, made.stderr
    fields = {".png", ".jpg", ".webp", ".bmp", ".tif", ".gif"}
    theirs = [
        s["__key__"]
        for s in wds.WebDataset(str(shard), shardshuffle=False)
        if {f".{k.lower()}" for k in s} & fields
    ]
    ours = ImageShards(path=str(shard)).keys("test")
    assert sorted(ours) == sorted(theirs) and "./sub/000001" in ours and len(ours) == 7


def test_size_policy_and_strict(files, tmp_path):
    small = io.BytesIO()
    noise_picture(5, 8, 8).save(small, format="PNG")
    png = (files / "a.png").read_bytes()
    shard = tar_of(tmp_path / "s.tar", [("a.png", png), ("b.png", small.getvalue())])
    with pytest.raises(ImageError, match=r"image s.tar:b.png is 8x8 but s.tar:a.png is 12x16"):
        ImageShards(path=str(shard)).keys("test")
    ds = ImageShards(path=str(shard), size=[6, 6], resize="center-crop")
    assert ds.load("test").images.shape == (2, 3, 6, 6) and ds.input_shape() == (3, 6, 6)
    broken = tar_of(tmp_path / "t.tar", [("a.png", png), ("b.png", png[:50])])
    with pytest.raises(ImageError, match="t.tar:b.png"):
        ImageShards(path=str(broken), strict=True).keys("test")
    with pytest.raises(DatasetError, match="image shards channels must be 1 or 3"):
        ImageShards(path=str(shard), channels=2)


def test_shards_without_images(files, tmp_path):
    shard = tar_of(tmp_path / "s.tar", [("a.json", b"{}")])
    with warnings.catch_warnings(), pytest.raises(DatasetError, match="no images in the .tar"):
        warnings.simplefilter("ignore")
        ImageShards(path=str(shard)).keys("test")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageShards(path=str(tmp_path / "nope")).keys("test")


def test_registered_for_tar_files_of_images():
    assert registry("datasets").get("imageshards") is ImageShards
    assert ImageShards.source_extensions == VideoShards.source_extensions == (".tar",)
    assert (ImageShards.media, VideoShards.media) == ("image", "video")
    assert ImageShards.supplied_args == ("channels", "size")
