"""The training loop: recipe → run folder.

A run folder holds:

- ``recipe.toml`` — the resolved recipe (every default written out);
- ``model.safetensors`` + ``tokenizer.json`` — the tokenizer (``Tokenizer.load``);
- ``state.safetensors`` — everything needed to resume: model weights,
  AdamW moments, RNG states; its metadata holds the step (no pickle);
- ``state.json`` — the same scalars, readable;
- ``metrics.jsonl`` — one JSON object per logged step (``"split": "train"``:
  losses, learning rate, the quantizer's per-batch ``usage``/``perplexity``
  and per-stream batch ``streams``) and per evaluation (``"split": "test"``:
  ``psnr``, ``mse``, ``usage``, ``perplexity`` and per-stream ``streams``
  with the fields of :func:`tok.metrics.codebook_stats`);
- ``recon.png``, ``usage.png``, ``loss.png`` — reconstructions of test
  images, the codebook-usage histogram, the loss and PSNR curves; for video
  data ``recon.gif`` (originals above reconstructions, animated) and
  ``recon_frames.png`` (a frame strip) take the place of ``recon.png``.

Every file is written atomically; ``state.safetensors`` alone decides where a
resumed run (``tok train --resume RUN``) continues, so a run killed at any
moment resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from . import plots
from ._io import atomic_path, write_json, write_text
from .config import build, parameters
from .data import Dataset, Samples
from .errors import CheckpointError, OutputDirError, TokError
from .metrics import batch_stream_stats, code_counts, codebook_stats, psnr
from .models import Tokenizer
from .recipe import Recipe, apply_overrides, dumps_toml, parse_recipe
from .registry import registry

__all__ = [
    "train",
    "evaluate",
    "build_tokenizer",
    "CollapseWarning",
    "RunResult",
    "load_run_recipe",
]

STATE = "state.safetensors"
STATE_JSON = "state.json"
METRICS = "metrics.jsonl"
RECIPE = "recipe.toml"


class CollapseWarning(UserWarning):
    """A codebook stream uses fewer codes than ``train.collapse_threshold``."""


@dataclass(frozen=True)
class RunResult:
    """What :func:`train` returns: the run folder, the final step and the last evaluation."""

    run_dir: Path
    step: int
    eval: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TokError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TokError(
            f'train.device = {name!r} but CUDA is not available here; use "cpu" or "auto"'
        )
    return device


def _cpu_has_amx() -> bool:
    check = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if check is not None:
        try:
            return bool(check())
        except Exception:  # noqa: BLE001 - a private helper; fall back to the flags
            pass
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` is bf16 only where bf16 is fast in hardware."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and _cpu_has_amx() else "fp32"


def build_dataset(recipe: Recipe) -> Dataset:
    return build("datasets", recipe.data.name, recipe.data.options)


def build_tokenizer(recipe: Recipe, input_shape: tuple[int, ...]) -> Tokenizer:
    """An untrained tokenizer for ``recipe`` and inputs of ``input_shape``.

    ``input_shape`` is ``(c, h, w)`` for images, ``(c, t, h, w)`` for videos.
    Options the recipe leaves out that the architecture's constructor takes
    are filled in from the data: ``in_channels`` (``c``) and ``image_size``
    (``[h, w]``, for architectures that size positional embeddings, like ``seq1d``).
    """
    arch_options = dict(recipe.model.options)
    accepted = parameters(registry("architectures").get(recipe.model.name))
    from_data = {"in_channels": input_shape[0], "image_size": list(input_shape[-2:])}
    for key, value in from_data.items():
        if key in accepted:
            arch_options.setdefault(key, value)
    return Tokenizer.from_config(
        {
            "architecture": {"name": recipe.model.name, "config": arch_options},
            "quantizer": {"name": recipe.quantizer.name, "config": dict(recipe.quantizer.options)},
            "input_shape": list(input_shape),
        }
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


@torch.no_grad()
def evaluate(
    tokenizer: Tokenizer,
    samples: Samples,
    *,
    batch_size: int = 500,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Reconstruct ``samples`` and measure them.

    Returns ``psnr`` (mean dB over images, reconstructions clamped to
    ``[0, 1]``), ``mse``, per-stream ``streams`` (``usage``, ``perplexity``,
    ``perplexity_ratio``, ``dead``, ``size``), their means ``usage`` and
    ``perplexity``, ``bits_per_pixel``, ``images`` and the raw ``counts``
    (one histogram per stream).
    """
    device = device or next(tokenizer.parameters()).device
    was_training = tokenizer.training
    tokenizer.eval()
    sizes = tokenizer.quantizer.codebook_sizes
    counts = [torch.zeros(k, dtype=torch.long) for k in sizes]
    scores, mses = [], []
    for start in range(0, len(samples), batch_size):
        x = samples.floats(slice(start, start + batch_size)).to(device)
        out = tokenizer(x)
        recon = out.reconstruction.clamp(0, 1)
        scores.append(psnr(recon, x).cpu())
        mses.append((recon - x).pow(2).flatten(1).mean(1).cpu())
        for c, new in zip(counts, code_counts(out.indices.cpu(), sizes), strict=True):
            c += new
    tokenizer.train(was_training)
    streams = [codebook_stats(c) for c in counts]
    return {
        "psnr": torch.cat(scores).mean().item(),
        "mse": torch.cat(mses).mean().item(),
        "usage": sum(s["usage"] for s in streams) / len(streams),
        "perplexity": sum(s["perplexity"] for s in streams) / len(streams),
        "streams": streams,
        "bits_per_pixel": tokenizer.bits_per_pixel,
        "images": len(samples),
        "counts": counts,
    }


# checkpoints -----------------------------------------------------------------


def _save_state(
    run_dir: Path,
    step: int,
    tokenizer: Tokenizer,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    elapsed: float,
) -> None:
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().contiguous().cpu() for k, v in tokenizer.state_dict().items()
    }
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.batches"] = gen.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scalars = {"step": step, "elapsed": elapsed, "param_groups": opt_state["param_groups"]}
    with atomic_path(run_dir / STATE) as tmp:
        save_file(tensors, tmp, metadata={"format": "tok.state/1", "state": json.dumps(scalars)})
    write_json(run_dir / STATE_JSON, {"step": step, "elapsed_seconds": round(elapsed, 2)})
    tokenizer.save(run_dir)


def _load_state(
    run_dir: Path, tokenizer: Tokenizer, opt: torch.optim.Optimizer, gen: torch.Generator
) -> tuple[int, float]:
    path = run_dir / STATE
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume {run_dir}: no {STATE} (the run never reached its first checkpoint)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        scalars = json.loads(meta["state"])
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    tokenizer.load_state_dict(model_state)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.batches"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(scalars["step"]), float(scalars.get("elapsed", 0.0))


def load_run_recipe(run_dir: str | Path, overrides: list[str] | None = None) -> Recipe:
    """The resolved recipe stored in a run folder (with ``overrides`` applied)."""
    import tomllib

    run_dir = Path(run_dir)
    path = run_dir / RECIPE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: {RECIPE} is missing")
    data = apply_overrides(tomllib.loads(path.read_text()), overrides or [])
    data.setdefault("output", {})["dir"] = str(run_dir)
    return parse_recipe(data, name=run_dir.name, source=str(path))


def _read_log(run_dir: Path, upto: int) -> list[dict[str, Any]]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if row.get("step", 0) <= upto:
            rows.append(row)
    return rows


def _plot_curves(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
    test = [(r["step"], r["mse"]) for r in rows if r.get("split") == "test"]
    plots.save_line_plot(
        run_dir / "loss.png",
        {"train loss": train, "test mse": test},
        title="loss",
        ylabel="loss",
        logy=True,
    )


# the loop --------------------------------------------------------------------


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise OutputDirError(
            f"run folder {run_dir} already exists and is not empty; resume it with "
            f"`tok train --resume {run_dir}` or choose another with --set output.dir=..."
        )


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
    """
    t = recipe.train
    run_dir = recipe.run_dir
    _check_run_dir(run_dir, resume)
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)

    dataset = build_dataset(recipe)
    train_set = dataset.load("train")
    test_set = dataset.load("test")
    eval_set = Samples(
        images=test_set.images[: t.eval_samples], keys=test_set.keys[: t.eval_samples]
    )
    tokenizer = build_tokenizer(recipe, tuple(train_set.images.shape[1:])).to(device)
    opt = torch.optim.AdamW(
        tokenizer.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay
    )
    gen = torch.Generator().manual_seed(t.seed)

    run_dir.mkdir(parents=True, exist_ok=True)
    step, elapsed = 0, 0.0
    if resume:
        step, elapsed = _load_state(run_dir, tokenizer, opt, gen)
        rows = _read_log(run_dir, step)
        write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
    write_text(
        run_dir / RECIPE,
        dumps_toml(
            recipe.to_dict(),
            header=f"# resolved recipe of {run_dir}\n# resume: tok train --resume {run_dir}",
        ),
    )

    precision = resolve_precision(t.precision, device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else nullcontext()
    )
    if progress:
        tqdm.write(
            f"tok: training {recipe.name} on {device} ({precision}, {torch.get_num_threads()} "
            f"threads) for {t.steps} steps into {run_dir}"
        )
    images = train_set.images.to(device)
    n = len(train_set)
    last_eval: dict[str, Any] = {}
    end = t.steps if stop_after is None else min(t.steps, step + stop_after)
    start_time = time.perf_counter() - elapsed
    log = open(run_dir / METRICS, "a")  # noqa: SIM115 - kept open for the whole loop
    bar = tqdm(
        total=t.steps, initial=step, disable=not progress, desc=f"train {recipe.name}", unit="step"
    )
    try:
        tokenizer.train()
        while step < end:
            lr = lr_at(step, recipe)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, n, (t.batch_size,), generator=gen)
            x = images[idx.to(device)].float().div_(255)
            with autocast:
                out = tokenizer(x)
                diff = out.reconstruction.float() - x
                recon_loss = diff.pow(2).mean() if t.loss == "mse" else diff.abs().mean()
            loss = recon_loss + out.aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), t.grad_clip)
            opt.step()
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == end:
                row = {
                    "step": step,
                    "split": "train",
                    "loss": loss.item(),
                    "recon_loss": recon_loss.item(),
                    "aux_loss": float(out.aux_loss.detach()),
                    "lr": lr,
                    "time": round(time.perf_counter() - start_time, 3),
                    **{k: float(v) for k, v in out.metrics.items()},
                    "streams": batch_stream_stats(out.indices, tokenizer.quantizer.codebook_sizes),
                }
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", batch_usage=f"{row.get('usage', 0):.2f}")
            if step % t.eval_every == 0 or step == t.steps:
                last_eval = _evaluate_and_plot(
                    run_dir, recipe, tokenizer, eval_set, step, log, device
                )
            if step % t.checkpoint_every == 0 or step == end:
                _save_state(run_dir, step, tokenizer, opt, gen, time.perf_counter() - start_time)
    finally:
        bar.close()
        log.close()
    if step == t.steps and not last_eval:
        last_eval = _evaluate_and_plot(run_dir, recipe, tokenizer, eval_set, step, None, device)
    _plot_curves(run_dir, _read_log(run_dir, step))
    return RunResult(run_dir=run_dir, step=step, eval=last_eval)


def _evaluate_and_plot(
    run_dir: Path,
    recipe: Recipe,
    tokenizer: Tokenizer,
    eval_set: Samples,
    step: int,
    log: Any,
    device: torch.device,
) -> dict[str, Any]:
    result = evaluate(tokenizer, eval_set, device=device)
    row = {
        "step": step,
        "split": "test",
        "psnr": result["psnr"],
        "mse": result["mse"],
        "usage": result["usage"],
        "perplexity": result["perplexity"],
        "streams": result["streams"],
    }
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()
    for s, stats in enumerate(result["streams"]):
        if stats["usage"] < recipe.train.collapse_threshold:
            warnings.warn(
                f"tok: codebook collapse in recipe {recipe.name} ({run_dir}), "
                f"stream {s} at step {step}: {stats['usage']:.1%} of {stats['size']} codes "
                f"used on {result['images']} test images "
                f"(threshold train.collapse_threshold = {recipe.train.collapse_threshold:.0%}); "
                f"see `tok inspect {run_dir}`",
                CollapseWarning,
                stacklevel=3,
            )
    k = min(recipe.output.samples, len(eval_set))
    x = eval_set.floats(slice(0, k)).to(device)
    tokenizer.eval()
    recon = tokenizer.reconstruct(x).cpu()
    tokenizer.train()
    if x.ndim == 4:
        plots.save_recon_grid(run_dir / "recon.png", x.cpu(), recon)
    elif x.ndim == 5:  # videos (n, c, t, h, w): an animation and one video's frames
        plots.save_video_grid_gif(run_dir / "recon.gif", x[:4].cpu(), recon[:4])
        plots.save_frame_strip(run_dir / "recon_frames.png", x[0].cpu(), recon[0])
    plots.save_usage_histogram(
        run_dir / "usage.png", result["counts"], title=f"codebook usage at step {step}"
    )
    return result
