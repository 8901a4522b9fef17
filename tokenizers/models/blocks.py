"""Small building blocks shared by the convolutional architectures."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from ..helpers import Norm, make_norm

__all__ = ["Norm", "make_norm", "ResBlock", "stages"]


def stages(
    arch: str, channels: list[int] | None, blocks: int | list[int]
) -> tuple[list[int], list[int]]:
    """An architecture's ``channels`` (default ``[32, 64, 128]``) and ``blocks`` checked:
    the widths per stage, and the residual blocks per stage (one number repeated, or a
    list with one entry per stage). Errors start with ``arch``."""
    channels = list(channels) if channels is not None else [32, 64, 128]
    if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
        raise ConfigError(
            f"{arch}: channels must be a non-empty list of positive integers, got {channels!r}"
        )
    per_stage = [blocks] * len(channels) if isinstance(blocks, int) else list(blocks)
    if len(per_stage) != len(channels) or any(b < 0 for b in per_stage):
        raise ConfigError(
            f"{arch}: blocks must be a number ≥ 0 or one per entry of channels "
            f"({len(channels)}), got {blocks!r}"
        )
    return channels, per_stage


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
