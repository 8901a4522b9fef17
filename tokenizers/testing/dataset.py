"""The conformance suite for dataset plugins: :func:`check_dataset`.

Every promise of the Dataset contract (``docs/plugins.md``, "Datasets") is
checked on the first items of each split; a broken promise raises
``AssertionError`` naming the dataset and the promise. Datasets need real
data, so the check is normally given a ``config`` that points at some.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..data.base import Dataset, Samples
from ..errors import DatasetError
from ._common import Check, diff, start

__all__ = ["check_dataset", "LOAD_LIMIT"]

#: ``load(split)`` is compared with ``read`` only for splits of at most this many items.
LOAD_LIMIT = 20_000

_UNKNOWN_SPLIT = "tok-testing-no-such-split"


def check_dataset(
    cls_or_name: type | str,
    *,
    config: Mapping[str, Any] | None = None,
    splits: Iterable[str] | None = None,
    max_items: int = 8,
) -> None:
    """Check that a dataset keeps every promise of the Dataset contract.

    :param cls_or_name: a :class:`tok.data.Dataset` subclass, or the name it is
        registered under (looked up with :func:`tok.get_dataset`).
    :param config: keyword arguments to build it with — where its data is
        (``root``, ``path``…). Without one the class's ``example_config()`` is
        used when it has one (:class:`tok.data.Dataset` has none, since most
        datasets cannot be built without data); otherwise ``config`` is
        required (``TypeError``).
    :param splits: the splits to check; default: the class's ``splits``.
    :param max_items: how many items (the first keys of each split) to read.
    :raises AssertionError: naming the dataset and the broken promise.

    Checked, for each split:

    - the class subclasses :class:`tok.data.Dataset` and builds from its config;
    - ``keys(split)`` is a non-empty list of unique ``str``, and the same list
      on a second call;
    - ``read(split, keys)`` of the first ``max_items`` keys returns a
      :class:`tok.data.Samples` whose ``keys`` are the asked keys in order and
      whose ``images`` are uint8 ``(n, *input_shape())``;
    - reading those keys in reverse order returns the same rows reversed, and
      reading one key alone gives the same row as the batch read;
    - ``load(split)`` (for splits of at most 20,000 items) returns ``Samples``
      whose first keys and rows are those ``read`` returned;
    - ``labels(split, keys)`` of those keys is ``None`` or an int64 ``(n,)`` tensor;
    - an unknown split (in ``keys`` and in ``read``) and an unknown key raise
      :class:`tok.errors.DatasetError`.

    Everything asked for must be readable: a dataset of files whose first
    files cannot be decoded leaves them out of what ``read`` returns, which
    this check reports as a broken promise.
    """
    cls, check, cfg = start(cls_or_name, "datasets", Dataset, "tok.data.Dataset", config, None)
    if cfg is None:
        raise TypeError(
            f"check_dataset: {check.label} has no example_config(); pass config= with the "
            f"keyword arguments that build it on real data (root, path…)"
        )
    if max_items < 1:
        raise ValueError(f"check_dataset: max_items must be ≥ 1, got {max_items}")
    ds = check.build(cls, cfg, "it builds from its config")
    names = list(cls.splits if splits is None else splits)
    check.expect(
        bool(names) and all(isinstance(s, str) for s in names),
        "splits is a non-empty tuple of str",
        f"got {names!r}",
    )
    for split in names:
        _check_split(check, ds, split, max_items)
    _check_unknown_split(check, ds, names[0])


def _keys(check: Check, ds: Dataset, split: str) -> list[str]:
    try:
        keys = ds.keys(split)
    except Exception as exc:  # noqa: BLE001 - reported as the broken promise
        check.fail(
            f"keys(split) lists the items of split {split!r}",
            f"keys({split!r}) raised {type(exc).__name__}: {exc}",
        )
    check.expect(
        isinstance(keys, list) and len(keys) > 0,
        "keys(split) is a non-empty list",
        f"keys({split!r}) returned "
        + ("an empty list" if isinstance(keys, list) else type(keys).__name__),
    )
    bad = [k for k in keys if not isinstance(k, str)]
    check.expect(not bad, "keys are str", f"split {split!r} has the key {bad[:1]!r}")
    check.expect(
        len(set(keys)) == len(keys),
        "keys are unique",
        f"split {split!r} has {len(keys) - len(set(keys))} duplicate keys",
    )
    return keys


def _read(check: Check, ds: Dataset, split: str, keys: list[str], what: str) -> Samples:
    try:
        samples = ds.read(split, keys)
    except Exception as exc:  # noqa: BLE001 - reported as the broken promise
        check.fail(
            "read(split, keys) returns the items with those keys",
            f"read({split!r}, {what}) raised {type(exc).__name__}: {exc}",
        )
    check.expect(
        isinstance(samples, Samples),
        "read(split, keys) returns a tok.data.Samples",
        f"read({split!r}, {what}) returned {type(samples).__name__}",
    )
    check.expect(
        list(samples.keys) == list(keys),
        "read(split, keys) returns the asked keys, in the asked order",
        f"read({split!r}, {what}): asked {keys[:4]!r}…, got {list(samples.keys)[:4]!r}…",
    )
    return samples


def _check_images(check: Check, samples: Samples, shape: tuple[int, ...], where: str) -> None:
    images = samples.images
    check.expect(
        isinstance(images, torch.Tensor) and images.dtype == torch.uint8,
        "images are uint8",
        f"got {getattr(images, 'dtype', type(images).__name__)} ({where})",
    )
    expected = (len(samples.keys), *shape)
    check.expect(
        tuple(images.shape) == expected,
        "images have shape (n, *input_shape())",
        f"expected {expected}, got {tuple(images.shape)} ({where})",
    )


def _check_split(check: Check, ds: Dataset, split: str, max_items: int) -> None:
    keys = _keys(check, ds, split)
    again = ds.keys(split)
    check.expect(
        again == keys,
        "keys(split) is stable: the same list on every call",
        f"split {split!r}: {len(keys)} keys, then {len(again)} that differ",
    )
    try:
        shape = tuple(ds.input_shape())
    except Exception as exc:  # noqa: BLE001 - reported as the broken promise
        check.fail("input_shape() gives the shape of one item", f"{type(exc).__name__}: {exc}")
    check.expect(
        bool(shape) and all(isinstance(n, int) and n >= 1 for n in shape),
        "input_shape() is a tuple of positive ints",
        f"got {shape!r}",
    )
    ask = keys[:max_items]
    samples = _read(check, ds, split, ask, f"the first {len(ask)} keys")
    _check_images(check, samples, shape, f"split {split!r}")

    backwards = _read(check, ds, split, ask[::-1], "those keys reversed")
    check.expect(
        torch.equal(backwards.images, samples.images.flip(0)),
        "reading the keys in reverse order returns the same rows reversed",
        f"split {split!r}: " + diff(backwards.images, samples.images.flip(0)),
    )
    j = len(ask) - 1
    one = _read(check, ds, split, [ask[j]], f"[{ask[j]!r}]")
    check.expect(
        torch.equal(one.images, samples.images[j : j + 1]),
        "reading one key gives the same row as the batch read",
        f"split {split!r}, key {ask[j]!r}: " + diff(one.images, samples.images[j : j + 1]),
    )

    try:
        labels = ds.labels(split, ask)
    except Exception as exc:  # noqa: BLE001 - reported as the broken promise
        check.fail("labels(split, keys) gives the labels or None", f"{type(exc).__name__}: {exc}")
    check.expect(
        labels is None
        or (
            isinstance(labels, torch.Tensor)
            and labels.dtype == torch.int64
            and tuple(labels.shape) == (len(ask),)
        ),
        "labels(split, keys) is None or an int64 (n,) tensor, one label per key",
        f"split {split!r}: got "
        + (
            f"{labels.dtype} {tuple(labels.shape)}"
            if isinstance(labels, torch.Tensor)
            else repr(labels)
        ),
    )

    if len(keys) <= LOAD_LIMIT:
        _check_load(check, ds, split, samples, shape)

    for bad in ("tok-testing/no-such-key", keys[-1] + "-no-such-key"):
        check.expect_raises(
            lambda bad=bad: ds.read(split, [bad]),
            DatasetError,
            "an unknown key raises tok.errors.DatasetError",
            f"read({split!r}, [{bad!r}])",
        )


def _check_load(
    check: Check, ds: Dataset, split: str, samples: Samples, shape: tuple[int, ...]
) -> None:
    try:
        full = ds.load(split)
    except Exception as exc:  # noqa: BLE001 - reported as the broken promise
        check.fail("load(split) loads the split", f"{type(exc).__name__}: {exc}")
    check.expect(
        isinstance(full, Samples),
        "load(split) returns a tok.data.Samples",
        f"got {type(full).__name__}",
    )
    _check_images(check, full, shape, f"load({split!r})")
    n = len(samples.keys)
    check.expect(
        list(full.keys[:n]) == list(samples.keys),
        "load(split) agrees with read(split, keys) on the first keys",
        f"load({split!r}) starts with {list(full.keys[:3])!r}…, "
        f"read gave {list(samples.keys[:3])!r}…",
    )
    check.expect(
        torch.equal(full.images[:n], samples.images),
        "load(split) agrees with read(split, keys) on the first keys",
        f"split {split!r}, images: " + diff(full.images[:n], samples.images),
    )


def _check_unknown_split(check: Check, ds: Dataset, known: str) -> None:
    promise = "an unknown split raises tok.errors.DatasetError"
    check.expect_raises(
        lambda: ds.keys(_UNKNOWN_SPLIT), DatasetError, promise, f"keys({_UNKNOWN_SPLIT!r})"
    )
    key = ds.keys(known)[0]
    check.expect_raises(
        lambda: ds.read(_UNKNOWN_SPLIT, [key]),
        DatasetError,
        promise,
        f"read({_UNKNOWN_SPLIT!r}, [{key!r}])",
    )
