"""Datasets of files: what image folders and video files share, and the image folder.

Policy (also in the README):

- Files are found recursively and sorted; a key is the path relative to the
  folder without its extension (``digits/7/00012``). Symlinks to files and
  folders are followed (a loop back up and a dead link are skipped and
  reported): :func:`walk_files`.
- Images are ``.png .jpg .jpeg .bmp .gif .tif .tiff .webp`` files, decoded by
  what they hold (:func:`tok.media.read_image`). Hidden files (``.name``) are
  ignored. Any other file that is not a readable image — a ``.txt``, a
  truncated PNG, a PNG whose compressed data is broken — is **skipped, and
  reported in one warning** that names it (``strict = true`` makes it an
  error instead). A folder with no readable image is an error.
- A ``train``/``test`` subfolder serves that split; a folder without such
  subfolders serves every split; a folder that has them but lacks the
  requested one is an error (the whole folder would mix the splits).
- Two files with one key (``a.png`` and ``a.jpg``) are an error.
- Every bit depth and mode reaches the tokenizer at the same scale, upright and
  with the requested channels (docs/media.md): 8 and 16 bits; gray, RGB,
  palette, CMYK; alpha composited over white; EXIF orientation applied; the
  first frame of a GIF. So one folder may mix them all.
- Size: ``resize = "error"`` (default) requires every image to have the same
  size (``size`` if given); ``"resize"`` resizes to ``size``;
  ``"center-crop"`` scales the short side to ``size`` and crops the centre;
  ``"keep"`` keeps each image's own size (``tok encode --resize keep``; no ``size``;
  :meth:`FileDataset.read` then reads one size at a time).

Reading is two steps, so that each file is decoded once: :meth:`FileDataset.keys`
reads only the files' headers (:func:`tok.media.probe_image`), which is enough
to skip what is not an image and to check sizes before anything is written;
:meth:`FileDataset.read` decodes. What either step skips is reported once, by
:meth:`FileDataset.report_skipped`. Inside :func:`walk_once` a folder is
listed once however often it is asked for. :meth:`FileDataset.readable_names`
is the first step without the size policy (what ``tok shards`` packs).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from ..errors import DatasetError, ImageError
from ..media import IMAGE_EXTENSIONS, MediaInfo, MediaReadError, probe_image, read_image
from .base import Dataset, Samples

__all__ = [
    "FileDataset",
    "ImageFolder",
    "ImageSkippedWarning",
    "IMAGE_EXTENSIONS",
    "list_files",
    "walk_files",
    "walk_once",
]

Resize = Literal["error", "resize", "center-crop", "keep"]
#: every size policy (``resize``) of image folders and video datasets
RESIZE_POLICIES = ("error", "resize", "center-crop", "keep")

_LISTINGS: contextvars.ContextVar[dict[Path, tuple[list[Path], list[str]]] | None] = (
    contextvars.ContextVar("tok_listings", default=None)
)


class ImageSkippedWarning(UserWarning):
    """Files in an image folder were skipped because they are not readable images."""


@contextlib.contextmanager
def walk_once() -> Iterator[None]:
    """Within the block, :func:`list_files` walks each folder once and then answers from
    memory (``tok encode`` uses it: finding the source and reading it share one walk)."""
    token = _LISTINGS.set({})
    try:
        yield
    finally:
        _LISTINGS.reset(token)


def walk_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Every non-hidden file under ``folder``, sorted by relative path, and what could not
    be followed, each as ``"<relative name> (<why>)"``.

    Symlinks are followed, to files and to folders, as torchvision's ``ImageFolder``
    does (``os.walk(followlinks=True)``); a file behind a link gets the link's path as
    its key. A link back to a folder on its own way down (a loop) is not followed, and
    neither is a link whose target is gone; both are reported, as are subfolders that
    cannot be listed.
    """
    cache = _LISTINGS.get()
    key = Path(os.path.abspath(folder))
    if cache is not None and key in cache:
        return cache[key]
    files: list[Path] = []
    problems: list[str] = []

    def walk(path: Path, chain: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            problems.append(f"{_rel(path, folder)}/ (cannot list it: {exc.strerror or exc})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError as exc:
                problems.append(f"{_rel(child, folder)} ({exc.strerror or exc})")
                continue
            if is_dir:
                real = os.path.realpath(child)
                if real in chain:
                    problems.append(f"{_rel(child, folder)} (a symlink loop: not followed)")
                else:
                    walk(child, chain | {real})
            elif is_file:
                files.append(child)
            elif entry.is_symlink():
                problems.append(f"{_rel(child, folder)} (a broken symlink)")

    walk(folder, frozenset({os.path.realpath(folder)}))
    files.sort(key=lambda f: [os.fsencode(part) for part in f.relative_to(folder).parts])
    if cache is not None:
        cache[key] = (files, problems)
    return files, problems


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def list_files(folder: Path) -> list[Path]:
    """The files of :func:`walk_files` (what could not be followed is left out)."""
    return walk_files(folder)[0]


def check_resize(resize: str, size: list[int] | None) -> None:
    """The ``resize``/``size`` rules image folders and video datasets share."""
    if resize not in RESIZE_POLICIES:
        raise DatasetError(
            f"resize must be 'error', 'resize', 'center-crop' or 'keep', got {resize!r}"
        )
    if resize == "keep":
        if size is not None:
            raise DatasetError(
                f"resize = 'keep' keeps each item's own size, so it takes no size (got "
                f"{list(size)}); it is for tok encode --resize keep, not for training batches"
            )
        return
    if resize != "error" and size is None:
        raise DatasetError(f"resize = {resize!r} needs size = [height, width]")


def scan_folder(
    folder: Path, extensions: tuple[str, ...], not_what: str
) -> tuple[dict[str, Path], list[str]]:
    """The files of ``folder`` with one of ``extensions`` by key (the relative path without
    its extension), and the others as skipped (``"<name> (not <not_what>)"``).

    Two files with one key are an error.
    """
    files: dict[str, Path] = {}
    found, skipped = walk_files(folder)
    skipped = list(skipped)
    for p in found:
        rel = p.relative_to(folder)
        if p.suffix.lower() not in extensions:
            skipped.append(f"{rel.as_posix()} (not {not_what})")
            continue
        key = rel.with_suffix("").as_posix()
        if key in files:
            raise DatasetError(
                f"{files[key].relative_to(folder).as_posix()} and {rel.as_posix()} in {folder} "
                f"would both have the key {key!r}; rename or remove one of them"
            )
        files[key] = p
    return files, skipped


class FileDataset(Dataset):
    """What :class:`ImageFolder` and the video datasets share: picking a split's folder,
    probing headers, the size policy, reading items by key and reporting skipped files.

    Subclasses set the class attributes below and provide :meth:`_scan`,
    :meth:`_where`, :meth:`_name`, :meth:`_probe` and :meth:`_decode`.
    """

    #: how messages name one item (``"image"``, ``"video"``) and the dataset (``kind``).
    noun: ClassVar[str] = "image"
    kind: ClassVar[str] = "image folder"
    #: an item that is kept is a ``"readable image"`` / ``"usable video"``.
    usable: ClassVar[str] = "readable image"
    #: ``strict = true``: skipped files raise this, saying ``"unreadable files in <path>"``.
    strict_error: ClassVar[type[DatasetError]] = ImageError
    strict_what: ClassVar[str] = "unreadable files"
    #: the error a size mismatch raises.
    size_error: ClassVar[type[DatasetError]] = ImageError
    #: the warning for skipped files.
    skipped_warning: ClassVar[type[Warning]] = ImageSkippedWarning

    path: Path
    size: tuple[int, ...] | None
    resize: Resize
    strict: bool

    # what subclasses provide ---------------------------------------------------------

    def _scan(self, split: str) -> tuple[dict, list[str]]:  # pragma: no cover
        """The items of ``split`` by key, and what was skipped while listing them."""
        raise NotImplementedError

    def _where(self, split: str) -> Path:  # pragma: no cover
        """The folder (or file) messages about ``split`` name."""
        raise NotImplementedError

    def _name(self, item: Any, where: Path) -> str:  # pragma: no cover
        """How messages name ``item``."""
        raise NotImplementedError

    def _probe(self, item: Any) -> MediaInfo:  # pragma: no cover
        """``item``'s size from its header; raises :class:`MediaReadError`."""
        raise NotImplementedError

    def _decode(self, item: Any, name: str) -> torch.Tensor:  # pragma: no cover
        """``item`` decoded, uint8 ``(c, h, w)`` / ``(c, t, h, w)`` with the dataset's
        channels and frames, before the size policy; raises :class:`MediaReadError`."""
        raise NotImplementedError

    # shared ------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        if "_cache" not in self.__dict__:
            self._cache: dict[str, Any] = {"plans": {}, "skipped": {}}
        return self._cache

    def split_root(self, split: str) -> Path:
        """The folder or file that holds ``split``: ``path`` itself when it is a file, else
        :meth:`split_folder`."""
        self.check_split(split)
        if not self.path.exists():
            raise DatasetError(f"{self.kind} path {self.path} does not exist")
        if self.path.is_file():
            return self.path
        return self.split_folder(split)

    def split_folder(self, split: str) -> Path:
        """``split``'s subfolder of the folder when present, else the whole folder.

        A folder split into ``train``/``test`` subfolders that lacks ``split`` is
        an error (the whole folder would mix the other splits in).
        """
        self.check_split(split)
        sub = self.path / split
        if sub.is_dir():
            return sub
        present = [s for s in ("train", "test") if (self.path / s).is_dir()]
        if present:
            raise DatasetError(
                f"{self.kind} {self.path} has no {split}/ subfolder (it is split into "
                f"{', '.join(p + '/' for p in present)}); choose one of those splits"
            )
        return self.path

    def _skip(self, split: str, what: list[str]) -> None:
        if what and self.strict:
            raise self.strict_error(f"{self.strict_what} in {self.path}: {_shown(what)}")
        self._state()["skipped"].setdefault(split, []).extend(what)

    def report_skipped(self, split: str) -> None:
        """One warning naming every file of ``split`` skipped so far, and why (then forgotten)."""
        skipped = self._state()["skipped"].pop(split, [])
        if skipped:
            warnings.warn(
                f"tok: skipped {len(skipped)} file(s) in {self.path} that are not "
                f"{self.usable}s: {_shown(skipped)}",
                self.skipped_warning,
                stacklevel=2,
            )

    def _check_size(self, hw: tuple[int, int], name: str, ref: tuple[str, tuple[int, int]]) -> None:
        if self.resize != "error":
            return
        target = self.size or ref[1]
        if tuple(hw) != tuple(target):
            said = f"size = {list(target)}" if self.size else f"{ref[0]} is {target[0]}x{target[1]}"
            raise self.size_error(
                f"{self.noun} {name} is {hw[0]}x{hw[1]} but {said}; {self.noun}s must all "
                f'have one size (or resize them: resize = "resize" or "center-crop" in a '
                f"recipe, --resize resize or --resize center-crop for tok encode; or encode "
                f"each at its own size: tok encode --resize keep)"
            )

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (``(..., h, w)``) brought to ``size`` by the resize policy."""
        if self.resize == "error" or self.size is None:
            return x
        # imported here: torchvision costs about 2 s to import, which no other path needs
        from torchvision.transforms.v2 import functional as TF

        hw, target = tuple(x.shape[-2:]), list(self.size)
        if self.resize == "resize":
            return TF.resize(x, target, antialias=True)
        scale = max(target[0] / hw[0], target[1] / hw[1])
        scaled = [max(target[0], round(hw[0] * scale)), max(target[1], round(hw[1] * scale))]
        return TF.center_crop(TF.resize(x, scaled, antialias=True), target)

    def _plan(self, split: str) -> tuple[dict, tuple[str, tuple[int, int]] | None]:
        """The items of ``split`` whose headers read (probed once, then remembered) and the
        first one's name and size (the reference when no ``size`` is set)."""
        plans = self._state()["plans"]
        if split not in plans:
            plans[split] = self._probe_split(split, check_sizes=True)
        return plans[split]

    def _probe_split(
        self, split: str, *, check_sizes: bool
    ) -> tuple[dict, tuple[str, tuple[int, int]] | None]:
        """:meth:`_plan`'s work, each header read now; ``check_sizes`` applies the size policy."""
        items, skipped = self._scan(split)
        where = self._where(split)
        kept, ref = {}, None
        for key, item in items.items():
            name = self._name(item, where)
            try:
                info = self._probe(item)
            except MediaReadError as exc:
                skipped.append(f"{name} ({exc.reason})")
                continue
            hw = (info.height, info.width)
            ref = ref or (name, hw)
            if check_sizes:
                self._check_size(hw, name, ref)
            kept[key] = item
        self._skip(split, skipped)
        if not kept:
            self.report_skipped(split)
            raise self.none_readable(split, len(items))
        return kept, ref

    def _nothing_found(self, split: str, message: str, skipped: list[str]) -> DatasetError:
        """Report ``skipped`` and return the error ``message`` (nothing of the kind found)."""
        self._skip(split, skipped)
        self.report_skipped(split)
        return DatasetError(message + (f" ({len(skipped)} other files skipped)" if skipped else ""))

    def none_readable(self, split: str, n: int) -> DatasetError:
        """The error for ``n`` files of ``split`` none of which could be read."""
        return DatasetError(
            f"none of the {n} {self.noun} files in {self._where(split)} is a {self.usable}"
        )

    def readable_names(self, split: str) -> dict[str, str]:
        """Key → name of each item of ``split`` whose header reads, in the order of
        :meth:`keys`, whatever its size (the size policy is not applied); for a folder the
        name is the file's path relative to :meth:`split_folder`. What is skipped is reported by
        :meth:`report_skipped` (``strict``: raised). Raises :class:`DatasetError` when the
        split has nothing readable."""
        where = self._where(split)
        kept, _ = self._probe_split(split, check_sizes=False)
        return {key: self._name(item, where) for key, item in kept.items()}

    # the Dataset interface ------------------------------------------------------------

    def keys(self, split: str) -> list[str]:
        """Keys of the files whose headers read, sorted (sizes checked from the headers;
        files that fail to decode are found by :meth:`read`)."""
        return list(self._plan(split)[0])

    def read(self, split: str, keys: list[str]) -> Samples:
        """The items with these keys, in this order, each file decoded once. Files that
        turn out unreadable are left out of the returned keys (and reported by
        :meth:`report_skipped`)."""
        items, ref = self._plan(split)
        where = self._where(split)
        loaded, kept, skipped = [], [], []
        for key in keys:
            if key not in items:
                raise DatasetError(f"no {self.noun} with key {key!r} in {where}")
            name = self._name(items[key], where)
            try:
                x = self._decode(items[key], name)
            except MediaReadError as exc:
                skipped.append(f"{name} ({exc.reason})")
                continue
            self._check_size(tuple(x.shape[-2:]), name, ref)  # headers can lie
            loaded.append(self._fit(x))
            kept.append(key)
        self._skip(split, skipped)
        if len({tuple(x.shape) for x in loaded}) > 1:  # resize = "keep"
            sizes = sorted({"x".join(map(str, x.shape[1:])) for x in loaded})
            raise DatasetError(
                f"{self.noun}s of {len(sizes)} sizes ({', '.join(sizes[:3])}…) cannot be read "
                f'as one batch; with resize = "keep" read them one key at a time'
            )
        if loaded:
            self._shape = tuple(loaded[0].shape)
            images = torch.stack(loaded)
        else:
            images = torch.zeros((0, *self.input_shape()), dtype=torch.uint8)
        return Samples(images=images, keys=kept)

    def load(self, split: str) -> Samples:
        """The whole split; unreadable files are skipped and reported in one warning."""
        samples = self.read(split, self.keys(split))
        self.report_skipped(split)
        if not samples.keys:
            raise self.none_readable(split, len(self.keys(split)))
        return samples


def _shown(what: list[str]) -> str:
    return ", ".join(what[:5]) + (f" and {len(what) - 5} more" if len(what) > 5 else "")


class ImageFolder(FileDataset):
    """Images in a folder (recursively): PNG, JPEG, BMP, GIF (first frame), TIFF, WebP, any
    bit depth and mode (see :func:`tok.media.read_image`). A ``train``/``test`` subfolder
    is used for that split when present, else (when there are no such subfolders) the
    whole folder serves every split.

    :param path: the folder.
    :param channels: 1 (grayscale) or 3 (RGB).
    :param size: ``[height, width]`` every image must have (or is brought to).
    :param resize: ``"error"`` (sizes must match), ``"resize"``, ``"center-crop"`` or
        ``"keep"`` (each image at its own size, read one at a time; no ``size``).
    :param strict: fail on unreadable files instead of skipping them.
    """

    supplied_args = ("channels", "size")
    source_extensions = IMAGE_EXTENSIONS

    def __init__(
        self,
        *,
        path: str,
        channels: int = 3,
        size: list[int] | None = None,
        resize: Resize = "error",
        strict: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        if channels not in (1, 3):
            raise DatasetError(f"{self.kind} channels must be 1 or 3, got {channels}")
        check_resize(resize, size)
        self.channels = channels
        self.size = tuple(size) if size is not None else None
        self.resize = resize
        self.strict = strict
        self._shape: tuple[int, int, int] | None = None

    def folder(self, split: str) -> Path:
        """The folder that holds ``split``: its subfolder when present, else the whole folder.

        A folder split into ``train``/``test`` subfolders that lacks ``split`` is
        an error (the whole folder would mix the other splits in).
        """
        if not self.path.is_dir():
            raise DatasetError(f"image folder {self.path} does not exist or is not a folder")
        return self.split_folder(split)

    _where = folder

    def _scan(self, split: str) -> tuple[dict[str, Path], list[str]]:
        """The image files of ``split`` by key, and the other files (to be reported as skipped)."""
        folder = self.folder(split)
        files, skipped = scan_folder(folder, IMAGE_EXTENSIONS, "an image file")
        if not files:
            message = f"no PNG/JPEG images (nor BMP, GIF, TIFF or WebP) in {folder}"
            raise self._nothing_found(split, message, skipped)
        return files, skipped

    def _name(self, item: Path, where: Path) -> str:
        return item.relative_to(where).as_posix()

    def _probe(self, item: Path) -> MediaInfo:
        return probe_image(item)

    def _decode(self, item: Path, name: str) -> torch.Tensor:
        return read_image(item, channels=self.channels)

    def input_shape(self) -> tuple[int, int, int]:
        """``(c, h, w)`` of the images (``size``, else the first image's from its header)."""
        if self.size is not None:
            return (self.channels, *self.size)
        if self._shape is None:
            split = "train" if (self.path / "train").is_dir() else "test"
            _, (_, hw) = self._plan(split)
            self._shape = (self.channels, *hw)
        return self._shape
