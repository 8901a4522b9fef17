"""PNG charts, drawn with matplotlib.

matplotlib is imported lazily on first use, with the Agg backend and its
object-oriented API only, so ``import tok`` stays fast, no display is needed
and pyplot's global state is never touched. (Pictures made of pixels —
reconstruction grids, video previews — are :mod:`tok.media`'s.)

- :func:`save_usage_histogram`: rank-frequency bars of codebook usage, one panel per stream
  (for a codebook too large to draw every code, the ranks of the codes seen only).
- :func:`save_line_plot`: several ``(x, y)`` series on one chart (losses, usage over time).
- :func:`save_line_panels`: such charts stacked on a shared x axis (KL, active dimensions
  and β over training).
- :func:`usage_caption`: the ``"used X/K (Y%), perplexity P"`` text of one histogram.
- :func:`save_latent_map`: a scatter of 2-D latent coordinates (coloured by label) beside
  a grid of images decoded over the same plane (``tok latent-map``, :mod:`tok.latent_tools`).

Every function writes its PNG atomically (see :mod:`tok._io`) and returns the path written.

Why this module is longer than 500 lines: every chart tok draws with matplotlib lives
here, so matplotlib is imported, styled and rendered in one place and the charts share
one look; each chart is one function.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ._io import atomic_path
from .metrics import CodeCounts, codebook_stats

__all__ = [
    "MAX_BARS",
    "save_usage_histogram",
    "save_kl_bars",
    "save_line_plot",
    "save_line_panels",
    "save_latent_map",
    "usage_caption",
]

MAX_BARS = 512  # save_usage_histogram sums adjacent ranks so that at most this many bars remain

PathLike = str | os.PathLike[str]


def _save(image, path: PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


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


# ----------------------------------------------------------------------------- charts (matplotlib)

_DPI = 100  # a chart of size (w, h) px is a figure of (w / _DPI, h / _DPI) inches
_STREAM_HEIGHT = 180  # save_usage_histogram: px of image height added per extra stream
_BAR = (31, 119, 180)
_PALETTE = [  # matplotlib's tab10, fixed here so a user's style cannot change it
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
_GRID = "#e6e6e6"
_GRID_DARK = (160, 160, 160)  # inactive latent dimensions
_THRESHOLD = (214, 39, 40)  # threshold lines
_LABEL = "#444444"


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def _figure(width: int, height: int):
    """A white ``width`` x ``height`` px matplotlib figure on its own Agg canvas.

    Built with :class:`matplotlib.figure.Figure` rather than pyplot, so nothing is
    registered globally (no figure manager, no backend switch) and it is freed with the
    object. Constrained layout keeps titles, labels and legends inside the canvas.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(
        figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white", layout="constrained"
    )
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: PathLike) -> Path:
    """Render ``fig`` with Agg and write it atomically as an RGB PNG of the figure's size."""
    canvas = fig.canvas
    canvas.draw()
    size = canvas.get_width_height()
    image = Image.frombuffer("RGBA", size, canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    return _save(image.convert("RGB"), path)


@functools.cache
def _tick_formatter_class():
    from matplotlib.ticker import Formatter

    class TickFormatter(Formatter):
        """Linear-axis tick labels: ``%g``, in thousands (``20k``) or millions (``3M``) when
        the largest tick has five or eight digits, the same unit for every tick."""

        div, suffix = 1.0, ""

        def set_locs(self, locs) -> None:
            super().set_locs(locs)
            top = max((abs(float(v)) for v in locs), default=0.0)
            self.div, self.suffix = 1.0, ""
            for div, suffix in ((1e6, "M"), (1e3, "k")):
                if top >= 10 * div:
                    self.div, self.suffix = div, suffix
                    break

        def __call__(self, v, pos=None) -> str:
            if v == 0:
                return "0"
            return f"{v / self.div:g}{self.suffix}"

    return TickFormatter


def _style(ax) -> None:
    """Light grid behind the data, no top/right frame, k/M tick labels on linear axes."""
    ax.grid(True, color=_GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize="small", colors=_LABEL)
    ax.xaxis.set_major_formatter(_tick_formatter_class()())
    if ax.get_yscale() == "linear":
        ax.yaxis.set_major_formatter(_tick_formatter_class()())


# ----------------------------------------------------------------------------- KL per dimension


def save_kl_bars(
    path: PathLike,
    kl_dims: Sequence[float],
    *,
    threshold: float,
    title: str = "KL per latent dimension",
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Write a bar chart of each latent dimension's KL (nats, log scale) with the
    active-dimension threshold as a dashed line; bars below it (inactive, collapsed to
    the prior) in grey. The caption counts the active dimensions and names the
    threshold. Returns the path.

    :param kl_dims: the KL of dimension j at position j, nats (≥ 0).
    :param threshold: nats; a dimension is active at or above it.
    """
    values = [max(float(v), 0.0) for v in kl_dims]
    if not values:
        raise ValueError("kl_dims is empty")
    active = sum(v >= threshold for v in values)
    floor = min(threshold / 10, *[v for v in values if v > 0] or [threshold])
    fig = _figure(*size)
    fig.suptitle(title, wrap=True)
    ax = fig.subplots()
    ax.set_yscale("log")
    colours = [_rgb(_BAR) if v >= threshold else _rgb(_GRID_DARK) for v in values]
    ax.bar(range(len(values)), [max(v, floor / 2) for v in values], color=colours, width=0.8)
    ax.axhline(threshold, color=_rgb(_THRESHOLD), linestyle="--", linewidth=1.2)
    # the threshold is named in the caption, not beside its line, where a bar could hide it
    ax.set_title(
        f"{active} of {len(values)} dimensions active (KL ≥ {threshold:g} nats, dashed); "
        f"total {sum(values):.2f} nats",
        fontsize="medium",
        loc="left",
        wrap=True,
    )
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats, log scale)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.6, len(values) - 0.4)  # no tick past the last dimension
    ax.set_ylim(bottom=floor / 2)  # the threshold line a decade above the axis, never on it
    _style(ax)
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------- usage histogram


def usage_caption(counts: Tensor, size: int | None = None) -> str:
    """``"used X/K (Y%), perplexity P"`` for one stream's code counts: the whole
    histogram (length ``K``), or the counts of the codes seen and ``size=K``
    (:func:`tok.metrics.codebook_stats`).

    ``Y`` has one decimal (two significant digits below 0.1%, never rounded up to 100
    unless every code is used); ``P`` is ``exp`` of the code entropy, one decimal.
    """
    counts = torch.as_tensor(counts).reshape(-1)
    stats = codebook_stats(counts, size)
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


def _streams(counts: CodeCounts | Sequence[Tensor] | Tensor) -> list[tuple[int, Tensor, bool]]:
    """``(K, counts of the codes seen, sparse)`` per stream of what
    :func:`save_usage_histogram` takes."""
    if isinstance(counts, CodeCounts):
        return [(k, counts.seen(s)[1], not counts.is_dense(s)) for s, k in enumerate(counts.sizes)]
    if isinstance(counts, Tensor):
        streams = [counts] if counts.dim() <= 1 else list(counts.reshape(counts.shape[0], -1))
    else:
        streams = list(counts)
    out = []
    for c in streams:
        c = torch.as_tensor(c).detach().cpu().reshape(-1)
        out.append((c.numel(), c[c > 0], False))
    return out


def save_usage_histogram(
    path: PathLike,
    counts: CodeCounts | Sequence[Tensor] | Tensor,
    *,
    title: str = "codebook usage",
    names: Sequence[str] | None = None,
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Write a rank-frequency bar chart of code usage, one panel per stream; return its path.

    ``counts`` is a :class:`tok.metrics.CodeCounts`, or one integer histogram of length
    ``K`` per stream (a list, or a single 1-D tensor, or a 2-D ``(streams, K)`` tensor).
    Each panel shows the counts sorted from the most to the least used code on a linear
    axis, titled with the stream's name and :func:`usage_caption`. When there are more
    than :data:`MAX_BARS` ranks, adjacent ranks are summed into bars (the x-axis label
    says how many per bar). A stream that ``CodeCounts`` counts sparsely (more than
    :data:`tok.metrics.DENSE_COUNT_LIMIT` codes) cannot show its ``K`` ranks: its panel
    ranks the codes seen only, and the figure's title and the x-axis label say so.
    Panels are stacked vertically; the image is ``size`` for one stream and 180 px
    taller per extra stream.
    """
    streams = _streams(counts)
    if not streams:
        raise ValueError("counts is empty")
    if names is None:
        names = [f"stream {i}" for i in range(len(streams))] if len(streams) > 1 else [""]
    elif len(names) != len(streams):
        raise ValueError(f"{len(names)} names for {len(streams)} streams")

    from matplotlib.ticker import MaxNLocator

    fig = _figure(size[0], size[1] + _STREAM_HEIGHT * (len(streams) - 1))
    if any(sparse for _, _, sparse in streams):
        title += "\n(codebook too large to draw every code: ranks of the codes seen only)"
    fig.suptitle(title, wrap=True)
    axes = fig.subplots(len(streams), 1, squeeze=False)[:, 0]
    colour = _rgb(_BAR)
    for ax, (k, seen, sparse), name in zip(axes, streams, names, strict=True):
        caption = usage_caption(seen, k)
        ax.set_title(f"{name}: {caption}" if name else caption, fontsize="medium", loc="left")
        # a dense stream ranks all K codes (the unused ones as zero bars at the end)
        ranks = seen.numel() if sparse else k
        ranked = torch.cat([seen, seen.new_zeros(ranks - seen.numel())])
        bars, bin_size = _bin_sorted(ranked)
        edges = [min(j * bin_size, ranks) for j in range(bars.numel() + 1)]
        values = bars.tolist()
        if 0 < len(values) <= 64:  # few bars: draw them apart
            widths = [0.8 * (b - a) for a, b in zip(edges, edges[1:], strict=False)]
            ax.bar(edges[:-1], values, width=widths, align="edge", color=colour, linewidth=0)
        elif values:  # many (binned) bars side by side: one filled step outline, crisp at 1 px
            ax.stairs(values, edges, fill=True, color=colour, linewidth=0)
        ax.set_xlim(0, max(ranks, 1))
        ax.set_ylim(0, max(max(values, default=0.0), 1.0) * 1.05)
        _style(ax)
        ax.grid(False, axis="x")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        if sparse:  # the caption above says how many of the K codes these are
            xlabel = f"rank of the {ranks:,} codes seen (most used first)"
            if bin_size > 1:
                xlabel += f"; each bar sums {bin_size} ranks"
        else:
            xlabel = "code rank (most used first)"
            if bin_size > 1:
                xlabel += f"; each bar sums {bin_size} adjacent ranks"
        ax.set_xlabel(xlabel, fontsize="small", color=_LABEL)
        ax.set_ylabel(
            "count" if bin_size == 1 else f"count per {bin_size} codes",
            fontsize="small",
            color=_LABEL,
        )
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------- line plot


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def _legend_above(ax, width: int) -> None:
    """A frameless legend between the title and the axes, in as few rows as fit ``width``
    px, rows balanced; constrained layout makes room for it."""
    handles, labels = ax.get_legend_handles_labels()
    renderer = ax.figure.canvas.get_renderer()

    def make(ncols: int):
        return ax.legend(
            handles,
            labels,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncols=ncols,
            frameon=False,
            fontsize="small",
            handlelength=1.6,
            columnspacing=1.4,
        )

    n = len(labels)
    for ncols in range(n, 0, -1):
        legend = make(ncols)
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.96 * width:
            break
    rows = math.ceil(n / ncols)
    if math.ceil(n / rows) != ncols:
        make(math.ceil(n / rows))


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
    points, and every point of short series (at most 20 points), get a dot, so a single
    point shows. The legend sits above the plot; a chart without any drawable point says
    "no data". The image is ``size`` px.
    """

    fig = _figure(*size)
    fig.suptitle(title, wrap=True)
    ax = fig.add_subplot()
    _draw_lines(ax, series, logy=logy, xlabel=xlabel, ylabel=ylabel, width=size[0])
    return _save_figure(fig, path)


def save_line_panels(
    path: PathLike,
    panels: Sequence[dict],
    *,
    title: str,
    xlabel: str = "step",
    size: tuple[int, int] = (640, 640),
) -> Path:
    """Write charts stacked one above the other on a shared x axis; return the path.

    Each of ``panels`` is a dict with ``series`` (as :func:`save_line_plot`'s), and
    optionally ``ylabel``, ``logy``, ``ylim`` (``(bottom, top)``, either ``None``) and
    ``legend`` (default: when it has more than one series); each panel draws its lines
    as :func:`save_line_plot` does, its legend above it. Series at the same position in
    different panels share a colour, so one legend can name them all. ``xlabel`` is
    written under the last panel.
    """
    if not panels:
        raise ValueError("no panels to draw")
    fig = _figure(*size)
    fig.suptitle(title, wrap=True)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        series = panel["series"]
        _draw_lines(
            ax,
            series,
            logy=panel.get("logy", False),
            xlabel=xlabel if i == len(panels) - 1 else "",
            ylabel=panel.get("ylabel", ""),
            width=size[0],
            legend=panel.get("legend", len(series) > 1),
        )
        if panel.get("ylim") is not None:
            ax.set_ylim(*panel["ylim"])
    return _save_figure(fig, path)


def _draw_lines(
    ax,
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    logy: bool,
    xlabel: str,
    ylabel: str,
    width: int,
    legend: bool = True,
) -> None:
    """One coloured line per ``series`` entry on ``ax`` (see :func:`save_line_plot`)."""

    def ok(x, y) -> bool:
        return _finite(x) and _finite(y) and (not logy or float(y) > 0)

    if logy:
        ax.set_yscale("log")
    any_point = False
    for i, (name, pts) in enumerate(series.items()):
        colour = _rgb(_PALETTE[i % len(_PALETTE)])
        keep = [ok(x, y) for x, y in pts]
        xs = [float(x) if k else math.nan for (x, _), k in zip(pts, keep, strict=True)]
        ys = [float(y) if k else math.nan for (_, y), k in zip(pts, keep, strict=True)]
        short = sum(keep) <= 20
        ax.plot(
            xs,
            ys,
            color=colour,
            linewidth=1.6,
            label=name,
            marker="o" if short else None,
            markersize=4,
        )
        if not short:
            alone = [
                j
                for j in range(len(pts))
                if keep[j]
                and not (j > 0 and keep[j - 1])
                and not (j + 1 < len(pts) and keep[j + 1])
            ]
            ax.plot([xs[j] for j in alone], [ys[j] for j in alone], "o", color=colour, markersize=4)
        any_point = any_point or any(keep)
    if not any_point:
        ax.set_xlim(0, 1)
        ax.set_ylim(*((1, 10) if logy else (0, 1)))
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color=_LABEL)
    _style(ax)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize="small", color=_LABEL)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize="small", color=_LABEL)
    if series and legend:
        _legend_above(ax, width)


# ----------------------------------------------------------------------------- latent map


def save_latent_map(
    path: PathLike,
    points: Tensor,
    tiles: Tensor,
    *,
    box: tuple[float, float, float, float],
    labels: Tensor | None = None,
    xlabel: str,
    ylabel: str,
    title: str,
    scatter_title: str,
    grid_title: str,
    size: tuple[int, int] = (1400, 700),
) -> Path:
    """Write two square panels on the same axes; return the path. Left: ``points``
    ``(n, 2)`` as a scatter, coloured by ``labels`` (int ``(n,)``; a legend for up to 20
    classes, else a colorbar; ``None``: one colour), with ``box`` ``(x0, x1, y0, y1)``
    dashed. Right: ``tiles`` ``(G, G, c, h, w)`` in ``[0, 1]`` (row 0 the top), the
    image decoded at each of the ``G x G`` points evenly spaced over ``box``, each
    centred on its point. The image is ``size`` px."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    g, _, c, h, w = tiles.shape
    x0, x1, y0, y1 = box
    dx, dy = (x1 - x0) / max(g - 1, 1), (y1 - y0) / max(g - 1, 1)
    pixels = tiles.permute(0, 3, 1, 4, 2).reshape(g * h, g * w, c).clamp(0, 1).numpy()
    fig = _figure(*size)
    fig.suptitle(title, wrap=True)
    left, right = fig.subplots(1, 2)
    xy = points.detach().cpu().double()
    order = torch.randperm(len(xy), generator=torch.Generator().manual_seed(0))  # no class on top
    style = {"s": 5, "linewidths": 0, "alpha": 0.7, "rasterized": True}
    if labels is None:
        left.scatter(xy[order, 0], xy[order, 1], color=_rgb(_BAR), **style)
    else:
        classes = sorted({int(v) for v in labels.tolist()})
        if len(classes) <= 20:
            import matplotlib

            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            colour = {k: cmap(i) for i, k in enumerate(classes)}
            left.scatter(
                xy[order, 0], xy[order, 1], color=[colour[int(labels[j])] for j in order], **style
            )
            handles = [
                Line2D([], [], marker="o", linestyle="", color=colour[k], label=str(k))
                for k in classes
            ]
            left.legend(
                handles=handles, title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                frameon=False, fontsize="small", handletextpad=0.2, borderaxespad=0.0,
            )  # fmt: skip
        else:
            drawn = left.scatter(
                xy[order, 0], xy[order, 1], c=labels[order].numpy(), cmap="viridis", **style
            )
            fig.colorbar(drawn, ax=left, label="label", shrink=0.8)
    left.add_patch(
        Rectangle(
            (x0 - dx / 2, y0 - dy / 2), x1 - x0 + dx, y1 - y0 + dy,
            fill=False, linestyle="--", linewidth=1.0, edgecolor=_LABEL,
        )
    )  # fmt: skip
    extent = (x0 - dx / 2, x1 + dx / 2, y0 - dy / 2, y1 + dy / 2)
    right.imshow(
        pixels[..., 0] if c == 1 else pixels,
        cmap="gray" if c == 1 else None, vmin=0, vmax=1,
        extent=extent, aspect="auto", interpolation="antialiased",
    )  # fmt: skip
    for ax, caption in ((left, scatter_title), (right, grid_title)):
        ax.set_box_aspect(1)
        ax.set_title(caption, fontsize="medium", loc="left", wrap=True)
        ax.set_xlabel(xlabel, fontsize="small", color=_LABEL)
        ax.set_ylabel(ylabel, fontsize="small", color=_LABEL)
        _style(ax)
    right.grid(False)
    return _save_figure(fig, path)
