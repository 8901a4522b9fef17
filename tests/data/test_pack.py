"""tok.data.pack.pack_folder (``tok shards``): real image and video folders written here,
packed into tar shards, and read back by the ``webdataset`` package and by tok's datasets."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from conftest import moving_square, noise_picture

from tok.data import ImageFolder, ImageShards, ImageSkippedWarning, VideoFolder, VideoShards
from tok.data.pack import pack_folder
from tok.errors import DatasetError, FileAccessError
from tok.media import write_video

LONG = "a-photo-name-longer-than-the-100-bytes-a-plain-ustar-header-holds-" + "x" * 60


def save(path: Path, fmt: str, h: int = 12, w: int = 16, seed: int = 0) -> Path:
    """A picture of deterministic noise saved as ``fmt`` at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_picture(seed, h, w).save(path, format=fmt)
    return path


#: shard key → the source file (relative to the folder packed), for every readable photo
PHOTOS = {
    "train": {
        "cats/a": "train/cats/a.png",
        "cats/b": "train/cats/b.JPG",
        f"dogs/{LONG}": f"train/dogs/{LONG}.png",
        "dogs/c": "train/dogs/c.webp",
        "dogs/v1_2": "train/dogs/v1.2.png",  # a dot in a file name: a webdataset key cannot hold it
        "top": "train/top.bmp",  # no subfolder: no class
    },
    "test": {"cats/d": "test/cats/d.png", "dogs/e": "test/dogs/e.gif"},
}


@pytest.fixture
def photos(tmp_path) -> Path:
    """train/ and test/ folders of classes, in five formats and two sizes, a text file and
    a truncated PNG."""
    folder = tmp_path / "photos"
    formats = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF"}
    for i, rel in enumerate(sorted(r for split in PHOTOS.values() for r in split.values())):
        size = (20, 10) if i % 2 else (12, 16)
        save(folder / rel, formats[Path(rel).suffix.lower()], *size, seed=i)
    (folder / "train" / "notes.txt").write_text("not a picture")
    data = (folder / "train" / "cats" / "a.png").read_bytes()
    (folder / "train" / "cats" / "broken.png").write_bytes(data[:60])
    return folder


def assert_same_samples(folder, shards) -> None:
    """``shards`` (read from the packed folder) hold the items of ``folder``, in key order."""
    assert shards.keys == sorted(folder.keys)
    order = [folder.keys.index(k) for k in shards.keys]
    assert torch.equal(shards.images, folder.images[order])


def pack(src: Path, out: Path, per_shard: int = 1000) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSkippedWarning)
        return pack_folder(src, out=out, per_shard=per_shard, progress=False)


def test_webdataset_reads_every_key_and_every_byte_of_the_sources(photos, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "shards"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = pack_folder(photos, out=out, per_shard=4, progress=False)
    assert result == {"samples": 8, "shards": 3, "media": "image", "splits": ["train", "test"]}
    [message] = [str(w.message) for w in record if issubclass(w.category, ImageSkippedWarning)]
    assert "notes.txt (not an image file)" in message and "cats/broken.png (cannot" in message
    for split, expected in PHOTOS.items():
        urls = sorted(str(p) for p in (out / split).iterdir())
        samples = list(wds.WebDataset(urls, shardshuffle=False))
        assert [s["__key__"] for s in samples] == sorted(expected)
        for sample in samples:
            rel = expected[sample["__key__"]]
            ext = Path(rel).suffix.lower()[1:]
            assert sample[ext] == (photos / rel).read_bytes(), rel  # the original bytes
            assert json.loads(sample["json"]) == {"path": rel}
            parts = rel.split("/")
            assert sample.get("cls") == (parts[1].encode() if len(parts) > 2 else None)
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]


def test_packing_again_gives_byte_identical_shards(photos, tmp_path):
    first = pack(photos, tmp_path / "one", per_shard=3)
    for p in photos.rglob("*"):  # new times and modes on the sources change nothing
        os.utime(p, (1e9, 1e9))
    old = os.umask(0o077)
    try:
        again = pack(photos, tmp_path / "two", per_shard=3)
    finally:
        os.umask(old)
    assert first == again
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.tar"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.tar"))
    assert one == two and len(one) == first["shards"] == 3
    for rel in one:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    with tarfile.open(tmp_path / "one" / one[0]) as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }


def test_image_shards_read_the_pixels_the_folder_gives(mnist_pngs, tmp_path):
    src = tmp_path / "digits"
    for split, files in (("train", slice(0, 30)), ("test", slice(30, 50))):
        for p in sorted(mnist_pngs.rglob("*.png"))[files]:
            (src / split / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, src / split / p.parent.name / p.name)
    pack(src, tmp_path / "shards", per_shard=7)
    for split in ("train", "test"):
        folder = ImageFolder(path=str(src), channels=1).load(split)
        shards = ImageShards(path=str(tmp_path / "shards"), channels=1).load(split)
        assert len(shards.keys) == (30, 20)[split == "test"]
        assert_same_samples(folder, shards)


def test_names_of_every_kind_survive_packing(mnist_pngs, tmp_path):
    """Spaces, Unicode, bytes that are not UTF-8, a 240-byte name (PAX records in the tar)."""
    names = [
        b"with space.png",
        "\u00fcmlaut-\u6570\u5b57.png".encode(),
        b"bad\xff\xfename.png",
        b"k" * 240 + b".png",
        b"sub dir \xe9/inner.png",
    ]
    src = tmp_path / "odd"
    for name, digit in zip(names, sorted(mnist_pngs.rglob("*.png")), strict=False):
        target = Path(os.fsdecode(os.path.join(os.fsencode(src), name)))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(digit, target)
    pack(src, tmp_path / "shards")
    folder = ImageFolder(path=str(src), channels=1).load("test")
    shards = ImageShards(path=str(tmp_path / "shards"), channels=1).load("test")
    assert len(shards.keys) == 5 and "bad\udcff\udcfename" in shards.keys
    assert_same_samples(folder, shards)


def test_video_folders_pack_and_video_shards_read_them_back(tmp_path):
    src = tmp_path / "clips"
    write_video(src / "squares" / "a.mp4", moving_square(8), fps=8)
    write_video(src / "squares" / "b.gif", moving_square(8, c=3), fps=8)
    write_video(src / "c.gif", moving_square(9), fps=8)
    (src / "squares" / "b.json").write_text("{}")  # not a video: skipped
    result = pack(src, tmp_path / "shards")
    assert result == {"samples": 3, "shards": 1, "media": "video", "splits": []}
    with pytest.warns(ImageSkippedWarning, match=r"squares/b.json \(not a video file\)"):
        folder = VideoFolder(path=str(src), channels=1, frames=8).load("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageSkippedWarning)  # the shards hold nothing to skip
        shards = VideoShards(path=str(tmp_path / "shards"), channels=1, frames=8).load("test")
    assert folder.keys == ["c", "squares/a", "squares/b"]
    assert_same_samples(folder, shards)


def test_keys_that_collide_once_dots_are_replaced_are_an_error(tmp_path):
    save(tmp_path / "src" / "a.b.png", "PNG")
    save(tmp_path / "src" / "a_b.png", "PNG")
    with pytest.raises(DatasetError) as info:
        pack(tmp_path / "src", tmp_path / "shards")
    assert "a.b.png and a_b.png would both be the sample 'a_b'" in str(info.value)
    assert not (tmp_path / "shards").exists()


def test_names_webdataset_skips_are_an_error(tmp_path):
    save(tmp_path / "src" / "__meta__" / "a.png", "PNG")
    with pytest.raises(DatasetError, match="__meta__/a.png cannot be a webdataset sample"):
        pack(tmp_path / "src", tmp_path / "shards")


def test_a_failed_pack_leaves_no_shards(photos, tmp_path, monkeypatch):
    """A write the OS refuses part way (the fourth member: in the second shard) is one
    FileAccessError, and the shards written before it are removed."""
    addfile, calls = tarfile.TarFile.addfile, []

    def full_disk(self, info, fileobj=None):
        calls.append(info.name)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return addfile(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", full_disk)
    with pytest.raises(FileAccessError, match="No space left on device"):
        pack(photos, tmp_path / "shards", per_shard=1)
    assert not (tmp_path / "shards").exists()
    (tmp_path / "empty").mkdir()
    calls.clear()
    with pytest.raises(FileAccessError):
        pack(photos, tmp_path / "empty", per_shard=1)
    assert list((tmp_path / "empty").iterdir()) == []  # the user's empty folder stays


def test_a_file_at_the_top_of_an_unsplit_folder_has_no_class(tmp_path):
    """A file at the top of an unsplit folder: no class, its path in KEY.json."""
    src = save(tmp_path / "src" / "Photo.PNG", "PNG")
    pack(tmp_path / "src", tmp_path / "shards")
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        names = tar.getnames()
        data = {n: tar.extractfile(n).read() for n in names}
    assert names == ["Photo.png", "Photo.json"]
    assert data["Photo.png"] == src.read_bytes()
    assert json.loads(data["Photo.json"]) == {"path": "Photo.PNG"}
