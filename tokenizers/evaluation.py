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
from .health import warn_collapse, warn_inactive
from .models import Tokenizer
from .run import Run, evaluate, likelihood_of

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
    """Evaluate on ``eval_set``, log the test row, warn about collapsed streams (inactive
    latent dimensions for a continuous tokenizer), and draw the reconstructions and the
    usage histogram (the KL per dimension) into the run folder."""
    device = next(tokenizer.parameters()).device
    extra = (
        {"likelihood": likelihood_of(recipe), "active_threshold": recipe.train.active_threshold}
        if tokenizer.continuous
        else {}
    )
    result = evaluate(tokenizer, eval_set, device=device, keep=recipe.output.samples, **extra)
    if not math.isfinite(result["psnr"]):  # neither logged nor drawn
        raise NonFiniteEvaluation(
            f"its evaluation gave non-finite reconstructions (psnr {result['psnr']})"
        )
    if tokenizer.continuous:
        if log is not None:
            keys = ("psnr", "mse", "recon_nll", "kl", "neg_elbo", "active_dims", "kl_dims")
            log.write({"step": step, "split": "test", **{k: result[k] for k in keys}})
        if tokenizer.bottleneck.stochastic:  # a deterministic one has no KL to lose
            warn_inactive(result, recipe=recipe.name, run=run.path, step=step)
        run.save_samples(*result.pop("kept"))
        run.save_kl(result["kl_dims"], result["active_threshold"], step)
        return result
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
