"""Codebook health of a trained tokenizer — what ``tok inspect RUN`` shows.

- :func:`inspect_run`: evaluate a run's tokenizer on a dataset split
  (:meth:`tok.run.Run.evaluate`), flag the collapsed streams, and write
  ``health.png`` (usage histogram per stream), ``usage_over_time.png``
  (per-stream test usage and perplexity ratio over the run's evaluations, from
  ``metrics.jsonl``) and ``health.json``.
  A continuous run (a VAE) is inspected by :func:`tok.posterior.inspect_latents`:
  its inactive latent dimensions instead of collapsed streams.
- :func:`collapsed_streams`: the collapse alarm. A stream has collapsed when it
  uses fewer than ``threshold`` of the codes its ``N`` evaluation tokens could
  use at most — ``attainable_usage = used / min(K, N)`` — so a codebook larger
  than the evaluation (K = 2^40, or 32,768 codes on 16 images) is judged on what
  it could have shown, and the alarm means the same for every ``K``.
- :func:`warn_collapse`: the :class:`CollapseWarning` training gives for each
  collapsed stream.
- :func:`stream_table`: the per-stream table ``tok eval`` and ``tok inspect`` print.
- :func:`usage_history`: per-stream test usage, attainable usage and perplexity
  ratio, one point per test row of ``metrics.jsonl``.

Every figure is defined, for small and huge codebooks, in docs/codebook-health.md.

Every file is written atomically; nothing else in the run folder is touched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from . import plots
from ._io import check_writable, write_json
from .errors import OutputDirError, TokError
from .posterior import check_nats_threshold, inspect_latents
from .run import Run

__all__ = [
    "CollapseWarning",
    "warn_collapse",
    "TABLE_HEADERS",
    "stream_table",
    "collapsed_streams",
    "attainable_usage",
    "collapse_summary",
    "percent",
    "usage_history",
    "inspect_run",
    "PosteriorCollapseWarning",
    "warn_inactive",
]


class CollapseWarning(UserWarning):
    """A codebook stream uses fewer than ``train.collapse_threshold`` of the codes the
    evaluation's tokens could use (:func:`collapsed_streams`)."""


def warn_collapse(
    streams: list[dict[str, Any]],
    threshold: float,
    *,
    recipe: str,
    run: str | Path,
    step: int,
    images: int,
) -> None:
    """One :class:`CollapseWarning` per collapsed stream (:func:`collapsed_streams`),
    naming the recipe, the run, the stream, the step, the codes used and how many test
    images and tokens were used."""
    for s in collapsed_streams(streams, threshold):
        warnings.warn(
            f"tok: codebook collapse in recipe {recipe} ({run}), stream {s} at step {step}: "
            f"{collapse_summary(streams[s])} on {images} test images "
            f"(threshold train.collapse_threshold = {threshold:.0%}); see `tok inspect {run}`",
            CollapseWarning,
            stacklevel=3,
        )


class PosteriorCollapseWarning(CollapseWarning):
    """Latent dimensions of a continuous tokenizer carry less than
    ``train.active_threshold`` nats of KL on the evaluation images: their posterior is
    the prior, the decoder ignores them (posterior collapse)."""


def warn_inactive(result: dict[str, Any], *, recipe: str, run: str | Path, step: int) -> None:
    """One :class:`PosteriorCollapseWarning` when :func:`tok.run.evaluate_latents`'s
    ``result`` has inactive dimensions, naming them (at most 12, then a count), the step,
    the threshold and the cures."""
    inactive = result["inactive"]
    if not inactive:
        return
    shown = ", ".join(map(str, inactive[:12])) + (
        f" and {len(inactive) - 12} more" * (len(inactive) > 12)
    )
    warnings.warn(
        f"tok: posterior collapse in recipe {recipe} ({run}) at step {step}: "
        f"{len(inactive)} of {result['latent_dim']} latent dimensions inactive ({shown}: "
        f"KL < {result['active_threshold']:g} nats on {result['images']} test images); "
        f"KL annealing (kl_schedule) or free bits (free_bits) keep dimensions in use; "
        f"see `tok inspect {run}`",
        PosteriorCollapseWarning,
        stacklevel=3,
    )


def attainable_usage(stats: dict[str, Any]) -> float:
    """What the collapse alarm compares with its threshold: ``used / min(K, N)`` for
    ``N`` tokens counted (a stream's ``attainable_usage``); a record from before this
    figure existed (no ``attainable_usage``) gives its ``usage``."""
    value = stats.get("attainable_usage")
    return float(stats["usage"] if value is None else value)


def collapse_summary(stats: dict[str, Any]) -> str:
    """What a collapse message says about one stream: ``"60 of 1000 codes used (6.0%) by
    3136 tokens"``, or when the tokens are fewer than the codes, ``"12 codes used by 784
    tokens (1.5% of the 784 they could use at most, of 32768 codes)"``."""
    if "used" not in stats or "tokens" not in stats:  # an older record: usage only
        return f"{stats['usage']:.1%} of {stats['size']} codes used"
    size, used, tokens = int(stats["size"]), int(stats["used"]), int(stats["tokens"])
    pct = percent(attainable_usage(stats))
    if tokens >= size:
        return f"{used} of {size} codes used ({pct}) by {tokens} tokens"
    return (
        f"{used} codes used by {tokens} tokens ({pct} of the {tokens} they could use "
        f"at most, of {size} codes)"
    )


#: columns of :func:`stream_table`
TABLE_HEADERS = ["STREAM", "CODES", "USAGE", "PERPLEXITY", "PPL/K", "LOG2-RATIO", "DEAD"]
#: the columns it adds when given a collapse threshold: the alarm's figure and verdict
ALARM_HEADERS = ["USED/MIN(K,N)", "STATUS"]


def percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal, or two significant digits where that
    would show a non-zero fraction as 0.0% (usage of a 2^40-code codebook: ``2.7e-07%``)."""
    if 0 < fraction < 0.0005:
        return f"{fraction * 100:.2g}%"
    return f"{fraction:.1%}"


def _fraction(value: float) -> str:
    """Three decimals, or two significant digits where that would show 0.000."""
    return f"{value:.2g}" if 0 < value < 0.0005 else f"{value:.3f}"


def stream_table(
    streams: list[dict[str, Any]], threshold: float | None = None
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-stream health table.

    One row per stream: index, codebook size ``K``, usage (percent of codes
    used), perplexity, ``perplexity / K``, ``log2 perplexity / log2 K``, dead
    codes (exact integers for any ``K``) — and, when ``threshold`` is given, the
    collapse alarm's figure ``used / min(K, N)`` (:func:`attainable_usage`) and
    ``ok`` or ``COLLAPSED`` (that figure below ``threshold``). A fraction too small
    for the fixed decimals (a huge codebook) is shown with two significant digits.
    """
    headers = list(TABLE_HEADERS) + (ALARM_HEADERS if threshold is not None else [])
    rows = []
    for i, s in enumerate(streams):
        size = int(s["size"])
        row = [
            str(i),
            str(size),
            percent(s["usage"]),
            f"{s['perplexity']:.1f}",
            _fraction(s.get("perplexity_fraction", s["perplexity"] / size)),
            f"{s['perplexity_ratio']:.3f}",
            str(int(s["dead"])),
        ]
        if threshold is not None:
            alarm = attainable_usage(s)
            row += [percent(alarm), "COLLAPSED" if alarm < threshold else "ok"]
        rows.append(row)
    return headers, rows


def collapsed_streams(streams: list[dict[str, Any]], threshold: float) -> list[int]:
    """Indices of the collapsed streams: those whose :func:`attainable_usage`,
    ``used / min(K, N)`` for the ``N`` tokens of the evaluation, is below ``threshold``.

    ``min(K, N)`` is the most codes ``N`` tokens can use, so the figure is the usage
    (``used / K``) whenever the evaluation has at least as many tokens as the codebook
    has codes, and a codebook larger than the evaluation is not flagged for its size
    alone. Codes drawn uniformly at random give at least ``1 - 1/e`` (63%) for any
    ``K`` and ``N``; a stream below a threshold of, say, 10% concentrates its tokens
    on few codes whatever ``K`` is.
    """
    return [i for i, s in enumerate(streams) if attainable_usage(s) < threshold]


def usage_history(rows: list[dict[str, Any]]) -> list[dict[str, list]]:
    """Per-stream ``{"step", "usage", "attainable_usage", "perplexity_ratio"}`` lists from
    the test rows of a log.

    One entry per test row (``"split": "test"``) in log order. A row without
    per-stream ``streams`` counts as one stream with the row's mean usage; a
    value a row lacks is ``None`` (``attainable_usage`` falls back to ``usage``, as
    the collapse alarm does).
    """
    history: list[dict[str, list]] = []
    for row in rows:
        if row.get("split") != "test":
            continue
        streams = row.get("streams") or [{"usage": row.get("usage")}]
        while len(history) < len(streams):
            history.append(
                {"step": [], "usage": [], "attainable_usage": [], "perplexity_ratio": []}
            )
        for h, s in zip(history, streams, strict=False):
            h["step"].append(row.get("step"))
            h["usage"].append(s.get("usage"))
            h["attainable_usage"].append(s.get("attainable_usage", s.get("usage")))
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
        alarm = h.get("attainable_usage", h["usage"])
        if alarm != h["usage"]:  # some evaluation had fewer tokens than codes
            series[f"{name}used / min(K, N)"] = list(zip(h["step"], alarm, strict=True))
        series[f"{name}perplexity ratio (log2 PPL / log2 K)"] = list(
            zip(h["step"], h["perplexity_ratio"], strict=True)
        )
    steps = [x for h in history for x in h["step"] if x is not None]
    if steps:
        series[f"collapse threshold ({threshold * 100:g}% of min(K, N))"] = [
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
    """Measure the codebook health of the run folder ``run`` and write its charts; for
    a continuous run (a ``[bottleneck]`` recipe, a VAE) the health of its latent
    dimensions instead: :func:`tok.posterior.inspect_latents`, whose report this returns.

    :param split: the dataset split to evaluate on (the recipe's dataset).
    :param samples: use only the first N images (0: all).
    :param threshold: ``used / min(K, N)`` below which a stream is flagged as
        collapsed (:func:`collapsed_streams`; default: the run's
        ``train.collapse_threshold``); for a continuous run, the KL in nats below
        which a latent dimension is inactive (default: ``train.active_threshold``).
    :param out: folder for ``health.png``, ``usage_over_time.png`` (a continuous run:
        ``kl_over_time.png``) and ``health.json`` (default: the run folder).
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
    recipe = run.recipe()
    continuous = recipe.role == "bottleneck"
    if continuous:
        check_nats_threshold(threshold)
    elif threshold is not None and not 0 <= threshold <= 1:
        raise TokError(f"--threshold must be a fraction between 0 and 1, got {threshold}")
    out_dir = Path(out) if out is not None else run.path
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} exists and is not a folder")
    check_writable(out_dir, what="health.png and health.json")  # before the evaluation
    if continuous:
        return inspect_latents(
            run, split=split, samples=samples, threshold=threshold, out_dir=out_dir, device=device
        )

    result = run.evaluate(split=split, samples=samples, device=device, recipe=recipe)
    counts = result.pop("counts")
    if threshold is None:
        threshold = recipe.train.collapse_threshold

    flagged = set(collapsed_streams(result["streams"], threshold))
    streams = [
        {"stream": i, **s, "collapsed": i in flagged} for i, s in enumerate(result["streams"])
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
