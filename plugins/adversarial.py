"""The adversarial training loss of VQGAN: a PatchGAN discriminator, hinge or
non-saturating losses, the adaptive weight, a start step and LeCam regularisation.

- PatchGAN (Isola et al. 2017, https://arxiv.org/abs/1611.07004), as in
  taming-transformers' ``NLayerDiscriminator``: stride-2 4×4 convolutions, then two
  stride-1 ones; one logit per overlapping patch (70×70 pixels with 3 layers).
- Hinge loss (Lim & Ye 2017, https://arxiv.org/abs/1705.02894; VQGAN's default):
  D minimises ``mean(relu(1 − D(x))) + mean(relu(1 + D(x̂)))``, G minimises ``−mean D(x̂)``.
  Non-saturating (Goodfellow et al. 2014): D minimises ``mean(softplus(−D(x))) +
  mean(softplus(D(x̂)))``, G minimises ``mean(softplus(−D(x̂)))``.
- Adaptive weight (Esser et al. 2021, https://arxiv.org/abs/2012.09841, eq. 7):
  ``λ = ‖∇_L L_rec‖ / (‖∇_L L_GAN‖ + 1e-4)`` at the decoder's last layer ``L``
  (:meth:`tok.models.Architecture.last_layer`), clamped to ``[0, 10⁴]`` and detached;
  ``L_rec`` is the sum of the step's other loss terms (``LossInputs.others``).
- LeCam regularisation (Tseng et al. 2021, https://arxiv.org/abs/2104.03310, eq. 3):
  ``R_LC = mean((D(x) − α_F)²) + mean((D(x̂) − α_R)²)`` added to D's loss with weight
  ``lecam_weight``, where ``α_R`` and ``α_F`` are exponential moving averages (decay
  ``lecam_decay``) of D's mean output on real and reconstructed images, updated with
  this step's means before ``R_LC`` is computed.

Before ``start_step`` the loss is 0 and the discriminator does not train (VQGAN's
``disc_start``). The discriminator, its Adam optimizer and the LeCam averages are the
loss's state: saved in checkpoints, so ``--resume`` continues exactly. Videos
``(b, c, t, h, w)`` are judged frame by frame. Under torchrun the discriminator's
gradients and the LeCam means are averaged over the processes, so every rank keeps
the same discriminator.

Axis legend: ``b`` batch, ``c`` channels, ``t`` frames, ``h w`` spatial.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tok import hookimpl
from tok.distributed import average_gradients, mean_over_ranks
from tok.errors import ConfigError
from tok.losses import Loss, LossInputs, LossOutput, frames_as_images
from tok.models.blocks import make_norm

__all__ = ["PatchGAN", "Adversarial", "adaptive_weight", "lecam_regularizer"]

Objective = Literal["hinge", "non_saturating"]


class PatchGAN(nn.Module):
    """The PatchGAN discriminator: ``(b, c, h, w)`` images in ``[0, 1]`` → float logits
    ``(b, 1, h', w')``, one per overlapping patch.

    :param in_channels: image channels.
    :param channels: width of the first layer; doubled per layer, at most 8×.
    :param layers: stride-2 layers (3: 70×70 receptive field, as pix2pix and VQGAN).
    :param norm: ``"batch"`` (VQGAN's), ``"group"`` or ``"none"``.
    """

    def __init__(
        self, *, in_channels: int = 3, channels: int = 64, layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        if channels < 1 or layers < 1:
            raise ConfigError(
                f"PatchGAN: channels and layers must be ≥ 1, got {channels}, {layers}"
            )
        seq: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            seq += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=norm == "none"),
                make_norm(norm, out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        seq.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # DCGAN's initialisation, as taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(frames_as_images(x) * 2 - 1)  # a video: frame by frame


def adaptive_weight(reconstruction_loss: Tensor, gan_loss: Tensor, last_layer: Tensor) -> Tensor:
    """VQGAN's adaptive weight ``‖∇_L L_rec‖ / (‖∇_L L_GAN‖ + 1e-4)``, clamped to
    ``[0, 10⁴]`` and detached (a float32 scalar). Both losses must depend on
    ``last_layer``; their graphs are kept for the step's backward pass."""
    g_rec = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = g_rec.float().norm() / (g_gan.float().norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()


def lecam_regularizer(real: Tensor, fake: Tensor, ema_real: Tensor, ema_fake: Tensor) -> Tensor:
    """LeCam's ``mean((D(x) − α_F)²) + mean((D(x̂) − α_R)²)`` for the discriminator's
    logits on real (``real``) and reconstructed (``fake``) images and the moving averages
    ``α_R = ema_real``, ``α_F = ema_fake`` (scalars, treated as constants)."""
    return (real - ema_fake.detach()).pow(2).mean() + (fake - ema_real.detach()).pow(2).mean()


class Adversarial(Loss):
    """The adversarial loss: a PatchGAN judges reconstructions against inputs.

    :param objective: ``"hinge"`` (VQGAN) or ``"non_saturating"``.
    :param start_step: steps before the loss and the discriminator's training start.
    :param adaptive: scale by VQGAN's adaptive weight (needs another loss term).
    :param lecam_weight: weight of LeCam regularisation in D's loss (0: none; 0.001 is
        MAGVIT-v2's choice).
    :param lecam_decay: decay of LeCam's moving averages.
    :param disc_lr: the discriminator's Adam learning rate (betas 0.5, 0.9 as VQGAN).
    :param disc_channels: PatchGAN's first-layer width.
    :param disc_layers: PatchGAN's stride-2 layers.
    :param disc_norm: PatchGAN's normalisation (``"batch"``, ``"group"``, ``"none"``).
    :param in_channels: image channels (supplied from the data).
    :param weight: multiplies the loss (VQGAN's ``disc_weight``).
    :raises ConfigError: an unknown objective, a negative step or weight, a decay outside
        ``[0, 1)``, a learning rate ≤ 0.
    """

    supplied_args = ("in_channels",)
    reads_other_losses = True

    def __init__(
        self,
        *,
        objective: Objective = "hinge",
        start_step: int = 0,
        adaptive: bool = True,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.99,
        disc_lr: float = 1e-4,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "batch",
        in_channels: int = 3,
        weight: float = 0.1,
    ) -> None:
        super().__init__(weight=weight)
        if objective not in ("hinge", "non_saturating"):
            raise ConfigError(
                f"loss adversarial: objective must be 'hinge' or 'non_saturating', got {objective!r}"
            )
        if start_step < 0 or lecam_weight < 0 or not math.isfinite(lecam_weight):
            raise ConfigError("loss adversarial: start_step and lecam_weight must be ≥ 0")
        if not 0 <= lecam_decay < 1:
            raise ConfigError(f"loss adversarial: lecam_decay must be in [0, 1), got {lecam_decay}")
        if not disc_lr > 0:
            raise ConfigError(f"loss adversarial: disc_lr must be > 0, got {disc_lr}")
        self.objective, self.start_step, self.adaptive = objective, start_step, adaptive
        self.lecam_weight, self.lecam_decay = float(lecam_weight), float(lecam_decay)
        self.discriminator = PatchGAN(
            in_channels=in_channels, channels=disc_channels, layers=disc_layers, norm=disc_norm
        )
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=disc_lr, betas=(0.5, 0.9)
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"discriminator": self.optimizer}

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        """G's loss for D's logits on reconstructions (a scalar)."""
        if self.objective == "hinge":
            return -fake_logits.float().mean()
        return F.softplus(-fake_logits.float()).mean()

    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """D's loss for its logits on inputs and on reconstructions (a scalar)."""
        real, fake = real_logits.float(), fake_logits.float()
        if self.objective == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def forward(self, batch: LossInputs) -> LossOutput:
        if batch.step < self.start_step:
            return LossOutput(loss=batch.reconstruction.new_zeros(()).float())
        self.discriminator.requires_grad_(False)  # G's step: no gradients for D
        try:
            g_loss = self.generator_loss(self.discriminator(batch.reconstruction))
        finally:
            self.discriminator.requires_grad_(True)
        scale = torch.ones((), device=g_loss.device)
        if (
            self.adaptive
            and self.training
            and batch.others is not None
            and batch.others.requires_grad
        ):
            last = batch.tokenizer.architecture.last_layer()
            scale = adaptive_weight(batch.others, g_loss, last)
        metrics = {"g_loss": float(g_loss.detach()), "adaptive_weight": float(scale)}
        return LossOutput(loss=self.weight * scale * g_loss, metrics=metrics)

    def update(self, batch: LossInputs) -> dict[str, float]:
        """One discriminator step on this batch's inputs and (detached) reconstructions."""
        if batch.step < self.start_step:
            return {}
        real = self.discriminator(batch.inputs)
        fake = self.discriminator(batch.reconstruction.detach())
        loss = self.discriminator_loss(real, fake)
        metrics = {"d_loss": float(loss.detach())}
        if self.lecam_weight:
            means = mean_over_ranks(torch.stack([real.detach().mean(), fake.detach().mean()]))
            d = self.lecam_decay
            self.ema_real.mul_(d).add_((1 - d) * means[0])
            self.ema_fake.mul_(d).add_((1 - d) * means[1])
            reg = lecam_regularizer(real.float(), fake.float(), self.ema_real, self.ema_fake)
            loss = loss + self.lecam_weight * reg
            metrics["lecam"] = float(reg.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.discriminator)
        self.optimizer.step()
        metrics.update(
            real_logits=float(real.detach().mean()), fake_logits=float(fake.detach().mean())
        )
        return metrics


@hookimpl
def register_losses(register):
    register(Adversarial, name="adversarial", aliases=("gan",))
