"""The pretrained networks behind LPIPS and rFID, found on this machine and loaded without
pickle — never downloaded.

- **LPIPS** (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
  Perceptual Metric", https://arxiv.org/abs/1801.03924) through the ``lpips`` package. Its
  linear layers (v0.1) ship inside the package; its backbone is torchvision's ImageNet
  AlexNet (``alexnet-owt-7be5be79.pth``) or VGG16 (``vgg16-397923af.pth``), which
  torchvision keeps in ``torch.hub.get_dir()/checkpoints/`` after a download on a
  connected machine. tok looks there, or in the file the user names (an option, else
  ``$TOK_LPIPS_WEIGHTS``); ``lpips.LPIPS`` is built with ``pnet_rand=True`` so it never
  tries the network, and the tensors are copied in.
- **rFID**'s InceptionV3 (Heusel et al. 2017, https://arxiv.org/abs/1706.08500; the
  TF-ported weights of torch-fidelity, ``weights-inception-2015-12-05-6726825d.pth``)
  through torchmetrics' ``FrechetInceptionDistance``; looked for in the same checkpoints
  folder or the user's file (an option, else ``$TOK_INCEPTION_WEIGHTS``).

Every file is read with ``torch.load(..., weights_only=True)`` (:func:`tok.features.load_weights`):
tensors only, no code. torch-fidelity itself unpickles its weight file with
``weights_only=False``, so tok hands it a copy it wrote from the checked tensors.
Missing weights raise :class:`tok.features.WeightsUnavailableError` with one line saying
which URL to download, which folder to put it in, and which option or variable names a
local copy.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import TokError
from .features import WeightsUnavailableError, load_weights

__all__ = [
    "LPIPS_BACKBONES",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "checkpoints_dir",
    "find_weights",
    "lpips_network",
    "inception_fid",
]

#: LPIPS backbone → (torchvision's weight file name, its download URL)
LPIPS_BACKBONES: dict[str, tuple[str, str]] = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}  # fmt: skip
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)


def checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision and torch-fidelity keep what
    they download (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/…``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(
    file: str, url: str, *, what: str, path: str | os.PathLike[str] | None, env: str, option: str
) -> Path:
    """The weight file to use: ``path`` if given, else ``$env`` if set, else ``file`` in
    :func:`checkpoints_dir`.

    :raises WeightsUnavailableError: the named file does not exist, or none was named and
        the checkpoints folder lacks ``file`` — one line with the URL, the folder, and the
        ``option`` / ``env`` that name a local copy.
    """
    named = path if path is not None else os.environ.get(env) or None
    if named is not None:
        found = Path(named).expanduser()
        if not found.is_file():
            source = "given" if path is not None else f"named by ${env}"
            raise WeightsUnavailableError(f"{what}: no weight file at {found} ({source})")
        return found
    found = checkpoints_dir() / file
    if not found.is_file():
        raise WeightsUnavailableError(
            f"{what} needs {file}, not found in {found.parent}: download {url} into that "
            f"folder, or name a local copy with {option} or ${env}"
        )
    return found


def lpips_network(
    net: str = "alex",
    *,
    weights: str | os.PathLike[str] | None = None,
    option: str = "--lpips-weights",
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A frozen ``lpips.LPIPS`` (v0.1, linear layers calibrated on human judgements) with
    the ImageNet ``net`` backbone (``"alex"`` or ``"vgg"``), in eval mode on ``device``.

    Call it as ``model(x, y, normalize=True)`` with ``x, y`` float ``(b, 3, h, w)`` in
    ``[0, 1]``; it returns ``(b, 1, 1, 1)`` distances (0 for identical images).

    :param weights: torchvision's backbone file (a state dict with ``features.*``); else
        ``$TOK_LPIPS_WEIGHTS``, else torch hub's checkpoints folder.
    :param option: how the caller's user names ``weights`` (for the error line).
    :raises WeightsUnavailableError: the backbone file is absent (says what to download
        and where to put it).
    :raises TokError: an unknown ``net``; a file holding anything but tensors, or not
        torchvision's ``net`` weights (a missing or misshapen ``features`` tensor named).
    """
    if net not in LPIPS_BACKBONES:
        raise TokError(f"unknown LPIPS network {net!r}; choose one of {', '.join(LPIPS_BACKBONES)}")
    import lpips

    file, url = LPIPS_BACKBONES[net]
    what = f"LPIPS ({net})"
    path = find_weights(file, url, what=what, path=weights, env="TOK_LPIPS_WEIGHTS", option=option)
    backbone = load_weights(path, what=what)
    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated": we pass False
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    linear = load_weights(
        Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth",
        what=f"LPIPS ({net}) linear layers",
    )
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("net."):  # net.slice{k}.{i}.weight is torchvision's features.{i}.weight
            source = "features." + name.split(".", 2)[2]
            found = backbone.get(source)
            if found is None or found.shape != tensor.shape:
                got = "missing" if found is None else f"of shape {tuple(found.shape)}"
                raise TokError(
                    f"{what}: {path} does not hold torchvision's {net} weights "
                    f"({source} {got}, expected {tuple(tensor.shape)})"
                )
            state[name] = found
        elif re.fullmatch(r"lin\d\..*", name):  # (lins.k are the same modules)
            if name not in linear:
                raise TokError(f"{what}: the lpips package's linear layers lack {name}")
            state[name] = linear[name]
    model.load_state_dict(state, strict=False)  # the scaling layer's constants stay
    model.requires_grad_(False)
    return model.eval().to(device)


def inception_fid(
    *,
    weights: str | os.PathLike[str] | None = None,
    option: str = "--inception-weights",
    device: torch.device | str = "cpu",
) -> nn.Module:
    """torchmetrics' ``FrechetInceptionDistance`` (2048 pool features of torch-fidelity's
    InceptionV3, inputs float ``(b, 3, h, w)`` in ``[0, 1]`` — ``normalize=True`` — resized
    to 299 px with antialiasing) on ``device``, its weights checked as plain tensors first.

    :param weights: the InceptionV3 file; else ``$TOK_INCEPTION_WEIGHTS``, else torch hub's
        checkpoints folder.
    :raises WeightsUnavailableError: the file is absent (says what to download and where).
    :raises TokError: a file holding anything but tensors.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    what = "rFID (InceptionV3)"
    path = find_weights(
        INCEPTION_FILE, INCEPTION_URL, what=what, path=weights,
        env="TOK_INCEPTION_WEIGHTS", option=option,
    )  # fmt: skip
    state = load_weights(path, what=what)
    with tempfile.TemporaryDirectory(prefix="tok-inception-") as tmp:
        checked = Path(tmp) / INCEPTION_FILE
        torch.save(state, checked)  # written by us from tensors: safe for its full unpickler
        metric = FrechetInceptionDistance(
            feature=2048, normalize=True, feature_extractor_weights_path=str(checked)
        )
    return metric.to(device)
