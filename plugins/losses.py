"""The built-in reconstruction losses: ``mse`` and ``l1``.

Registered through ``register_losses`` exactly like a third-party loss.
Axis legend: ``b`` batch, ``...`` the pixels (and frames) of one input.
"""

from __future__ import annotations

from tok import hookimpl
from tok.losses import Loss, LossInputs, LossOutput

__all__ = ["MSE", "L1"]


class MSE(Loss):
    """Mean squared error between the reconstruction and the input, over every pixel.

    :param weight: multiplies the loss.
    """

    def forward(self, batch: LossInputs) -> LossOutput:
        diff = batch.reconstruction.float() - batch.inputs
        return LossOutput(loss=self.weight * diff.pow(2).mean())


class L1(Loss):
    """Mean absolute error between the reconstruction and the input, over every pixel.

    :param weight: multiplies the loss.
    """

    def forward(self, batch: LossInputs) -> LossOutput:
        diff = batch.reconstruction.float() - batch.inputs
        return LossOutput(loss=self.weight * diff.abs().mean())


@hookimpl
def register_losses(register):
    register(MSE, name="mse")
    register(L1, name="l1")
