"""The interface an architecture plugin implements.

An architecture is one ``nn.Module`` holding an encoder and a decoder:

- ``encode(x)``: images ``(b, c, h, w)`` in ``[-1, 1]`` → channel-last latents
  ``(b, *grid, d)`` with ``d = latent_dim``;
- ``decode(z)``: latents ``(b, *grid, d)`` → images ``(b, c, h, w)`` (about ``[-1, 1]``);
- ``grid(input_shape)``: the latent grid for one input of shape ``(c, h, w)``;
- ``config()``: keyword arguments that rebuild it.

Latents are channel-last whatever the architecture, so one quantizer serves
2D grids, 1D sequences and video alike.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["Architecture"]


class Architecture(nn.Module):
    """Base class of encoder/decoder families registered via ``register_architectures``."""

    in_channels: int
    latent_dim: int

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError
