"""The interface a training-loss plugin implements: :class:`Loss`.

The training loop (:mod:`tok.train`) adds up, at every step, the recipe's
reconstruction loss (``train.loss``), every loss of its ``[losses.NAME]``
tables and the quantizer's ``aux_loss``. It finds each loss through the
registry (hook ``register_losses``), never by importing it. A loss is an
``nn.Module``: its parameters and buffers (a discriminator, running
statistics) and the optimizers it returns from :meth:`Loss.optimizers` are
saved in the run's checkpoint and restored by ``tok train --resume``.

A step, for each loss ``f`` the recipe names::

    out = f(batch)                # LossOutput: a scalar, already weighted
    total = sum(out.loss) + quantizer aux_loss
    total.backward(); tokenizer optimizer step
    f.update(batch)               # train what the loss owns (after the step)

Shapes: ``inputs`` and ``reconstruction`` are float32 ``(b, c, h, w)`` for
images, ``(b, c, t, h, w)`` for videos, ``inputs`` in ``[0, 1]``,
``reconstruction`` the tokenizer's raw (unclamped) output.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["Loss", "LossInputs", "LossOutput", "compute_losses", "frames_as_images"]


@dataclass(frozen=True)
class LossInputs:
    """What a loss sees at one training step.

    ``tokenizer`` is the :class:`tok.models.Tokenizer` being trained (for losses
    that look at its layers, e.g. VQGAN's adaptive weight); ``step`` counts
    optimizer steps from 0; ``logits``: the decoder's logits when its architecture
    outputs them (``reconstruction`` is their sigmoid), else ``None``; ``others``: for a
    loss with ``reads_other_losses``, the sum of every other loss term of the step (a
    scalar with its graph, e.g. the reconstruction + perceptual loss that VQGAN's adaptive
    weight balances against), else ``None``.
    """

    inputs: Tensor
    reconstruction: Tensor
    tokenizer: Any
    step: int
    logits: Tensor | None = None
    others: Tensor | None = None


@dataclass(frozen=True)
class LossOutput:
    """What :meth:`Loss.forward` returns.

    ``loss`` is a scalar tensor, already multiplied by the loss's weight (zero
    when the loss is not active yet); ``metrics`` are detached numbers logged
    to ``metrics.jsonl`` under the loss's name.
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Loss(nn.Module):
    """Base class of the losses registered through ``register_losses``.

    :param weight: multiplies the loss (``[losses.NAME] weight``; default 1).

    Subclasses take further keyword-only, typed arguments (the recipe keys),
    implement :meth:`forward`, and override :meth:`update` and
    :meth:`optimizers` when they train something of their own.
    """

    #: constructor arguments tok fills in from the data (see :mod:`tok.components`)
    supplied_args: ClassVar[tuple[str, ...]] = ()

    #: ``True``: computed after the losses without it, which it sees summed in
    #: ``LossInputs.others`` (an adversarial loss with an adaptive weight)
    reads_other_losses: ClassVar[bool] = False

    def __init__(self, *, weight: float = 1.0) -> None:
        super().__init__()
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ConfigError(
                f"loss {type(self).__name__}: weight must be a finite number ≥ 0, got {weight!r}"
            )
        self.weight = float(weight)

    def forward(self, batch: LossInputs) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, batch: LossInputs) -> dict[str, float]:
        """Train what the loss owns, after the tokenizer's optimizer step; return metrics.

        ``batch.reconstruction`` is detached here. The default does nothing.
        """
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The loss's own optimizers by name, saved in and restored from checkpoints."""
        return {}


def compute_losses(losses: dict[str, Loss], batch: LossInputs) -> dict[str, LossOutput]:
    """Every loss's output for ``batch``, by name in the order of ``losses``: first the
    losses without ``reads_other_losses``, then those with it, each handed the sum of the
    first group's terms as ``batch.others``."""
    first = {name: f(batch) for name, f in losses.items() if not f.reads_other_losses}
    later = [name for name, f in losses.items() if f.reads_other_losses]
    if later:
        others = sum(term.loss for term in first.values()) if first else None
        seen = dataclasses.replace(batch, others=others)
        first.update({name: losses[name](seen) for name in later})
    return {name: first[name] for name in losses}


def frames_as_images(x: Tensor) -> Tensor:
    """Videos ``(b, c, t, h, w)`` as images ``((b t), c, h, w)``, every frame one image;
    images ``(b, c, h, w)`` unchanged — for losses that judge a video frame by frame."""
    return x.transpose(1, 2).flatten(0, 1) if x.ndim == 5 else x
