"""A folder of PNG/JPEG images, decoded with ``torchvision.io``.

Policy (also in the README):

- Files are found recursively and sorted; a key is the path relative to the
  folder without its extension (``digits/7/00012``).
- Hidden files (``.name``) are ignored. Any other file that is not a
  readable image — a ``.txt``, a truncated PNG — is **skipped with one
  warning** that names it (``strict = true`` makes it an error instead).
  A folder with no readable image is an error.
- Grayscale and RGB(A) images are converted to the requested channels.
- Size: ``resize = "error"`` (default) requires every image to have the same
  size (``size`` if given); ``"resize"`` resizes to ``size``;
  ``"center-crop"`` scales the short side to ``size`` and crops the centre.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from ..errors import DatasetError, ImageError
from .base import Dataset, Samples

__all__ = ["ImageFolder", "ImageSkippedWarning", "IMAGE_EXTENSIONS", "list_files"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

Resize = Literal["error", "resize", "center-crop"]


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
    split when present, else the whole folder serves every split.

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
        if not self.path.is_dir():
            raise DatasetError(f"image folder {self.path} does not exist or is not a folder")
        sub = self.path / split
        return sub if sub.is_dir() else self.path

    def _files(self, split: str) -> dict[str, Path]:
        folder = self.folder(split)
        files, skipped = {}, []
        for p in list_files(folder):
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(f"{p.relative_to(folder)} (not a PNG/JPEG file)")
                continue
            files[p.relative_to(folder).with_suffix("").as_posix()] = p
        self._report(skipped)
        if not files:
            raise DatasetError(
                f"no PNG/JPEG images in {folder}"
                + (f" ({len(skipped)} other files skipped)" if skipped else "")
            )
        return files

    def _report(self, skipped: list[str]) -> None:
        if not skipped:
            return
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        if self.strict:
            raise ImageError(f"unreadable files in {self.path}: {shown}")
        warnings.warn(
            f"tok: skipped {len(skipped)} file(s) in {self.path} that are not readable images: {shown}",
            ImageSkippedWarning,
            stacklevel=3,
        )

    def keys(self, split: str) -> list[str]:
        """Keys of the image files; files that fail to decode are only found by :meth:`read`."""
        return list(self._files(split))

    def _decode(self, path: Path) -> torch.Tensor:
        mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=mode)

    def _fit(self, image: torch.Tensor, path: Path, first: tuple[Path, tuple[int, int]]) -> torch.Tensor:
        hw = tuple(image.shape[-2:])
        target = self.size or first[1]
        if self.resize == "error":
            if hw != tuple(target):
                ref = f"size = {list(target)}" if self.size else f"{first[0].name} is {target[0]}x{target[1]}"
                raise ImageError(
                    f"image {path} is {hw[0]}x{hw[1]} but {ref}; images must all have one size "
                    f"(or set resize = \"resize\" / \"center-crop\" with a size)"
                )
            return image
        if self.resize == "resize":
            return TF.resize(image, list(target), antialias=True)
        scale = max(target[0] / hw[0], target[1] / hw[1])
        scaled = [max(target[0], round(hw[0] * scale)), max(target[1], round(hw[1] * scale))]
        return TF.center_crop(TF.resize(image, scaled, antialias=True), list(target))

    def readable_keys(self, split: str) -> list[str]:
        """Decode every file once (memory-light) and return the keys of the readable ones.

        Unreadable files are skipped with one warning; size problems raise here,
        before anything is written.
        """
        files = self._files(split)
        kept, skipped = [], []
        first: tuple[Path, tuple[int, int]] | None = None
        for key, path in files.items():
            try:
                image = self._decode(path)
            except (RuntimeError, ValueError, OSError) as exc:
                skipped.append(f"{path.name} (cannot decode: {str(exc).splitlines()[0][:80]})")
                continue
            if first is None:
                first = (path, tuple(image.shape[-2:]))
            self._fit(image, path, first)
            kept.append(key)
        self._report(skipped)
        if not kept:
            raise DatasetError(f"none of the {len(files)} files in {self.folder(split)} is a readable image")
        return kept

    def read(self, split: str, keys: list[str]) -> Samples:
        """Decode the images with these keys; unreadable ones are skipped (with a warning)
        and left out of the returned keys."""
        files = self._files(split)
        images, kept, skipped = [], [], []
        first: tuple[Path, tuple[int, int]] | None = None
        for key in keys:
            if key not in files:
                raise DatasetError(f"no image with key {key!r} in {self.folder(split)}")
            path = files[key]
            try:
                image = self._decode(path)
            except (RuntimeError, ValueError, OSError) as exc:
                skipped.append(f"{path.name} (cannot decode: {str(exc).splitlines()[0][:80]})")
                continue
            if first is None:
                first = (path, tuple(image.shape[-2:]))
            images.append(self._fit(image, path, first))
            kept.append(key)
        self._report(skipped)
        if not images:
            raise DatasetError(f"none of the {len(keys)} files in {self.folder(split)} is a readable image")
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
