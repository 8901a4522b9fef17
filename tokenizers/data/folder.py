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
from typing import Literal

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from ..errors import DatasetError, ImageError
from .base import Dataset, Samples

__all__ = [
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


def _reason(exc: BaseException) -> str:
    """A decoder error in a few words, without torchvision's C++ source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\S+, \S+:\d+, ", "", text)
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


class ImageFolder(Dataset):
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
        if resize not in ("error", "resize", "center-crop"):
            raise DatasetError(f"resize must be 'error', 'resize' or 'center-crop', got {resize!r}")
        if resize != "error" and size is None:
            raise DatasetError(f"resize = {resize!r} needs size = [height, width]")
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
        sub = self.path / split
        if sub.is_dir():
            return sub
        present = [s for s in ("train", "test") if (self.path / s).is_dir()]
        if present:
            raise DatasetError(
                f"image folder {self.path} has no {split}/ subfolder (it is split into "
                f"{', '.join(p + '/' for p in present)}); choose one of those splits"
            )
        return self.path

    def _scan(self, split: str) -> tuple[dict[str, Path], list[str]]:
        """The image files of ``split`` by key, and the other files (to be reported as skipped)."""
        folder = self.folder(split)
        files: dict[str, Path] = {}
        skipped = []
        for p in list_files(folder):
            rel = p.relative_to(folder)
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(f"{rel.as_posix()} (not a PNG/JPEG file)")
                continue
            key = rel.with_suffix("").as_posix()
            if key in files:
                raise DatasetError(
                    f"{files[key].relative_to(folder).as_posix()} and {rel.as_posix()} in {folder} "
                    f"would both have the key {key!r}; rename or remove one of them"
                )
            files[key] = p
        if not files:
            self._report(skipped)
            raise DatasetError(
                f"no PNG/JPEG images in {folder}"
                + (f" ({len(skipped)} other files skipped)" if skipped else "")
            )
        return files, skipped

    def _report(self, skipped: list[str]) -> None:
        if not skipped:
            return
        shown = ", ".join(skipped[:5]) + (
            f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        if self.strict:
            raise ImageError(f"unreadable files in {self.path}: {shown}")
        warnings.warn(
            f"tok: skipped {len(skipped)} file(s) in {self.path} that are not readable images: {shown}",
            ImageSkippedWarning,
            stacklevel=3,
        )

    def keys(self, split: str) -> list[str]:
        """Keys of the image files; files that fail to decode are only found by :meth:`read`."""
        files, skipped = self._scan(split)
        self._report(skipped)
        return list(files)

    def _decode(self, path: Path) -> torch.Tensor:
        mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        with quiet_torchvision_io():
            return decode_image(data, mode=mode)

    def _fit(
        self, image: torch.Tensor, path: Path, first: tuple[Path, tuple[int, int]]
    ) -> torch.Tensor:
        hw = tuple(image.shape[-2:])
        target = self.size or first[1]
        if self.resize == "error":
            if hw != tuple(target):
                ref = (
                    f"size = {list(target)}"
                    if self.size
                    else f"{first[0].name} is {target[0]}x{target[1]}"
                )
                raise ImageError(
                    f"image {path} is {hw[0]}x{hw[1]} but {ref}; images must all have one size "
                    f'(or resize them: resize = "resize" or "center-crop" in a recipe, '
                    f"--resize resize or --resize center-crop for tok encode)"
                )
            return image
        if self.resize == "resize":
            return TF.resize(image, list(target), antialias=True)
        scale = max(target[0] / hw[0], target[1] / hw[1])
        scaled = [max(target[0], round(hw[0] * scale)), max(target[1], round(hw[1] * scale))]
        return TF.center_crop(TF.resize(image, scaled, antialias=True), list(target))

    def _try_decode(self, path: Path, folder: Path, skipped: list[str]) -> torch.Tensor | None:
        try:
            return self._decode(path)
        except (RuntimeError, ValueError, OSError) as exc:
            skipped.append(f"{path.relative_to(folder).as_posix()} (cannot decode: {_reason(exc)})")
            return None

    def readable_keys(self, split: str) -> list[str]:
        """Decode every file once (memory-light) and return the keys of the readable ones.

        Unreadable files (and files that are not images) are skipped with one
        warning; size problems raise here, before anything is written.
        """
        files, skipped = self._scan(split)
        folder = self.folder(split)
        kept = []
        first: tuple[Path, tuple[int, int]] | None = None
        for key, path in files.items():
            image = self._try_decode(path, folder, skipped)
            if image is None:
                continue
            if first is None:
                first = (path, tuple(image.shape[-2:]))
            self._fit(image, path, first)
            kept.append(key)
        self._report(skipped)
        if not kept:
            raise DatasetError(
                f"none of the {len(files)} image files in {folder} is a readable image"
            )
        return kept

    def read(self, split: str, keys: list[str]) -> Samples:
        """Decode the images with these keys; unreadable ones are skipped (with a warning)
        and left out of the returned keys."""
        files, _ = self._scan(split)
        return self._read(split, keys, files, [])

    def load(self, split: str) -> Samples:
        """The whole split; unreadable files and files that are not images are skipped with one warning."""
        files, skipped = self._scan(split)
        return self._read(split, list(files), files, skipped)

    def _read(
        self, split: str, keys: list[str], files: dict[str, Path], skipped: list[str]
    ) -> Samples:
        folder = self.folder(split)
        images, kept = [], []
        first: tuple[Path, tuple[int, int]] | None = None
        for key in keys:
            if key not in files:
                raise DatasetError(f"no image with key {key!r} in {folder}")
            path = files[key]
            image = self._try_decode(path, folder, skipped)
            if image is None:
                continue
            if first is None:
                first = (path, tuple(image.shape[-2:]))
            images.append(self._fit(image, path, first))
            kept.append(key)
        self._report(skipped)
        if not images:
            raise DatasetError(
                f"none of the {len(keys)} image files in {folder} is a readable image"
            )
        batch = torch.stack(images)
        self._shape = tuple(batch.shape[1:])
        return Samples(images=batch, keys=kept)

    def input_shape(self) -> tuple[int, int, int]:
        if self.size is not None:
            return (self.channels, *self.size)
        if self._shape is None:
            key = self.keys("train")[0]
            self.read("train", [key])
        return self._shape
