"""Fully connected encoder/decoder (the ``mlp`` architecture): the lecture's VAE body.

Kingma & Welling 2013, "Auto-Encoding Variational Bayes" (https://arxiv.org/abs/1312.6114),
appendix C: an MLP encoder and decoder on flattened MNIST digits. The image is
flattened, passed through ``Linear → ReLU`` layers of the ``hidden`` widths, and the
last hidden activation (``latent_dim = hidden[-1]`` channels at one grid position) is
what the bottleneck reads. The decoder mirrors it: ``ReLU →`` the hidden widths in
reverse ``→ Linear`` to the pixels, with a sigmoid on the output (the mean of a
Bernoulli per pixel) or none (``output = "linear"``). The sigmoid is the tokenizer's:
``decode`` returns its logits (``output_logits``), which ``bernoulli_nll`` reads
directly.

With a Gaussian bottleneck (``gaussian`` with ``latent_dim = 20``) in between, its two
heads (one projection to μ and log σ²: ``fc21`` and ``fc22`` side by side) and its
output projection are the lecture's ``fc21``/``fc22`` and ``fc3``, so
``hidden = [400]`` is the lecture's 784-400-20 model parameter for parameter
(652,824 parameters for a 28×28 image).

Axis legend: ``b`` batch, ``c`` channels, ``h w`` spatial, ``d`` latent dim (one grid
position: latents are ``(b, 1, d)``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from einops import rearrange
from torch import Tensor, nn

from tok import hookimpl
from tok.errors import ConfigError
from tok.models import Architecture

__all__ = ["MLP"]


class MLP(Architecture):
    """A fully connected tokenizer body with one latent position per image.

    :param in_channels: image channels (supplied from the data).
    :param image_size: ``[h, w]`` the network is built for (supplied from the data);
        other sizes are refused.
    :param hidden: widths of the hidden layers, input side first; the last one is
        ``latent_dim``, the channels the bottleneck reads.
    :param output: ``"sigmoid"`` (pixels are Bernoulli means in ``[0, 1]``) or
        ``"linear"``.
    :raises ConfigError: an empty ``hidden``, a width or size below 1, another ``output``.
    """

    supplied_args = ("in_channels", "image_size")

    #: the pixels as they are, in [0, 1], as the lecture's network reads them: mapped to
    #: [-1, 1] the same network (PyTorch's default initialisation) ended 10 epochs 2.2
    #: nats worse (107.67 against 105.42 test -ELBO, one seed, bench/RESULTS.md)
    unit_input = True

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Two small hidden layers on 3×8×8 images."""
        return {"in_channels": 3, "image_size": [8, 8], "hidden": [16, 8]}

    @classmethod
    def example_input_shape(cls) -> tuple[int, ...]:
        return (3, 8, 8)

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: list[int] | tuple[int, int] = (28, 28),
        hidden: list[int] | tuple[int, ...] = (400,),
        output: Literal["sigmoid", "linear"] = "sigmoid",
    ) -> None:
        super().__init__()
        hidden, image_size = [int(h) for h in hidden], [int(s) for s in image_size]
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"mlp: hidden must list at least one width ≥ 1, got {hidden}")
        if len(image_size) != 2 or min(image_size) < 1 or in_channels < 1:
            raise ConfigError(
                f"mlp: image_size must be [height, width] ≥ 1 and in_channels ≥ 1, "
                f"got {image_size} and {in_channels}"
            )
        if output not in ("sigmoid", "linear"):
            raise ConfigError(f"mlp: output must be 'sigmoid' or 'linear', got {output!r}")
        self.in_channels, self.image_size, self.hidden, self.output = (
            in_channels, image_size, hidden, output,
        )  # fmt: skip
        self.output_logits = output == "sigmoid"  # decode gives logits; the image is their sigmoid
        self.latent_dim = hidden[-1]
        pixels = in_channels * math.prod(image_size)
        widths = [pixels, *hidden]
        down: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            down += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = []
        for a, b in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
            up += [nn.ReLU(), nn.Linear(a, b)]
        self.decoder = nn.Sequential(*up)

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(1,)`` for the ``(c, h, w)`` it was built for; :class:`ConfigError` otherwise."""
        want = (self.in_channels, *self.image_size)
        if tuple(input_shape) != want:
            raise ConfigError(
                f"an mlp is built for one input size, {'x'.join(map(str, want))}; "
                f"got {'x'.join(map(str, input_shape))}"
            )
        return (1,)

    def encode(self, x: Tensor) -> Tensor:
        """``(b, c, h, w)`` in ``[0, 1]`` (``unit_input``) → ``(b, 1, latent_dim)``;
        :class:`ConfigError` for another image size."""
        self.grid(tuple(x.shape[1:]))
        return self.encoder(rearrange(x, "b c h w -> b 1 (c h w)"))

    def decode(self, z: Tensor) -> Tensor:
        """``(b, 1, latent_dim)`` → ``(b, c, h, w)``: with a sigmoid output the logits of
        the pixels' Bernoulli means (``output_logits``: the tokenizer applies the sigmoid),
        else an image in about ``[-1, 1]``."""
        y = self.decoder(z)
        h, w = self.image_size
        return rearrange(y, "b 1 (c h w) -> b c h w", c=self.in_channels, h=h, w=w)

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "hidden": list(self.hidden),
            "output": self.output,
        }


@hookimpl
def register_architectures(register):
    register(MLP, name="mlp")
