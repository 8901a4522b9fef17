"""Video files: a folder of videos and webdataset-style ``.tar`` shards, decoded with PyAV.

Policy (also in the README and ``docs/design.md``):

- **Files.** ``VideoFolder`` reads ``.mp4 .avi .gif .webm .mkv .mov`` files
  recursively, sorted; a key is the path relative to the folder without its
  extension (``clips/cat/0001``). Hidden files are ignored; any other file is
  reported as skipped. A ``train``/``test`` subfolder serves that split, a
  folder without them serves every split, a folder with one but not the
  other is an error for the missing split. Two files with one key are an error.
- **Shards.** ``VideoShards`` reads uncompressed ``.tar`` files in the
  webdataset layout (one file, or a folder of them with the same split rule):
  the members ``<key>.<ext>`` sharing a key form one sample, the key being the
  member path up to the first dot of its file name (webdataset's
  ``__key__``). A sample's video is its one member whose name ends in a video
  extension; other members (``.json``, ``.cls`` …) are ignored. Shards are
  read with the standard library's ``tarfile`` (each video's bytes are read
  straight from its offset), so reading a sample by key needs no pass over
  the shard.
- **Frames.** Every frame is decoded to RGB; ``channels = 1`` converts by luma
  (as image folders do). ``fps = None`` keeps the source's frames as they
  are; ``fps = F`` resamples to F frames per second by taking, for each
  output time ``k / F``, the source frame whose timestamp is nearest (the
  earlier one on a tie): frames are repeated or dropped, never blended.
  ``frames = N`` is the clip length: the first N (resampled) frames are
  used; a video with fewer is **skipped with the warning** below
  (``strict = true``: an error). ``frames = None`` requires every video to
  have the same number of frames.
- **Size.** As image folders: ``resize = "error"`` (default) requires one
  size (``size`` if given), ``"resize"`` resizes every frame to ``size``,
  ``"center-crop"`` scales the short side and crops the centre.
- **Unreadable files** (not a video, truncated, no video stream, too short)
  are **skipped with one warning** (:class:`VideoSkippedWarning`) naming each
  file and why; ``strict = true`` makes that an error. No readable video is
  an error.

:func:`write_video` writes ``(t, c, h, w)`` uint8 frames as an mp4 (H.264,
``libx264``; lossy) or a GIF (lossless for gray, one adaptive palette of at
most 256 colours per frame for RGB), atomically.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_path
from ..errors import DatasetError
from .base import to_channels
from .folder import (
    FileDataset,
    ImageSkippedWarning,
    Resize,
    check_resize,
    list_files,
    no_files_error,
    reason,
    scan_folder,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoFolder",
    "VideoShards",
    "VideoReadError",
    "VideoSkippedWarning",
    "read_video",
    "side_by_side",
    "write_video",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".gif", ".webm", ".mkv", ".mov")
VIDEO_FORMATS = ("mp4", "gif")


class VideoSkippedWarning(ImageSkippedWarning):
    """Videos were skipped because they cannot be decoded or are too short."""


class VideoReadError(DatasetError):
    """A video file cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# reading ------------------------------------------------------------------------


def _nearest(times: list[float], fps: float, count: int) -> list[int]:
    """For output times ``k / fps`` (``k < count``), the index of the nearest source time."""
    src = torch.tensor(times, dtype=torch.float64)
    want = torch.arange(count, dtype=torch.float64) / fps
    right = torch.searchsorted(src, want).clamp(max=len(times) - 1)
    left = (right - 1).clamp(min=0)
    take_left = (want - src[left]) <= (src[right] - want) + 1e-9
    return torch.where(take_left, left, right).tolist()


def read_video(
    source: str | Path | bytes, *, fps: float | None = None, frames: int | None = None
) -> Tensor:
    """Decode a video file (a path, or its bytes) into uint8 RGB frames ``(t, 3, h, w)``.

    ``fps`` resamples by nearest timestamp (``None``: the frames as stored);
    ``frames`` stops after that many output frames (fewer are returned when
    the video is shorter). Raises :class:`VideoReadError` (naming the file and
    the reason) when the data is not a decodable video.
    """
    import av  # imported here: only videos need PyAV

    name = "video data" if isinstance(source, bytes) else str(source)
    raw = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    arrays: list[np.ndarray] = []
    times: list[float] = []
    last_duration = 0.0
    try:
        with av.open(raw, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoReadError(name, "no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    t = len(arrays) / (rate or 1.0)
                if times and t <= times[-1]:  # broken timestamps: fall back to the frame count
                    t = times[-1] + 1.0 / (rate or 1.0)
                arrays.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
                if frame.duration and frame.time_base:
                    last_duration = float(frame.duration * frame.time_base)
                # enough frames: the clip's, or (resampling) one past its last output time
                if frames is not None and (
                    len(arrays) >= frames if fps is None else t - times[0] > frames / fps
                ):
                    break
    except VideoReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise VideoReadError(name, f"cannot decode: {reason(exc)}") from None
    if not arrays:
        raise VideoReadError(name, "no frames")
    video = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if fps is None:
        return video if frames is None else video[:frames]
    rel = [t - times[0] for t in times]
    if not last_duration:
        last_duration = (rel[-1] / (len(rel) - 1)) if len(rel) > 1 else 1.0 / (rate or fps)
    count = max(1, int(np.floor((rel[-1] + last_duration) * fps + 1e-6)))
    if frames is not None:
        count = min(count, frames)
    return video[_nearest(rel, fps, count)]


# writing ------------------------------------------------------------------------


def _rate(fps: float) -> Fraction:
    if not fps or fps <= 0:
        raise DatasetError(f"fps must be positive, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _gif_frame(frame: np.ndarray):
    """One RGB frame ``(h, w, 3)`` as a PyAV pal8 frame with its own adaptive palette."""
    import av
    from PIL import Image

    image = Image.fromarray(frame).quantize(
        256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    palette = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[:, 0] = 255
    argb[: len(palette), 1:] = palette
    return av.VideoFrame.from_ndarray((np.asarray(image), argb), format="pal8")


def write_video(
    path: str | Path, frames: Tensor, *, fps: float = 8.0, format: str | None = None
) -> Path:
    """Write uint8 frames ``(t, c, h, w)`` (c = 1 or 3) to ``path`` atomically; return the path.

    ``format`` is ``"mp4"`` (H.264 via libx264, yuv420p when height and width
    are even — what every player shows — else yuv444p; lossy) or ``"gif"``
    (lossless for gray frames, one 256-colour adaptive palette per frame for
    RGB); default: the path's suffix.
    """
    import av

    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in VIDEO_FORMATS:
        raise DatasetError(f"cannot write {path}: video format must be mp4 or gif, got {fmt!r}")
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise DatasetError(
            f"cannot write {path}: frames must be uint8 (t, 1 or 3, h, w), "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    t, c, h, w = frames.shape
    gray = c == 1
    array = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), "w", format=fmt)
        try:
            if fmt == "mp4":
                stream = container.add_stream("libx264", rate=_rate(fps))
                stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
                stream.options = {"crf": "18"}
            else:
                stream = container.add_stream("gif", rate=_rate(fps))
                stream.pix_fmt = "gray" if gray else "pal8"
            stream.width, stream.height = w, h
            for frame in array:
                if fmt == "gif" and not gray:
                    vf = _gif_frame(frame)
                elif gray and fmt == "gif":
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[..., 0]), "gray")
                else:
                    rgb = np.repeat(frame, 3, axis=-1) if gray else frame
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return path


def side_by_side(videos: Tensor, gap: int = 2) -> Tensor:
    """Videos ``(n, c, t, h, w)`` placed left to right with ``gap`` black pixels between them.

    Returns frames ``(t, c, h, n * w + (n - 1) * gap)`` (uint8 like the input).
    """
    n, c, t, h, w = videos.shape
    out = torch.zeros((t, c, h, n * w + (n - 1) * gap), dtype=videos.dtype)
    for i in range(n):
        x = i * (w + gap)
        out[..., x : x + w] = videos[i].permute(1, 0, 2, 3)
    return out


# datasets -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """Where one video is: a file, or ``size`` bytes at ``offset`` in a tar shard."""

    path: Path
    name: str  # how messages name it
    offset: int | None = None
    size: int | None = None

    def data(self) -> str | bytes:
        if self.offset is None:
            return str(self.path)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise VideoReadError(
                self.name, f"cut short ({len(data)} of {self.size} bytes in the shard)"
            )
        return data


class _VideoDataset(FileDataset):
    """What :class:`VideoFolder` and :class:`VideoShards` share: the frame policy (the size
    policy, skipping and reading by key come from :class:`~tok.data.folder.FileDataset`)."""

    noun = "video"
    kind = "video"
    usable = "usable video"
    strict_error = DatasetError
    strict_what = "unreadable videos"
    size_error = DatasetError
    skipped_warning = VideoSkippedWarning

    def __init__(
        self,
        *,
        path: str,
        channels: int = 3,
        frames: int | None = None,
        fps: float | None = None,
        size: list[int] | None = None,
        resize: Resize = "error",
        strict: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        name = type(self).__name__
        if channels not in (1, 3):
            raise DatasetError(f"{name} channels must be 1 or 3, got {channels!r}")
        if frames is not None and (isinstance(frames, bool) or frames < 1):
            raise DatasetError(f"{name} frames must be a positive number of frames, got {frames!r}")
        if fps is not None and (isinstance(fps, bool) or not fps > 0):
            raise DatasetError(f"{name} fps must be positive, got {fps!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise DatasetError(f"{name} size must be [height, width], got {size!r}")
        check_resize(resize, size)
        self.channels = channels
        self.frames = frames
        self.fps = float(fps) if fps is not None else None
        self.size = tuple(size) if size is not None else None
        self.resize = resize
        self.strict = strict
        self._shape: tuple[int, int, int, int] | None = None

    def split_root(self, split: str) -> Path:
        """The folder or file that holds ``split`` (its ``train``/``test`` subfolder when present)."""
        if not self.path.exists():
            raise DatasetError(f"{self.kind} path {self.path} does not exist")
        if self.path.is_file():
            return self.path
        return self.split_folder(split)

    def _where(self, split: str) -> Path:
        return self.split_root(split)

    def _load(
        self, item: _Item, where: Path, skipped: list[str], first: list[tuple[str, tuple[int, ...]]]
    ) -> Tensor | None:
        """The video of ``item`` as uint8 ``(c, t, h, w)`` under the policy, or ``None`` if skipped.

        ``first`` holds the name and ``(t, h, w)`` of the first video read (the
        reference when no ``frames``/``size`` is set); a mismatch raises.
        """
        try:
            video = read_video(item.data(), fps=self.fps, frames=self.frames)
        except VideoReadError as exc:
            skipped.append(f"{item.name} ({exc.reason})")
            return None
        except OSError as exc:  # the file itself cannot be read
            skipped.append(f"{item.name} (cannot read: {reason(exc)})")
            return None
        if self.frames is not None and len(video) < self.frames:
            rate = f" at {self.fps:g} fps" if self.fps else ""
            skipped.append(f"{item.name} (only {len(video)} frames{rate}, need {self.frames})")
            return None
        if not first:
            first.append((item.name, (len(video), *video.shape[-2:])))
        ref_name, ref = first[0]
        if self.frames is None and len(video) != ref[0]:
            raise DatasetError(
                f"video {item.name} has {len(video)} frames but {ref_name} has {ref[0]}; with "
                f"frames unset every video must have one length (set frames = N to use the "
                f"first N frames of each)"
            )
        video = self._fit(to_channels(video, self.channels), item.name, ref_name, ref[1:])
        return video.permute(1, 0, 2, 3).contiguous()

    def input_shape(self) -> tuple[int, int, int, int]:
        """``(c, t, h, w)`` of the videos this dataset yields."""
        if self.size is not None and self.frames is not None:
            return (self.channels, self.frames, *self.size)
        if self._shape is None:
            split = "train" if "train" in self.splits else self.splits[0]
            self.read(split, self.readable_keys(split)[:1])
        return self._shape


class VideoFolder(_VideoDataset):
    """Video files (``.mp4 .avi .gif .webm .mkv .mov``) in a folder, recursively.

    :param path: the folder.
    :param channels: 1 (grayscale, by luma) or 3 (RGB).
    :param frames: clip length: the first ``frames`` frames of each video;
        shorter videos are skipped. ``None``: all frames, one length required.
    :param fps: resample to this frame rate (nearest timestamp); ``None`` keeps the source's.
    :param size: ``[height, width]`` the frames must have or are brought to.
    :param resize: ``"error"``, ``"resize"`` or ``"center-crop"`` (as image folders).
    :param strict: fail on unusable files instead of skipping them.
    """

    kind = "video folder"

    def _scan(self, split: str) -> tuple[dict[str, _Item], list[str]]:
        folder = self.split_root(split)
        if not folder.is_dir():
            raise DatasetError(f"video folder {folder} is not a folder")
        files, skipped = scan_folder(folder, VIDEO_EXTENSIONS, "a video file")
        if not files:
            self._report(skipped)
            raise no_files_error(
                f"no video files ({' '.join(VIDEO_EXTENSIONS)}) in {folder}", skipped
            )
        items = {
            key: _Item(path=p, name=p.relative_to(folder).as_posix()) for key, p in files.items()
        }
        return items, skipped


_WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


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


class VideoShards(_VideoDataset):
    """Videos in webdataset-style ``.tar`` shards: one shard, or a folder of them.

    Members ``<key>.<ext>`` with one key form a sample; its video is the member
    whose name ends in a video extension (``.mp4``, ``.gif`` …). Keys are
    webdataset's ``__key__``. Options as :class:`VideoFolder`.
    """

    kind = "video shards"

    def shards(self, split: str) -> tuple[list[Path], list[str]]:
        """The ``.tar`` shards of ``split`` (sorted), and the other files found beside them."""
        root = self.split_root(split)
        if root.is_file():
            if root.suffix.lower() != ".tar":
                raise DatasetError(f"{root} is not a .tar shard")
            return [root], []
        shards, other = [], []
        for p in list_files(root):
            (shards if p.suffix.lower() == ".tar" else other).append(p)
        return shards, [f"{p.relative_to(root).as_posix()} (not a .tar shard)" for p in other]

    def _scan(self, split: str) -> tuple[dict[str, _Item], list[str]]:
        shards, skipped = self.shards(split)
        root = self.split_root(split)
        base = root.parent if root.is_file() else root
        items: dict[str, _Item] = {}
        others: dict[str, str] = {}  # keys of samples that have no video (yet)
        for shard in shards:
            sname = shard.relative_to(base).as_posix()
            for member in _tar_members(shard, sname, skipped):
                m = _WDS_KEY.match(member.name)
                if m is None or any(part.startswith(".") for part in member.name.split("/")):
                    continue
                key = m.group(1)
                name = f"{sname}:{member.name}"
                if Path(member.name).suffix.lower() not in VIDEO_EXTENSIONS:
                    others.setdefault(key, name)
                    continue
                if key in items:
                    raise DatasetError(
                        f"{items[key].name} and {name} both have the key {key!r}; "
                        f"a sample may hold one video"
                    )
                items[key] = _Item(
                    path=shard, name=name, offset=member.offset_data, size=member.size
                )
        skipped += [
            f"{name} (a sample without a video)" for k, name in others.items() if k not in items
        ]
        if not items:
            self._report(skipped)
            raise no_files_error(f"no videos in the .tar shards of {root}", skipped)
        return items, skipped
