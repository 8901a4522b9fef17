"""The training loop's evaluations: :func:`evaluate_and_show` measures the tokenizer
(:func:`tok.run.evaluate`, as ``tok eval`` does), logs the test row, warns about
collapsed codebooks and draws the reconstructions and the usage histogram into
the run folder. Under torchrun rank 0 alone evaluates (eval mode
runs no collective), on the whole evaluation set.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .data import Samples
from .errors import TrainingError
from .health import warn_collapse
from .models import Tokenizer
from .run import Run, evaluate

if TYPE_CHECKING:
    from ._io import JsonLines
    from .recipe import Recipe

__all__ = ["evaluate_and_show", "NonFiniteEvaluation"]


class NonFiniteEvaluation(TrainingError):
    """An evaluation gave non-finite reconstructions (raised before anything is written)."""


def evaluate_and_show(
    run: Run,
    recipe: Recipe,
    tokenizer: Tokenizer,
    eval_set: Samples,
    step: int,
    log: JsonLines | None,
) -> dict[str, Any]:
    """Evaluate on ``eval_set``, log the test row, warn about collapsed streams, and draw
    the reconstructions and the usage histogram into the run folder."""
    device = next(tokenizer.parameters()).device
    result = evaluate(tokenizer, eval_set, device=device, keep=recipe.output.samples)
    if not math.isfinite(result["psnr"]):  # neither logged nor drawn
        raise NonFiniteEvaluation(
            f"its evaluation gave non-finite reconstructions (psnr {result['psnr']})"
        )
    if log is not None:
        keys = ("psnr", "mse", "usage", "perplexity", "streams")
        log.write({"step": step, "split": "test", **{k: result[k] for k in keys}})
    warn_collapse(
        result["streams"],
        recipe.train.collapse_threshold,
        recipe=recipe.name,
        run=run.path,
        step=step,
        images=result["images"],
    )
    run.save_samples(*result.pop("kept"))  # the first output.samples items, as evaluated
    run.save_usage(result["counts"], step)
    return result
