"""Video files: a folder of videos and webdataset-style ``.tar`` shards, decoded with PyAV.

Policy (also in the README and ``docs/design.md``):

- **Files.** ``VideoFolder`` reads ``.mp4 .avi .gif .webm .mkv .mov`` files
  recursively, sorted; a key is the path relative to the folder without its
  extension (``clips/cat/0001``). Hidden files are ignored; any other file is
  reported as skipped. A ``train``/``test`` subfolder serves that split, a
  folder without them serves every split, a folder with one but not the
  other is an error for the missing split. Two files with one key are an error.
- **Shards.** ``VideoShards`` reads uncompressed ``.tar`` files in the
  webdataset layout (one file, or a folder of them with the same split rule)
  as :mod:`tok.data.shards` reads image shards: the members ``<key>.<ext>``
  sharing a key form one sample, split exactly as the ``webdataset`` library
  splits them (``__key__``: ``./000001`` for a member ``./000001.mp4`` written
  by ``tar -C DIR .``, ``clips/000001`` for ``clips/000001.mp4``). A sample's
  video is its one member whose extension (webdataset's field name) is a
  video extension, ``mp4`` or ``gif`` …; other members (``json``, ``cls``,
  ``b.mp4`` of ``a.b.mp4``) are ignored, and so is every member webdataset
  drops. A member path with ``..`` is never read; each video's bytes are read
  straight from its offset, so reading a sample by key needs no pass over
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
  ``"center-crop"`` scales the short side and crops the centre, ``"keep"`` keeps
  each video's own size and, with ``frames`` unset, its own length (``tok encode
  --resize keep``).
- **Unreadable files** (not a video, truncated, no video stream, too short)
  are **skipped with one warning** (:class:`VideoSkippedWarning`) naming each
  file and why; ``strict = true`` makes that an error. No readable video is
  an error.

Decoding and writing video files lives in :mod:`tok.media` (``read_video``,
``probe_video``, ``write_video``); listing a split probes each file's header
only, and each video is decoded once, when it is read.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import DatasetError
from ..media import VIDEO_EXTENSIONS, MediaInfo, MediaReadError, probe_video, read_video, reason
from .base import to_channels
from .folder import FileDataset, ImageSkippedWarning, Resize, check_resize, scan_folder
from .shards import MediaFile, TarShards

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoFolder",
    "VideoShards",
    "VideoSkippedWarning",
]


class VideoSkippedWarning(ImageSkippedWarning):
    """Videos were skipped because they cannot be decoded or are too short."""


class _VideoDataset(FileDataset):
    """What :class:`VideoFolder` and :class:`VideoShards` share: the frame policy (the size
    policy, skipping and reading by key come from :class:`~tok.data.folder.FileDataset`)."""

    supplied_args = ("channels", "frames", "size")
    media = "video"

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

    def _where(self, split: str) -> Path:
        return self.split_root(split)

    def _name(self, item: MediaFile, where: Path) -> str:
        return item.name

    def _probe(self, item: MediaFile) -> MediaInfo:
        try:
            return probe_video(item.data())
        except OSError as exc:  # the file itself cannot be read
            raise MediaReadError(item.name, f"cannot read: {reason(exc)}") from None

    def _decode(self, item: MediaFile, name: str) -> Tensor:
        """The video of ``item`` as uint8 ``(c, t, h, w)`` (channels and frames applied).

        Too few frames raise :class:`MediaReadError` (the video is skipped); with
        ``frames`` unset a length other than the first video's raises :class:`DatasetError`.
        """
        try:
            video = read_video(item.data(), fps=self.fps, frames=self.frames)
        except OSError as exc:
            raise MediaReadError(name, f"cannot read: {reason(exc)}") from None
        if self.frames is not None and len(video) < self.frames:
            rate = f" at {self.fps:g} fps" if self.fps else ""
            raise MediaReadError(name, f"only {len(video)} frames{rate}, need {self.frames}")
        if self.frames is None and self.resize != "keep":
            first = self._state().setdefault("first_length", (name, len(video)))
            if len(video) != first[1]:
                raise DatasetError(
                    f"video {name} has {len(video)} frames but {first[0]} has {first[1]}; with "
                    f"frames unset every video must have one length (set frames = N to use the "
                    f"first N frames of each)"
                )
        return to_channels(video, self.channels).permute(1, 0, 2, 3).contiguous()

    def input_shape(self) -> tuple[int, int, int, int]:
        """``(c, t, h, w)`` of the videos this dataset yields."""
        if self.size is not None and self.frames is not None:
            return (self.channels, self.frames, *self.size)
        if self._shape is None:
            split = "train" if "train" in self.splits else self.splits[0]
            for key in self.keys(split):  # the first video that decodes
                if self.read(split, [key]).keys:
                    break
            else:
                raise self.none_readable(split, len(self.keys(split)))
        return self._shape


class VideoFolder(_VideoDataset):
    """Video files (``.mp4 .avi .gif .webm .mkv .mov``) in a folder, recursively.

    :param path: the folder.
    :param channels: 1 (grayscale, by luma) or 3 (RGB).
    :param frames: clip length: the first ``frames`` frames of each video;
        shorter videos are skipped. ``None``: all frames, one length required.
    :param fps: resample to this frame rate (nearest timestamp); ``None`` keeps the source's.
    :param size: ``[height, width]`` the frames must have or are brought to.
    :param resize: ``"error"``, ``"resize"``, ``"center-crop"`` or ``"keep"`` (as image
        folders; ``"keep"`` with ``frames`` unset keeps each video's length too).
    :param strict: fail on unusable files instead of skipping them.
    """

    kind = "video folder"
    source_extensions = VIDEO_EXTENSIONS

    def _scan(self, split: str) -> tuple[dict[str, MediaFile], list[str]]:
        folder = self.split_root(split)
        if not folder.is_dir():
            raise DatasetError(f"video folder {folder} is not a folder")
        files, skipped = scan_folder(folder, VIDEO_EXTENSIONS, "a video file")
        if not files:
            message = f"no video files ({' '.join(VIDEO_EXTENSIONS)}) in {folder}"
            raise self._nothing_found(split, message, skipped)
        items = {
            key: MediaFile(path=p, name=p.relative_to(folder).as_posix())
            for key, p in files.items()
        }
        return items, skipped


class VideoShards(TarShards, _VideoDataset):
    """Videos in webdataset-style ``.tar`` shards: one shard, or a folder of them.

    Members ``<key>.<ext>`` with one key form a sample; its video is the member
    whose name ends in a video extension (``.mp4``, ``.gif`` …). Keys are
    webdataset's ``__key__`` (:mod:`tok.data.shards`). Options as :class:`VideoFolder`.
    """

    kind = "video shards"
    member_extensions = VIDEO_EXTENSIONS
