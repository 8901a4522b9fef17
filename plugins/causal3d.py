"""Causal video encoder/decoder (the ``causal3d`` architecture).

After the causal video tokenizers of Cosmos-Tokenizer (NVIDIA, 2025,
https://arxiv.org/abs/2501.03575): every 3D convolution is *causal* in time
(padded on the past side only, by repeating the first frame), so the latents
of frames ``0..t`` never depend on a later frame. Time is compressed like
Cosmos does it: the first frame alone, then groups of ``temporal_factor``
frames, so ``T = 1 + temporal_factor · k`` frames give ``1 + k`` latent
frames and a single image is a one-frame video.

Layout: optional patching (``patch_size`` pixels and ``time_patch`` frames
stacked into channels, frame 0 again alone), then ``len(channels) - 1``
stages; stage ``i`` halves height and width while space remains to be
compressed and halves time (``1 + 2m → 1 + m``) while time does.
Normalisation is GroupNorm *per frame* (it never mixes time steps, which
would break causality). The decoder mirrors the encoder with causal temporal
upsampling (``1 + m → 1 + 2m``: latent frame 0 gives frame 0, latent frame
``j`` the frames ``2j - 1`` and ``2j``), so it is causal too.

Cosmos *factorises* each 3D convolution into a spatial ``(1, k, k)`` and a
temporal ``(k, 1, 1)`` one; ``factorized = true`` does that. The default is
one full causal ``Conv3d`` on channels-last-3d tensors, which was faster to
train on a CPU with bf16 matrix units (``docs/design.md``, "Video").

Axis legend: ``b`` batch, ``c`` channels, ``t`` frames, ``h w`` spatial,
``d`` latent dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tok import hookimpl
from tok.errors import ConfigError
from tok.models import Architecture
from tok.models.blocks import stages

__all__ = ["Causal3D"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class FrameNorm(nn.Module):
    """GroupNorm applied to each frame of ``(b, c, t, h, w)`` on its own (never mixing time)."""

    def __init__(self, kind: str, channels: int) -> None:
        super().__init__()
        self.norm = _norm(kind, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        # a view, not a copy, for channels-last-3d tensors: (b t) are adjacent in memory
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Module):
    """A 3D convolution that only looks back in time: ``(b, c, t, h, w) → (b, c', t', h', w')``.

    The input is padded in time with ``time_kernel - 1`` copies of its first
    frame (and with zeros in space), so output frame ``j`` sees input frames
    ``≤ time_stride · j`` only; ``time_stride = 2`` maps ``1 + 2m`` frames to
    ``1 + m``: frame 0 alone, then pairs. ``factorized`` splits it into a
    spatial ``(1, k, k)`` and a temporal ``(time_kernel, 1, 1)`` convolution, as
    Cosmos-Tokenizer does.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        kernel: int = 3,
        time_kernel: int = 3,
        stride: int = 1,
        time_stride: int = 1,
        factorized: bool = False,
    ) -> None:
        super().__init__()
        self.time_pad = time_kernel - 1
        pad = (0, kernel // 2, kernel // 2)
        if factorized:
            self.spatial = nn.Conv3d(cin, cout, (1, kernel, kernel), (1, stride, stride), pad)
            self.conv = nn.Conv3d(cout, cout, (time_kernel, 1, 1), (time_stride, 1, 1))
        else:
            self.spatial = None
            self.conv = nn.Conv3d(
                cin, cout, (time_kernel, kernel, kernel), (time_stride, stride, stride), pad
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial is not None:
            x = self.spatial(x)
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class ResBlock3D(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))))))`` with causal convs, norms per frame."""

    def __init__(self, channels: int, *, norm: str, time_kernel: int, factorized: bool) -> None:
        super().__init__()
        conv = {"time_kernel": time_kernel, "factorized": factorized}
        self.body = nn.Sequential(
            FrameNorm(norm, channels),
            nn.SiLU(),
            CausalConv3d(channels, channels, **conv),
            FrameNorm(norm, channels),
            nn.SiLU(),
            CausalConv3d(channels, channels, **conv),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Up(nn.Module):
    """One decoder stage transition: ``cin → cout``, optionally doubling space and/or time.

    Time: ``1 + m → 1 + 2m`` frames by repeating each frame twice and dropping
    the first copy (latent frame 0 gives frame 0, latent frame ``j`` the frames
    ``2j - 1`` and ``2j``); space: nearest neighbour; then a causal convolution.
    """

    def __init__(
        self, cin: int, cout: int, *, space: bool, time: bool, time_kernel: int, factorized: bool
    ) -> None:
        super().__init__()
        self.space, self.time = space, time
        self.conv = CausalConv3d(cin, cout, time_kernel=time_kernel, factorized=factorized)

    def forward(self, x: Tensor) -> Tensor:
        if self.time:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]
        if self.space:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return self.conv(x)


def _log2(value: int, name: str) -> int:
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ConfigError(f"causal3d: {name} must be 1 or a power of 2, got {value!r}")
    return value.bit_length() - 1


class Causal3D(Architecture):
    """Causal 3D convolutional video tokenizer body (encoder and decoder).

    :param in_channels: video channels (1 grayscale, 3 RGB); filled from the data.
    :param channels: width at each stage, finest first; ``len(channels) - 1`` must
        equal ``max(log2(spatial_factor / patch_size), log2(temporal_factor / time_patch))``.
    :param blocks: residual blocks per stage: one number for all, or one per stage.
    :param latent_dim: channels of the latent grid handed to the quantizer.
    :param temporal_factor: time compression (1 or a power of 2): ``T`` frames give
        ``1 + (T - 1) / temporal_factor`` latent frames.
    :param spatial_factor: height/width compression (1 or a power of 2).
    :param time_kernel: kernel size of the causal temporal convolutions in the blocks.
    :param patch_size: space-to-depth at the input (and depth-to-space at the
        output) by ``patch_size × patch_size`` pixels, part of ``spatial_factor``;
        the stages then run at ``1 / patch_size`` of the resolution (Cosmos patches
        its input the same way, with a wavelet).
    :param time_patch: the same in time, part of ``temporal_factor``: frame 0 alone
        (with ``time_patch - 1`` copies of itself), then groups of ``time_patch``
        frames become one, stacked in channels.
    :param factorized: split each 3D convolution into a spatial and a temporal one
        ((2+1)D, as Cosmos-Tokenizer); off by default because on CPUs with bf16
        matrix units the full causal Conv3d is faster (``docs/design.md``, "Video").
    :param norm: ``"group"`` (GroupNorm per frame) or ``"none"``.
    """

    paper = "https://arxiv.org/abs/2501.03575"

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Time ×4 and space ×4 in two stages of narrow causal convolutions: fast."""
        return {
            "in_channels": 3,
            "channels": [8, 16, 16],
            "blocks": 1,
            "latent_dim": 4,
            "temporal_factor": 4,
            "spatial_factor": 4,
        }

    @classmethod
    def example_input_shape(cls) -> tuple[int, ...]:
        """A 3-channel video of 5 frames of 16×16 (a 2×4×4 grid with the example config)."""
        return (3, 5, 16, 16)

    def __init__(
        self,
        *,
        in_channels: int = 3,
        channels: list[int] | None = None,
        blocks: int | list[int] = 1,
        latent_dim: int = 4,
        temporal_factor: int = 4,
        spatial_factor: int = 4,
        time_kernel: int = 3,
        patch_size: int = 1,
        time_patch: int = 1,
        factorized: bool = False,
        norm: str = "group",
    ) -> None:
        super().__init__()
        channels, per_stage = stages("causal3d", channels, blocks)
        log_t = _log2(temporal_factor, "temporal_factor") - _log2(time_patch, "time_patch")
        log_s = _log2(spatial_factor, "spatial_factor") - _log2(patch_size, "patch_size")
        if log_s < 0:
            raise ConfigError(
                f"causal3d: patch_size {patch_size} is larger than spatial_factor {spatial_factor}"
            )
        if log_t < 0:
            raise ConfigError(
                f"causal3d: time_patch {time_patch} is larger than temporal_factor {temporal_factor}"
            )
        if len(channels) - 1 != max(log_t, log_s):
            raise ConfigError(
                f"causal3d: {len(channels)} channels entries give {len(channels) - 1} stages, "
                f"but temporal_factor {temporal_factor} and spatial_factor {spatial_factor} "
                f"(patch_size {patch_size}, time_patch {time_patch}) need {max(log_t, log_s)} (one halving per stage); "
                f"use {max(log_t, log_s) + 1} entries"
            )
        if latent_dim < 1 or in_channels < 1:
            raise ConfigError(
                f"causal3d: latent_dim and in_channels must be ≥ 1, got {latent_dim} and {in_channels}"
            )
        if time_kernel < 1:
            raise ConfigError(f"causal3d: time_kernel must be ≥ 1, got {time_kernel}")
        if norm not in ("group", "none"):
            raise ConfigError(f"causal3d: unknown norm {norm!r}: use 'group' or 'none'")
        self.in_channels, self.channels, self.blocks = in_channels, channels, blocks
        self.latent_dim, self.norm, self.time_kernel = latent_dim, norm, time_kernel
        self.temporal_factor, self.spatial_factor = temporal_factor, spatial_factor
        self.patch_size, self.time_patch, self.factorized = patch_size, time_patch, factorized
        tk, conv = time_kernel, {"time_kernel": time_kernel, "factorized": factorized}
        pixels = in_channels * time_patch * patch_size**2  # channels after patching

        def block(ch: int) -> nn.Module:
            return ResBlock3D(ch, norm=norm, **conv)

        enc: list[nn.Module] = [CausalConv3d(pixels, channels[0], **conv)]
        for i, ch in enumerate(channels):
            enc += [block(ch) for _ in range(per_stage[i])]
            if i + 1 < len(channels):
                s_, t_ = i < log_s, i < log_t
                enc.append(
                    CausalConv3d(
                        ch,
                        channels[i + 1],
                        stride=2 if s_ else 1,
                        time_stride=2 if t_ else 1,
                        time_kernel=max(tk, 3) if t_ else tk,
                        factorized=factorized,
                    )
                )
        enc += [FrameNorm(norm, channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], latent_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [CausalConv3d(latent_dim, channels[-1], **conv)]
        for i in reversed(range(len(channels))):
            dec += [block(channels[i]) for _ in range(per_stage[i])]
            if i > 0:
                dec.append(
                    Up(
                        channels[i],
                        channels[i - 1],
                        space=i - 1 < log_s,
                        time=i - 1 < log_t,
                        **conv,
                    )
                )
        dec += [
            FrameNorm(norm, channels[0]),
            nn.SiLU(),
            CausalConv3d(channels[0], pixels, **conv),
        ]
        self.decoder = nn.Sequential(*dec)

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "blocks": self.blocks if isinstance(self.blocks, int) else list(self.blocks),
            "latent_dim": self.latent_dim,
            "temporal_factor": self.temporal_factor,
            "spatial_factor": self.spatial_factor,
            "time_kernel": self.time_kernel,
            "patch_size": self.patch_size,
            "time_patch": self.time_patch,
            "factorized": self.factorized,
            "norm": self.norm,
        }

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(t', h', w')`` for a video ``(c, t, h, w)``: ``(1 + (t - 1) / tf, h / sf, w / sf)``."""
        if len(input_shape) != 4:
            raise ConfigError(
                f"causal3d: takes videos (c, t, h, w), got input shape {tuple(input_shape)} "
                f"(an image is a one-frame video: (c, 1, h, w))"
            )
        c, t, h, w = input_shape
        tf, sf = self.temporal_factor, self.spatial_factor
        if c != self.in_channels:
            raise ConfigError(
                f"causal3d: built for {self.in_channels} channels, got input shape {tuple(input_shape)}"
            )
        if t < 1 or (t - 1) % tf:
            raise ConfigError(
                f"causal3d: {t} frames do not fit temporal_factor {tf}: the frame count must "
                f"be 1 + {tf}·k (e.g. {1 + tf * max(1, (t - 1) // tf)})"
            )
        if h % sf or w % sf:
            raise ConfigError(
                f"causal3d: frame size {h}x{w} is not divisible by spatial_factor {sf}"
            )
        return (1 + (t - 1) // tf, h // sf, w // sf)

    def encode(self, x: Tensor) -> Tensor:
        """``(b, c, t, h, w)`` in ``[-1, 1]`` → ``(b, t', h', w', d)``."""
        if x.ndim != 5:
            raise ConfigError(
                f"causal3d: encode takes videos (b, c, t, h, w), got shape {tuple(x.shape)}"
            )
        self.grid(tuple(x.shape[1:]))
        p, r = self.patch_size, self.time_patch
        if r > 1:  # r - 1 copies of frame 0 in front: groups (x0…x0), (x1…xr), …
            x = torch.cat([x[:, :, :1].expand(-1, -1, r - 1, -1, -1), x], dim=2)
        x = rearrange(x, "b c (t r) (h p) (w q) -> b (c r p q) t h w", p=p, q=p, r=r)
        x = x.contiguous(memory_format=torch.channels_last_3d)  # fastest for Conv3d on CPU
        return rearrange(self.encoder(x), "b d t h w -> b t h w d")

    def decode(self, z: Tensor) -> Tensor:
        """``(b, t', h', w', d)`` → ``(b, c, t, h, w)``, about ``[-1, 1]``."""
        if z.ndim != 5:
            raise ConfigError(
                f"causal3d: decode takes latents (b, t', h', w', d), got shape {tuple(z.shape)}"
            )
        p, r = self.patch_size, self.time_patch
        # (b, t, h, w, d) permuted is already channels-last-3d in memory
        x = self.decoder(rearrange(z, "b t h w d -> b d t h w"))
        x = rearrange(x, "b (c r p q) t h w -> b c (t r) (h p) (w q)", p=p, q=p, r=r)
        return x[:, :, r - 1 :]  # drop the copies of frame 0


@hookimpl
def register_architectures(register):
    register(Causal3D, name="causal3d")
