"""The interface an architecture plugin implements.

An architecture is one ``nn.Module`` holding an encoder and a decoder:

- ``encode(x)``: images ``(b, c, h, w)`` in ``[-1, 1]`` (in ``[0, 1]`` when
  ``unit_input`` is true) → channel-last latents ``(b, *grid, d)`` with ``d = latent_dim``;
- ``decode(z)``: latents ``(b, *grid, d)`` → images ``(b, c, h, w)`` (about ``[-1, 1]``),
  or, when ``output_logits`` is true, the logits ℓ of Bernoulli means: the image is
  sigmoid(ℓ) in ``[0, 1]`` (the tokenizer applies the sigmoid, and a Bernoulli
  likelihood reads ℓ itself: exact and cheaper than a cross-entropy of the image);
- ``grid(input_shape)``: the latent grid for one input of shape ``(c, h, w)``
  (``(c, t, h, w)`` for video); a ``ConfigError`` for inputs it cannot take;
- ``config()``: keyword arguments that rebuild it;
- ``example_config()`` / ``example_input_shape()``: a small instance and an input it
  takes, for :func:`tok.testing.check_architecture`.

Latents are channel-last whatever the architecture, so one quantizer serves
2D grids, 1D sequences and video alike.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = ["Architecture"]


class Architecture(nn.Module):
    """Base class of encoder/decoder families registered via ``register_architectures``."""

    in_channels: int
    latent_dim: int

    #: ``True`` when ``decode`` returns logits whose sigmoid is the image (see above)
    output_logits: bool = False

    #: ``True`` when ``encode`` reads images in ``[0, 1]`` as they are, not mapped to
    #: ``[-1, 1]`` (the tokenizer then hands them over unchanged)
    unit_input: bool = False

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Keyword arguments that build a small, representative instance.

        :func:`tok.testing.check_architecture` builds the architecture with
        ``cls(**cls.example_config())`` when it is given no ``config``.
        Override it with a configuration that exercises what matters in your
        architecture (several stages, its normalisation, its patching…) and
        keep it small so the checks run in a fraction of a second on a CPU.
        The default is ``{}`` (the constructor's defaults).
        """
        return {}

    @classmethod
    def example_input_shape(cls) -> tuple[int, ...]:
        """The shape of one input that ``cls(**cls.example_config())`` takes, without the batch.

        ``(c, h, w)`` for an image architecture, ``(c, t, h, w)`` for a video one;
        :func:`tok.testing.check_architecture` encodes a batch of inputs of this
        shape when it is given no ``input_shape``. The default is ``(3, 32, 32)``.
        """
        return (3, 32, 32)

    #: constructor arguments tok fills in from the data when a recipe leaves them out
    #: (``in_channels``; ``image_size`` too for architectures that size embeddings by
    #: it, like ``seq1d``). Names and values: :mod:`tok.components`.
    supplied_args: ClassVar[tuple[str, ...]] = ("in_channels",)

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def last_layer(self) -> nn.Parameter:
        """The weight of the decoder's output layer: where VQGAN's adaptive weight compares
        the gradients of the reconstruction and adversarial losses (Esser et al. 2021,
        https://arxiv.org/abs/2012.09841, eq. 7).

        The default is the last parameter with two or more dimensions in registration
        order, which is the decoder's output layer when the decoder is registered after
        the encoder (every built-in architecture); override it otherwise.
        """
        weights = [p for p in self.parameters() if p.ndim >= 2]
        if not weights:
            raise TypeError(f"{type(self).__name__} has no weight to serve as last_layer()")
        return weights[-1]
