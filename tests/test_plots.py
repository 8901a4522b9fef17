"""Tests for tok.plots: PNGs are written atomically, readable, laid out as documented."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tok import plots
from tok._io import TMP_PREFIX
from tok.metrics import CodeCounts


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


def _bar_columns(im: Image.Image) -> torch.Tensor:
    """Columns holding a pixel of the histogram's bar colour."""
    bar = (_pixels(im) == torch.tensor(plots._BAR, dtype=torch.uint8)).all(-1)
    return bar.any(0).nonzero().flatten()


def test_usage_histogram_one_stream(tmp_path):
    counts = torch.zeros(1000, dtype=torch.long)
    counts[torch.arange(10) * 97] = torch.arange(1, 11) * 100
    out = plots.save_usage_histogram(tmp_path / "h.png", counts)
    assert out == tmp_path / "h.png"
    im = _open(out)
    assert im.mode == "RGB" and im.size == (640, 400)
    # bars are drawn, and only near the left (the 10 used codes rank first)
    cols = _bar_columns(im)
    assert cols.numel() > 0 and int(cols.max()) < 100
    # all codes used equally: bars span (nearly) the whole width of the panel
    flat = _open(plots.save_usage_histogram(tmp_path / "flat.png", torch.full((1000,), 5)))
    cols = _bar_columns(flat)
    assert int(cols.max()) - int(cols.min()) > 400
    # rewriting the same path replaces it (atomically: no temporary file is left, see fixture)
    again = plots.save_usage_histogram(out, torch.full((1000,), 5))
    assert _open(again).size == (640, 400)
    assert {p.name for p in tmp_path.iterdir()} == {"h.png", "flat.png"}


def test_usage_histogram_grows_180_px_per_extra_stream(tmp_path):
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 50, (1000,), generator=g)
    large = torch.randint(0, 5, (65536,), generator=g)
    out = plots.save_usage_histogram(
        tmp_path / "sub" / "h.png", [small, large], title="t", names=["a", "b"]
    )
    im = _open(out)
    assert im.mode == "RGB" and im.size == (640, 400 + 180)
    three = _open(plots.save_usage_histogram(tmp_path / "h3.png", torch.stack([small] * 3)))
    assert three.size == (640, 400 + 2 * 180)
    sized = plots.save_usage_histogram(tmp_path / "s.png", [small] * 3, size=(500, 300))
    assert _open(sized).size == (500, 300 + 2 * 180)
    # the panels are stacked: bar-coloured pixels in each third of the three-stream image
    bar = (_pixels(three) == torch.tensor(plots._BAR, dtype=torch.uint8)).all(-1)
    h = three.height
    assert all(bool(bar[i * h // 3 : (i + 1) * h // 3].any()) for i in range(3))
    with pytest.raises(ValueError):
        plots.save_usage_histogram(tmp_path / "bad.png", [small, large], names=["a"])
    with pytest.raises(ValueError):
        plots.save_usage_histogram(tmp_path / "bad.png", [])
    assert not (tmp_path / "bad.png").exists()


def test_bin_sorted_keeps_total_and_caps_bars():
    counts = torch.randint(0, 9, (65536,))
    bars, bin_size = plots._bin_sorted(counts)
    assert bars.numel() <= plots.MAX_BARS and bin_size == 128
    assert int(bars.sum()) == int(counts.sum())
    assert (bars[:-1] >= bars[1:]).all()  # ranked: descending
    bars, bin_size = plots._bin_sorted(torch.arange(300))
    assert bin_size == 1 and bars[0] == 299
    # K not a multiple of the bin size: the last bar sums what is left
    counts = torch.ones(1025)
    bars, bin_size = plots._bin_sorted(counts)
    assert bin_size == 3 and bars.numel() == 342 and float(bars[-1]) == 2.0
    assert float(bars.sum()) == 1025.0


def _drawn_figure(monkeypatch) -> list:
    """Collect each matplotlib figure ``plots`` saves (then saved as usual)."""
    figures = []
    save = plots._save_figure

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save_figure", keep)
    return figures


def test_usage_histogram_of_a_huge_codebook_ranks_the_codes_seen(tmp_path, monkeypatch):
    """K = 2^40 cannot be drawn as K ranks (nor counted as K counters): the panel ranks
    the codes seen, and the title and the x-axis say so."""
    huge = 1 << 40
    counts = CodeCounts((huge,))
    g = torch.Generator().manual_seed(0)
    codes = (torch.rand(3000, generator=g).sqrt() * 300).long() << 30  # ~300 codes, skewed
    counts.update(codes.unsqueeze(-1))
    used = counts.used(0)
    figures = _drawn_figure(monkeypatch)
    out = plots.save_usage_histogram(tmp_path / "h.png", counts, title="usage at step 4")
    im = _open(out)
    assert im.size == (640, 400)
    (fig,) = figures
    (ax,) = fig.axes
    assert fig._suptitle.get_text() == (
        "usage at step 4\n(codebook too large to draw every code: ranks of the codes seen only)"
    )
    assert ax.get_xlim() == (0, used)  # the codes seen, not K
    assert ax.get_xlabel() == f"rank of the {used:,} codes seen (most used first)"
    assert ax.get_title(loc="left") == plots.usage_caption(counts.seen(0)[1], huge)
    assert ax.get_title(loc="left").startswith(f"used {used}/{huge} (")
    # the bars reach across the panel: every seen code is used, so no zero bars at the end
    cols = _bar_columns(im)
    assert int(cols.max()) - int(cols.min()) > 400
    # a dense stream of the same counter type is drawn as before: K ranks, no note
    small = CodeCounts((1000,))
    small.update(torch.arange(10).unsqueeze(-1))
    plots.save_usage_histogram(tmp_path / "s.png", small, title="t")
    assert figures[-1]._suptitle.get_text() == "t"
    assert figures[-1].axes[0].get_xlim() == (0, 1000)
    same = _open(plots.save_usage_histogram(tmp_path / "d.png", small.histogram(0), title="t"))
    assert torch.equal(_pixels(same), _pixels(_open(tmp_path / "s.png")))
    # nothing seen: an empty panel, not an error
    plots.save_usage_histogram(tmp_path / "e.png", CodeCounts((huge, huge)), title="t")
    assert _open(tmp_path / "e.png").size == (640, 400 + 180)


def test_usage_caption_of_the_codes_seen():
    seen = torch.tensor([7, 7, 7])
    assert plots.usage_caption(seen, 1 << 40) == "used 3/1099511627776 (2.7e-10%), perplexity 3.0"
    hist = torch.zeros(1000, dtype=torch.long)
    hist[:3] = 7
    assert plots.usage_caption(seen, 1000) == plots.usage_caption(hist)


# --------------------------------------------------------------------------- line plot


def _colour_mask(im: Image.Image, colour: tuple[int, int, int]) -> torch.Tensor:
    return (_pixels(im) == torch.tensor(colour, dtype=torch.uint8)).all(-1)


def test_line_plot_nan_single_point_and_logy(tmp_path):
    train = [(s, 1.0 / (1 + s)) for s in range(0, 1000, 10)]
    train[5] = (50, float("nan"))
    series = {
        "train": train,
        "test": [(500, 0.01)],
        "zero": [(100, 0.0), (200, -1.0)],  # nothing positive: dropped on a log axis
        "empty": [],
    }
    no_point = {**series, "test": []}
    for logy in (False, True):
        out = plots.save_line_plot(
            tmp_path / f"l{logy}.png", series, title="loss", ylabel="mse", logy=logy
        )
        im = _open(out)
        assert out == tmp_path / f"l{logy}.png"
        assert im.mode == "RGB" and im.size == (640, 400)
        # the single point is drawn as a dot in the second colour, beyond its legend entry
        ref = _open(plots.save_line_plot(tmp_path / "ref.png", no_point, title="loss", logy=logy))
        assert _count_colour(im, plots._PALETTE[1]) > _count_colour(ref, plots._PALETTE[1]) + 8


def test_line_plot_nan_breaks_the_line(tmp_path):
    flat = [(x, 1.0) for x in range(101)]
    gap = [(x, float("nan") if 40 <= x <= 60 else 1.0) for x in range(101)]
    widths = []
    for name, pts in (("flat", flat), ("gap", gap)):
        im = _open(plots.save_line_plot(tmp_path / f"{name}.png", {"a": pts}, title=name))
        line = _colour_mask(im, plots._PALETTE[0])
        row = line[int(line.sum(1).argmax())]  # the data line is the longest run of colour 0
        cols = row.nonzero().flatten()
        widths.append((int(row.sum()), int((cols[1:] - cols[:-1]).max())))
    (flat_n, flat_gap), (gap_n, gap_gap) = widths
    assert flat_gap == 1  # one unbroken horizontal line
    assert gap_gap > 0.1 * flat_n and gap_n < 0.9 * flat_n  # a hole about a fifth wide


def test_line_plot_degenerate_inputs(tmp_path):
    cases = [
        {},
        {"a": []},
        {"a": [(1.0, float("nan"))]},
        {"a": [(3.0, 2.0)]},
        {"a": [(0.0, 5.0), (1.0, 5.0)]},  # flat line
        {"a": [(float("inf"), 1.0), (2.0, None)]},
        {"a": [(0, -1.0), (1, 0.0)]},  # nothing positive (log axis: no data)
    ]
    for i, series in enumerate(cases):
        for logy in (False, True):
            path = tmp_path / f"d{i}{logy}.png"
            im = _open(plots.save_line_plot(path, series, title="x", logy=logy))
            assert im.size == (640, 400)
    im = _open(
        plots.save_line_plot(tmp_path / "s.png", {"a": [(0, 1)]}, title="x", size=(320, 200))
    )
    assert im.size == (320, 200)
    wide = plots.save_line_plot(
        tmp_path / "w.png", {"a": [(0, 1), (1, 2)]}, title="x", size=(1000, 300)
    )
    assert _open(wide).size == (1000, 300)


def test_line_plot_long_legend_stays_inside(tmp_path):
    """Many long series names wrap onto several legend rows instead of leaving the canvas."""
    series = {
        f"stream {i} perplexity ratio (log2 PPL / log2 K)": [
            (s, 0.1 * i + s / 1e4) for s in range(0, 2001, 200)
        ]
        for i in range(6)
    }
    im = _open(plots.save_line_plot(tmp_path / "l.png", series, title="health", ylabel="f"))
    assert im.size == (640, 400)
    for i in range(6):  # every series is drawn (legend swatch and line)
        assert _count_colour(im, plots._PALETTE[i]) > 20
    # nothing is drawn in the outermost columns: the legend was wrapped, not clipped
    px = _pixels(im)
    assert (px[:, :2] == 255).all() and (px[:, -2:] == 255).all()


def test_line_panels_stack_on_one_x_axis(tmp_path):
    steps = range(100, 601, 100)
    panels = [
        {"series": {"train": [(s, s / 100) for s in steps], "test": [(600, 5.0)]}, "legend": True},
        {"series": {"a": [(s, 32 - s / 20) for s in steps], "b": [(600, 2)]}, "legend": False,
         "ylabel": "active dimensions\n(KL ≥ 0.01 nats)", "ylim": (0, 34)},
        {"series": {"beta": [(s, 2.0) for s in steps]}, "ylim": (0, 2.2)},
        {"series": {"none": []}, "logy": True},  # a panel without data says so
    ]  # fmt: skip
    path = plots.save_line_panels(tmp_path / "p.png", panels, title="three and one")
    im = _open(path)
    assert path == tmp_path / "p.png" and im.size == (640, 640)
    for colour in plots._PALETTE[:2]:  # each panel's first and second series share colours
        assert _count_colour(im, colour) > 50
    small = plots.save_line_panels(tmp_path / "s.png", panels[:1], title="x", size=(320, 200))
    assert _open(small).size == (320, 200)
    with pytest.raises(ValueError, match="no panels"):
        plots.save_line_panels(tmp_path / "e.png", [], title="x")


def test_kl_bars_grey_below_the_threshold(tmp_path):
    def bars(kl_dims, name):
        path = plots.save_kl_bars(tmp_path / name, kl_dims, threshold=0.01, title=name)
        im = _open(path)
        assert im.size == (640, 400)
        return _count_colour(im, plots._BAR), _count_colour(im, plots._GRID_DARK)

    healthy, collapsed = bars([1.0, 0.5] * 8, "healthy.png"), bars([1.0] + [0.001] * 15, "c.png")
    assert healthy[0] > 4 * collapsed[0] and healthy[1] < 100  # every bar blue: all active
    assert collapsed[1] > 1000  # fifteen grey bars: inactive
    assert bars([0.0] * 4, "zeros.png")[0] == 0  # a deterministic bottleneck's: all zero
    with pytest.raises(ValueError, match="empty"):
        plots.save_kl_bars(tmp_path / "x.png", [], threshold=0.01)


def test_tick_labels_use_one_unit_per_axis():
    fmt = plots._tick_formatter_class()()
    fmt.set_locs([0.0, 20000.0, 40000.0, 60000.0])
    assert [fmt(v) for v in (0.0, 20000.0, 60000.0)] == ["0", "20k", "60k"]
    fmt.set_locs([0.0, 500.0, 1000.0, 1500.0, 2000.0])
    assert [fmt(v) for v in (0.0, 1500.0, 2000.0)] == ["0", "1500", "2000"]
    fmt.set_locs([0.0, 0.2, 0.4])
    assert fmt(0.30000000000000004) == "0.3"
    fmt.set_locs([0.0, 2e7])
    assert fmt(2e7) == "20M"


def test_charts_use_agg_without_pyplot():
    """``import tok`` does not load matplotlib; drawing a chart loads it without pyplot
    and leaves the user's backend alone."""
    code = (
        "import sys, tempfile, pathlib\n"
        "import tok.plots as plots\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'\n"
        "import matplotlib\n"
        "backend = matplotlib.get_backend()\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "plots.save_line_plot(d / 'a.png', {'a': [(0, 1), (1, 2)]}, title='t')\n"
        "plots.save_usage_histogram(d / 'b.png', [[1, 2, 3]])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.get_backend() == backend\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
