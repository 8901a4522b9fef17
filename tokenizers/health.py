"""Codebook health of a trained tokenizer — what ``tok inspect RUN`` shows.

- :func:`inspect_run`: evaluate a run's tokenizer on a dataset split
  (:meth:`tok.run.Run.evaluate`), flag the streams whose usage is below the
  collapse threshold, and write ``health.png`` (usage histogram per stream),
  ``usage_over_time.png`` (per-stream test usage and perplexity ratio over the
  run's evaluations, from ``metrics.jsonl``) and ``health.json``.
- :func:`warn_collapse`: the :class:`CollapseWarning` training gives for each
  stream below the threshold.
- :func:`stream_table`: the per-stream table ``tok eval`` and ``tok inspect`` print.
- :func:`usage_history`: per-stream test usage and perplexity ratio, one point
  per test row of ``metrics.jsonl``.

Every file is written atomically; nothing else in the run folder is touched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from . import plots
from ._io import write_json
from .errors import OutputDirError, TokError
from .run import Run

__all__ = [
    "CollapseWarning",
    "warn_collapse",
    "TABLE_HEADERS",
    "stream_table",
    "collapsed_streams",
    "usage_history",
    "inspect_run",
]


class CollapseWarning(UserWarning):
    """A codebook stream uses fewer codes than ``train.collapse_threshold``."""


def warn_collapse(
    streams: list[dict[str, Any]],
    threshold: float,
    *,
    recipe: str,
    run: str | Path,
    step: int,
    images: int,
) -> None:
    """One :class:`CollapseWarning` per stream whose usage is below ``threshold``, naming
    the recipe, the run, the stream, the step and how many test images were used."""
    for s in collapsed_streams(streams, threshold):
        stats = streams[s]
        warnings.warn(
            f"tok: codebook collapse in recipe {recipe} ({run}), stream {s} at step {step}: "
            f"{stats['usage']:.1%} of {stats['size']} codes used on {images} test images "
            f"(threshold train.collapse_threshold = {threshold:.0%}); see `tok inspect {run}`",
            CollapseWarning,
            stacklevel=3,
        )


#: columns of :func:`stream_table` (``STATUS`` only when a threshold is given)
TABLE_HEADERS = ["STREAM", "CODES", "USAGE", "PERPLEXITY", "PPL/K", "LOG2-RATIO", "DEAD"]


def stream_table(
    streams: list[dict[str, Any]], threshold: float | None = None
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-stream health table.

    One row per stream: index, codebook size ``K``, usage (percent of codes
    used), perplexity, ``perplexity / K``, ``log2 perplexity / log2 K``, dead
    codes — and, when ``threshold`` is given, ``ok`` or ``COLLAPSED`` (usage
    below ``threshold``).
    """
    headers = list(TABLE_HEADERS) + (["STATUS"] if threshold is not None else [])
    rows = []
    for i, s in enumerate(streams):
        size = int(s["size"])
        row = [
            str(i),
            str(size),
            f"{s['usage']:.1%}",
            f"{s['perplexity']:.1f}",
            f"{s.get('perplexity_fraction', s['perplexity'] / size):.3f}",
            f"{s['perplexity_ratio']:.3f}",
            str(int(s["dead"])),
        ]
        if threshold is not None:
            row.append("COLLAPSED" if s["usage"] < threshold else "ok")
        rows.append(row)
    return headers, rows


def collapsed_streams(streams: list[dict[str, Any]], threshold: float) -> list[int]:
    """Indices of the streams whose usage is below ``threshold``."""
    return [i for i, s in enumerate(streams) if s["usage"] < threshold]


def usage_history(rows: list[dict[str, Any]]) -> list[dict[str, list]]:
    """Per-stream ``{"step", "usage", "perplexity_ratio"}`` lists from the test rows of a log.

    One entry per test row (``"split": "test"``) in log order. A row without
    per-stream ``streams`` counts as one stream with the row's mean usage; a
    value a row lacks is ``None``.
    """
    history: list[dict[str, list]] = []
    for row in rows:
        if row.get("split") != "test":
            continue
        streams = row.get("streams") or [{"usage": row.get("usage")}]
        while len(history) < len(streams):
            history.append({"step": [], "usage": [], "perplexity_ratio": []})
        for h, s in zip(history, streams, strict=False):
            h["step"].append(row.get("step"))
            h["usage"].append(s.get("usage"))
            h["perplexity_ratio"].append(s.get("perplexity_ratio"))
    return history


def _save_usage_over_time(
    path: Path, history: list[dict[str, list]], threshold: float, title: str
) -> Path:
    series: dict[str, list[tuple[float, float]]] = {}
    several = len(history) > 1
    for i, h in enumerate(history):
        name = f"stream {i} " if several else ""
        series[f"{name}usage"] = list(zip(h["step"], h["usage"], strict=True))
        series[f"{name}perplexity ratio (log2 PPL / log2 K)"] = list(
            zip(h["step"], h["perplexity_ratio"], strict=True)
        )
    steps = [x for h in history for x in h["step"] if x is not None]
    if steps:
        series[f"collapse threshold ({threshold * 100:g}%)"] = [
            (min(steps), threshold),
            (max(steps), threshold),
        ]
    return plots.save_line_plot(path, series, title=title, ylabel="fraction")


def inspect_run(
    run: str | Path,
    *,
    split: str = "test",
    samples: int = 0,
    threshold: float | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure the codebook health of the run folder ``run`` and write its charts.

    :param split: the dataset split to evaluate on (the recipe's dataset).
    :param samples: use only the first N images (0: all).
    :param threshold: usage below which a stream is flagged as collapsed
        (default: the run's ``train.collapse_threshold``).
    :param out: folder for ``health.png``, ``usage_over_time.png`` and
        ``health.json`` (default: the run folder).
    :param device: where the tokenizer runs.
    :returns: what ``health.json`` holds: the run, recipe name, split, image
        count, ``psnr``, ``mse``, ``bits_per_pixel``, mean ``usage`` and
        ``perplexity``, ``threshold``, ``collapsed`` (stream indices),
        ``streams`` (:func:`tok.metrics.codebook_stats` of each stream plus
        ``stream`` and ``collapsed``), ``history`` (:func:`usage_history`) and
        ``files`` (the paths written).
    """
    run = Run.open(run)
    if samples < 0:
        raise TokError(f"--samples must be 0 (all) or a positive number, got {samples}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise TokError(f"--threshold must be a fraction between 0 and 1, got {threshold}")
    out_dir = Path(out) if out is not None else run.path
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} exists and is not a folder")

    recipe = run.recipe()
    result = run.evaluate(split=split, samples=samples, device=device, recipe=recipe)
    counts = result.pop("counts")
    if threshold is None:
        threshold = recipe.train.collapse_threshold

    streams = [
        {"stream": i, **s, "collapsed": s["usage"] < threshold}
        for i, s in enumerate(result["streams"])
    ]
    history = usage_history(run.log_rows())
    files = {
        "histogram": str(out_dir / Run.HEALTH_PNG),
        "usage_over_time": str(out_dir / Run.USAGE_OVER_TIME_PNG),
        "json": str(out_dir / Run.HEALTH_JSON),
    }
    report = {
        "run": str(run.path),
        "recipe": recipe.name,
        "split": split,
        "images": result["images"],
        "psnr": result["psnr"],
        "mse": result["mse"],
        "bits_per_pixel": result["bits_per_pixel"],
        "usage": result["usage"],
        "perplexity": result["perplexity"],
        "threshold": threshold,
        "collapsed": collapsed_streams(streams, threshold),
        "streams": streams,
        "history": history,
        "files": files,
    }
    names = [f"stream {i}" for i in range(len(counts))] if len(counts) > 1 else None
    plots.save_usage_histogram(
        out_dir / Run.HEALTH_PNG,
        counts,
        title=f"codebook usage of {recipe.name} on {result['images']} {split} images",
        names=names,
    )
    _save_usage_over_time(
        out_dir / Run.USAGE_OVER_TIME_PNG,
        history,
        threshold,
        title=f"codebook health of {recipe.name} during training (test evaluations)",
    )
    write_json(out_dir / Run.HEALTH_JSON, report)
    return report
