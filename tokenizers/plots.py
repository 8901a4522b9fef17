"""Small PNG charts and image grids, drawn with Pillow (no matplotlib).

- :func:`save_recon_grid`: originals above their reconstructions, row pair by row pair.
- :func:`save_usage_histogram`: rank-frequency bars of codebook usage, one panel per stream.
- :func:`save_line_plot`: several ``(x, y)`` series on one chart (losses, usage over time).
- :func:`save_image_strip`: a row of frames.
- :func:`save_video_grid_gif`: videos above their reconstructions, animated (GIF).
- :func:`save_frame_strip`: one video's frames above its reconstruction's frames.
- :func:`usage_caption`: the ``"used X/K (Y%), perplexity P"`` text of one histogram.

Every function writes its PNG atomically (see :mod:`tok._io`) and returns the path written.
Images are float tensors in ``[0, 1]`` shaped ``(N, C, H, W)`` with ``C`` 1 or 3;
videos ``(N, C, T, H, W)``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

from ._io import atomic_path
from .metrics import codebook_stats

__all__ = [
    "RECON_PADDING",
    "RECON_LABEL_HEIGHT",
    "RECON_PAIR_GAP",
    "RECON_LABEL",
    "STRIP_PADDING",
    "MAX_BARS",
    "recon_tile_origin",
    "save_recon_grid",
    "save_usage_histogram",
    "save_line_plot",
    "save_image_strip",
    "save_video_grid_gif",
    "save_frame_strip",
    "video_tile_origin",
    "usage_caption",
]

# --- layout of save_recon_grid (exported so callers and tests can locate tiles) ---
RECON_PADDING = 2  # make_grid padding around each tile, in input pixels (scaled with the grid)
RECON_LABEL_HEIGHT = 18  # white label strip above the grid, in output pixels
RECON_PAIR_GAP = 6  # extra white rows between two row pairs, in output pixels
RECON_LABEL = "top: original \u00b7 bottom: reconstruction"
STRIP_PADDING = 1  # white border around each frame of save_image_strip, in input pixels
MAX_BARS = 512  # save_usage_histogram sums adjacent ranks so that at most this many bars remain

_WHITE = (255, 255, 255)
_TEXT = (33, 33, 33)
_MUTED = (110, 110, 110)
_AXIS = (90, 90, 90)
_GRID = (232, 232, 232)
_BAR = (31, 119, 180)
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_w(font, text: str) -> int:
    return int(math.ceil(font.getlength(text)))


def _text_h(font) -> int:
    return font.getbbox("Ag")[3]


def _save(image: Image.Image, path: PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _check_images(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (N, C, H, W) tensor with C 1 or 3, got {shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    x = x.detach().cpu().float().clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _to_pil(chw: Tensor, scale: int) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB image, upscaled ``scale`` times by pixel repetition."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    u8 = chw.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    if scale > 1:
        u8 = u8.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10 * mag


def _nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[float], float]:
    """Round ``[lo, hi]`` outwards to multiples of a 1/2/5 step; return (lo, hi, ticks, step)."""
    if not hi > lo:
        delta = abs(lo) * 0.1 if lo != 0 else 1.0
        lo, hi = lo - delta, hi + delta
    step = _nice_step(hi - lo, target)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    ticks = [round(i * step, 12) for i in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks, step


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Decade-rounded limits and ticks for a log axis over positive ``[lo, hi]``."""
    e0 = math.floor(math.log10(lo) + 1e-9)
    e1 = math.ceil(math.log10(hi) - 1e-9)
    if e1 <= e0:
        e1 = e0 + 1
    decades = e1 - e0
    if decades <= 2:
        ticks = [m * 10.0**e for e in range(e0, e1) for m in (1, 2, 5)] + [10.0**e1]
    else:
        every = math.ceil(decades / 6)
        ticks = [10.0**e for e in range(e0, e1 + 1) if (e - e0) % every == 0]
    return 10.0**e0, 10.0**e1, ticks


def _fmt_tick(v: float, step: float) -> str:
    """Format a linear-axis tick with just enough decimals for ``step``; k/M for big numbers."""
    if abs(v) < step * 1e-6:
        return "0"
    suffix = ""
    for div, name in ((1e6, "M"), (1e3, "k")):
        if max(abs(v), step) >= 10 * div or (abs(v) >= div and step >= div):
            v, step, suffix = v / div, step / div, name
            break
    if step < 1e-4:
        return f"{v:.1e}"
    decimals = max(0, math.ceil(-math.log10(step) - 1e-9))
    return f"{v:.{decimals}f}{suffix}"


def _fmt_log(v: float) -> str:
    if 1e-3 <= v < 1e4:
        return f"{v:g}"
    e = math.floor(math.log10(v) + 1e-9)
    m = v / 10**e
    return f"{m:.0f}e{e}" if abs(m - round(m)) < 1e-6 else f"{m:.1f}e{e}"


def _fmt_pct(used: int, size: int) -> str:
    if used == 0 or size == 0:
        return "0"
    pct = 100.0 * used / size
    if used == size:
        return "100"
    if pct < 0.1:
        return f"{pct:.2g}"
    text = f"{pct:.1f}"
    return "99.9" if text == "100.0" else text


def _fmt_num(v: float) -> str:
    return f"{v:.1f}" if abs(v) < 1000 else f"{v:,.0f}"


def _draw_vertical_text(image: Image.Image, xy: tuple[int, int], text: str, font, fill) -> None:
    """Paste ``text`` rotated 90 degrees (reading bottom to top) with its top-left at ``xy``."""
    w, h = _text_w(font, text) + 2, _text_h(font) + 2
    tile = Image.new("RGBA", (w, h), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((1, 0), text, font=font, fill=fill)
    tile = tile.rotate(90, expand=True)
    image.paste(tile, xy, tile)


class _Axes:
    """A rectangular plot area with data limits, tick labels and light grid lines."""

    def __init__(self, box, xlim, ylim, *, logy: bool = False) -> None:
        self.left, self.top, self.right, self.bottom = box
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        self.logy = logy

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        if self.logy:
            f = (math.log10(y) - math.log10(self.y0)) / (math.log10(self.y1) - math.log10(self.y0))
        else:
            f = (y - self.y0) / (self.y1 - self.y0)
        return self.bottom - f * (self.bottom - self.top)

    def draw(self, draw: ImageDraw.ImageDraw, xticks, yticks, font, canvas_w: int) -> None:
        """Grid lines, the two axis lines and the tick labels (``ticks`` are (value, label))."""
        th = _text_h(font)
        for v, label in yticks:
            y = round(self.py(v))
            draw.line([(self.left, y), (self.right, y)], fill=_GRID)
            draw.line([(self.left - 4, y), (self.left, y)], fill=_AXIS)
            draw.text(
                (self.left - 7 - _text_w(font, label), y - th // 2 - 1),
                label,
                font=font,
                fill=_TEXT,
            )
        for v, label in xticks:
            x = round(self.px(v))
            draw.line([(x, self.bottom), (x, self.bottom + 4)], fill=_AXIS)
            tx = min(max(x - _text_w(font, label) // 2, 2), canvas_w - _text_w(font, label) - 2)
            draw.text((tx, self.bottom + 7), label, font=font, fill=_TEXT)
        draw.line([(self.left, self.top), (self.left, self.bottom)], fill=_AXIS)
        draw.line([(self.left, self.bottom), (self.right, self.bottom)], fill=_AXIS)


def _linear_ticks(lo: float, hi: float, target: int = 5):
    lo, hi, ticks, step = _nice_ticks(lo, hi, target)
    return lo, hi, [(t, _fmt_tick(t, step)) for t in ticks]


# ----------------------------------------------------------------------------- recon grid


def recon_tile_origin(
    index: int,
    *,
    reconstruction: bool = False,
    height: int,
    width: int,
    nrow: int = 8,
    n: int | None = None,
    scale: int = 2,
) -> tuple[int, int]:
    """``(x, y)`` of the top-left output pixel of image ``index`` in :func:`save_recon_grid`.

    ``height``/``width`` are the input image size, ``n`` the number of images (only
    needed when fewer than ``nrow``); ``reconstruction`` selects the lower row of the pair.
    """
    cols = min(nrow, n) if n is not None else nrow
    pair, col = divmod(index, cols)
    pair_h = 2 * (height + RECON_PADDING) + RECON_PADDING
    row = 1 if reconstruction else 0
    y = RECON_LABEL_HEIGHT + pair * (pair_h * scale + RECON_PAIR_GAP)
    y += (RECON_PADDING + row * (height + RECON_PADDING)) * scale
    x = (RECON_PADDING + col * (width + RECON_PADDING)) * scale
    return x, y


def save_recon_grid(
    path: PathLike,
    originals: Tensor,
    reconstructions: Tensor,
    *,
    nrow: int = 8,
    scale: int = 2,
) -> Path:
    """Write a PNG comparing ``originals`` with their ``reconstructions``; return its path.

    Both are ``(N, C, H, W)`` floats in ``[0, 1]`` (``C`` 1 or 3, values clamped). Images go
    ``nrow`` to a row; each row of originals has the row of their reconstructions directly
    beneath it, row pairs separated by a small gap. The grid (white ``make_grid`` padding of
    :data:`RECON_PADDING`) is upscaled ``scale`` times by nearest neighbour, below a
    :data:`RECON_LABEL_HEIGHT` px label strip. Use :func:`recon_tile_origin` to locate a tile.
    """
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    orig, rec = _check_pair(originals, reconstructions, _check_images)
    n, _, h, w = orig.shape
    cols = min(nrow, n)
    pairs = []
    for start in range(0, n, cols):
        o, r = orig[start : start + cols], rec[start : start + cols]
        if o.shape[0] < cols:  # blank (white) tiles fill the last row pair
            fill = orig.new_ones(cols - o.shape[0], 3, h, w)
            o, r = torch.cat([o, fill]), torch.cat([r, fill])
        grid = make_grid(torch.cat([o, r]), nrow=cols, padding=RECON_PADDING, pad_value=1.0)
        pairs.append(_to_pil(grid, scale))
    return _save(_labelled(pairs, RECON_LABEL, gap=RECON_PAIR_GAP), path)


def _labelled(parts: list[Image.Image], label: str, *, gap: int = 0) -> Image.Image:
    """``parts`` stacked top to bottom (``gap`` px apart) under a
    :data:`RECON_LABEL_HEIGHT` px strip holding ``label``, on white."""
    font = _font(11)
    width = max(max(p.width for p in parts), _text_w(font, label) + 8)
    height = RECON_LABEL_HEIGHT + sum(p.height for p in parts) + gap * (len(parts) - 1)
    image = Image.new("RGB", (width, height), _WHITE)
    ImageDraw.Draw(image).text(
        (4, (RECON_LABEL_HEIGHT - _text_h(font)) // 2), label, font=font, fill=_MUTED
    )
    y = RECON_LABEL_HEIGHT
    for p in parts:
        image.paste(p, (0, y))
        y += p.height + gap
    return image


# ----------------------------------------------------------------------------- usage histogram


def usage_caption(counts: Tensor) -> str:
    """``"used X/K (Y%), perplexity P"`` for one stream's code counts (length ``K``).

    ``Y`` has one decimal (two significant digits below 0.1%, never rounded up to 100
    unless every code is used); ``P`` is ``exp`` of the code entropy, one decimal.
    """
    counts = torch.as_tensor(counts).reshape(-1)
    stats = codebook_stats(counts)
    size = int(stats["size"])
    used = size - int(stats["dead"])
    return (
        f"used {used}/{size} ({_fmt_pct(used, size)}%), perplexity {_fmt_num(stats['perplexity'])}"
    )


def _bin_sorted(counts: Tensor) -> tuple[Tensor, int]:
    """Counts sorted descending, summed over runs of ``bin_size`` adjacent ranks."""
    ranked = counts.reshape(-1).to(torch.float64).sort(descending=True).values
    k = ranked.numel()
    bin_size = max(1, math.ceil(k / MAX_BARS))
    if bin_size > 1:
        pad = (-k) % bin_size
        ranked = torch.cat([ranked, ranked.new_zeros(pad)]).view(-1, bin_size).sum(1)
    return ranked, bin_size


def save_usage_histogram(
    path: PathLike,
    counts: Sequence[Tensor] | Tensor,
    *,
    title: str = "codebook usage",
    names: Sequence[str] | None = None,
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Write a rank-frequency bar chart of code usage, one panel per stream; return its path.

    ``counts`` is one integer histogram of length ``K`` per stream (a list, or a single 1-D
    tensor, or a 2-D ``(streams, K)`` tensor). Each panel shows the counts sorted from the
    most to the least used code on a linear axis, titled with the stream's name and
    :func:`usage_caption`. When ``K`` > :data:`MAX_BARS`, adjacent ranks are summed into
    bars (the x-axis label says how many per bar). Panels are stacked vertically; the image
    is ``size`` for one stream and grows by about 180 px per extra stream.
    """
    if isinstance(counts, Tensor):
        streams = [counts] if counts.dim() <= 1 else list(counts.reshape(counts.shape[0], -1))
    else:
        streams = list(counts)
    if not streams:
        raise ValueError("counts is empty")
    streams = [torch.as_tensor(c).detach().cpu().reshape(-1) for c in streams]
    if names is None:
        names = [f"stream {i}" for i in range(len(streams))] if len(streams) > 1 else [""]
    elif len(names) != len(streams):
        raise ValueError(f"{len(names)} names for {len(streams)} streams")

    width = size[0]
    title_font, font, small = _font(15), _font(12), _font(11)
    title_h = _text_h(title_font) + 16
    panel_h = (
        max(180, (size[1] - title_h) // len(streams)) if len(streams) > 1 else size[1] - title_h
    )
    height = title_h + panel_h * len(streams)
    image = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text(((width - _text_w(title_font, title)) // 2, 8), title, font=title_font, fill=_TEXT)

    th, sh = _text_h(font), _text_h(small)
    for i, (c, name) in enumerate(zip(streams, names, strict=True)):
        top = title_h + i * panel_h
        caption = usage_caption(c)
        if name:
            caption = f"{name}: {caption}"
        bars, bin_size = _bin_sorted(c)
        k = c.numel()
        _, ymax, yticks = _linear_ticks(
            0.0, max(float(bars.max()) if bars.numel() else 0.0, 1.0), 4
        )
        _, _, xticks = _linear_ticks(0.0, float(max(k, 1)), 6)
        xticks = [(v, s) for v, s in xticks if v <= k]
        xlabel = "code rank (most used first)"
        if bin_size > 1:
            xlabel += f"; each bar sums {bin_size} adjacent ranks"
        ylabel = "count" if bin_size == 1 else f"count per {bin_size} codes"

        left = 14 + sh + 6 + max(_text_w(small, s) for _, s in yticks) + 8
        box = (left, top + th + 14, width - 20, top + panel_h - (sh + 10 + sh + 12))
        ax = _Axes(box, (0.0, float(max(k, 1))), (0.0, ymax))
        draw.text((left, top + 6), caption, font=font, fill=_TEXT)
        ax.draw(draw, xticks, yticks, small, width)
        for j, v in enumerate(bars.tolist()):
            if v <= 0:
                continue
            x0 = ax.px(j * bin_size)
            x1 = ax.px(min((j + 1) * bin_size, k))
            xa = round(x0)
            xb = max(xa, round(x1) - 1 - (1 if x1 - x0 >= 3 else 0))  # 1 px gap when wide
            ya = min(round(ax.py(v)), ax.bottom - 1)  # a used code is at least 1 px tall
            draw.rectangle([xa, ya, xb, ax.bottom - 1], fill=_BAR)
        draw.line([(ax.left, ax.bottom), (ax.right, ax.bottom)], fill=_AXIS)
        xl_w = _text_w(small, xlabel)
        draw.text(
            ((ax.left + ax.right - xl_w) // 2, ax.bottom + 7 + sh + 5),
            xlabel,
            font=small,
            fill=_MUTED,
        )
        yl_w = _text_w(small, ylabel)
        _draw_vertical_text(image, (8, (ax.top + ax.bottom - yl_w) // 2), ylabel, small, _MUTED)
    return _save(image, path)


# ----------------------------------------------------------------------------- line plot


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def save_line_plot(
    path: PathLike,
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    logy: bool = False,
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Write a chart with one coloured line per ``series`` entry and a legend; return its path.

    ``series`` maps a name to ``(x, y)`` points (in x order). Points with a NaN/inf/None
    coordinate (or ``y <= 0`` when ``logy``) are skipped and break the line; isolated
    points, and every point of short series, get a dot, so a single point shows. Axis
    limits are rounded outwards to nice tick values (decades when ``logy``).
    """
    width, height = size
    title_font, font, small = _font(15), _font(12), _font(11)
    th, sh = _text_h(font), _text_h(small)
    image = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text(((width - _text_w(title_font, title)) // 2, 8), title, font=title_font, fill=_TEXT)

    def ok(x, y) -> bool:
        return _finite(x) and _finite(y) and (not logy or float(y) > 0)

    clean = {name: [(x, y) if ok(x, y) else None for x, y in pts] for name, pts in series.items()}
    good = [p for pts in clean.values() for p in pts if p is not None]

    # legend: rows of (swatch, name) under the title, wrapped to the width and centred
    y = 8 + _text_h(title_font) + 10
    rows: list[list[tuple[str, tuple[int, int, int], int]]] = [[]]
    row_w = 0
    for i, name in enumerate(series):
        w = 22 + _text_w(font, name)
        if rows[-1] and row_w + 16 + w > width - 40:
            rows.append([])
            row_w = 0
        row_w += (16 if rows[-1] else 0) + w
        rows[-1].append((name, _PALETTE[i % len(_PALETTE)], w))
    for row in rows:
        if not row:
            continue
        x = (width - (sum(w for _, _, w in row) + 16 * (len(row) - 1))) // 2
        mid = y + th // 2 + 1
        for name, colour, w in row:
            draw.line([(x, mid), (x + 16, mid)], fill=colour, width=3)
            draw.text((x + 22, y), name, font=font, fill=_TEXT)
            x += w + 16
        y += th + 6
    plot_top = y + 4

    if good:
        xs = [float(p[0]) for p in good]
        ys = [float(p[1]) for p in good]
        x0, x1, xticks = _linear_ticks(min(xs), max(xs), 6)
        if logy:
            y0, y1, yt = _log_ticks(min(ys), max(ys))
            yticks = [(t, _fmt_log(t)) for t in yt]
        else:
            y0, y1, yticks = _linear_ticks(min(ys), max(ys), 5)
    else:
        x0, x1, xticks = _linear_ticks(0.0, 1.0, 4)
        y0, y1 = (1.0, 10.0) if logy else (0.0, 1.0)
        yticks = [(1.0, "1"), (10.0, "10")] if logy else _linear_ticks(0.0, 1.0, 4)[2]

    left = 16 + (sh + 6 if ylabel else 0) + max(_text_w(small, s) for _, s in yticks) + 8
    bottom = height - (10 + sh + 8 + (sh + 6 if xlabel else 0))
    last_x_label = xticks[-1][1]
    right = width - max(20, _text_w(small, last_x_label) // 2 + 6)
    ax = _Axes((left, plot_top, right, bottom), (x0, x1), (y0, y1), logy=logy)
    ax.draw(draw, xticks, yticks, small, width)

    if not good:
        msg = "no data"
        draw.text(
            ((left + right - _text_w(font, msg)) // 2, (plot_top + bottom) // 2),
            msg,
            font=font,
            fill=_MUTED,
        )
    for i, pts in enumerate(clean.values()):
        colour = _PALETTE[i % len(_PALETTE)]
        dots = len(pts) <= 20
        run: list[tuple[float, float]] = []
        for p in [*pts, None]:
            if p is not None:
                run.append((ax.px(float(p[0])), ax.py(float(p[1]))))
                continue
            if len(run) > 1:
                draw.line(run, fill=colour, width=2, joint="curve")
            if len(run) == 1 or dots:
                for cx, cy in run:
                    draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
            run = []

    if xlabel:
        draw.text(
            ((left + right - _text_w(small, xlabel)) // 2, bottom + 7 + sh + 6),
            xlabel,
            font=small,
            fill=_MUTED,
        )
    if ylabel:
        _draw_vertical_text(
            image, (10, (plot_top + bottom - _text_w(small, ylabel)) // 2), ylabel, small, _MUTED
        )
    return _save(image, path)


# ----------------------------------------------------------------------------- image strip


def save_image_strip(path: PathLike, frames: Tensor, *, scale: int = 1) -> Path:
    """Write ``frames`` (``(N, C, H, W)`` floats in ``[0, 1]``) side by side as one RGB PNG.

    Each frame has a :data:`STRIP_PADDING` px white border (shared between neighbours); the
    whole strip is upscaled ``scale`` times by nearest neighbour. Returns the path written.
    """
    x = _check_images(frames, "frames")
    n, _, h, w = x.shape
    p = STRIP_PADDING
    canvas = x.new_ones(3, h + 2 * p, n * (w + p) + p)
    for i in range(n):
        canvas[:, p : p + h, p + i * (w + p) : p + i * (w + p) + w] = x[i]
    return _save(_to_pil(canvas, scale), path)


# ----------------------------------------------------------------------------- video


def _check_videos(x: Tensor, name: str) -> Tensor:
    """``(N, C, T, H, W)`` floats → ``(N, 3, T, H, W)`` clamped to ``[0, 1]`` on the CPU."""
    if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (N, C, T, H, W) tensor with C 1 or 3, got {shape}")
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"{name} is empty")
    x = x.detach().cpu().float().clamp(0, 1)
    return x.expand(-1, 3, -1, -1, -1) if x.shape[1] == 1 else x


def _check_pair(
    originals: Tensor, reconstructions: Tensor, check: Callable[[Tensor, str], Tensor]
) -> tuple[Tensor, Tensor]:
    """Both checked with ``check`` (:func:`_check_images` or :func:`_check_videos`); same shape."""
    orig = check(originals, "originals")
    rec = check(reconstructions, "reconstructions")
    if orig.shape != rec.shape:
        raise ValueError(
            f"originals {tuple(originals.shape)} and reconstructions "
            f"{tuple(reconstructions.shape)} differ"
        )
    return orig, rec


def video_tile_origin(
    index: int, *, reconstruction: bool = False, height: int, width: int, scale: int = 2
) -> tuple[int, int]:
    """``(x, y)`` of the top-left output pixel of video (or frame) ``index`` in
    :func:`save_video_grid_gif` (video ``index``) and :func:`save_frame_strip`
    (frame ``index``); ``reconstruction`` selects the lower row."""
    row = 1 if reconstruction else 0
    x = (RECON_PADDING + index * (width + RECON_PADDING)) * scale
    y = RECON_LABEL_HEIGHT + (RECON_PADDING + row * (height + RECON_PADDING)) * scale
    return x, y


def _pair_canvas(top: Tensor, bottom: Tensor, scale: int, label: str) -> Image.Image:
    """``top`` and ``bottom`` ``(N, 3, H, W)`` as two rows under a label strip."""
    grid = make_grid(
        torch.cat([top, bottom]), nrow=top.shape[0], padding=RECON_PADDING, pad_value=1.0
    )
    return _labelled([_to_pil(grid, scale)], label)


def save_video_grid_gif(
    path: PathLike,
    originals: Tensor,
    reconstructions: Tensor,
    *,
    scale: int = 2,
    fps: float = 8.0,
) -> Path:
    """Write an animated GIF comparing videos with their reconstructions; return its path.

    ``originals`` and ``reconstructions`` are ``(N, C, T, H, W)`` floats in ``[0, 1]``
    (``C`` 1 or 3). GIF frame ``t`` shows frame ``t`` of the ``N`` originals side by side
    in the top row and of their reconstructions in the bottom row (layout of
    :func:`save_frame_strip`, tiles located by :func:`video_tile_origin`), below a label
    strip; it loops forever at ``fps``. Gray videos are stored losslessly (an ``L``-mode
    GIF); colour ones with one adaptive 256-colour palette per frame.
    """
    orig, rec = _check_pair(originals, reconstructions, _check_videos)
    gray = bool((orig[:, 0] == orig[:, 1]).all() and (orig[:, 1] == orig[:, 2]).all())
    gray = gray and bool((rec[:, 0] == rec[:, 1]).all() and (rec[:, 1] == rec[:, 2]).all())
    frames = []
    for t in range(orig.shape[2]):
        image = _pair_canvas(orig[:, :, t], rec[:, :, t], scale, RECON_LABEL)
        frames.append(image.convert("L") if gray else image.convert("P", palette=Image.ADAPTIVE))
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=max(1, round(1000 / fps)),
            loop=0,
            optimize=False,
        )
    return path


def save_frame_strip(
    path: PathLike, original: Tensor, reconstruction: Tensor, *, scale: int = 2
) -> Path:
    """Write one video's frames as a PNG: original frames in the top row, the
    reconstruction's frames beneath; return its path.

    ``original`` and ``reconstruction`` are ``(C, T, H, W)`` floats in ``[0, 1]``; frame
    ``t`` of each row is at :func:`video_tile_origin` ``(t, …)``.
    """
    orig, rec = _check_pair(original.unsqueeze(0), reconstruction.unsqueeze(0), _check_videos)
    label = "frames left to right \u00b7 top: original \u00b7 bottom: reconstruction"
    image = _pair_canvas(orig[0].transpose(0, 1), rec[0].transpose(0, 1), scale, label)
    return _save(image, path)
