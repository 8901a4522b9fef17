"""A folder of PNG/JPEG images, decoded with ``torchvision.io``.

Policy (also in the README):

- Files are found recursively and sorted; a key is the path relative to the
  folder without its extension (``digits/7/00012``).
- Hidden files (``.name``) are ignored. Any other file that is not a
  readable image — a ``.txt``, a truncated PNG — is **skipped with one
  warning** that names it (``strict = true`` makes it an error instead).
  A folder with no readable image is an error.
- A ``train``/``test`` subfolder serves that split; a folder without such
  subfolders serves every split; a folder that has them but lacks the
  requested one is an error (the whole folder would mix the splits).
- Two files with one key (``a.png`` and ``a.jpg``) are an error.
- Grayscale and RGB(A) images are converted to the requested channels.
- Size: ``resize = "error"`` (default) requires every image to have the same
  size (``size`` if given); ``"resize"`` resizes to ``size``;
  ``"center-crop"`` scales the short side to ``size`` and crops the centre.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from ..errors import DatasetError, ImageError
from .base import Dataset, Samples

__all__ = [
    "FileDataset",
    "ImageFolder",
    "ImageSkippedWarning",
    "IMAGE_EXTENSIONS",
    "list_files",
    "quiet_torchvision_io",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_TV_IO_DEPRECATION = r"The image decoding and encoding capabilities of TorchVision are deprecated"

Resize = Literal["error", "resize", "center-crop"]


@contextlib.contextmanager
def quiet_torchvision_io() -> Iterator[None]:
    """Silence the DeprecationWarning torchvision >= 0.29 raises on *every* image decode/encode.

    It points at TorchCodec and is nothing a user of tok can act on; without
    this, tok's one-line warnings would repeat it once per image.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_IO_DEPRECATION, category=DeprecationWarning)
        yield


def reason(exc: BaseException) -> str:
    """A decoder error in a few words: without torchvision's C++ source location,
    FFmpeg's errno or the file name (the warnings name the file themselves)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\S+, \S+:\d+, ", "", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = re.sub(r": '[^']*'$", "", text)
    return text if len(text) <= 80 else text[:77] + "..."


class ImageSkippedWarning(UserWarning):
    """Files in an image folder were skipped because they are not readable images."""


def list_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, sorted by relative path."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def check_resize(resize: str, size: list[int] | None) -> None:
    """The ``resize``/``size`` rules image folders and video datasets share."""
    if resize not in ("error", "resize", "center-crop"):
        raise DatasetError(f"resize must be 'error', 'resize' or 'center-crop', got {resize!r}")
    if resize != "error" and size is None:
        raise DatasetError(f"resize = {resize!r} needs size = [height, width]")


def no_files_error(message: str, skipped: list[str]) -> DatasetError:
    """``message`` (nothing usable found), with how many other files were skipped."""
    return DatasetError(message + (f" ({len(skipped)} other files skipped)" if skipped else ""))


def scan_folder(
    folder: Path, extensions: tuple[str, ...], not_what: str
) -> tuple[dict[str, Path], list[str]]:
    """The files of ``folder`` with one of ``extensions`` by key (the relative path without
    its extension), and the others as skipped (``"<name> (not <not_what>)"``).

    Two files with one key are an error.
    """
    files: dict[str, Path] = {}
    skipped = []
    for p in list_files(folder):
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
    reporting skipped files, the size policy and reading items by key.

    Subclasses set the class attributes below and provide :meth:`_scan`,
    :meth:`_where` and :meth:`_load`.
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

    # what subclasses provide
    def _scan(self, split: str) -> tuple[dict, list[str]]:  # pragma: no cover
        """The items of ``split`` by key, and what was skipped while listing them."""
        raise NotImplementedError

    def _where(self, split: str) -> Path:  # pragma: no cover
        """The folder (or file) messages about ``split`` name."""
        raise NotImplementedError

    def _load(self, item, where: Path, skipped: list[str], first: list) -> torch.Tensor | None:
        """``item`` decoded and fitted to the policy, or ``None`` (reason added to ``skipped``).

        ``first`` holds the name and shape of the first item read (the reference
        when no ``size`` is set).
        """
        raise NotImplementedError  # pragma: no cover

    def split_folder(self, split: str) -> Path:
        """``split``'s subfolder of the folder when present, else the whole folder.

        A folder split into ``train``/``test`` subfolders that lacks ``split`` is
        an error (the whole folder would mix the other splits in).
        """
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

    def _report(self, skipped: list[str]) -> None:
        if not skipped:
            return
        shown = ", ".join(skipped[:5]) + (
            f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        if self.strict:
            raise self.strict_error(f"{self.strict_what} in {self.path}: {shown}")
        warnings.warn(
            f"tok: skipped {len(skipped)} file(s) in {self.path} that are not "
            f"{self.usable}s: {shown}",
            self.skipped_warning,
            stacklevel=3,
        )

    def _fit(
        self, x: torch.Tensor, name: str, ref_name: str, ref_hw: tuple[int, ...]
    ) -> torch.Tensor:
        """``x`` (``(..., h, w)``) brought to ``size`` (or the reference ``ref_hw`` of the
        item ``ref_name``) under the resize policy; a mismatch with ``"error"`` raises."""
        hw = tuple(x.shape[-2:])
        target = self.size or ref_hw
        if self.resize == "error":
            if hw != tuple(target):
                ref = (
                    f"size = {list(target)}"
                    if self.size
                    else f"{ref_name} is {target[0]}x{target[1]}"
                )
                raise self.size_error(
                    f"{self.noun} {name} is {hw[0]}x{hw[1]} but {ref}; {self.noun}s must all "
                    f'have one size (or resize them: resize = "resize" or "center-crop" in a '
                    f"recipe, --resize resize or --resize center-crop for tok encode)"
                )
            return x
        if self.resize == "resize":
            return TF.resize(x, list(target), antialias=True)
        scale = max(target[0] / hw[0], target[1] / hw[1])
        scaled = [max(target[0], round(hw[0] * scale)), max(target[1], round(hw[1] * scale))]
        return TF.center_crop(TF.resize(x, scaled, antialias=True), list(target))

    def _none_readable(self, where: Path, n: int) -> DatasetError:
        return DatasetError(f"none of the {n} {self.noun} files in {where} is a {self.usable}")

    # the Dataset interface
    def keys(self, split: str) -> list[str]:
        """Keys of the files (sorted); files that fail to decode are only found by :meth:`read`."""
        items, skipped = self._scan(split)
        self._report(skipped)
        return list(items)

    def readable_keys(self, split: str) -> list[str]:
        """Decode every file once (memory-light) and return the keys of the readable ones.

        Unreadable files (and files of other kinds) are skipped with one
        warning; size (and length) problems raise here, before anything is written.
        """
        items, skipped = self._scan(split)
        where = self._where(split)
        first: list = []
        kept = [
            k for k, item in items.items() if self._load(item, where, skipped, first) is not None
        ]
        self._report(skipped)
        if not kept:
            raise self._none_readable(where, len(items))
        return kept

    def read(self, split: str, keys: list[str]) -> Samples:
        """The items with these keys; unreadable ones are skipped (with a warning) and left
        out of the returned keys."""
        items, _ = self._scan(split)
        return self._read(split, keys, items, [])

    def load(self, split: str) -> Samples:
        """The whole split; unreadable files and files of other kinds are skipped with one warning."""
        items, skipped = self._scan(split)
        return self._read(split, list(items), items, skipped)

    def _read(self, split: str, keys: list[str], items: dict, skipped: list[str]) -> Samples:
        where = self._where(split)
        loaded, kept = [], []
        first: list = []
        for key in keys:
            if key not in items:
                raise DatasetError(f"no {self.noun} with key {key!r} in {where}")
            x = self._load(items[key], where, skipped, first)
            if x is not None:
                loaded.append(x)
                kept.append(key)
        self._report(skipped)
        if not loaded:
            raise self._none_readable(where, len(keys))
        batch = torch.stack(loaded)
        self._shape = tuple(batch.shape[1:])
        return Samples(images=batch, keys=kept)


class ImageFolder(FileDataset):
    """Images in a folder (recursively). A ``train``/``test`` subfolder is used for that
    split when present, else (when there are no such subfolders) the whole folder serves
    every split.

    :param path: the folder.
    :param channels: 1 (grayscale) or 3 (RGB).
    :param size: ``[height, width]`` the images must have or are brought to.
    :param resize: ``"error"``, ``"resize"`` or ``"center-crop"`` (see module docs).
    :param strict: fail on unreadable files instead of skipping them.
    """

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
            raise DatasetError(f"image folder channels must be 1 or 3, got {channels}")
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
        files, skipped = scan_folder(folder, IMAGE_EXTENSIONS, "a PNG/JPEG file")
        if not files:
            self._report(skipped)
            raise no_files_error(f"no PNG/JPEG images in {folder}", skipped)
        return files, skipped

    def _decode(self, path: Path) -> torch.Tensor:
        mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        with quiet_torchvision_io():
            return decode_image(data, mode=mode)

    def _load(
        self, path: Path, where: Path, skipped: list[str], first: list
    ) -> torch.Tensor | None:
        try:
            image = self._decode(path)
        except (RuntimeError, ValueError, OSError) as exc:
            skipped.append(f"{path.relative_to(where).as_posix()} (cannot decode: {reason(exc)})")
            return None
        if not first:
            first.append((path.name, tuple(image.shape[-2:])))
        return self._fit(image, str(path), *first[0])

    def input_shape(self) -> tuple[int, int, int]:
        if self.size is not None:
            return (self.channels, *self.size)
        if self._shape is None:
            key = self.keys("train")[0]
            self.read("train", [key])
        return self._shape
