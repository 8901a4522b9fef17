"""webdataset-layout ``.tar`` shards: how tok reads them (what :class:`ImageShards` and
:class:`~tok.data.VideoShards` share, in one place) and the image shards.

Policy (also in the README and ``docs/design.md``):

- **Shards.** Uncompressed ``.tar`` files: a dataset's ``path`` is one shard, or a
  folder of them (found recursively and sorted, with the ``train``/``test`` split rule of
  the folder datasets; any other file is reported as skipped).
- **Samples.** Members ``<key>.<ext>`` sharing a key form one sample, the key and the
  extension split exactly as the ``webdataset`` library splits them
  (:func:`split_member`: ``__key__`` ``./000001`` for a member ``./000001.png`` written by
  ``tar -C DIR .``, ``digits/7/00012`` for ``digits/7/00012.png``). A sample's image (or
  video) is its one member whose extension — webdataset's field name — is one the dataset
  reads; other members (``json``, ``cls``, ``b.png`` of ``a.b.png``) are ignored, and so is
  every member webdataset drops (names it cannot split, like ``._a.png``; ``__meta__``
  names). Two images with one key are an error; a sample without one is reported as
  skipped. A member path with ``..`` is never read.
- **Reading.** Shards are listed with the standard library's ``tarfile`` (headers only)
  and each member is read straight from its offset in the shard (:class:`MediaFile`), so
  reading a sample by key needs no pass over the shard. A shard that cannot be opened, or
  is damaged part way, is reported as skipped (the members before the damage count).
- **Pixels.** As :class:`~tok.data.ImageFolder`: ``channels``, ``size``, ``resize``,
  ``strict``; unreadable members are skipped with one warning naming each as
  ``shard.tar:member`` and why.

``tok shards`` writes such shards from a folder (:mod:`tok.data.pack`).
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import DatasetError
from ..media import IMAGE_EXTENSIONS, MediaInfo, MediaReadError, probe_image, read_image, reason
from .folder import FileDataset, ImageFolder, walk_files

__all__ = ["ImageShards", "MediaFile", "TarShards", "split_member"]

_WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_WDS_META = re.compile(r"__[^/]*__($|/)")  # members webdataset skips (its skip_meta)


def split_member(name: str) -> tuple[str, str] | None:
    """``(key, field)`` of the tar member ``name`` as webdataset splits it: ``("clips/0001",
    "mp4")`` for ``clips/0001.mp4``, ``("a", "b.png")`` for ``a.b.png``, ``("./a", "png")``
    for ``./a.png``. ``None`` for a member webdataset drops (no dot in its file name, a
    ``__meta__`` name) and for a path with ``..``, which tok never reads."""
    m = _WDS_KEY.match(name)
    if m is None or _WDS_META.match(name) or ".." in name.split("/"):
        return None
    return m.group(1), m.group(2)


@dataclass(frozen=True)
class MediaFile:
    """Where one image or video is: the file ``path``, or ``size`` bytes at ``offset`` in the
    ``.tar`` shard ``path``. ``name`` is how messages name it (``shard.tar:member``)."""

    path: Path
    name: str
    offset: int | None = None
    size: int | None = None

    def data(self) -> str | bytes:
        """The file's path, or its bytes read at their offset in the shard.

        :raises MediaReadError: the shard cannot be read, or ends before the member does.
        """
        if self.offset is None:
            return str(self.path)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(self.size)
        except OSError as exc:
            raise MediaReadError(self.name, f"cannot read: {reason(exc)}") from None
        if len(data) != self.size:
            raise MediaReadError(
                self.name, f"cut short ({len(data)} of {self.size} bytes in the shard)"
            )
        return data


def _tar_members(shard: Path, name: str, skipped: list[str]) -> list[tarfile.TarInfo]:
    """The regular files in the tar ``shard``, in order. A shard that cannot be opened, or
    is damaged part way, adds its reason to ``skipped`` (the members before the damage count)."""
    members = []
    try:
        with tarfile.open(shard, "r:") as tar:
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    skipped.append(f"{name} (damaged after {len(members)} files: {reason(exc)})")
                    break
                if member is None:
                    break
                if member.isfile():
                    members.append(member)
    except (tarfile.TarError, OSError) as exc:
        skipped.append(f"{name} (not a readable tar file: {reason(exc)})")
    return members


class TarShards(FileDataset):
    """What :class:`ImageShards` and :class:`~tok.data.VideoShards` share: finding the
    shards of a split and listing their samples as :class:`MediaFile` items (see the module
    docstring). Subclasses set :attr:`member_extensions` and probe and decode the items."""

    #: the extensions (lower case, with the dot) of the member that is a sample's image or
    #: video, i.e. webdataset's field names ``png``, ``mp4`` …
    member_extensions: ClassVar[tuple[str, ...]] = ()
    source_extensions = (".tar",)

    def _where(self, split: str) -> Path:
        return self.split_root(split)

    def _name(self, item: MediaFile, where: Path) -> str:
        return item.name

    def shards(self, split: str) -> tuple[list[Path], list[str]]:
        """The ``.tar`` shards of ``split`` (sorted), and the other files found beside them."""
        root = self.split_root(split)
        if root.is_file():
            if root.suffix.lower() != ".tar":
                raise DatasetError(f"{root} is not a .tar shard")
            return [root], []
        shards, other = [], []
        found, problems = walk_files(root)
        for p in found:
            (shards if p.suffix.lower() == ".tar" else other).append(p)
        return shards, [
            *problems,
            *(f"{p.relative_to(root).as_posix()} (not a .tar shard)" for p in other),
        ]

    def _scan(self, split: str) -> tuple[dict[str, MediaFile], list[str]]:
        shards, skipped = self.shards(split)
        root = self.split_root(split)
        base = root.parent if root.is_file() else root
        items: dict[str, MediaFile] = {}
        others: dict[str, str] = {}  # keys of samples that have no image or video (yet)
        for shard in shards:
            sname = shard.relative_to(base).as_posix()
            for member in _tar_members(shard, sname, skipped):
                split_name = split_member(member.name)  # None: webdataset drops it too
                if split_name is None:
                    continue
                key, field = split_name  # "./a" for ./a.png, "clips/" for clips/._a.png
                name = f"{sname}:{member.name}"
                if f".{field.lower()}" not in self.member_extensions:  # "json", "b.png" …
                    others.setdefault(key, name)
                    continue
                if key in items:
                    raise DatasetError(
                        f"{items[key].name} and {name} both have the key {key!r}; "
                        f"a sample may hold one {self.noun}"
                    )
                items[key] = MediaFile(
                    path=shard, name=name, offset=member.offset_data, size=member.size
                )
        article = "an" if self.noun[0] in "aeiou" else "a"
        skipped += [
            f"{name} (a sample without {article} {self.noun})"
            for k, name in others.items()
            if k not in items
        ]
        if not items:
            message = f"no {self.noun}s in the .tar shards of {root}"
            raise self._nothing_found(split, message, skipped)
        return items, skipped


class ImageShards(TarShards, ImageFolder):
    """Images in webdataset-style ``.tar`` shards: one shard, or a folder of them (with
    ``train/`` and ``test/`` subfolders as an image folder may have). What ``tok shards``
    writes.

    A sample's image is its member ``KEY.png`` (``jpg jpeg webp bmp gif tif tiff``), any
    bit depth and mode, decoded as :class:`~tok.data.ImageFolder` decodes files; its key
    is webdataset's ``__key__``; ``KEY.cls`` and ``KEY.json`` members are ignored.
    :meth:`read` yields uint8 ``(n, channels, h, w)``.

    :param path: a ``.tar`` shard, or a folder of them.
    :param channels: 1 (grayscale) or 3 (RGB).
    :param size: ``[height, width]`` every image must have (or is brought to).
    :param resize: ``"error"`` (sizes must match), ``"resize"`` or ``"center-crop"``.
    :param strict: fail on unreadable members and shards instead of skipping them.
    :raises DatasetError: bad options, no shards or no images, two images with one key;
        :class:`~tok.errors.ImageError` for a size that does not fit, or (``strict``) an
        unreadable member.
    """

    kind = "image shards"
    member_extensions = IMAGE_EXTENSIONS

    def _probe(self, item: MediaFile) -> MediaInfo:
        return probe_image(item.data(), name=item.name)

    def _decode(self, item: MediaFile, name: str) -> torch.Tensor:
        return read_image(item.data(), channels=self.channels, name=name)
