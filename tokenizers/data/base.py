"""The dataset interface and where datasets live on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import DatasetError

__all__ = ["Dataset", "Samples", "data_root", "to_channels"]


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

    #: constructor arguments tok fills in from a tokenizer's input shape when it opens
    #: this dataset as a ``tok encode`` source: any of ``channels``, ``size``
    #: (``[h, w]``) and ``frames`` (see :mod:`tok.components`).
    supplied_args: ClassVar[tuple[str, ...]] = ()

    #: the inputs it yields: ``"image"`` ``(c, h, w)`` or ``"video"`` ``(c, t, h, w)``
    media: ClassVar[str] = "image"

    #: whether ``train.loader = "auto"`` loads the training split into memory once
    #: (``True``: small datasets held in one file, like MNIST) or streams it from its
    #: files step by step (:mod:`tok.data.batches`)
    preload: ClassVar[bool] = False

    #: what ``tok encode PATH`` can open with this dataset: files with these extensions
    #: (lower case, with the dot), in a folder or given one by one; the path goes to the
    #: constructor argument ``path``. Empty: only ``tok encode NAME:SPLIT`` names it.
    source_extensions: ClassVar[tuple[str, ...]] = ()

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

    def load(self, split: str) -> Samples:
        """The whole split in memory."""
        return self.read(split, self.keys(split))

    def labels(self, split: str, keys: list[str]) -> Tensor | None:
        """The class labels of the items with these keys, int64 ``(n,)`` in this order,
        or ``None`` when the dataset has none (the default). Optional: ``tok
        latent-map`` colours its points by them (MNIST gives the digit)."""
        return None

    def input_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        """``(c, h, w)`` of the images this dataset yields (``(c, t, h, w)`` for videos)."""
        raise NotImplementedError

    def report_skipped(self, split: str) -> None:
        """Tell the user, once, about the items of ``split`` that :meth:`keys` or
        :meth:`read` left out and why (datasets of files warn; the default does nothing).
        ``tok encode`` calls it when it is done."""

    def none_readable(self, split: str, n: int) -> DatasetError:
        """The error to raise when none of the ``n`` items of ``split`` could be read."""
        return DatasetError(
            f"none of the {n} items of {type(self).__name__} {split!r} could be read"
        )
