"""Moving MNIST, generated from the real MNIST digits (Srivastava et al. 2015).

Each video shows ``digits`` MNIST digits (28×28) moving on a black
``size``×``size`` canvas, each in a straight line at constant speed and
bouncing off the walls; where digits overlap the brighter pixel wins
(``max``). ``train`` videos use MNIST training digits, ``test`` videos MNIST
test digits, so no test digit is ever seen in training.

Everything random — which digits, start positions, directions, speeds — is
drawn from a ``torch.Generator`` seeded with ``seed`` and the split, and none
of it depends on ``frames``: the same seed always gives the same bytes, and
``frames = 17`` is exactly the first 17 frames of the ``frames = 20`` videos.
Generation is vectorised (a scatter-max of every digit into every frame) and
done once per split on first use; 10,000 videos of 20 frames take seconds
and ``n · t · size²`` bytes.

Axis legend: ``n`` videos, ``c`` channels, ``t`` frames, ``h w`` pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import DatasetError
from .base import Dataset, Samples
from .mnist import MNIST

__all__ = ["MovingMNIST"]

DIGIT = 28  # MNIST digit size
_SPLIT_STREAM = {"train": 0, "test": 1}
_CHUNK = 256  # videos rendered at once (bounds the scatter index memory)


def _bounce(start: Tensor, velocity: Tensor, frames: int, limit: int) -> Tensor:
    """Integer positions ``(..., t)`` of a point moving from ``start`` at ``velocity``
    (pixels per frame) and reflecting off ``0`` and ``limit``."""
    t = torch.arange(frames, dtype=torch.float64)
    pos = start.unsqueeze(-1) + velocity.unsqueeze(-1) * t
    if limit == 0:
        return torch.zeros_like(pos, dtype=torch.long)
    period = pos.remainder(2 * limit)  # triangle wave: 0 → limit → 0
    return (limit - (period - limit).abs()).round().long()


class MovingMNIST(Dataset):
    """Two (by default) MNIST digits bouncing in a 64×64 frame, 20 frames per video.

    :param root: folder holding ``MNIST/raw`` (as for ``mnist``); default
        ``$TOK_DATA_DIR``, else the user cache folder.
    :param frames: frames per video (≥ 1).
    :param size: canvas height and width in pixels (≥ 28).
    :param digits: digits per video (≥ 1).
    :param train_videos: videos in the ``train`` split.
    :param test_videos: videos in the ``test`` split.
    :param seed: seeds the generator; each split draws from its own stream.
    :param speed: ``[low, high]`` speed range in pixels per frame (uniform).
    :param channels: 1 (default) or 3 (the gray value repeated).
    :param download: download MNIST when it is missing (as for ``mnist``).
    """

    supplied_args = ("channels", "frames")
    preload = True  # generated from MNIST into memory
    media = "video"

    def __init__(
        self,
        *,
        root: str | None = None,
        frames: int = 20,
        size: int = 64,
        digits: int = 2,
        train_videos: int = 10_000,
        test_videos: int = 1_000,
        seed: int = 0,
        speed: list[float] | None = None,
        channels: int = 1,
        download: bool = True,
    ) -> None:
        speed = [2.0, 4.0] if speed is None else list(speed)
        problems = []
        if frames < 1:
            problems.append(f"frames must be ≥ 1, got {frames}")
        if size < DIGIT:
            problems.append(f"size must be ≥ {DIGIT} (the digit size), got {size}")
        if digits < 1:
            problems.append(f"digits must be ≥ 1, got {digits}")
        if train_videos < 1 or test_videos < 1:
            problems.append(
                f"train_videos and test_videos must be ≥ 1, got {train_videos} and {test_videos}"
            )
        if len(speed) != 2 or not 0 <= speed[0] <= speed[1]:
            problems.append(f"speed must be [low, high] with 0 ≤ low ≤ high, got {speed!r}")
        if channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {channels!r}")
        if problems:
            raise DatasetError("movingmnist: " + "; ".join(problems))
        self.frames, self.size, self.digits = frames, size, digits
        self.counts = {"train": train_videos, "test": test_videos}
        self.seed, self.speed, self.channels = seed, [float(s) for s in speed], channels
        self.mnist = MNIST(root=root, download=download)
        self._cache: dict[str, Tensor] = {}

    # generation --------------------------------------------------------------

    def _generator(self, split: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * len(_SPLIT_STREAM) + _SPLIT_STREAM[split])

    def _trajectories(self, split: str) -> tuple[Tensor, Tensor, Tensor]:
        """Digit indices ``(n, digits)`` and integer top-left ``y``, ``x`` ``(n, digits, t)``."""
        n, d, limit = self.counts[split], self.digits, self.size - DIGIT
        source = len(self.mnist.images(split))
        g = self._generator(split)
        which = torch.randint(0, source, (n, d), generator=g)
        start = torch.rand(n, d, 2, generator=g, dtype=torch.float64) * limit
        angle = torch.rand(n, d, generator=g, dtype=torch.float64) * (2 * math.pi)
        low, high = self.speed
        speed = low + (high - low) * torch.rand(n, d, generator=g, dtype=torch.float64)
        velocity = torch.stack([speed * angle.sin(), speed * angle.cos()], dim=-1)
        pos = _bounce(start, velocity, self.frames, limit)  # (n, d, 2, t)
        return which, pos[:, :, 0], pos[:, :, 1]

    def _generate(self, split: str) -> Tensor:
        """The whole split, uint8 ``(n, 1, t, size, size)``."""
        digits_u8 = self.mnist.images(split)[:, 0]  # (N, 28, 28)
        which, ys, xs = self._trajectories(split)
        n, t, s = self.counts[split], self.frames, self.size
        out = torch.empty(n, t, s * s, dtype=torch.uint8)
        offsets = (torch.arange(DIGIT).view(-1, 1) * s + torch.arange(DIGIT)).view(1, 1, -1)
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            canvas = torch.zeros(hi - lo, t, s * s, dtype=torch.uint8)
            for j in range(self.digits):
                corner = (ys[lo:hi, j] * s + xs[lo:hi, j]).unsqueeze(-1)  # (m, t, 1)
                index = corner + offsets  # (m, t, 784)
                src = digits_u8[which[lo:hi, j]].view(hi - lo, 1, -1).expand(-1, t, -1)
                canvas.scatter_reduce_(2, index, src, reduce="amax")
            out[lo:hi] = canvas
        return out.view(n, 1, t, s, s)

    def _videos(self, split: str) -> Tensor:
        self.check_split(split)
        if split not in self._cache:
            self._cache[split] = self._generate(split)
        return self._cache[split]

    # the Dataset interface ---------------------------------------------------

    def _key(self, split: str, i: int) -> str:
        return f"movingmnist/{split}/{i:05d}"

    def keys(self, split: str) -> list[str]:
        self.check_split(split)
        return [self._key(split, i) for i in range(self.counts[split])]

    def _expand(self, videos: Tensor) -> Tensor:
        return videos.expand(-1, 3, -1, -1, -1).contiguous() if self.channels == 3 else videos

    def read(self, split: str, keys: list[str]) -> Samples:
        """The videos with these keys, in this order: ``images`` uint8 ``(n, c, t, h, w)``."""
        self.check_split(split)
        n, prefix = self.counts[split], f"movingmnist/{split}/"
        rows = []
        for k in keys:
            i = k[len(prefix) :] if isinstance(k, str) and k.startswith(prefix) else ""
            if not (i.isdigit() and len(i) >= 5 and int(i) < n and self._key(split, int(i)) == k):
                raise DatasetError(
                    f"no Moving MNIST {split} video with key {k!r} (keys are {prefix}00000 "
                    f"to {self._key(split, n - 1)})"
                )
            rows.append(int(i))
        videos = self._videos(split)[torch.tensor(rows, dtype=torch.long)]
        return Samples(images=self._expand(videos), keys=list(keys))

    def load(self, split: str) -> Samples:
        """The whole split in memory (generated on first use)."""
        videos = self._videos(split)
        return Samples(images=self._expand(videos), keys=self.keys(split))

    def input_shape(self) -> tuple[int, int, int, int]:
        """``(c, t, h, w)`` of the videos."""
        return (self.channels, self.frames, self.size, self.size)
