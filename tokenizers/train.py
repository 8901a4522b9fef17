"""The training loop: recipe → run folder (:class:`tok.run.Run` owns the files).

Read it top to bottom: :func:`build_parts` makes everything a run needs from the
recipe — data, tokenizer, losses, optimizer — and :func:`train` runs the loop.
At every step the loss is the recipe's reconstruction loss (``train.loss``)
plus its ``[losses.NAME]`` terms, each found through the loss registry, plus
the quantizer's ``aux_loss``; after the optimizer step each loss may train
what it owns (a discriminator). Every ``log_every`` steps a row goes to
``metrics.jsonl``, every ``eval_every`` steps the test images are evaluated
and drawn, and every ``checkpoint_every`` steps a checkpoint is written —
atomically, so a run killed at any moment resumes (``tok train --resume
RUN``) from its last checkpoint, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ._io import check_writable, nonfinite_tensors
from .checkpoint import rng_states
from .components import Facts, build
from .data import Samples
from .data.batches import Batches, training_data
from .device import autocast, flush_denormals, resolve_device, resolve_precision
from .distributed import (
    check_world,
    data_parallel,
    follow,
    gather,
    is_main,
    leading,
    mean_over_ranks,
    process_group,
)
from .ema import EMA
from .errors import TrainingError
from .evaluation import NonFiniteEvaluation, evaluate_and_show
from .health import CollapseWarning
from .locks import folder_lock
from .losses import Loss, LossInputs, compute_losses
from .metrics import progress_figures, stream_row
from .models import Tokenizer
from .recipe import Recipe, check_resume
from .run import NO_LOG, Checkpoint, Run

__all__ = ["train", "build_parts", "build_tokenizer", "lr_at", "RunResult", "CollapseWarning"]


@dataclass(frozen=True)
class RunResult:
    """What :func:`train` returns: the run folder, the final step and the last evaluation."""

    run_dir: Path
    step: int
    eval: dict[str, Any]


@dataclass
class Parts:
    """Everything a run trains with, built from its recipe by :func:`build_parts`."""

    batches: Callable[[int], Batches]  # from global batch `step` on: this rank's share, uint8
    eval_set: Samples  # the first eval_samples test items
    tokenizer: Tokenizer
    losses: dict[str, Loss]  # train.loss first, then the [losses.NAME] terms
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # draws the batches
    ema: EMA | None  # the moving average of the weights (train.ema_decay): what is evaluated

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.tokenizer, self.optimizer, dict(self.losses), self.generator, self.ema
        )


def build_tokenizer(recipe: Recipe, input_shape: tuple[int, ...]) -> Tokenizer:
    """An untrained tokenizer for ``recipe`` and inputs of ``input_shape`` (``(c, h, w)`` or
    ``(c, t, h, w)``); what the recipe leaves out is supplied from the data."""
    return Tokenizer.from_config(
        {
            "architecture": {"name": recipe.model.name, "config": dict(recipe.model.options)},
            recipe.role: {"name": recipe.latent.name, "config": dict(recipe.latent.options)},
            "input_shape": list(input_shape),
        },
        steps=recipe.train.steps,
    )


def build_parts(recipe: Recipe, device: torch.device) -> Parts:
    """The data, tokenizer, losses and optimizer of ``recipe``, on ``device``."""
    t = recipe.train
    generator = torch.Generator().manual_seed(t.seed)  # the preloaded path's batches
    dataset = build("datasets", recipe.data.name, recipe.data.options)
    batches, test, input_shape = training_data(dataset, device, generator, train=t)
    tokenizer = build_tokenizer(recipe, input_shape).to(device)
    tokenizer.architecture.grid(input_shape)  # data it cannot take: ConfigError now, not later
    facts = Facts(input_shape=input_shape)
    losses = {t.loss: build("losses", t.loss, {}, facts)}
    losses.update({c.name: build("losses", c.name, c.options, facts) for c in recipe.losses})
    optimizer = torch.optim.AdamW(  # fused: one kernel for all tensors, 5 % of a small step
        tokenizer.parameters(),
        lr=t.lr,
        betas=tuple(t.betas),
        weight_decay=t.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    return Parts(
        batches=batches,
        eval_set=test,
        tokenizer=tokenizer,
        losses={name: loss.to(device) for name, loss in losses.items()},
        optimizer=optimizer,
        generator=generator,
        ema=EMA(tokenizer, decay=t.ema_decay) if t.ema_decay else None,
    )


def lr_at(step: int, recipe: Recipe) -> float:
    """The learning rate for ``step`` (0-based): linear warm-up, then cosine or constant."""
    t = recipe.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    span = max(1, t.steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    recipe: Recipe,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Train the tokenizer described by ``recipe`` into ``recipe.run_dir``.

    :param resume: continue the run in ``recipe.run_dir`` from its last checkpoint.
    :param progress: show a tqdm progress bar.
    :param stop_after: stop (with a checkpoint) after this many steps of this
        call, as if the process had been stopped there — ``--resume`` continues.
    :returns: the run folder, the step reached and the last evaluation.
    :raises TokError: for a bad recipe, missing data, an unusable run folder, a run folder
        another process is writing (:class:`tok.errors.FolderInUseError`), a resume
        that changes what cannot change (:data:`tok.recipe.RESUMABLE_KEYS`);
        :class:`tok.errors.TrainingError` at the first non-finite loss, before the
        optimizer steps on it (the run keeps its last checkpoint).
    """
    args = {"resume": resume, "progress": progress, "stop_after": stop_after}
    with process_group(resolve_device(recipe.train.device)) as device, flush_denormals(device):
        check_world(recipe.train.batch_size)
        if not is_main():  # rank 0 checks or makes the run folder; the others only read it
            follow(recipe.run_dir)
            return _train(Run(recipe.run_dir), recipe, device, **args)
        with leading() as ready, folder_lock(recipe.run_dir):  # one writer per run folder
            check_writable(recipe.run_dir, what="the run")  # a read-only disk: now, not later
            run = Run.open(recipe.run_dir) if resume else Run.create(recipe.run_dir)
            ready()
            with run.failing(new=not resume):  # undoes an unstarted run; a full disk: what is kept
                return _train(run, recipe, device, **args)


def _train(
    run: Run,
    recipe: Recipe,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
    stop_after: int | None,
) -> RunResult:
    t, main = recipe.train, is_main()  # rank 0 (or the only process) writes the run's files
    if resume and main:
        check_resume(run.recipe(), recipe, run=run.path)  # before any work
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    parts = build_parts(recipe, device)
    step, elapsed = 0, 0.0
    if resume:
        step, elapsed = run.load_checkpoint(parts.checkpoint())
        if main:
            run.truncate_log(step)
    saved = step if resume else None  # the step of the checkpoint on disk
    if not resume and main:  # a resume rewrites recipe.toml with its first checkpoint
        run.write_recipe(recipe)
    model = data_parallel(parts.tokenizer, device)  # DDP under torchrun, else the tokenizer
    precision = resolve_precision(t.precision, device)
    if progress and main:
        n, threads = sum(p.numel() for p in parts.tokenizer.parameters()), torch.get_num_threads()
        tqdm.write(
            f"tok: training {recipe.name} ({n:,} parameters) on {device} ({precision}, {threads} "
            f"thread{'s' * (threads > 1)}) for {t.steps} steps into {run.path}"
        )
    tokenizer, optimizer = parts.tokenizer, parts.optimizer
    judged = parts.ema.model if parts.ema is not None else tokenizer  # what is evaluated
    last_eval: dict[str, Any] = {}
    end = t.steps if stop_after is None else min(t.steps, step + stop_after)
    start_time = time.perf_counter() - elapsed
    bar = tqdm(
        total=t.steps, initial=step, disable=not (progress and main), desc=recipe.name, unit="step"
    )
    batches = contextlib.closing(parts.batches(step))  # stops streaming workers at the end
    with run.open_log() if main else NO_LOG as log, bar, batches as data:
        tokenizer.train()
        while step < end:
            lr = lr_at(step, recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = next(data).to(device, non_blocking=True).float().div_(255)  # this rank's share
            with autocast(precision, device):
                out = model(x)
                batch = LossInputs(x, out.reconstruction.float(), tokenizer, step, out.logits)
                terms = compute_losses(parts.losses, batch)
            loss = sum(term.loss for term in terms.values()) + out.aux_loss
            seen = mean_over_ranks(loss)  # every rank takes the same decision below
            if not torch.isfinite(seen):  # a host sync per step: small next to a step
                what = _loss_terms(loss, terms[t.loss].loss, out)
                raise TrainingError.diverged(
                    run.path, step=step + 1, what=what, saved=saved, lr=t.lr
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), t.grad_clip)
            optimizer.step()
            if parts.ema is not None:
                parts.ema.update(tokenizer)
            detached = LossInputs(x, batch.reconstruction.detach(), tokenizer, step)
            updates = {name: loss_fn.update(detached) for name, loss_fn in parts.losses.items()}
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == end:  # .item() below syncs with the device
                row = {
                    "step": step,
                    "split": "train",
                    "loss": seen.item(),  # the global batch's
                    "recon_loss": mean_over_ranks(terms[t.loss].loss).item(),
                    "aux_loss": mean_over_ranks(out.aux_loss).item(),
                    "lr": lr,
                    "time": round(time.perf_counter() - start_time, 3),
                    **{k: float(v) for k, v in out.metrics.items()},  # a VAE's: kl, beta, kl_dim{j}
                    **stream_row(out, tokenizer),
                }
                if recipe.losses:
                    row["losses"] = {
                        name: {"loss": term.loss.item(), **term.metrics, **updates[name]}
                        for name, term in terms.items()
                    }
                log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", **progress_figures(row))
            shown = step % t.eval_every == 0 or step == t.steps
            if (shown or step % t.checkpoint_every == 0 or step == end) and (
                bad := nonfinite_tensors(tokenizer.state_dict())
            ):  # a finite loss, then a step to non-finite weights: show and save nothing
                what = f"its optimizer step left non-finite weights ({', '.join(bad[:2])})"
                raise TrainingError.diverged(run.path, step=step, what=what, saved=saved, lr=t.lr)
            if shown and main:
                try:
                    last_eval = evaluate_and_show(run, recipe, judged, parts.eval_set, step, log)
                except NonFiniteEvaluation as exc:
                    raise TrainingError.diverged(
                        run.path, step=step, what=str(exc), saved=saved, lr=t.lr
                    ) from None
            if step % t.checkpoint_every == 0 or step == end:
                rngs = {k: gather(v) for k, v in rng_states().items()}  # every rank's
                if main:
                    run.save_checkpoint(
                        step,
                        parts.checkpoint(),
                        elapsed=time.perf_counter() - start_time,
                        rngs=rngs,
                    )
                    run.write_recipe(recipe)  # the recipe of the state on disk
                saved = step
    if not main:
        return RunResult(run_dir=run.path, step=step, eval={})
    if step == t.steps and not last_eval:  # a resume of a finished run
        last_eval = evaluate_and_show(run, recipe, judged, parts.eval_set, step, None)
    run.save_curves()
    return RunResult(run_dir=run.path, step=step, eval=last_eval)


def _loss_terms(loss: Any, recon: Any, out: Any) -> str:
    """``the loss is nan (reconstruction …, quantizer aux …[, N non-finite latents])``."""
    terms = f"reconstruction {float(recon.detach()):.4g}, quantizer aux {float(out.aux_loss.detach()):.4g}"
    nonfinite = int(out.metrics.get("nonfinite", 0))
    terms += f", {nonfinite} non-finite latents" if nonfinite else ""
    return f"the loss is {float(loss.detach())} ({terms})"
