"""Tests for tok.plots: PNGs are written atomically, readable, laid out as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tok import plots
from tok._io import TMP_PREFIX


@pytest.fixture(autouse=True)
def _no_leftover_tmp(tmp_path):
    yield
    assert list(tmp_path.rglob(TMP_PREFIX + "*")) == []


def _open(path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.copy()


def _u8(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float -> (H, W, 3) uint8, as written."""
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


def _pixels(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


def _count_colour(im: Image.Image, colour: tuple[int, int, int]) -> int:
    return int((_pixels(im) == torch.tensor(colour, dtype=torch.uint8)).all(-1).sum())


# --------------------------------------------------------------------------- recon grid


def _distinctive(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Images whose values are exact multiples of 1/255, each one different."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, h, w), generator=g).float() / 255
    x[0, :, 1:5, 2:7] = 1.0  # a white block in the first image
    x[0, :, 6:, :] = 0.0
    return x


@pytest.mark.parametrize("channels", [1, 3])
def test_recon_grid_tiles_hold_the_input_pixels(tmp_path, channels):
    n, h, w, nrow, scale = 5, 10, 12, 3, 2
    orig = _distinctive(n, channels, h, w)
    rec = 1.0 - orig
    out = plots.save_recon_grid(tmp_path / "grid.png", orig, rec, nrow=nrow, scale=scale)
    assert out == tmp_path / "grid.png"
    im = _open(out)
    assert im.mode == "RGB"

    p, lab, gap = plots.RECON_PADDING, plots.RECON_LABEL_HEIGHT, plots.RECON_PAIR_GAP
    pair_h = (2 * (h + p) + p) * scale
    pairs = math.ceil(n / nrow)
    assert im.height == lab + pairs * pair_h + (pairs - 1) * gap
    assert im.width >= (nrow * (w + p) + p) * scale

    px = _pixels(im)

    def tile(x0: int, y0: int) -> torch.Tensor:
        return px[y0 : y0 + h * scale, x0 : x0 + w * scale]

    def expected(img: torch.Tensor) -> torch.Tensor:
        up = img.expand(3, -1, -1).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        return _u8(up)

    # first original, located from the layout constants by hand
    x0, y0 = p * scale, lab + p * scale
    assert torch.equal(tile(x0, y0), expected(orig[0]))
    assert (tile(x0, y0)[1 * scale : 5 * scale, 2 * scale : 7 * scale] == 255).all()
    # its reconstruction directly below
    assert torch.equal(tile(x0, y0 + (h + p) * scale), expected(rec[0]))
    # the helper agrees, and finds an image in the second row pair
    assert plots.recon_tile_origin(0, height=h, width=w, nrow=nrow, scale=scale) == (x0, y0)
    x4, y4 = plots.recon_tile_origin(4, height=h, width=w, nrow=nrow, scale=scale)
    assert (x4, y4) == ((p + (w + p)) * scale, lab + pair_h + gap + p * scale)
    assert torch.equal(tile(x4, y4), expected(orig[4]))
    xr, yr = plots.recon_tile_origin(
        4, reconstruction=True, height=h, width=w, nrow=nrow, scale=scale
    )
    assert torch.equal(tile(xr, yr), expected(rec[4]))
    # the blank sixth slot of the last pair is white
    x5, y5 = plots.recon_tile_origin(5, height=h, width=w, nrow=nrow, scale=scale)
    assert (tile(x5, y5) == 255).all()


def test_recon_grid_fewer_images_than_nrow_and_label_fits(tmp_path):
    x = torch.full((1, 1, 4, 4), 0.5)
    im = _open(plots.save_recon_grid(tmp_path / "one.png", x, x, nrow=8, scale=1))
    # the grid is tiny, the canvas is widened so the label strip text fits
    assert im.width > (4 + 2 * plots.RECON_PADDING)
    x0, y0 = plots.recon_tile_origin(0, height=4, width=4, nrow=8, n=1, scale=1)
    assert (_pixels(im)[y0 : y0 + 4, x0 : x0 + 4] == 128).all()
    # label strip is drawn (some dark pixels in it)
    assert (_pixels(im)[: plots.RECON_LABEL_HEIGHT] < 200).any()


def test_recon_grid_rejects_bad_shapes(tmp_path):
    a = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError):
        plots.save_recon_grid(tmp_path / "x.png", a, torch.rand(2, 3, 8, 9))
    with pytest.raises(ValueError):
        plots.save_recon_grid(tmp_path / "x.png", torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError):
        plots.save_recon_grid(tmp_path / "x.png", a[0], a[0])
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- usage histogram


def test_usage_caption_exact():
    counts = torch.zeros(1000, dtype=torch.long)
    counts[:10] = 7
    assert plots.usage_caption(counts) == "used 10/1000 (1.0%), perplexity 10.0"
    counts = torch.zeros(65536, dtype=torch.long)
    counts[[5, 9, 77]] = 3
    assert plots.usage_caption(counts) == "used 3/65536 (0.0046%), perplexity 3.0"
    assert plots.usage_caption(torch.ones(8, dtype=torch.long)) == "used 8/8 (100%), perplexity 8.0"
    almost = torch.ones(65536, dtype=torch.long)
    almost[0] = 0
    assert plots.usage_caption(almost).startswith("used 65535/65536 (99.9%), ")
    assert plots.usage_caption(torch.zeros(1000)) == "used 0/1000 (0%), perplexity 0.0"
    skewed = torch.tensor([3, 1, 0, 0])  # entropy of (3/4, 1/4)
    p = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert plots.usage_caption(skewed) == f"used 2/4 (50.0%), perplexity {p:.1f}"


def test_usage_histogram_one_stream(tmp_path):
    counts = torch.zeros(1000, dtype=torch.long)
    counts[torch.arange(10) * 97] = torch.arange(1, 11) * 100
    out = plots.save_usage_histogram(tmp_path / "h.png", counts)
    im = _open(out)
    assert im.mode == "RGB" and im.size == (640, 400)
    # bars are drawn, and only near the left (the 10 used codes rank first)
    bar = (_pixels(im) == torch.tensor(plots._BAR, dtype=torch.uint8)).all(-1)
    cols = bar.any(0).nonzero().flatten()
    assert cols.numel() > 0 and int(cols.max()) < 100


def test_usage_histogram_many_streams_and_large_k(tmp_path):
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 50, (1000,), generator=g)
    large = torch.randint(0, 5, (65536,), generator=g)
    out = plots.save_usage_histogram(
        tmp_path / "sub" / "h.png", [small, large], title="t", names=["a", "b"]
    )
    im = _open(out)
    assert im.mode == "RGB" and im.width == 640 and 380 <= im.height <= 800
    three = _open(plots.save_usage_histogram(tmp_path / "h3.png", torch.stack([small] * 3)))
    assert three.height > im.height
    with pytest.raises(ValueError):
        plots.save_usage_histogram(tmp_path / "bad.png", [small, large], names=["a"])


def test_bin_sorted_keeps_total_and_caps_bars():
    counts = torch.randint(0, 9, (65536,))
    bars, bin_size = plots._bin_sorted(counts)
    assert bars.numel() <= plots.MAX_BARS and bin_size == 128
    assert int(bars.sum()) == int(counts.sum())
    assert (bars[:-1] >= bars[1:]).all()  # ranked: descending
    bars, bin_size = plots._bin_sorted(torch.arange(300))
    assert bin_size == 1 and bars[0] == 299


# --------------------------------------------------------------------------- line plot


def test_line_plot_nan_single_point_and_logy(tmp_path):
    train = [(s, 1.0 / (1 + s)) for s in range(0, 1000, 10)]
    train[5] = (50, float("nan"))
    series = {
        "train": train,
        "test": [(500, 0.01)],
        "zero": [(100, 0.0), (200, -1.0)],  # nothing positive: dropped on a log axis
        "empty": [],
    }
    for logy in (False, True):
        out = plots.save_line_plot(
            tmp_path / f"l{logy}.png", series, title="loss", ylabel="mse", logy=logy
        )
        im = _open(out)
        assert im.mode == "RGB" and im.size == (640, 400)
        # the single point is drawn as a dot in the second colour (beyond its legend swatch)
        assert _count_colour(im, plots._PALETTE[1]) > 60


def test_line_plot_degenerate_inputs(tmp_path):
    cases = [
        {},
        {"a": [(1.0, float("nan"))]},
        {"a": [(3.0, 2.0)]},
        {"a": [(0.0, 5.0), (1.0, 5.0)]},  # flat line
        {"a": [(float("inf"), 1.0), (2.0, None)]},
    ]
    for i, series in enumerate(cases):
        im = _open(plots.save_line_plot(tmp_path / f"d{i}.png", series, title="x", logy=i % 2 == 1))
        assert im.size == (640, 400)
    im = _open(
        plots.save_line_plot(tmp_path / "s.png", {"a": [(0, 1)]}, title="x", size=(320, 200))
    )
    assert im.size == (320, 200)


def test_nice_ticks_and_labels():
    lo, hi, ticks, step = plots._nice_ticks(0.0, 0.93)
    assert (lo, hi, step) == (0.0, 1.0, 0.2)
    assert [plots._fmt_tick(t, step) for t in ticks] == ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    lo, hi, ticks, step = plots._nice_ticks(0.0, 20000.0, 6)
    assert [plots._fmt_tick(t, step) for t in ticks] == ["0", "5k", "10k", "15k", "20k"]
    assert plots._nice_ticks(3.0, 3.0)[0] < 3.0 < plots._nice_ticks(3.0, 3.0)[1]
    lo, hi, ticks = plots._log_ticks(0.012, 3.0)
    assert (lo, hi) == (0.01, 10.0) and ticks == [0.01, 0.1, 1.0, 10.0]
    assert [plots._fmt_log(t) for t in (1e-5, 0.01, 1.0, 2e5)] == ["1e-5", "0.01", "1", "2e5"]


# --------------------------------------------------------------------------- image strip


def test_image_strip(tmp_path):
    frames = _distinctive(4, 3, 6, 5)
    scale, p = 3, plots.STRIP_PADDING
    im = _open(plots.save_image_strip(tmp_path / "s.png", frames, scale=scale))
    assert im.mode == "RGB"
    assert im.size == ((4 * (5 + p) + p) * scale, (6 + 2 * p) * scale)
    px = _pixels(im)
    x0, y0 = (p + 2 * (5 + p)) * scale, p * scale
    up = frames[2].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    assert torch.equal(px[y0 : y0 + 6 * scale, x0 : x0 + 5 * scale], _u8(up))
    gray = _open(plots.save_image_strip(tmp_path / "g.png", torch.zeros(1, 1, 4, 4)))
    assert gray.size == (4 + 2 * p, 4 + 2 * p)


# --------------------------------------------------------------------------- video


def _gif_frames(path) -> list[torch.Tensor]:
    with Image.open(path) as im:
        assert im.format == "GIF" and im.is_animated
        assert im.info.get("loop") == 0
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(_pixels(im.convert("RGB")))
    return frames


def test_video_grid_gif_frames_hold_the_video_frames(tmp_path):
    gen = torch.Generator().manual_seed(0)
    n, t, h, w, scale = 3, 5, 6, 7, 2
    # gray levels that survive a uint8 round trip exactly
    orig = torch.randint(0, 256, (n, 1, t, h, w), generator=gen).float() / 255
    rec = torch.randint(0, 256, (n, 1, t, h, w), generator=gen).float() / 255
    path = plots.save_video_grid_gif(tmp_path / "v.gif", orig, rec, scale=scale)
    frames = _gif_frames(path)
    assert len(frames) == t
    for k in (0, t - 1):
        for i in range(n):
            for video, lower in ((orig, False), (rec, True)):
                x, y = plots.video_tile_origin(
                    i, reconstruction=lower, height=h, width=w, scale=scale
                )
                tile = frames[k][y : y + h * scale, x : x + w * scale]
                want = video[i, :, k].expand(3, -1, -1)
                want = want.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
                assert torch.equal(tile, _u8(want)), (k, i, lower)
    # colour videos are written too (palette per frame), same size
    colour = plots.save_video_grid_gif(
        tmp_path / "c.gif", torch.rand(2, 3, 4, h, w), torch.rand(2, 3, 4, h, w), scale=1
    )
    assert len(_gif_frames(colour)) == 4


def test_frame_strip_rows_are_original_and_reconstruction(tmp_path):
    t, h, w, scale = 4, 5, 6, 3
    orig = torch.rand(1, t, h, w)
    rec = torch.rand(1, t, h, w)
    im = _open(plots.save_frame_strip(tmp_path / "f.png", orig, rec, scale=scale))
    px = _pixels(im)
    for k in range(t):
        for video, lower in ((orig, False), (rec, True)):
            x, y = plots.video_tile_origin(k, reconstruction=lower, height=h, width=w, scale=scale)
            want = video[:, k].expand(3, -1, -1).repeat_interleave(scale, 1)
            assert torch.equal(
                px[y : y + h * scale, x : x + w * scale], _u8(want.repeat_interleave(scale, 2))
            )


def test_video_plots_reject_bad_shapes(tmp_path):
    v = torch.rand(2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="differ"):
        plots.save_video_grid_gif(tmp_path / "x.gif", v, torch.rand(2, 1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        plots.save_video_grid_gif(tmp_path / "x.gif", v[:, :, 0], v[:, :, 0])
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        plots.save_frame_strip(tmp_path / "x.png", v[0, :, 0], v[0, :, 0])
    assert not (tmp_path / "x.gif").exists() and not (tmp_path / "x.png").exists()
