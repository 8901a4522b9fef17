"""What ``tok encode SRC`` reads: a source named by a path or ``DATASET:SPLIT``, found
through the dataset registry.

- ``DATASET:SPLIT`` (``mnist:test``) builds the registered dataset ``DATASET``.
- A path is offered to the registered datasets that take paths: each declares
  the file extensions it reads (``Dataset.source_extensions``) and whether it
  yields images or videos (``Dataset.media``). Among those whose media fits the
  tokenizer, a file goes to the one that reads its extension; a folder is
  walked once and goes to the one that reads the most of its files (ties: the
  name that sorts first). So a third-party dataset plugin that declares
  ``source_extensions = (".npy",)`` is a ``tok encode`` source like tok's own.

The options a dataset lets tok supply (``channels``, ``size``, ``frames``) come
from the tokenizer's input shape (:func:`tok.components.fill`).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from ..components import Facts, build
from ..errors import ConfigError, DatasetError
from ..media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ..registry import registry
from ..signatures import parameters
from .base import Dataset
from .folder import list_files

__all__ = ["open_source", "path_datasets", "source_media"]


def path_datasets(media: str) -> list[tuple[str, type]]:
    """``(name, class)`` of the registered datasets that open paths and yield ``media``."""
    return [
        (e.name, e.obj)
        for e in registry("datasets").entries()
        if getattr(e.obj, "source_extensions", ()) and getattr(e.obj, "media", "image") == media
    ]


def _choose(path: Path, media: str) -> str | None:
    """The registered dataset that should read ``path`` (see the module docstring)."""
    candidates = path_datasets(media)
    if not candidates:
        return None
    if path.is_file():
        suffix = path.suffix.lower()
        return next((name for name, cls in candidates if suffix in cls.source_extensions), None)
    files = list_files(path)

    def reads(cls: type) -> int:
        return sum(p.suffix.lower() in cls.source_extensions for p in files)

    return min(candidates, key=lambda c: (-reads(c[1]), c[0]))[0]


def _describe(media: str) -> str:
    kinds = [
        f"{' '.join(cls.source_extensions)} files ({name})" for name, cls in path_datasets(media)
    ]
    return ", ".join(kinds) or "no files"


def open_source(
    src: str,
    *,
    input_shape: tuple[int, ...],
    split: str,
    options: dict[str, Any] | None = None,
) -> tuple[Dataset, str]:
    """The dataset and split that ``src`` names, built for inputs of ``input_shape``.

    ``options`` (e.g. ``resize``, ``fps`` from the command line) are passed to the
    dataset when its constructor takes them. Raises :class:`DatasetError` naming
    ``src`` and what would work.
    """
    media = "video" if len(input_shape) == 4 else "image"
    facts = Facts(input_shape=tuple(input_shape))
    path = Path(src)

    def construct(name: str, given: dict[str, Any]) -> Dataset:
        accepted = parameters(registry("datasets").get(name))
        given.update({k: v for k, v in (options or {}).items() if k in accepted})
        return build("datasets", name, given, facts)

    if path.exists():
        name = _choose(path, media)
        if name is None:
            raise DatasetError(
                f"{src} is not a source tok can read for this tokenizer, which takes "
                f"{media}s; give a folder of {_describe(media)} or DATASET:SPLIT such as "
                f"mnist:test (datasets: {', '.join(registry('datasets').names())})"
            )
        return construct(name, {"path": str(path)}), split
    name, sep, ds_split = src.partition(":")
    if sep and name in registry("datasets"):
        try:
            return construct(name, {}), ds_split or split
        except ConfigError as exc:
            raise DatasetError(
                f"dataset {name!r} cannot be named as DATASET:SPLIT here ({exc}); "
                f"give a folder instead"
            ) from exc
    what = "folder or file" if media == "video" else "folder"
    raise DatasetError(
        f"no {what} {src!r}; this tokenizer takes {media}s: give a folder of {_describe(media)}, "
        f"or DATASET:SPLIT (datasets: {', '.join(registry('datasets').names())})"
    )


def _shard_media(shard: Path, members: int = 64) -> str | None:
    """``"image"`` or ``"video"``: what the first ``members`` members of the ``.tar`` shard
    are, by their extensions (headers only; a tie, GIFs, goes to video); ``None`` when it
    cannot be read or holds neither."""
    counts = {"image": 0, "video": 0}
    try:
        with tarfile.open(shard, "r:") as tar:
            for _, member in zip(range(members), tar, strict=False):
                ext = Path(member.name).suffix.lower()
                counts["image"] += ext in IMAGE_EXTENSIONS
                counts["video"] += ext in VIDEO_EXTENSIONS
    except (tarfile.TarError, OSError):
        return None
    best = max(("video", "image"), key=counts.get)
    return best if counts[best] else None


def source_media(src: str) -> str | None:
    """``"image"`` or ``"video"``: what ``src`` holds, as far as its name and its files'
    extensions tell (``None`` when nothing registered reads it)."""
    path = Path(src)
    if path.exists():
        files = [path] if path.is_file() else list_files(path)
        shards = [p for p in files if p.suffix.lower() == ".tar"]  # counted by what they hold
        files = [p for p in files if p.suffix.lower() != ".tar"]
        counts = {
            media: sum(
                p.suffix.lower() in cls.source_extensions
                for _, cls in path_datasets(media)
                for p in files
            )
            for media in ("image", "video")
        }
        if shards:  # as the first holds; unreadable or neither: either kind (a tie: video)
            held = _shard_media(shards[0])
            for media in (held,) if held else ("image", "video"):
                counts[media] += len(shards)
        # a tie (a folder of GIFs only, which both kinds read) goes to video, as it did
        # before images could be GIFs: ``max`` keeps the first of equal counts
        best = max(("video", "image"), key=counts.get)
        return best if counts[best] else None
    name, sep, _ = src.partition(":")
    if sep and name in registry("datasets"):
        return getattr(registry("datasets").get(name), "media", "image")
    return None
