"""The ``lpips`` training loss: LPIPS between the reconstruction and the input.

Zhang, Isola, Efros, Shechtman & Wang 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric", https://arxiv.org/abs/1801.03924 — the perceptual term
of taming-transformers' VQGAN (with the VGG16 backbone). Computed by the ``lpips`` package
(v0.1 linear layers, which ship with it) on torchvision's ImageNet backbone, found in
torch hub's checkpoints folder or in the file the recipe names; never downloaded, read
with ``torch.load(weights_only=True)`` (:func:`tok.pretrained.lpips_network`). The
backbone is frozen and not part of the run's checkpoint.

Registered through ``register_losses`` exactly like a third-party loss::

    [losses.lpips]
    net = "vgg"        # or "alex"
    weights = "/path/to/vgg16-397923af.pth"   # optional
    weight = 1.0

Axis legend: ``b`` batch, ``c`` channels (1 is repeated to RGB), ``t`` frames (a video is
measured frame by frame), ``h w`` spatial.
"""

from __future__ import annotations

from torch import nn

from tok import hookimpl
from tok.errors import ConfigError, TokError
from tok.losses import Loss, LossInputs, LossOutput, frames_as_images
from tok.pretrained import LPIPS_BACKBONES, lpips_network

__all__ = ["LPIPSLoss"]


class LPIPSLoss(Loss):
    """LPIPS of the reconstruction against the input, averaged over the batch (and the
    frames of a video), times ``weight``. Inputs in ``[0, 1]``, RGB or grayscale.

    :param net: the backbone, ``"vgg"`` (VGG16, VQGAN's choice; default) or ``"alex"``.
    :param weights: torchvision's weight file for ``net`` (``vgg16-397923af.pth`` /
        ``alexnet-owt-7be5be79.pth``); default ``$TOK_LPIPS_WEIGHTS``, else torch hub's
        checkpoints folder.
    :param weight: multiplies the loss.
    :raises tok.features.WeightsUnavailableError: the backbone file is absent (one line:
        what to download, where to put it, or how to name a local copy).
    :raises ConfigError: an unknown ``net``.

    :meth:`forward` raises :class:`TokError` for inputs of other than 1 or 3 channels and
    for images too small for the backbone (AlexNet needs about 32 px, VGG16 16 px).
    """

    def __init__(
        self, *, net: str = "vgg", weights: str | None = None, weight: float = 1.0
    ) -> None:
        super().__init__(weight=weight)
        if net not in LPIPS_BACKBONES:
            raise ConfigError(
                f"loss lpips: net must be one of {', '.join(map(repr, LPIPS_BACKBONES))}, "
                f"got {net!r}"
            )
        self.net = net
        # kept out of the module tree: frozen, so not in the run's checkpoint
        self._model: list[nn.Module] = [
            lpips_network(net, weights=weights, option="[losses.lpips] weights")
        ]

    def forward(self, batch: LossInputs) -> LossOutput:
        x, recon = batch.inputs, batch.reconstruction.float()
        x, recon = frames_as_images(x), frames_as_images(recon)
        if x.shape[1] not in (1, 3):
            raise TokError(f"loss lpips needs RGB or grayscale inputs, got {x.shape[1]} channels")
        if x.shape[1] == 1:
            x, recon = x.expand(-1, 3, -1, -1), recon.expand(-1, 3, -1, -1)
        model = self._model[0]
        if next(model.parameters()).device != x.device:
            self._model[0] = model = model.to(x.device)
        try:
            distance = model(recon, x, normalize=True).mean()
        except RuntimeError as exc:  # the backbone's pooling outgrew the image
            h, w = x.shape[-2:]
            raise TokError(
                f"loss lpips: {h}×{w}-pixel images are too small for its {self.net} backbone "
                f"({str(exc).strip().splitlines()[0]})"
            ) from None
        return LossOutput(loss=self.weight * distance)


@hookimpl
def register_losses(register):
    register(LPIPSLoss, name="lpips")
