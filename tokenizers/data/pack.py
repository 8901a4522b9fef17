"""Packing a folder of images or videos into webdataset-layout ``.tar`` shards: ``tok shards``.

Policy (also in the README and ``docs/design.md``):

- **What is packed.** The folder's images or its videos — whichever it holds more of,
  as ``tok encode`` decides (:func:`tok.data.sources.source_media`) — found as
  :class:`~tok.data.ImageFolder` and :class:`~tok.data.VideoFolder` find them:
  recursively, sorted, hidden files ignored; a file whose header does not read (a
  ``.txt``, a truncated PNG) is skipped with one warning naming it. Sizes may differ: a
  shard holds files, not tensors. A folder with ``train/`` and ``test/`` subfolders is
  packed split by split into ``OUT/train/`` and ``OUT/test/``.
- **Samples.** Each file is one sample: its **original bytes** as ``KEY.<ext>`` (the
  extension in lower case), ``KEY.json`` ``{"path": "<its path relative to SRC>"}`` and,
  for a file in a subfolder of its split's folder, ``KEY.cls`` holding that first
  subfolder's name (its class, as torchvision's ``ImageFolder`` reads subfolders). The
  key is the folder datasets' key — the relative path without the extension — with every
  dot of its file name turned into ``_``: webdataset ends a key at the file name's first
  dot (``a.b.png`` would be the key ``a`` with a field ``b.png``). Two files whose keys
  then collide, and a key webdataset would drop (in a ``__name__`` folder), are errors.
- **Bytes.** Samples in key order, ``per_shard`` to a shard, named
  ``shard-000000.tar`` …; members in the PAX format (USTAR headers, plus a PAX record for
  a long or non-ASCII name) with mtime 0, uid and gid 0, no user or group name and mode
  0644, so packing a folder again gives byte-identical shards. Each shard is written
  atomically (:func:`tok._io.atomic_path`) into a new or empty folder; a command that
  fails removes the shards it wrote.

:class:`~tok.data.ImageShards` and :class:`~tok.data.VideoShards` read the result.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._io import atomic_path, check_writable, os_reason
from ..errors import DatasetError, FileAccessError, OutputDirError
from ..locks import folder_lock
from ..media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .folder import FileDataset, ImageFolder, walk_once
from .shards import split_member
from .sources import source_media
from .video import VideoFolder

__all__ = ["SHARD_NAME", "pack_folder"]

#: the file name of a split's shard number ``i``
SHARD_NAME = "shard-{:06d}.tar"


@dataclass(frozen=True)
class _Sample:
    """One file to pack: its key in the shards, the file, its path relative to the source
    folder (``KEY.json``) and its class, the first subfolder of its split (``KEY.cls``)."""

    key: str
    path: Path
    source: str
    label: str | None

    def members(self) -> list[tuple[str, bytes]]:
        """``(member name, bytes)`` of the sample: the file as it is, its class, its path."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise FileAccessError(f"cannot read {self.path}: {os_reason(exc)}") from exc
        members = [(f"{self.key}{self.path.suffix.lower()}", data)]
        if self.label is not None:
            members.append((f"{self.key}.cls", os.fsencode(self.label)))
        members.append((f"{self.key}.json", json.dumps({"path": self.source}).encode()))
        return members


def _samples(dataset: FileDataset, split: str, src: Path) -> list[_Sample]:
    """The readable files of ``split`` as samples, sorted by key (what was skipped is
    warned about now). Raises :class:`DatasetError` for keys webdataset cannot hold apart."""
    folder = dataset.split_folder(split)
    names = dataset.readable_names(split)
    dataset.report_skipped(split)
    samples: dict[str, _Sample] = {}
    for key, name in names.items():
        *folders, file = key.split("/")
        shard_key = "/".join([*folders, file.replace(".", "_")])
        path = folder / name
        source = path.relative_to(src).as_posix()
        if shard_key in samples:
            raise DatasetError(
                f"{samples[shard_key].source} and {source} would both be the sample "
                f"{shard_key!r} (a webdataset key ends at the file name's first dot, so "
                f"tok shards turns those dots into _); rename one of them"
            )
        ext = path.suffix.lower()
        if split_member(shard_key + ext) != (shard_key, ext[1:]):
            raise DatasetError(
                f"{source} cannot be a webdataset sample: webdataset skips the key "
                f"{shard_key!r} (a __name__ folder); rename it"
            )
        label = name.split("/")[0] if "/" in name else None
        samples[shard_key] = _Sample(key=shard_key, path=path, source=source, label=label)
    return [samples[key] for key in sorted(samples)]


def _write_shard(path: Path, samples: list[_Sample], bar: tqdm) -> None:
    """Write ``samples`` into the tar file ``path`` atomically, every header deterministic."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for name, data in sample.members():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            bar.update()


def pack_folder(
    src: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    per_shard: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Pack the images or the videos of the folder ``src`` into webdataset-layout ``.tar``
    shards in the new or empty folder ``out``, ``per_shard`` samples to a shard (see the
    module docstring).

    Returns ``samples`` (how many were packed), ``shards`` (how many files were written),
    ``media`` (``"image"`` or ``"video"``) and ``splits`` (the split subfolders written;
    empty for a folder without ``train/``/``test/``).

    :raises DatasetError: ``src`` is no folder, holds no images or videos, or a split of it
        nothing readable; two files would have one key.
    :raises OutputDirError: ``out`` exists and is not an empty folder.
    :raises FileAccessError: a file cannot be read, or a shard cannot be written.
    """
    if isinstance(per_shard, bool) or per_shard < 1:
        raise DatasetError(f"--per-shard must be at least 1, got {per_shard}")
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{src} is not a folder; tok shards packs a folder of images or videos")
    out = Path(out)
    check_writable(out, what="shards")
    with folder_lock(out), walk_once():  # one writer per folder; the source walked once
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise OutputDirError(
                f"output folder {out} already exists and is not empty; tok never overwrites "
                "files — choose a new --out"
            )
        media = source_media(str(root))
        if media is None:
            raise DatasetError(
                f"no images ({' '.join(IMAGE_EXTENSIONS)}) or videos "
                f"({' '.join(VIDEO_EXTENSIONS)}) in {src}"
            )
        dataset = (ImageFolder if media == "image" else VideoFolder)(path=str(root))
        splits = [s for s in dataset.splits if (root / s).is_dir()]
        # a folder without train/ and test/ serves every split: pack it once, as it is
        plans = [
            (out / s if splits else out, _samples(dataset, s, root)) for s in splits or ["test"]
        ]
        made = not out.exists()
        written: list[Path] = []
        try:
            total = sum(len(samples) for _, samples in plans)
            with tqdm(total=total, desc="shards", unit=media, disable=not progress) as bar:
                for folder, samples in plans:
                    for index, start in enumerate(range(0, len(samples), per_shard)):
                        path = folder / SHARD_NAME.format(index)
                        _write_shard(path, samples[start : start + per_shard], bar)
                        written.append(path)
        except BaseException:  # leave the folder as it was: new or empty
            for path in written:
                path.unlink(missing_ok=True)
            for folder in [*(out / s for s in splits), *([out] if made else [])]:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    return {
        "samples": total,
        "shards": len(written),
        "media": media,
        "splits": splits,
    }
