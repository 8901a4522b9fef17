"""Convolutional image encoder/decoder (the ``conv`` architecture).

A VQ-GAN-style stack without attention: a stem convolution, residual blocks
at each resolution, stride-2 convolutions down and nearest-neighbour
upsampling + convolution up. ``len(channels) - 1`` halvings, so
``channels=[32, 64, 128]`` turns 28×28 into a 7×7 grid.

``patch_size = p > 1`` first folds each p×p block of pixels into channels
(space-to-depth, ``pixel_unshuffle``) and unfolds the decoder's output the same
way (``pixel_shuffle``, Shi et al. 2016, https://arxiv.org/abs/1609.05158), so
no convolution runs at full resolution: on a CPU the full-resolution layers
are where a small image model's time goes. ``patch_size=2, channels=[64, 128]``
also turns 28×28 into 7×7.

Axis legend: ``b`` batch, ``c`` channels, ``h w`` spatial, ``d`` latent dim.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from tok import hookimpl
from tok.errors import ConfigError
from tok.models import Architecture
from tok.models.blocks import Norm, ResBlock, make_norm, stages

__all__ = ["ConvImage"]


class ConvImage(Architecture):
    """2D convolutional tokenizer body.

    :param in_channels: image channels (1 grayscale, 3 RGB).
    :param channels: width at each resolution, finest first.
    :param blocks: residual blocks per resolution: one number for all, or a list
        (finest first) — ``[0, 1, 1]`` keeps the costly full resolution light.
    :param latent_dim: channels of the latent grid handed to the quantizer.
    :param norm: ``"group"``, ``"batch"`` or ``"none"``.
    :param patch_size: pixels per side folded into channels before the first
        convolution (and unfolded after the last); 1 folds nothing.
    """

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Two halvings, residual blocks at the coarse levels only, GroupNorm: small and fast."""
        return {"in_channels": 3, "channels": [8, 16, 16], "blocks": [0, 1, 1], "latent_dim": 4}

    @classmethod
    def example_input_shape(cls) -> tuple[int, ...]:
        """A 3-channel 32×32 image (an 8×8 grid with the example config)."""
        return (3, 32, 32)

    def __init__(
        self,
        *,
        in_channels: int = 3,
        channels: list[int] | None = None,
        blocks: int | list[int] = 1,
        latent_dim: int = 4,
        norm: Norm = "group",
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        channels, per_level = stages("conv", channels, blocks)
        if latent_dim < 1 or in_channels < 1 or patch_size < 1:
            raise ConfigError("conv: latent_dim, in_channels and patch_size must be ≥ 1")
        self.in_channels, self.channels, self.blocks = in_channels, channels, blocks
        self.latent_dim, self.norm, self.patch_size = latent_dim, norm, patch_size
        self.factor = patch_size * 2 ** (len(channels) - 1)
        pixels = in_channels * patch_size**2  # channels of one folded patch

        enc: list[nn.Module] = [nn.PixelUnshuffle(patch_size)] if patch_size > 1 else []
        enc.append(nn.Conv2d(pixels, channels[0], 3, padding=1))
        for i, ch in enumerate(channels):
            enc += [ResBlock(ch, ch, norm=norm) for _ in range(per_level[i])]
            if i + 1 < len(channels):
                enc.append(nn.Conv2d(ch, channels[i + 1], 3, stride=2, padding=1))
        enc += [make_norm(norm, channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], latent_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_dim, channels[-1], 3, padding=1)]
        for i in reversed(range(len(channels))):
            ch = channels[i]
            dec += [ResBlock(ch, ch, norm=norm) for _ in range(per_level[i])]
            if i > 0:
                dec += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(ch, channels[i - 1], 3, padding=1),
                ]
        dec += [
            make_norm(norm, channels[0]),
            nn.SiLU(),
            nn.Conv2d(channels[0], pixels, 3, padding=1),
        ]
        dec += [nn.PixelShuffle(patch_size)] if patch_size > 1 else []
        self.decoder = nn.Sequential(*dec)
        # Channels-last (NHWC) convolutions are 5-12 % faster on CPUs (oneDNN's native
        # layout) and on tensor-core GPUs; the weights are saved contiguous all the same.
        self.to(memory_format=torch.channels_last)

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "blocks": self.blocks if isinstance(self.blocks, int) else list(self.blocks),
            "latent_dim": self.latent_dim,
            "norm": self.norm,
            "patch_size": self.patch_size,
        }

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(h / f, w / f)`` for an image ``(c, h, w)``, ``f = patch_size · 2 ** (len(channels) - 1)``;
        a ``ConfigError`` for another channel count or sides that ``f`` does not divide."""
        if len(input_shape) != 3:
            raise ConfigError(f"conv: takes images (c, h, w), got input shape {tuple(input_shape)}")
        c, h, w = input_shape
        if c != self.in_channels:
            raise ConfigError(
                f"conv: built for {self.in_channels}-channel images (in_channels), "
                f"got {c} channels (input shape {c}x{h}x{w})"
            )
        f = self.factor
        if h % f or w % f:
            raise ConfigError(
                f"conv: image size {h}x{w} is not divisible by the downsampling factor {f}; "
                f"height and width must be multiples of {f} "
                f"(e.g. {max(f, h // f * f)}x{max(f, w // f * f)})"
            )
        return (h // f, w // f)

    def encode(self, x: Tensor) -> Tensor:
        """``(b, c, h, w)`` → ``(b, h', w', d)``; a ``ConfigError`` for inputs ``grid`` refuses."""
        self.grid(tuple(x.shape[1:]))
        x = x.contiguous(memory_format=torch.channels_last)
        return rearrange(self.encoder(x), "b d h w -> b h w d")

    def decode(self, z: Tensor) -> Tensor:
        """``(b, h', w', d)`` → ``(b, c, h, w)``."""
        x = self.decoder(rearrange(z, "b h w d -> b d h w"))  # the input: a channels-last view
        return x.contiguous()


@hookimpl
def register_architectures(register):
    register(ConvImage, name="conv")
