"""The dataset interface and where datasets live on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import DatasetError

__all__ = ["Dataset", "Samples", "data_root", "to_channels", "to_uint8"]


def to_uint8(images: Tensor) -> Tensor:
    """Float images in ``[0, 1]`` → uint8 (rounded), the form PNG files hold."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets live: ``root`` if given, else ``$TOK_DATA_DIR``, else a user cache folder
    (``$XDG_CACHE_HOME/tok/data`` or ``~/.cache/tok/data``)."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("TOK_DATA_DIR"):
        return Path(os.environ["TOK_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tok" / "data"


def to_channels(images: Tensor, channels: int | None) -> Tensor:
    """Convert uint8 ``(n, c, h, w)`` images to ``channels`` (1 ↔ 3; RGB → gray by luma)."""
    if channels is None or images.shape[1] == channels:
        return images
    if images.shape[1] == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if images.shape[1] == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DatasetError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")


@dataclass(frozen=True)
class Samples:
    """A batch of a dataset: ``images`` uint8 ``(n, c, h, w)`` and one key per image."""

    images: Tensor
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def floats(self, index: Tensor | slice | None = None) -> Tensor:
        """Images (all, or ``index``) as float32 in ``[0, 1]``."""
        x = self.images if index is None else self.images[index]
        return x.float().div_(255)


class Dataset:
    """Base class of datasets registered through ``register_datasets``.

    Subclasses take keyword-only constructor arguments (the recipe's ``[data]``
    keys) and implement :meth:`keys` and :meth:`read`.
    """

    #: Splits that ``keys``/``read`` accept.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(
                f"{type(self).__name__} has no split {split!r} (splits: {', '.join(self.splits)})"
            )

    def keys(self, split: str) -> list[str]:  # pragma: no cover - abstract
        """Stable, ordered keys of the items in ``split`` (what token files record)."""
        raise NotImplementedError

    def read(self, split: str, keys: list[str]) -> Samples:  # pragma: no cover - abstract
        """The items with these keys, in this order."""
        raise NotImplementedError

    def readable_keys(self, split: str) -> list[str]:
        """Keys of the items that can actually be read (datasets of files check each one)."""
        return self.keys(split)

    def load(self, split: str) -> Samples:
        """The whole split in memory."""
        return self.read(split, self.keys(split))

    def input_shape(self) -> tuple[int, int, int]:  # pragma: no cover - abstract
        """``(c, h, w)`` of the images this dataset yields."""
        raise NotImplementedError
