"""MNIST and Fashion-MNIST through torchvision, each preloaded as one uint8 tensor.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, https://arxiv.org/abs/1708.07747) is a
drop-in replacement for MNIST — 28×28 grayscale, 60,000 ``train`` and 10,000 ``test``
images, the same four ``*-ubyte`` files — showing ten kinds of clothing instead of
digits; torchvision keeps it in ``FashionMNIST/raw``. :class:`FashionMNIST` is
:class:`MNIST` with that folder, torchvision class and key prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import DatasetError, DatasetMissingError
from .base import Dataset, Samples, data_root, to_channels

if TYPE_CHECKING:  # torchvision takes about 2 s to import: only when MNIST is read
    import torchvision

__all__ = ["MNIST", "FashionMNIST"]

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` and its subfolders when they hold no file at all."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        for sub in sorted(folder.rglob("*"), reverse=True):
            sub.rmdir()
        folder.rmdir()


class MNIST(Dataset):
    """The MNIST digits, 28×28 grayscale: 60,000 ``train`` and 10,000 ``test`` images.

    :param root: folder holding ``MNIST/raw/*-ubyte`` (torchvision's layout);
        default ``$TOK_DATA_DIR``, else the user cache folder.
    :param download: try to download when the files are missing.
    :param channels: 1 (default) or 3 (the gray value repeated).
    """

    supplied_args = ("channels",)
    preload = True  # 47 MB of pixels: train from memory

    #: torchvision's class name (``torchvision.datasets.<folder>``), also the folder
    #: under ``root`` that holds ``raw/``
    folder: ClassVar[str] = "MNIST"
    #: the first part of every key (``mnist/test/00042``)
    prefix: ClassVar[str] = "mnist"
    #: what messages call the dataset
    title: ClassVar[str] = "MNIST"
    #: what one item is, in messages
    item: ClassVar[str] = "image"

    def __init__(
        self, *, root: str | None = None, download: bool = True, channels: int = 1
    ) -> None:
        if channels not in (1, 3):
            raise DatasetError(f"{self.prefix} channels must be 1 or 3, got {channels!r}")
        self.root = data_root(root)
        self.download = download
        self.channels = channels
        self._cache: dict[str, torch.Tensor] = {}
        self._labels: dict[str, torch.Tensor] = {}

    def images(self, split: str) -> torch.Tensor:
        """Every image of ``split`` as one uint8 tensor ``(n, 1, 28, 28)`` (read once, kept)."""
        self.check_split(split)
        if split not in self._cache:
            found = self._open(split)
            self._cache[split] = found.data.unsqueeze(1)  # (n, 1, 28, 28) uint8
            self._labels[split] = found.targets.to(torch.int64)  # (n,) digits 0-9
        return self._cache[split]

    def _open(self, split: str) -> torchvision.datasets.MNIST:
        import torchvision

        train = split == "train"
        source = getattr(torchvision.datasets, self.folder)  # MNIST or FashionMNIST
        try:
            return source(str(self.root), train=train, download=False)
        except RuntimeError:
            pass
        if self.download:
            made = [f for f in (Path(self.root), Path(self.root) / self.folder) if not f.exists()]
            try:
                return source(str(self.root), train=train, download=True)
            except Exception as exc:  # noqa: BLE001 - any network or disk failure
                first = (str(exc).strip().splitlines() or [""])[0].rstrip(":")
                reason = f"downloading failed ({type(exc).__name__}: {first})"
                for folder in reversed(made):  # the empty folders made for the download
                    _remove_empty(folder)
        else:
            reason = "download = false"
        raw = Path(self.root) / self.folder / "raw"
        raise DatasetMissingError(
            f"{self.title} is not in {raw} and {reason}; put {', '.join(FILES)} there "
            f"(or set data.root / TOK_DATA_DIR to the folder that holds {self.folder}/raw)"
        )

    def keys(self, split: str) -> list[str]:
        n = len(self.images(split))
        return [f"{self.prefix}/{split}/{i:05d}" for i in range(n)]

    def _rows(self, split: str, keys: list[str]) -> torch.Tensor:
        """The row of each key in the split's tensors."""
        n = len(self.images(split))
        prefix = f"{self.prefix}/{split}/"
        rows = []
        for k in keys:
            i = k[len(prefix) :] if k.startswith(prefix) else ""
            if not (i.isdigit() and len(i) == 5 and int(i) < n):
                raise DatasetError(
                    f"no {self.title} {split} {self.item} with key {k!r} (keys are {prefix}00000 to "
                    f"{prefix}{n - 1:05d})"
                )
            rows.append(int(i))
        return torch.tensor(rows, dtype=torch.long)

    def read(self, split: str, keys: list[str]) -> Samples:
        images = self.images(split)[self._rows(split, keys)]
        return Samples(images=to_channels(images, self.channels), keys=list(keys))

    def labels(self, split: str, keys: list[str]) -> torch.Tensor:
        """The digits (0-9) of the images with these keys, int64 ``(n,)``, from the
        ``*-labels-idx1-ubyte`` file beside the images."""
        rows = self._rows(split, keys)
        return self._labels[split][rows]

    def load(self, split: str) -> Samples:
        images = self.images(split)
        keys = [f"{self.prefix}/{split}/{i:05d}" for i in range(len(images))]
        return Samples(images=to_channels(images, self.channels), keys=keys)

    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, 28, 28)


class FashionMNIST(MNIST):
    """Fashion-MNIST (Xiao et al. 2017), 28×28 grayscale clothing: 60,000 ``train`` and
    10,000 ``test`` images, keys ``fashionmnist/{split}/{i:05d}``, labels 0–9 (T-shirt/top,
    trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot).

    :param root: folder holding ``FashionMNIST/raw/*-ubyte`` (torchvision's layout);
        default ``$TOK_DATA_DIR``, else the user cache folder.
    :param download: try to download when the files are missing.
    :param channels: 1 (default) or 3 (the gray value repeated).
    :raises DatasetMissingError: the files are missing and cannot be downloaded (the
        message names the folder and the four files).
    """

    folder = "FashionMNIST"
    prefix = "fashionmnist"
    title = "Fashion-MNIST"
