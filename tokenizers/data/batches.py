"""Training batches: preloaded into memory, or streamed from files by ``DataLoader`` workers.

Two ways to hand the training loop the images of each step, chosen by
``train.loader`` (``"auto"``: preload what :attr:`tok.data.Dataset.preload`
says fits in memory — MNIST, Moving MNIST —, stream the rest):

- :class:`Preloaded`: the whole training split as one uint8 tensor on the
  device; step *t* draws ``batch_size`` indices with replacement from the
  run's batch generator (saved in checkpoints), or with ``train.sampling =
  "epochs"`` takes global batch *t* of the epochs' permutations, as the streamed
  path does. The fast path for small data.
- :class:`Streamed`: only the keys are held; a :class:`torch.utils.data.DataLoader`
  with ``train.workers`` worker processes decodes the items of each step. The
  items of global batch *t* are positions ``t·B … (t+1)·B − 1`` of the endless
  sequence ``perm_0 ‖ perm_1 ‖ …``, where ``perm_e`` is a permutation of the split
  drawn from ``(seed, e)`` alone (:func:`global_batch`): every item once per
  epoch, no duplicates, no gaps; a pure function of the seed and the step, so a
  resume needs no loader state and any number of processes sees the same batches.

Under torchrun each rank takes its contiguous share of every global batch
(:func:`tok.distributed.my_share`), so ranks never read the same item of a step.

Augmentations (``train.hflip``, ``train.random_crop``) are drawn per item from
``(seed, position in the sequence)``, not from a worker's or rank's generator,
so they too depend on the seed and the step only.

Axis legend: ``b`` batch, ``c`` channels, ``t`` frames, ``h w`` height and width.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..distributed import my_share
from ..errors import DatasetError
from ..helpers import rank, world_size
from .base import Dataset, Samples

__all__ = [
    "Augment",
    "Batches",
    "Preloaded",
    "Streamed",
    "global_batch",
    "item_generator",
    "training_data",
]


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across processes and runs)."""
    digest = hashlib.sha256(b",".join(str(p).encode() for p in parts)).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _Permutations:
    """``perm_e`` of :func:`global_batch`, the current epoch's kept (one ``randperm`` per epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self._cache = n, seed, {}

    def __call__(self, epoch: int) -> Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(_seed(self.seed, epoch))
            self._cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._cache[epoch]


def global_batch(n: int, batch_size: int, seed: int, step: int, perms=None) -> Tensor:
    """Item indices (int64 ``(batch_size,)``) of global batch ``step`` (0-based) over a split
    of ``n`` items: positions ``step·B … step·B + B − 1`` of the epochs' permutations."""
    perms = perms or _Permutations(n, seed)
    first, last = step * batch_size, (step + 1) * batch_size - 1
    if first // n == last // n:  # within one epoch (all but a few batches): one slice
        start = first % n
        return perms(first // n)[start : start + batch_size].clone()
    positions = torch.arange(first, last + 1)
    epochs = positions // n
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epochs.unique().tolist():
        mask = epochs == e
        out[mask] = perms(e)[positions[mask] % n]
    return out


def item_generator(seed: int, position: int) -> torch.Generator:
    """The random generator of the item at ``position`` of the training sequence."""
    return torch.Generator().manual_seed(_seed(seed, position, 1))


@dataclass(frozen=True)
class Augment:
    """Training augmentations of uint8 ``(c, h, w)`` images (``(c, t, h, w)`` videos: one
    draw for all frames). ``random_crop``: ``[h, w]`` taken at a random place (the test
    images are centre-cropped to it); ``hflip``: mirrored left–right with probability ½."""

    random_crop: tuple[int, int] | None = None
    hflip: bool = False

    def __bool__(self) -> bool:
        return self.random_crop is not None or self.hflip

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of an augmented item of ``shape``."""
        return (*shape[:-2], *self.random_crop) if self.random_crop else tuple(shape)

    def check(self, shape: tuple[int, ...]) -> None:
        """:raises DatasetError: a crop larger than the items."""
        if self.random_crop and (
            self.random_crop[0] > shape[-2] or self.random_crop[1] > shape[-1]
        ):
            raise DatasetError(
                f"train.random_crop {list(self.random_crop)} is larger than the training "
                f"images ({shape[-2]}x{shape[-1]})"
            )

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.random_crop:
            (h, w), (ch, cw) = x.shape[-2:], self.random_crop
            top = int(torch.randint(h - ch + 1, (), generator=g))
            left = int(torch.randint(w - cw + 1, (), generator=g))
            x = x[..., top : top + ch, left : left + cw]
        if self.hflip and bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        return x.contiguous()

    def center(self, x: Tensor) -> Tensor:
        """The test view of ``x (..., h, w)``: its centre, cropped to ``random_crop``."""
        if not self.random_crop:
            return x
        (h, w), (ch, cw) = x.shape[-2:], self.random_crop
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[..., top : top + ch, left : left + cw].contiguous()


class Batches(Protocol):
    """What the training loop takes its images from: ``next()`` gives this rank's share of
    the next global batch, uint8 ``(b, c, …)``; ``close()`` stops any worker processes."""

    def __next__(self) -> Tensor: ...

    def close(self) -> None: ...


class Preloaded:
    """Batches of ``images`` (uint8 ``(n, c, …)``, on the device), this rank's share:
    drawn with replacement with ``generator`` (the run's batch generator, saved in
    checkpoints), or with ``epochs`` global batch ``step`` of :func:`global_batch`."""

    def __init__(
        self, images: Tensor, generator: torch.Generator, *, batch_size: int, seed: int,
        augment: Augment, step: int, epochs: bool = False,
    ) -> None:  # fmt: skip
        self.images, self.generator, self.batch_size = images, generator, batch_size
        self.seed, self.augment, self.step = seed, augment, step
        self.perms = _Permutations(len(images), seed) if epochs else None

    def __next__(self) -> Tensor:
        if self.perms is not None:
            n = len(self.images)
            idx = my_share(global_batch(n, self.batch_size, self.seed, self.step, self.perms))
        else:
            idx = my_share(
                torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
            )
        x = self.images[idx.to(self.images.device)]
        if self.augment:
            first = self.step * self.batch_size + rank() * len(idx)
            x = torch.stack(
                [
                    self.augment(item, item_generator(self.seed, first + i))
                    for i, item in enumerate(x)
                ]
            )
        self.step += 1
        return x

    def close(self) -> None:
        pass


class _Sampler(torch.utils.data.Sampler):
    """Endless: for each step from ``start``, this rank's share of :func:`global_batch` as
    ``(item index, position)`` pairs."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.perms = _Permutations(n, seed)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_size // world_size()
        step = self.start
        while True:
            idx = global_batch(self.n, self.batch_size, self.seed, step, self.perms)
            lo = rank() * share
            first = step * self.batch_size + lo
            yield [(int(i), first + j) for j, i in enumerate(idx[lo : lo + share])]
            step += 1


class _Items(torch.utils.data.Dataset):
    """Item ``(index, position)`` of a split, decoded (in a worker) and augmented; an item
    that does not decode comes back as its name, for the main process to report."""

    def __init__(self, dataset: Dataset, split: str, keys: list[str], seed: int, augment: Augment):
        self.dataset, self.split, self.keys = dataset, split, keys
        self.seed, self.augment = seed, augment

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: tuple[int, int]) -> Tensor | str:
        index, position = item
        key = self.keys[index]
        samples = self.dataset.read(self.split, [key])
        if not samples.keys:
            return key
        x = samples.images[0]
        return self.augment(x, item_generator(self.seed, position)) if self.augment else x


def _collate(items: list[Tensor | str]) -> Tensor | list[str]:
    failed = [x for x in items if isinstance(x, str)]
    return failed or torch.stack(items)


class Streamed:
    """Batches decoded from files by ``workers`` DataLoader processes (0: in this one),
    starting at global batch ``step``; this rank's share."""

    def __init__(
        self, dataset: Dataset, keys: list[str], *, split: str, batch_size: int, seed: int,
        augment: Augment, step: int, workers: int, pin_memory: bool,
    ) -> None:  # fmt: skip
        self.where = f"{type(dataset).__name__} {split!r}"
        items = _Items(dataset, split, keys, seed, augment)
        sampler = _Sampler(len(keys), batch_size, seed, step)
        self.loader = torch.utils.data.DataLoader(
            items,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
        )
        self._it = iter(self.loader)

    def __next__(self) -> Tensor:
        x = next(self._it)
        if isinstance(x, list):
            raise DatasetError(
                f"{self.where}: cannot decode {', '.join(x[:3])} (its header read when the run "
                f"started); fix or remove the file, then resume the run (tok train --resume)"
            )
        return x

    def close(self) -> None:
        """Stop the worker processes."""
        del self._it


def training_data(
    dataset: Dataset, device: torch.device, generator: torch.Generator, *, train: Any
) -> tuple[Callable[[int], Batches], Samples, tuple[int, ...]]:
    """What training reads from ``dataset`` by the recipe's ``[train]`` table ``train``
    (:class:`tok.recipe.TrainConfig`: ``loader``, ``workers``, ``batch_size``, ``seed``,
    ``random_crop``, ``hflip``, ``eval_samples``): ``(batches, eval set, input shape)``.
    ``batches(step)`` gives the :class:`Batches` from global batch ``step`` on (the
    preloaded path draws with ``generator``); the eval set is the first ``eval_samples``
    test items (centre-cropped to ``random_crop``); the input shape is the tokenizer's,
    ``(c, h, w)`` or ``(c, t, h, w)``.

    :raises DatasetError: missing data, or a crop larger than the images.
    """
    crop = tuple(train.random_crop) if train.random_crop else None
    augment = Augment(crop, train.hflip)
    order = {"batch_size": train.batch_size, "seed": train.seed, "augment": augment}
    if train.loader == "preload" or (train.loader == "auto" and dataset.preload):
        images = dataset.load("train").images.to(device)
        shape = tuple(images.shape[1:])
        epochs = train.sampling == "epochs"
        make = functools.partial(Preloaded, images, generator, **order, epochs=epochs)
    else:  # only the keys in memory; DataLoader workers decode each step's items
        keys, shape = dataset.keys("train"), tuple(dataset.input_shape())
        make = functools.partial(
            Streamed, dataset, keys, split="train", workers=train.workers, **order,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
    augment.check(shape)
    test = dataset.read("test", dataset.keys("test")[: train.eval_samples])
    test = Samples(augment.center(test.images), test.keys)
    return (lambda step: make(step=step)), test, augment.shape(shape)
