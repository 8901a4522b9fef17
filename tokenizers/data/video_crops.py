"""Fixed-length crops of real video clips: random windows for training, a fixed grid for testing.

Real clips differ in frame rate (10–30 fps), size (176×144 … 1280×720) and length;
a video tokenizer trains on one shape, ``(c, frames, h, w)``. Following the usual
video-tokenizer data pipeline (resample to one rate, resize, crop a window — as in
MAGVIT, Yu et al. 2023, https://arxiv.org/abs/2212.05199, and Cosmos-Tokenizer,
https://github.com/NVIDIA/Cosmos-Tokenizer), every clip is

1. **resampled** to ``fps`` by nearest timestamp (:func:`tok.media.read_video`, as
   ``videofolder`` does: frames repeated or dropped, never blended) — pick the lowest
   source rate so no frame is repeated;
2. **scaled** so its shorter side is ``short_side`` pixels (area filter, aspect kept;
   ``None`` keeps the source size), so a 64×64 crop covers a comparable part of a
   720p and of a QCIF scene;
3. **cropped** to ``frames`` × ``size``: one *crop* is a window of ``frames``
   consecutive frames at time ``t`` and a ``size`` region at ``(y, x)``.

A crop's key names it: ``bikes@t=40,y=16,x=96`` (the clip's file name without its
extension, then the first frame and the top-left pixel, after steps 1–2). Any valid
key can be read, listed or not, so keys are all a loader needs — the streamed loader
(:mod:`tok.data.batches`), resume and distributed shares work unchanged.

- ``train``: ``train_crops`` keys drawn from a ``torch.Generator`` seeded with ``seed``:
  crop *i* comes from clip ``i mod (number of train clips)`` (every clip an equal share,
  however long), its ``t``, ``y`` and ``x`` uniform over the positions where the crop
  fits. The same seed gives the same keys.
- ``test``: a fixed grid over each test clip: ``t`` = 0, s_t, 2·s_t … and ``y``, ``x``
  likewise by ``test_stride = [s_t, s_y, s_x]``, as far as a whole crop fits (no
  randomness).

Clips are decoded (and resampled and scaled) once per process, on first use, and kept:
a DataLoader worker decodes each clip once, not once per step. Listing the keys decodes
the split's clips (their resampled lengths are needed), so workers started afterwards
by ``fork`` share them.

Axis legend: ``n`` crops, ``c`` channels, ``t`` frames, ``h w`` pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DatasetError, DatasetMissingError
from ..media import MediaReadError, read_video
from .base import Dataset, Samples, data_root, to_channels

__all__ = ["VideoCrops"]

_KEY = re.compile(r"^(?P<clip>.+)@t=(?P<t>\d+),y=(?P<y>\d+),x=(?P<x>\d+)$")


def _positive(name: str, value, problems: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{name} must be a positive whole number, got {value!r}")


class VideoCrops(Dataset):
    """Crops of ``frames`` × ``size`` from real video clips resampled to one frame rate.

    :param train_clips: file names (in ``path``) of the training clips.
    :param test_clips: file names of the test clips.
    :param root: the data root; default ``$TOK_DATA_DIR``, else the user cache folder.
    :param path: the folder of the clips: relative to ``root`` (default ``"videos"``),
        or absolute.
    :param fps: the frame rate every clip is resampled to (frames per second).
    :param frames: frames per crop.
    :param size: ``[height, width]`` of a crop in pixels.
    :param short_side: pixels of each clip's shorter side after scaling; ``None`` keeps
        the source size.
    :param train_crops: how many random crops the ``train`` split lists.
    :param test_stride: ``[frames, pixels down, pixels across]`` between the test grid's
        crops; default: the crop's own shape (crops that do not overlap).
    :param seed: seeds the training crops' positions.
    :param channels: 3 (RGB, default) or 1 (luma).
    :raises DatasetError: bad options, a clip named twice or in both splits, a key that
        names no crop, a clip shorter or smaller than one crop.
    :raises DatasetMissingError: a named clip is not in the folder.
    """

    supplied_args = ("channels", "frames", "size")
    media = "video"
    preload = False  # streamed: keys in memory, clips decoded once per worker

    def __init__(
        self,
        *,
        train_clips: list[str],
        test_clips: list[str],
        root: str | None = None,
        path: str = "videos",
        fps: float = 10.0,
        frames: int = 17,
        size: list[int] | None = None,
        short_side: int | None = None,
        train_crops: int = 10_000,
        test_stride: list[int] | None = None,
        seed: int = 0,
        channels: int = 3,
    ) -> None:
        size = [64, 64] if size is None else list(size)
        problems: list[str] = []
        if not train_clips or not test_clips:
            problems.append("train_clips and test_clips must each name at least one clip")
        for split, clips in (("train", train_clips), ("test", test_clips)):
            if len(set(clips)) != len(clips):
                problems.append(f"{split}_clips names a clip twice: {clips!r}")
        both = sorted(set(train_clips) & set(test_clips))
        if both:
            problems.append(f"{', '.join(both)} is in both train_clips and test_clips")
        stems = [Path(c).stem for c in [*train_clips, *test_clips]]
        if len(set(stems)) != len(set(train_clips) | set(test_clips)):
            problems.append(f"two clips share a name without extension: {stems!r}")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
            problems.append(f"fps must be positive, got {fps!r}")
        _positive("frames", frames, problems)
        _positive("train_crops", train_crops, problems)
        if short_side is not None:
            _positive("short_side", short_side, problems)
        if len(size) != 2:
            problems.append(f"size must be [height, width], got {size!r}")
        for i, s in enumerate(size[:2]):
            _positive(f"size[{i}]", s, problems)
        stride = [frames, *size] if test_stride is None else list(test_stride)
        if len(stride) != 3:
            problems.append(f"test_stride must be [frames, down, across], got {stride!r}")
        for i, s in enumerate(stride[:3]):
            _positive(f"test_stride[{i}]", s, problems)
        if channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {channels!r}")
        if problems:
            raise DatasetError("video_crops: " + "; ".join(problems))
        folder = Path(path).expanduser()
        self.folder = folder if folder.is_absolute() else data_root(root) / folder
        self.clips = {"train": list(train_clips), "test": list(test_clips)}
        self.fps, self.frames, self.size = float(fps), frames, (size[0], size[1])
        self.short_side, self.train_crops = short_side, train_crops
        self.test_stride, self.seed, self.channels = tuple(stride), seed, channels
        self._decoded: dict[str, Tensor] = {}  # clip name -> uint8 (t, 3, h, w)
        self._keys: dict[str, list[str]] = {}

    # clips -------------------------------------------------------------------

    def _names(self, split: str) -> dict[str, str]:
        """The split's clips: name without extension -> file name."""
        self.check_split(split)
        return {Path(c).stem: c for c in self.clips[split]}

    def clip(self, split: str, name: str) -> Tensor:
        """Clip ``name`` (no extension) of ``split``, resampled and scaled: uint8
        ``(t, 3, h, w)``, decoded on first use and kept.

        :raises DatasetMissingError: the file is not there.
        :raises DatasetError: it does not decode, or is shorter or smaller than a crop.
        """
        files = self._names(split)
        if name not in files:
            raise DatasetError(
                f"video_crops {split!r} has no clip {name!r} (clips: {', '.join(files)})"
            )
        if name not in self._decoded:
            file = self.folder / files[name]
            if not file.is_file():
                raise DatasetMissingError(
                    f"video clip {file} is not there; put it in {self.folder} or change "
                    f"data.{split}_clips / data.path"
                )
            try:
                video = read_video(file, fps=self.fps, short_side=self.short_side)
            except MediaReadError as exc:
                raise DatasetError(f"video_crops: {exc}") from None
            (t, _, h, w), (ch, cw) = video.shape, self.size
            if t < self.frames or h < ch or w < cw:
                raise DatasetError(
                    f"video clip {file} is {t} frames of {h}x{w} at {self.fps:g} fps (short "
                    f"side {self.short_side}), smaller than one crop of {self.frames} frames "
                    f"of {ch}x{cw}"
                )
            self._decoded[name] = video
        return self._decoded[name]

    def _room(self, split: str, name: str) -> tuple[int, int, int]:
        """How many start positions a crop has in the clip along ``t``, ``y`` and ``x``."""
        t, _, h, w = self.clip(split, name).shape
        return t - self.frames + 1, h - self.size[0] + 1, w - self.size[1] + 1

    # the Dataset interface ---------------------------------------------------

    def keys(self, split: str) -> list[str]:
        """``train``: ``train_crops`` random crops from ``seed``; ``test``: the fixed grid."""
        names = list(self._names(split))
        if split not in self._keys:
            self._keys[split] = (
                self._random_keys(names) if split == "train" else self._grid_keys(names)
            )
        return list(self._keys[split])

    def _random_keys(self, names: list[str]) -> list[str]:
        g = torch.Generator().manual_seed(self.seed)
        rooms = [self._room("train", n) for n in names]
        u = torch.rand(self.train_crops, 3, generator=g, dtype=torch.float64)
        keys = []
        for i in range(self.train_crops):
            j = i % len(names)
            t, y, x = (int(u[i, a] * rooms[j][a]) for a in range(3))
            keys.append(f"{names[j]}@t={t},y={y},x={x}")
        return keys

    def _grid_keys(self, names: list[str]) -> list[str]:
        keys = []
        st, sy, sx = self.test_stride
        for name in names:
            rt, ry, rx = self._room("test", name)
            keys += [
                f"{name}@t={t},y={y},x={x}"
                for t in range(0, rt, st)
                for y in range(0, ry, sy)
                for x in range(0, rx, sx)
            ]
        return keys

    def read(self, split: str, keys: list[str]) -> Samples:
        """The crops with these keys, in this order: ``images`` uint8 ``(n, c, t, h, w)``.

        :raises DatasetError: a key that names no crop of ``split`` (the message names it).
        """
        self.check_split(split)
        crops = []
        for key in keys:
            m = _KEY.match(key) if isinstance(key, str) else None
            if m is None:
                raise DatasetError(
                    f"video_crops key {key!r} names no crop (keys look like 'bikes@t=40,y=16,x=96')"
                )
            name, t, y, x = m["clip"], int(m["t"]), int(m["y"]), int(m["x"])
            rt, ry, rx = self._room(split, name)
            if t >= rt or y >= ry or x >= rx:
                raise DatasetError(
                    f"video_crops key {key!r} is outside clip {name!r} (t < {rt}, y < {ry}, "
                    f"x < {rx} for crops of {self.frames} frames of {self.size[0]}x{self.size[1]})"
                )
            video = self.clip(split, name)[t : t + self.frames, :, y : y + self.size[0]]
            crops.append(video[..., x : x + self.size[1]])
        if not crops:
            return Samples(images=torch.empty(0, *self.input_shape(), dtype=torch.uint8), keys=[])
        images = to_channels(torch.cat(crops), self.channels)  # (n t) c h w
        n = len(crops)
        images = images.view(n, self.frames, *images.shape[1:]).permute(0, 2, 1, 3, 4)
        return Samples(images=images.contiguous(), keys=list(keys))

    def input_shape(self) -> tuple[int, int, int, int]:
        """``(c, t, h, w)`` of the crops."""
        return (self.channels, self.frames, *self.size)
