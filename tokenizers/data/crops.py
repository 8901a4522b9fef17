"""Fixed-size crops of a folder of photos of any size: the ``image_crops`` dataset.

Real photos differ in size, and a tokenizer trains on batches of one size; so this
dataset serves square (or ``[h, w]``) crops of them. Each split holds a fixed list of
crops drawn once from ``(seed, split)``: crop ``i`` comes from photo ``π(i mod P)``
(``P`` photos, ``π`` a seeded permutation redrawn every ``P`` crops, so every photo
gives the same number of crops ±1) at a uniformly random position inside it. A crop's
key names it — ``ski_coffee@120,64`` is the crop of ``ski_coffee.jpg`` whose top-left
pixel is row 120, column 64 — so token files, ``tok eval`` and resumed runs all see the
same crops, and the training loader (:mod:`tok.data.batches`) serves them like any other
items: a permutation of the ``train_crops`` crops per epoch, flipped by ``train.hflip``.
The test crops (``test_crops``, 2,048 by default) are the evaluation protocol of
``recipes/vqgan_photos.toml``: fixed positions, never seen in training (the folders'
``train/`` and ``test/`` hold different photos).

Photos are decoded once per process and kept (a 512×768 RGB photo is 1.2 MB).
Axis legend: ``c`` channels, ``h w`` spatial.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import DatasetError
from ..media import probe_image, read_image
from .base import Dataset, Samples, data_root
from .folder import ImageFolder

__all__ = ["ImageCrops"]


class ImageCrops(Dataset):
    """Crops of the photos of an image folder (``train/`` and ``test/`` subfolders).

    :param path: the folder; a relative path is taken inside the data root (``root``,
        else ``$TOK_DATA_DIR``, else ``~/.cache/tok/data``): ``"photos"``.
    :param root: the data root a relative ``path`` is resolved in.
    :param size: ``[height, width]`` of a crop, in pixels.
    :param channels: 1 (gray) or 3 (RGB).
    :param train_crops: crops in the training split (an epoch).
    :param test_crops: crops in the test split.
    :param seed: draws the crops' photos and positions.
    :raises DatasetError: a missing folder, a photo smaller than ``size``, bad numbers.
    """

    supplied_args = ("channels",)

    def __init__(
        self,
        *,
        path: str,
        root: str | None = None,
        size: list[int] | None = None,
        channels: int = 3,
        train_crops: int = 100_000,
        test_crops: int = 2048,
        seed: int = 0,
    ) -> None:
        given = Path(path).expanduser()
        self.path = given if given.is_absolute() else data_root(root) / given
        self.size = tuple(size) if size is not None else (64, 64)
        if len(self.size) != 2 or min(self.size) < 1:
            raise DatasetError(f"image_crops: size must be [height, width] ≥ 1, got {size}")
        if train_crops < 1 or test_crops < 1:
            raise DatasetError("image_crops: train_crops and test_crops must be ≥ 1")
        self.folder = ImageFolder(path=str(self.path), channels=channels)
        self.channels, self.seed = channels, seed
        self.counts = {"train": train_crops, "test": test_crops}
        self._photos: dict[str, dict[str, tuple[Path, int, int]]] = {}
        self._keys: dict[str, list[str]] = {}
        self._decoded: dict[Path, torch.Tensor] = {}

    def photos(self, split: str) -> dict[str, tuple[Path, int, int]]:
        """Photo key → (file, height, width) for ``split``, from the files' headers."""
        if split not in self._photos:
            self.check_split(split)
            where = self.folder.folder(split)
            names = self.folder.readable_names(split)
            self.folder.report_skipped(split)
            found = {}
            for key, name in names.items():
                info = probe_image(where / name)
                if info.height < self.size[0] or info.width < self.size[1]:
                    raise DatasetError(
                        f"image_crops: {where / name} is {info.height}x{info.width}, smaller "
                        f"than the crop size {self.size[0]}x{self.size[1]}"
                    )
                found[key] = (where / name, info.height, info.width)
            self._photos[split] = found
        return self._photos[split]

    def keys(self, split: str) -> list[str]:
        """The split's crops, ``PHOTO@TOP,LEFT``, in their drawn order."""
        if split not in self._keys:
            photos = self.photos(split)
            names = list(photos)
            digest = hashlib.sha256(f"image_crops/{self.seed}/{split}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            n, p = self.counts[split], len(names)
            order = torch.cat([torch.randperm(p, generator=g) for _ in range(-(-n // p))])[:n]
            u = torch.rand(n, 2, generator=g, dtype=torch.float64)
            keys = []
            for i, (a, b) in zip(order.tolist(), u.tolist(), strict=True):
                _, h, w = photos[names[i]]
                top, left = int(a * (h - self.size[0] + 1)), int(b * (w - self.size[1] + 1))
                keys.append(f"{names[i]}@{top},{left}")
            self._keys[split] = keys
        return self._keys[split]

    def read(self, split: str, keys: list[str]) -> Samples:
        """The crops with these keys, uint8 ``(n, c, h, w)``.

        :raises DatasetError: a key that names no photo of the split or a crop outside it.
        """
        photos = self.photos(split)
        (ch, cw), out = self.size, []
        for key in keys:
            name, _, at = key.rpartition("@")
            try:
                top, left = (int(v) for v in at.split(","))
                file, h, w = photos[name]
            except (ValueError, KeyError):
                raise DatasetError(
                    f"image_crops: no crop {key!r} in {self.path} ({split})"
                ) from None
            if not (0 <= top <= h - ch and 0 <= left <= w - cw):
                raise DatasetError(f"image_crops: crop {key!r} lies outside its {h}x{w} photo")
            if file not in self._decoded:
                self._decoded[file] = read_image(file, channels=self.channels)
            out.append(self._decoded[file][:, top : top + ch, left : left + cw])
        images = (
            torch.stack(out) if out else torch.zeros((0, *self.input_shape()), dtype=torch.uint8)
        )
        return Samples(images=images.contiguous(), keys=list(keys))

    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)
