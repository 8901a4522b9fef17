"""Posterior health of a continuous (VAE) tokenizer — what ``tok inspect RUN`` shows for
a run whose recipe has a ``[bottleneck]``.

- :func:`inspect_latents`: evaluate the run's tokenizer on a dataset split
  (:func:`tok.latents.evaluate_latents` through :meth:`tok.run.Run.evaluate`), judge
  each latent dimension active or inactive against a threshold in nats, and write
  ``health.png`` (the KL per dimension with the threshold), ``kl_over_time.png`` (KL,
  active dimensions and β over training, from ``metrics.jsonl``) and ``health.json``.
- :func:`kl_history`: those curves' points from the rows of a log.
- :func:`dimension_table`: the per-dimension table ``tok inspect`` prints.

A dimension is **inactive** when its KL to the prior, averaged over the evaluation
images, is below the threshold (``train.active_threshold``, 0.01 nats): its posterior
is the prior for every image, so it tells the decoder nothing (posterior collapse).
docs/posterior-collapse.md defines every figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import plots
from ._io import write_json
from .errors import TokError
from .run import Run

__all__ = ["inspect_latents", "kl_history", "dimension_table", "check_nats_threshold"]


def check_nats_threshold(threshold: float | None) -> None:
    """Raise :class:`TokError` unless ``threshold`` is ``None`` or a finite number ≥ 0."""
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise TokError(
            "--threshold of a continuous run is in nats (KL per latent dimension) and must "
            f"be a finite number ≥ 0, got {threshold}"
        )


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def _active(kl_dims: list[float], threshold: float) -> int:
    return sum(float(v) >= threshold for v in kl_dims)


def kl_history(rows: list[dict[str, Any]], threshold: float) -> dict[str, dict[str, list]]:
    """The KL, active dimensions and β of a continuous run over training, from the rows of
    its ``metrics.jsonl``.

    ``train``: one point per train row — ``step``, ``kl`` (nats per image on that step's
    batch), ``beta`` (the KL weight used at that step, β·β(t)) and ``active_dims`` (the
    row's ``kl_dim{j}`` at or above ``threshold``; ``None`` when the row has none).
    ``test``: one point per test row — ``step``, ``kl`` and ``active_dims`` (its
    ``kl_dims`` at or above ``threshold``, else the ``active_dims`` it logged). A value a
    row lacks is ``None``.
    """
    train: dict[str, list] = {"step": [], "kl": [], "beta": [], "active_dims": []}
    test: dict[str, list] = {"step": [], "kl": [], "active_dims": []}
    for row in rows:
        if row.get("split") == "train":
            dims = [v for k, v in row.items() if k.startswith("kl_dim")]
            train["step"].append(row.get("step"))
            train["kl"].append(row.get("kl"))
            train["beta"].append(row.get("beta"))
            train["active_dims"].append(_active(dims, threshold) if dims else None)
        elif row.get("split") == "test":
            dims = row.get("kl_dims")
            test["step"].append(row.get("step"))
            test["kl"].append(row.get("kl"))
            test["active_dims"].append(_active(dims, threshold) if dims else row.get("active_dims"))
    return {"train": train, "test": test}


def dimension_table(
    kl_dims: list[float], threshold: float | None
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-dimension table: index, KL (nats, four decimals),
    share of the total KL and, given a ``threshold``, ``active`` or ``INACTIVE``
    (below it)."""
    total = sum(kl_dims)
    headers = ["DIM", "KL (NATS)", "SHARE"] + (["STATUS"] if threshold is not None else [])
    rows = []
    for j, v in enumerate(kl_dims):
        row = [str(j), f"{v:.4f}", f"{v / total:.1%}" if total > 0 else "-"]
        if threshold is not None:
            row.append("active" if v >= threshold else "INACTIVE")
        rows.append(row)
    return headers, rows


def _points(history: dict[str, list], key: str) -> list[tuple[Any, Any]]:
    return list(zip(history["step"], history[key], strict=True))


def _save_kl_over_time(
    path: Path, history: dict[str, dict[str, list]], threshold: float, latent_dim: int, name: str
) -> Path:
    train, test = history["train"], history["test"]

    def top(values: list, at_least: float) -> float:
        return 1.1 * max([at_least, *(float(v) for v in values if _finite(v))])

    # one legend (the first panel's) names the colours: blue training batch, orange test
    panels = [
        {
            "series": {
                "training batch (the logged step's)": _points(train, "kl"),
                "test evaluation": _points(test, "kl"),
            },
            "ylabel": "KL (nats per image)",
            "ylim": (0, top(train["kl"] + test["kl"], 1.0)),
            "legend": True,
        },
        {
            "series": {
                "training batch": _points(train, "active_dims"),
                "test evaluation": _points(test, "active_dims"),
            },
            "ylabel": f"active dimensions\n(KL ≥ {threshold:g} nats)",
            "ylim": (0, latent_dim * 1.08),
            "legend": False,
        },
        {
            "series": {"β": _points(train, "beta")},
            "ylabel": "β (KL weight)",
            "ylim": (0, top(train["beta"], 1.0)),
        },
    ]
    return plots.save_line_panels(
        path,
        panels,
        title=f"KL, active dimensions (of {latent_dim}) and β of {name} during training",
    )


def inspect_latents(
    run: Run,
    *,
    split: str,
    samples: int,
    threshold: float | None,
    out_dir: Path,
    device: str,
) -> dict[str, Any]:
    """:func:`tok.health.inspect_run` for a continuous run: measure and draw its latent
    dimensions (``threshold`` in nats; default the run's ``train.active_threshold``).

    :returns: what ``health.json`` holds: the run, recipe name, split, image count,
        ``bottleneck`` (its registered name), ``stochastic`` (``False``: a deterministic
        bottleneck, KL 0, no dimension judged), ``psnr``, ``mse``, ``kl``,
        ``recon_nll`` and ``neg_elbo`` (nats per image), ``latent_dim``, ``threshold``
        (nats), ``kl_dims`` (each dimension's KL, nats, averaged over the images),
        ``active_dims``, ``inactive`` (indices), ``history`` (:func:`kl_history`) and
        ``files`` (the paths written).
    """
    check_nats_threshold(threshold)
    recipe = run.recipe()
    if threshold is None:
        threshold = recipe.train.active_threshold
    result = run.evaluate(split=split, samples=samples, device=device, recipe=recipe)
    kl_dims = result["kl_dims"]
    stochastic = result.get("stochastic", True)
    inactive = [j for j, v in enumerate(kl_dims) if v < threshold] if stochastic else []
    history = kl_history(run.log_rows(), threshold)
    files = {
        "kl_per_dimension": str(out_dir / Run.HEALTH_PNG),
        "kl_over_time": str(out_dir / Run.KL_OVER_TIME_PNG),
        "json": str(out_dir / Run.HEALTH_JSON),
    }
    report = {
        "run": str(run.path),
        "recipe": recipe.name,
        "split": split,
        "images": result["images"],
        "bottleneck": recipe.bottleneck.name,
        "stochastic": stochastic,
        **{k: result[k] for k in ("psnr", "mse", "kl", "recon_nll", "neg_elbo") if k in result},
        "latent_dim": result["latent_dim"],
        "threshold": threshold,
        "kl_dims": kl_dims,
        "active_dims": len(kl_dims) - len(inactive) if stochastic else None,
        "inactive": inactive,
        "history": history,
        "files": files,
    }
    plots.save_kl_bars(
        out_dir / Run.HEALTH_PNG,
        kl_dims,
        threshold=threshold,
        title=f"KL per latent dimension of {recipe.name}, "
        f"averaged over {result['images']} {split} images",
    )
    _save_kl_over_time(
        out_dir / Run.KL_OVER_TIME_PNG, history, threshold, result["latent_dim"], recipe.name
    )
    write_json(out_dir / Run.HEALTH_JSON, report)
    return report
