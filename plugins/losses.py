"""The built-in reconstruction losses: ``mse`` and ``l1`` (means over pixels), and the
negative log-likelihoods of a VAE's decoder, ``bernoulli_nll`` and ``gaussian_nll``
(sums over the pixels of an item, in nats, so that with a KL in nats per item the
total is the negative ELBO; Kingma & Welling 2013, https://arxiv.org/abs/1312.6114).

Registered through ``register_losses`` exactly like a third-party loss.
Axis legend: ``b`` batch, ``...`` the pixels (and frames) of one input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tok import hookimpl
from tok.errors import ConfigError
from tok.losses import Loss, LossInputs, LossOutput

__all__ = ["MSE", "L1", "BernoulliNLL", "GaussianNLL"]


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


class _LogitBCE(torch.autograd.Function):
    """Σ softplus(ℓ) − x·ℓ, the binary cross-entropy of targets ``x`` and Bernoulli means
    sigmoid(ℓ), summed; its gradient is sigmoid(ℓ) − x. Written with the vectorised
    ``exp``/``log`` as max(ℓ, 0) − x·ℓ + log(1 + exp(−|ℓ|)) — torch's ``softplus`` and
    ``binary_cross_entropy_with_logits`` take several times longer on a CPU — and a
    backward of one sigmoid (log(1 + e) for e < 1e-7 rounds to 0: at most 1e-7 nats a
    pixel)."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(logits, target)
        soft = logits.abs().neg_().exp_().add_(1).log_()
        return (logits.clamp(min=0) - target * logits + soft).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, target = ctx.saved_tensors
        return (torch.sigmoid(logits) - target) * grad, None


class BernoulliNLL(Loss):
    """−log p(x | x̂) with a Bernoulli per pixel of mean x̂: the binary cross-entropy
    summed over the pixels of an item, averaged over the batch; nats per item.

    The lecture's and Kingma & Welling's MNIST likelihood: targets are the grey levels in
    ``[0, 1]`` (not binarised). When the decoder gives logits ℓ (an architecture with
    ``output_logits``, such as ``mlp``'s sigmoid output) the loss is computed from them,
    exactly; otherwise from the reconstruction clamped into ``[0, 1]``, with log 0
    counted as −100 as ``torch``'s BCE does.

    :param weight: multiplies the loss.
    """

    def forward(self, batch: LossInputs) -> LossOutput:
        if batch.logits is not None:
            total = _LogitBCE.apply(batch.logits.float(), batch.inputs)
        else:
            recon = batch.reconstruction.float().clamp(0, 1)
            total = F.binary_cross_entropy(recon, batch.inputs, reduction="sum")
        return LossOutput(loss=self.weight * total / len(batch.inputs))


class GaussianNLL(Loss):
    """−log N(x; x̂, σ²) summed over the pixels of an item, averaged over the batch; nats
    per item: ``Σ (x − x̂)² / (2σ²) + ½ log(2πσ²)`` per pixel — MSE scaled, plus a constant.

    :param sigma: the decoder's fixed standard deviation σ, in pixel units (``[0, 1]``
        scale); smaller σ weighs reconstruction more against the KL.
    :param weight: multiplies the loss.
    :raises ConfigError: ``sigma`` not a finite number > 0.
    """

    def __init__(self, *, sigma: float = 0.1, weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        if not math.isfinite(sigma) or sigma <= 0:
            raise ConfigError(f"loss gaussian_nll: sigma must be a finite number > 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, batch: LossInputs) -> LossOutput:
        diff = batch.reconstruction.float() - batch.inputs
        pixels = diff[0].numel()
        const = 0.5 * math.log(2 * math.pi * self.sigma**2) * pixels
        total = diff.pow(2).sum() / (2 * self.sigma**2 * len(diff)) + const
        return LossOutput(loss=self.weight * total)


@hookimpl
def register_losses(register):
    register(MSE, name="mse")
    register(L1, name="l1")
    register(BernoulliNLL, name="bernoulli_nll", aliases=("bce",))
    register(GaussianNLL, name="gaussian_nll")
