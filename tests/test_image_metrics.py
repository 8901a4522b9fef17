"""tok.image_metrics: SSIM and MS-SSIM against pytorch-msssim and hand computations, the
Fréchet distance against its closed form, the EfficientNet-Lite feature distance, and
ImageQuality's values, spreads, unavailable metrics and protocol — on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fidelity_inception_file, photo_crops, torchvision_alexnet_file

from tok.errors import TokError
from tok.features import efficientnet_lite
from tok.image_metrics import (
    MS_SSIM_BETAS,
    ImageQuality,
    feature_distance,
    frechet_distance,
    ms_ssim,
    ms_ssim_scales,
    ssim,
)


def photos(size: int, n: int = 4) -> torch.Tensor:
    return photo_crops(size, n)


def noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture(autouse=True)
def no_pretrained_weights(tmp_path, monkeypatch):
    """An empty torch hub: LPIPS's and Inception's weights are absent, whatever this
    machine's cache holds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TOK_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("TOK_INCEPTION_WEIGHTS", raising=False)


# SSIM and MS-SSIM --------------------------------------------------------------------


def test_ssim_and_ms_ssim_of_identical_images_are_one():
    x = photos(192)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert ms_ssim(x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-6)


def test_ssim_matches_pytorch_msssim_on_real_photos():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x = photos(128)
    for y in (noisy(x, 0.05), F.avg_pool2d(x, 3, 1, 1)):
        ours = ssim(y, x)
        reference = pytorch_msssim.ssim(y, x, data_range=1.0, size_average=False)
        assert ours.tolist() == pytest.approx(reference.tolist(), abs=2e-5)
        assert (ours < 0.99).all()  # a real difference, measured


def test_ms_ssim_matches_pytorch_msssim_at_five_scales():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x = photos(256)
    assert ms_ssim_scales(256, 256) == 5
    for y in (noisy(x, 0.05), F.avg_pool2d(x, 3, 1, 1)):
        ours = ms_ssim(y, x)
        reference = pytorch_msssim.ms_ssim(y, x, data_range=1.0, size_average=False)
        # torchmetrics averages its coarsest SSIM map (16 px here) over the reflect-padded
        # image, pytorch-msssim over the valid 6 px: they differ by a few 1e-4
        assert ours.tolist() == pytest.approx(reference.tolist(), abs=1e-3)
        assert (ours < 0.999).all()


@pytest.mark.parametrize(
    ("side", "scales"),
    [(512, 5), (176, 5), (175, 4), (99, 4), (98, 3), (64, 3), (44, 3), (43, 2), (28, 2),
     (12, 2), (11, 1), (10, 0)],
)  # fmt: skip
def test_ms_ssim_scales_are_the_most_torchmetrics_accepts(side, scales):
    assert ms_ssim_scales(side, side + 7) == scales
    x = photos(side, n=1) if side >= 11 else torch.rand(1, 3, side, side)
    y = noisy(x, 0.1)
    if scales:
        assert ms_ssim(y, x).shape == (1,)  # runs at its own count
    if scales < 5:
        with pytest.raises(TokError, match=f"MS-SSIM with {scales + 1} scale"):
            ms_ssim(y, x, scales=scales + 1)


def test_ms_ssim_with_fewer_scales_renormalises_the_betas():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    x = photos(64)
    y = noisy(x, 0.08)
    kw = {"data_range": 1.0, "reduction": "none", "return_contrast_sensitivity": True}
    _, cs1 = tm_ssim(y, x, **kw)
    _, cs2 = tm_ssim(F.avg_pool2d(y, 2), F.avg_pool2d(x, 2), **kw)
    sim3, _ = tm_ssim(F.avg_pool2d(y, 4), F.avg_pool2d(x, 4), **kw)
    b = torch.tensor(MS_SSIM_BETAS[:3], dtype=torch.float64)
    b = b / b.sum()
    by_hand = cs1.double() ** b[0] * cs2.double() ** b[1] * sim3.double() ** b[2]
    assert ms_ssim_scales(64, 64) == 3
    assert ms_ssim(y, x).tolist() == pytest.approx(by_hand.tolist(), abs=1e-5)


def test_ssim_refuses_images_smaller_than_its_window_and_mismatched_shapes():
    with pytest.raises(TokError, match="at least 11×11 pixels, got 8×30"):
        ssim(torch.rand(1, 3, 8, 30), torch.rand(1, 3, 8, 30))
    with pytest.raises(TokError, match=r"\(2, 3, 16, 16\) and \(2, 3, 16, 17\)"):
        ssim(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 17))


# Fréchet distance ---------------------------------------------------------------------


def gaussian_set(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` vectors whose sample mean and covariance (``n − 1``) are exactly ``mean``, ``cov``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.cholesky(z.T @ z / (n - 1))
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # sample covariance: I
    return z @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_of_identical_sets_is_zero():
    a = torch.randn(300, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    a = gaussian_set(m1.double(), torch.diag(v1).double(), 200, seed=2)
    b = gaussian_set(m2.double(), torch.diag(v2).double(), 150, seed=3)
    # |Δμ|² + Σ (√v1 − √v2)²  =  (1 + 0 + 4) + (4 + 1 + 0)
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=1e-9)


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(4)
    d = 6
    m1, m2 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    r1, r2 = torch.randn(d, d, generator=g), torch.randn(d, d, generator=g)
    s1, s2 = r1 @ r1.T + 0.5 * torch.eye(d), r2 @ r2.T + 0.5 * torch.eye(d)
    a = gaussian_set(m1.double(), s1.double(), 500, seed=5)
    b = gaussian_set(m2.double(), s2.double(), 400, seed=6)
    s1, s2 = s1.double().numpy(), s2.double().numpy()
    closed = float(
        ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    )
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-6)


def test_frechet_distance_refuses_sets_it_cannot_fit():
    with pytest.raises(TokError, match="at least 2 vectors per set, got 1, 5"):
        frechet_distance(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(TokError, match=r"\(5, 4\) and \(5, 3\)"):
        frechet_distance(torch.randn(5, 4), torch.randn(5, 3))


# feature distance -------------------------------------------------------------------


def test_feature_distance_is_zero_for_identical_images_symmetric_and_grows_with_damage():
    net = efficientnet_lite("lite2")
    x = photos(64)
    with torch.no_grad():
        assert feature_distance(x, x, net=net).tolist() == [0.0] * 4
        light, heavy = noisy(x, 0.03), noisy(x, 0.2)
        d = feature_distance(light, x, net=net)
        assert feature_distance(x, light, net=net).tolist() == pytest.approx(d.tolist(), rel=1e-5)
        assert (d > 0).all()
        assert (feature_distance(heavy, x, net=net) > d).all()


def test_feature_distance_follows_its_formula():
    net = efficientnet_lite("lite2")
    x = photos(64, n=2)
    y = noisy(x, 0.1)
    with torch.no_grad():
        fx, fy = net(x)[:-1], net(y)[:-1]
        terms = []
        for a, b in zip(fx, fy, strict=True):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            terms.append((a - b).pow(2).sum(1).mean((1, 2)))
        assert len(terms) == 5
        by_hand = torch.stack(terms).mean(0)
        assert feature_distance(x, y, net=net).tolist() == pytest.approx(by_hand.tolist(), rel=1e-5)


# ImageQuality -------------------------------------------------------------------------


def test_image_quality_measures_real_photos_and_names_what_it_cannot(tmp_path):
    x = photos(64)
    y = noisy(x, 0.05)
    quality = ImageQuality()
    quality.update(x[:3], y[:3])
    quality.update(x[3:], y[3:])  # batches accumulate
    result = quality.result()
    assert result["ssim"] == pytest.approx(ssim(y, x).double().mean().item(), abs=1e-6)
    assert result["ssim_std"] == pytest.approx(ssim(y, x).double().std().item(), abs=1e-6)
    assert result["ms_ssim"] == pytest.approx(ms_ssim(y, x).double().mean().item(), abs=1e-6)
    with torch.no_grad():
        distance = feature_distance(y, x, net=efficientnet_lite("lite2"))
    assert result["feature_distance_lite2"] == pytest.approx(
        distance.double().mean().item(), rel=1e-5
    )
    assert result["fd_effnet_lite2"] > 0
    assert set(result["unavailable"]) == {"lpips", "rfid"}
    folder = str(tmp_path / "torch" / "hub" / "checkpoints")
    lpips, rfid = result["unavailable"]["lpips"], result["unavailable"]["rfid"]
    assert "alexnet-owt-7be5be79.pth" in lpips and folder in lpips and "--lpips-weights" in lpips
    assert "weights-inception-2015-12-05-6726825d.pth" in rfid and folder in rfid
    protocol = result["protocol"]
    assert protocol["ms_ssim_scales"] == 3 and protocol["measured_count"] == 4
    assert protocol["perceptual_input"] == "RGB"
    assert "EfficientNet-Lite2" in protocol["networks"]["fd_effnet_lite2"]


def test_image_quality_of_identical_images():
    x = photos(64)
    assert "ssim" not in ImageQuality().result()  # nothing measured yet: nothing claimed
    quality = ImageQuality()
    quality.update(x, x)
    result = quality.result()
    assert result["ssim"] == pytest.approx(1, abs=1e-6)
    assert result["feature_distance_lite2"] == 0
    # 4 images in 1280 dimensions: singular covariances, whose square root carries
    # eigenvalue noise (docs/metrics.md asks for thousands of crops)
    assert abs(result["fd_effnet_lite2"]) < 1e-2


def test_grayscale_is_measured_as_rgb_and_other_channels_are_named():
    x = photos(64)[:, :1]
    y = noisy(x, 0.05)
    gray, rgb = ImageQuality(), ImageQuality()
    gray.update(x, y)
    rgb.update(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1))
    g, r = gray.result(), rgb.result()
    assert g["feature_distance_lite2"] == pytest.approx(r["feature_distance_lite2"], rel=1e-6)
    assert g["protocol"]["perceptual_input"] == "grayscale repeated to RGB"
    two = ImageQuality()
    two.update(torch.rand(2, 2, 32, 32), torch.rand(2, 2, 32, 32))
    reason = two.result()["unavailable"]["fd_effnet_lite2"]
    assert reason == "it needs RGB or grayscale images, these have 2 channels"


def test_videos_are_measured_frame_by_frame():
    frames = photos(64)  # 4 frames of one "video", 2 videos
    video = torch.stack([frames, frames.flip(0)]).permute(0, 2, 1, 3, 4)  # (b c t h w)
    recon = noisy(video, 0.05)
    quality = ImageQuality()
    quality.update(video, recon)
    result = quality.result()
    per_frame = ssim(
        recon.permute(0, 2, 1, 3, 4).flatten(0, 1), video.permute(0, 2, 1, 3, 4).flatten(0, 1)
    )
    assert result["ssim"] == pytest.approx(per_frame.double().mean().item(), abs=1e-6)
    assert result["protocol"]["measured_count"] == 8
    assert result["protocol"]["measured"] == "video frames, each one image"


def test_tiny_images_get_reasons_not_errors():
    quality = ImageQuality()
    x = torch.rand(2, 3, 8, 8)
    quality.update(x, x)
    result = quality.result()
    assert (
        result["unavailable"]["ssim"] == "images of 8×8 pixels are smaller than its 11-pixel window"
    )
    assert "ms_ssim" in result["unavailable"] and "ssim" not in result
    lite0 = ImageQuality(features="lite0")
    x = torch.rand(2, 1, 28, 28)
    lite0.update(x, x)
    reason = lite0.result()["unavailable"]["feature_distance_lite0"]
    assert reason == "images of 28×28 pixels are too small for EfficientNet-Lite0"


def test_one_image_has_no_spread_and_no_frechet_distance():
    quality = ImageQuality()
    x = photos(64, n=1)
    quality.update(x, noisy(x, 0.05))
    result = quality.result()
    assert result["ssim_std"] is None
    assert result["unavailable"]["fd_effnet_lite2"] == "it needs at least 2 images, got 1"


def test_lpips_and_rfid_are_measured_where_their_weights_are(tmp_path, monkeypatch):
    """With (random-valued, torchvision- and torch-fidelity-shaped) weight files named, the
    two metrics are computed instead of reported unavailable."""
    from tok.pretrained import lpips_network

    alex = torchvision_alexnet_file(tmp_path / "alex.pth")
    inception = fidelity_inception_file(tmp_path / "inception.pth", monkeypatch)
    monkeypatch.setenv("TOK_INCEPTION_WEIGHTS", str(inception))
    x = photos(64)
    y = noisy(x, 0.05)
    quality = ImageQuality(lpips_weights=alex)
    quality.update(x, y)
    result = quality.result()
    assert result["unavailable"] == {}
    with torch.no_grad():
        model = lpips_network("alex", weights=alex)
        reference = model(y, x, normalize=True).flatten().double()
    assert result["lpips"] == pytest.approx(reference.mean().item(), rel=1e-6)
    assert result["lpips_std"] == pytest.approx(reference.std().item(), rel=1e-6)
    assert result["rfid"] > 0
    assert "alex" in result["protocol"]["networks"]["lpips"]
