"""Small building blocks shared by the convolutional architectures."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["Norm", "make_norm", "ResBlock"]

Norm = Literal["group", "batch", "none"]


def make_norm(kind: Norm, channels: int) -> nn.Module:
    """A 2D normalisation layer: GroupNorm (≤ 8 groups), BatchNorm or identity."""
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}: use 'group', 'batch' or 'none'")


class ResBlock(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))))))``, with a 1×1 skip when channels change."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: Norm = "group") -> None:
        super().__init__()
        self.body = nn.Sequential(
            make_norm(norm, in_ch),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            make_norm(norm, out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)
