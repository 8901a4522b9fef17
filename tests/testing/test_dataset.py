"""tok.testing.check_dataset: every registered dataset passes it on real data (MNIST,
Fashion-MNIST, PNGs of MNIST digits, Moving MNIST, real mp4/GIF files and .tar shards of
them, crops of the real photos and clips of $TOK_DATA_DIR), and each
deliberately broken dataset below fails it, naming the promise."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import mnist_dir

import tok
from tok import hookimpl
from tok.data import MNIST, MovingMNIST, Samples
from tok.data.pack import pack_folder
from tok.media import write_video
from tok.registry import unregister_plugin
from tok.testing import check_dataset

# real data for each registered dataset ------------------------------------------------


def _split_pngs(pngs: Path, out: Path, per_split: int = 12) -> Path:
    """A folder with ``train/`` and ``test/`` subfolders of real MNIST PNGs."""
    files = sorted(pngs.rglob("*.png"))
    for split, chosen in (("train", files[:per_split]), ("test", files[-per_split:])):
        for f in chosen:
            target = out / split / f.relative_to(pngs)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    return out


def _moving_mnist_clips(split: str, n: int = 3) -> list[torch.Tensor]:
    """``n`` real Moving MNIST videos as uint8 frames ``(t, 1, h, w)`` (5 frames of 32×32)."""
    ds = MovingMNIST(
        root=str(mnist_dir()), frames=5, size=32, train_videos=n, test_videos=n, download=False
    )
    return [v.permute(1, 0, 2, 3).contiguous() for v in ds.load(split).images]


def _video_files(out: Path) -> Path:
    """``train/`` and ``test/`` subfolders, each with two mp4 files and a GIF."""
    for split in ("train", "test"):
        (out / split).mkdir(parents=True)
        for i, clip in enumerate(_moving_mnist_clips(split)):
            write_video(out / split / f"clip{i}.{'gif' if i == 1 else 'mp4'}", clip, fps=5)
    return out


def _video_shards(out: Path) -> Path:
    """``train/shard-000.tar`` and ``test/shard-000.tar`` holding the files of _video_files,
    one webdataset sample each (with a ``.json`` member beside the video)."""
    files = _video_files(out / "files")
    for split in ("train", "test"):
        (out / "shards" / split).mkdir(parents=True)
        with tarfile.open(out / "shards" / split / "shard-000.tar", "w") as tar:
            for f in sorted((files / split).iterdir()):
                for name, data in (
                    (f"clips/{f.stem}{f.suffix}", f.read_bytes()),
                    (f"clips/{f.stem}.json", b"{}"),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return out / "shards"


def _image_shards(pngs: Path, out: Path) -> Path:
    """``train/`` and ``test/`` shards of real MNIST PNGs, as ``tok shards`` packs them."""
    pack_folder(_split_pngs(pngs, out / "pngs"), out=out / "shards", per_shard=5, progress=False)
    return out / "shards"


#: the real data each registered dataset is checked on: name → (pytest request, a fresh
#: folder) → config. A registered dataset missing here fails the tests below.
CONFIGS: dict[str, Callable[[pytest.FixtureRequest, Path], dict[str, Any]]] = {
    "mnist": lambda request, tmp: {"root": str(mnist_dir()), "download": False},
    "imagefolder": lambda request, tmp: {
        "path": str(_split_pngs(request.getfixturevalue("mnist_pngs"), tmp)),
        "channels": 1,
    },
    "imageshards": lambda request, tmp: {
        "path": str(_image_shards(request.getfixturevalue("mnist_pngs"), tmp)),
        "channels": 1,
    },
    "movingmnist": lambda request, tmp: {
        "root": str(mnist_dir()),
        "train_videos": 8,
        "test_videos": 8,
        "frames": 5,
        "download": False,
    },
    "videofolder": lambda request, tmp: {"path": str(_video_files(tmp)), "channels": 1},
    "videoshards": lambda request, tmp: {"path": str(_video_shards(tmp)), "channels": 1},
    "fashionmnist": lambda request, tmp: {"root": str(mnist_dir()), "download": False},
    "image_crops": lambda request, tmp: {
        "path": str(mnist_dir() / "photos"),
        "size": [32, 48],
        "train_crops": 24,
        "test_crops": 12,
    },
    "video_crops": lambda request, tmp: {
        "root": str(mnist_dir()),
        "train_clips": ["carphone_pristine.mp4"],
        "test_clips": ["tree.avi"],
        "frames": 5,
        "size": [32, 32],
        "train_crops": 8,
        "fps": 5.0,
    },
}


def test_every_registered_dataset_has_real_data_to_be_checked_on() -> None:
    missing = sorted(set(tok.list_datasets()) - set(CONFIGS))
    assert not missing, f"add a config on real data for {missing} to CONFIGS in {__file__}"


@pytest.mark.parametrize("name", tok.list_datasets())
def test_every_registered_dataset_conforms(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if name not in CONFIGS:
        pytest.fail(f"dataset {name!r} has no config on real data in CONFIGS ({__file__})")
    check_dataset(name, config=CONFIGS[name](request, tmp_path))


@pytest.mark.parametrize("name", ["imagefolder", "imageshards", "videofolder", "videoshards"])
def test_flat_folders_and_single_shards_reject_unknown_splits(
    name: str, mnist_pngs: Path, tmp_path: Path
) -> None:
    """Known bug, outside tok.testing: a folder without train/test subfolders (images or
    videos) and a single .tar shard serve any split name, an unknown one too, because
    ``FileDataset.split_folder`` and ``VideoShards.split_root`` never call ``check_split``.
    Until that is fixed this test xfails on exactly that promise; then it passes."""
    if name == "imagefolder":
        path = mnist_pngs
    elif name == "imageshards":
        path = _image_shards(mnist_pngs, tmp_path) / "test" / "shard-000000.tar"
    elif name == "videofolder":
        path = _video_files(tmp_path) / "test"
    else:
        path = _video_shards(tmp_path) / "test" / "shard-000.tar"
    try:
        check_dataset(name, config={"path": str(path), "channels": 1})
    except AssertionError as exc:
        assert "an unknown split raises tok.errors.DatasetError" in str(exc), exc
        pytest.xfail(f"known bug: {exc}")


# broken datasets -----------------------------------------------------------------------


class ReadIgnoresOrder(MNIST):
    def read(self, split: str, keys: list[str]) -> Samples:
        rows = super().read(split, sorted(keys))  # rows in key order, whatever was asked
        return Samples(images=rows.images, keys=list(keys))


class UnknownKeyRaisesValueError(MNIST):
    def read(self, split: str, keys: list[str]) -> Samples:
        index = torch.tensor([int(k.rsplit("/", 1)[-1]) for k in keys])  # ValueError for junk
        return Samples(images=self.images(split)[index], keys=list(keys))


class UnknownKeyGivesAnImage(MNIST):
    def read(self, split: str, keys: list[str]) -> Samples:
        first = f"mnist/{split}/00000"
        known = [k if k.startswith(f"mnist/{split}/") and k[-5:].isdigit() else first for k in keys]
        return Samples(images=super().read(split, known).images, keys=list(keys))


class AnySplit(MNIST):
    def check_split(self, split: str) -> None:
        pass  # an unknown split silently serves the test images

    def images(self, split: str) -> torch.Tensor:
        return super().images(split if split in self.splits else "test")


class UnstableKeys(MNIST):
    calls = 0

    def keys(self, split: str) -> list[str]:
        keys = super().keys(split)
        type(self).calls += 1
        return keys[type(self).calls % 2 :]


class FloatImages(MNIST):
    def read(self, split: str, keys: list[str]) -> Samples:
        samples = super().read(split, keys)
        return Samples(images=samples.images.float() / 255, keys=samples.keys)


class DuplicateKeys(MNIST):
    def keys(self, split: str) -> list[str]:
        keys = super().keys(split)
        return [*keys, keys[0]]


class DropsKeys(MNIST):
    def read(self, split: str, keys: list[str]) -> Samples:
        return super().read(split, keys[:-1]) if len(keys) > 1 else super().read(split, keys)


class WrongLabels(MNIST):
    def labels(self, split: str, keys: list[str]) -> torch.Tensor:
        return super().labels(split, keys).int()  # int32, not int64


BROKEN = [
    (ReadIgnoresOrder, "reading the keys in reverse order returns the same rows reversed"),
    (UnknownKeyRaisesValueError, "an unknown key raises tok.errors.DatasetError"),
    (UnknownKeyGivesAnImage, "an unknown key raises tok.errors.DatasetError"),
    (AnySplit, "an unknown split raises tok.errors.DatasetError"),
    (UnstableKeys, "the same list on every call"),
    (FloatImages, "images are uint8"),
    (DuplicateKeys, "keys are unique"),
    (DropsKeys, "returns the asked keys, in the asked order"),
    (WrongLabels, "labels(split, keys) is None or an int64 (n,) tensor"),
]


@pytest.mark.parametrize(("cls", "promise"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_broken_dataset_fails_naming_the_promise(cls: type, promise: str) -> None:
    with pytest.raises(AssertionError, match="breaks the Dataset contract") as info:
        check_dataset(cls, config={"root": str(mnist_dir())}, splits=["test"])
    assert promise in str(info.value)
    assert cls.__name__ in str(info.value)


def test_by_registered_name_from_a_third_party_plugin() -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def register_datasets(register):
            register(MNIST, name="mnist-copy-test")
            register(ReadIgnoresOrder, name="unordered-test")

    tok.register_plugin(Plugin(), name="datasets-test-plugin")
    try:
        config = {"root": str(mnist_dir())}
        check_dataset("mnist-copy-test", config=config, splits=["test"], max_items=3)
        with pytest.raises(AssertionError, match="'unordered-test'.*reverse order"):
            check_dataset("unordered-test", config=config, splits=["test"])
    finally:
        unregister_plugin("datasets-test-plugin")


def test_config_is_required_unless_the_class_has_an_example() -> None:
    with pytest.raises(TypeError, match="config="):
        check_dataset("imagefolder")

    class WithExample(MNIST):
        @classmethod
        def example_config(cls) -> dict[str, Any]:
            return {"root": str(mnist_dir()), "channels": 3}

    check_dataset(WithExample, splits=["test"], max_items=2)


def test_not_a_dataset_subclass() -> None:
    with pytest.raises(AssertionError, match="subclass of tok.data.Dataset"):
        check_dataset(dict, config={})
