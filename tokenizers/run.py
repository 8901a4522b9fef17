"""Run folders: every file ``tok train`` writes, with its readers and writers.

A run folder holds:

- ``recipe.toml`` — the resolved recipe (every default written out);
- ``model.safetensors`` + ``tokenizer.json`` — the tokenizer (:class:`tok.models.Tokenizer`);
  with ``train.ema_decay`` the moving average of its weights (:mod:`tok.ema`), and
  ``raw/`` the trained weights as a tokenizer folder of their own;
- ``state.safetensors`` — everything a resume needs: the tokenizer's weights
  and AdamW moments, each loss's own weights and optimizers, the RNG states;
  its metadata holds the format (``tok.state/2``), the step and the optimizers'
  settings (no pickle anywhere);
- ``state.json`` — the step and elapsed seconds, readable;
- ``metrics.jsonl`` — one JSON object per logged step (``"split": "train"``)
  and per evaluation (``"split": "test"``);
- pictures: ``recon.png`` (images) or ``recon.gif`` + ``recon_frames.png``
  (videos), ``usage.png``, ``loss.png``; ``tok inspect`` adds ``health.png``,
  ``usage_over_time.png`` and ``health.json``.

:class:`Run` owns those names: :mod:`tok.train` writes through it, ``tok
eval``, ``tok inspect`` and :mod:`tok.health` read through it. Every file is
written atomically; ``state.safetensors`` alone decides where a resumed run
continues. :func:`evaluate` measures a tokenizer on samples; :meth:`Run.evaluate`
does it for the run's own dataset.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from . import media, plots
from ._io import (
    JsonLines,
    check_readable,
    write_json,
    write_text,
)
from .checkpoint import STATE_FORMAT, Checkpoint, load_state, save_state
from .components import build, resolved_options
from .data import Dataset, Samples
from .errors import (
    CheckpointError,
    FileAccessError,
    OutputDirError,
    RecipeError,
    TokError,
)
from .image_metrics import ImageQuality
from .latents import evaluate_latents, likelihood_of
from .metrics import CodeCounts, psnr, sample_std
from .models import Tokenizer
from .models.tokenizer import CONFIG, WEIGHTS, config_differences, recorded_config
from .recipe import Recipe, apply_overrides, dumps_toml, parse_recipe
from .registry import missing_plugin

__all__ = ["Run", "Checkpoint", "evaluate", "STATE_FORMAT"]


@torch.no_grad()
def evaluate(
    tokenizer: Tokenizer,
    samples: Samples,
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    keep: int = 0,
    quality: ImageQuality | None = None,
    **continuous: Any,
) -> dict[str, Any]:
    """Reconstruct ``samples`` and measure them (eval mode, fp32). A continuous
    tokenizer is measured by :func:`evaluate_latents` (``continuous``: its
    ``likelihood`` and ``active_threshold``).

    Returns ``psnr`` (mean dB over items, reconstructions clamped to
    ``[0, 1]``) and ``psnr_std`` (its standard deviation over items), ``mse``, per-stream ``streams``
    (:func:`tok.metrics.codebook_stats`: ``usage``, ``attainable_usage``,
    ``perplexity``, ``perplexity_ratio``, ``used``, ``tokens``, ``dead``, ``size`` …),
    their means ``usage`` and ``perplexity``, ``bits_per_pixel``, ``images`` (the item
    count) and the raw ``counts`` (a :class:`tok.metrics.CodeCounts`: memory bounded by
    the codes seen, whatever the codebook size); with ``keep = n``, ``kept``: the first
    ``n`` items and their (clamped) reconstructions on the CPU, to draw without a rerun.
    With ``quality`` (a fresh :class:`tok.image_metrics.ImageQuality`), its
    :meth:`~tok.image_metrics.ImageQuality.result` too: SSIM, MS-SSIM, the
    EfficientNet-Lite distances, LPIPS and rFID where they can be computed, their
    spreads, ``unavailable`` and ``protocol`` — the heavy metrics, only when asked.
    """
    device = torch.device(device) if device is not None else next(tokenizer.parameters()).device
    if tokenizer.continuous:
        return evaluate_latents(
            tokenizer, samples, batch_size=batch_size, device=device, keep=keep,
            quality=quality, **continuous,
        )  # fmt: skip
    was_training = tokenizer.training
    tokenizer.eval()
    sizes = tokenizer.quantizer.codebook_sizes
    counts = CodeCounts(sizes)
    scores, mses, kept = [], [], ([], [])
    for start in range(0, len(samples), batch_size):
        x = samples.floats(slice(start, start + batch_size)).to(device)
        out = tokenizer(x)
        recon = out.reconstruction.clamp(0, 1)
        scores.append(psnr(recon, x).cpu())
        mses.append((recon - x).pow(2).flatten(1).mean(1).cpu())
        counts.update(out.indices)
        if quality is not None:
            quality.update(x, recon)
        kept[0].append(x[: max(0, keep - start)].cpu())
        kept[1].append(recon[: max(0, keep - start)].cpu())
    tokenizer.train(was_training)
    streams = counts.stats()
    return {
        "psnr": torch.cat(scores).mean().item(),
        "psnr_std": sample_std(torch.cat(scores)),
        "mse": torch.cat(mses).mean().item(),
        "usage": sum(s["usage"] for s in streams) / len(streams),
        "perplexity": sum(s["perplexity"] for s in streams) / len(streams),
        "streams": streams,
        "bits_per_pixel": tokenizer.bits_per_pixel,
        "images": len(samples),
        "counts": counts,
        **({"kept": (torch.cat(kept[0]), torch.cat(kept[1]))} if keep else {}),
        **(quality.result() if quality is not None else {}),
    }


class Run:
    """One run folder (``path``) and every file in it.

    Use :meth:`create` for a new run and :meth:`open` for an existing one;
    both raise :class:`TokError` subclasses naming the folder.
    """

    RECIPE = "recipe.toml"
    METRICS = "metrics.jsonl"
    STATE = "state.safetensors"
    RAW = "raw"  # the trained (not averaged) weights, beside an EMA run's model.safetensors
    STATE_JSON = "state.json"
    WEIGHTS = WEIGHTS
    TOKENIZER = CONFIG
    RECON_PNG = "recon.png"  # the names media.save_comparison gives "recon"
    RECON_GIF = "recon.gif"
    RECON_FRAMES = "recon_frames.png"
    USAGE_PNG = "usage.png"
    KL_PNG = "kl.png"
    LOSS_PNG = "loss.png"
    HEALTH_PNG = "health.png"
    USAGE_OVER_TIME_PNG = "usage_over_time.png"
    KL_OVER_TIME_PNG = "kl_over_time.png"  # tok inspect of a continuous run
    HEALTH_JSON = "health.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._made = False  # whether this object's command makes the folder (create)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        """The path of the run's file ``name`` (one of the class's names)."""
        return self.path / name

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Run:
        """A new run in ``path``, which must not exist or be an empty folder (it is made
        by the first file written, so a command that fails before leaves nothing)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise OutputDirError(
                f"run folder {path} already exists and is not empty; resume it with "
                f"`tok train --resume {path}` or choose another with --set output.dir=..."
            )
        run = cls(path)
        run._made = not path.exists()
        return run

    def remove_if_unstarted(self) -> bool:
        """Undo a new run that never reached its first checkpoint (training failed or was
        stopped before it): everything in its folder was written by that attempt
        (:meth:`create` accepts only a missing or empty folder), and leaving it would make
        the same command refuse the folder while ``--resume`` has nothing to resume. The
        folder goes too if :meth:`create` found none.
        Returns whether anything was removed; a run with a checkpoint is never touched."""
        if not self.path.is_dir() or self.file(self.STATE).exists():
            return False
        if self._made:
            shutil.rmtree(self.path)
        else:  # the user's empty folder: empty it again
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        return True

    @contextlib.contextmanager
    def failing(self, *, new: bool) -> Iterator[None]:
        """Around a command that writes this run. If it fails, a ``new`` run that never
        reached its first checkpoint is undone (:meth:`remove_if_unstarted`), and a
        :class:`FileAccessError` (a full disk …) adds what was kept (:meth:`kept`)."""
        try:
            yield
        except BaseException as exc:
            if new:
                self.remove_if_unstarted()
            if isinstance(exc, FileAccessError):
                raise FileAccessError(f"{exc}; {self.kept()}") from exc
            raise

    def kept(self) -> str:
        """What of this run is on disk, for an error line."""
        step = self.checkpoint_step()
        if step is None:
            return "no checkpoint had been written, so there is nothing to resume"
        return f"the checkpoint of step {step} is intact (`tok train --resume {self.path}`)"

    def checkpoint_step(self) -> int | None:
        """The step ``state.safetensors`` holds (where a resume continues), or ``None``."""
        try:
            with safe_open(str(self.file(self.STATE)), "pt") as f:
                return int(json.loads((f.metadata() or {})["state"])["step"])
        except Exception:  # noqa: BLE001 - missing or unreadable: no checkpoint to speak of
            return None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        """The existing run in ``path``; a folder without ``recipe.toml`` is refused."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a run folder: no such folder")
        if not (path / cls.RECIPE).is_file():
            raise CheckpointError(f"{path} is not a run folder: {cls.RECIPE} is missing")
        return cls(path)

    @classmethod
    def latest(cls, root: str | os.PathLike[str] = "runs", *, media: str) -> Run | None:
        """The complete run under ``root`` with the newest tokenizer for ``media``
        (``"image"`` or ``"video"``), or ``None``: what ``tok encode`` uses when no
        ``--tokenizer`` is given."""
        root = Path(root)
        found = []
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            run = cls(folder)
            if run.media() == media and run.is_complete():
                found.append((run.file(cls.WEIGHTS).stat().st_mtime_ns, str(folder), run))
        return max(found)[2] if found else None

    def media(self) -> str | None:
        """``"image"`` or ``"video"``: what the run's tokenizer takes (``None``: no tokenizer)."""
        try:
            shape = json.loads(self.file(self.TOKENIZER).read_text())["input_shape"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not self.file(self.WEIGHTS).is_file():
            return None
        return {3: "image", 4: "video"}.get(len(shape))

    def is_complete(self) -> bool:
        """Whether training reached the recipe's ``train.steps`` (from ``state.json``)."""
        import tomllib

        try:
            steps = tomllib.loads(self.file(self.RECIPE).read_text())["train"]["steps"]
            step = json.loads(self.file(self.STATE_JSON).read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return isinstance(step, int) and isinstance(steps, int) and step >= steps

    # the recipe -----------------------------------------------------------------

    def write_recipe(self, recipe: Recipe) -> None:
        """Write the resolved recipe (``recipe.toml``), headed by how to resume."""
        header = f"# resolved recipe of {self.path}\n# resume: tok train --resume {self.path}"
        write_text(self.file(self.RECIPE), dumps_toml(recipe.to_dict(), header=header))

    def recipe(self, overrides: list[str] | None = None) -> Recipe:
        """The run's resolved recipe, with ``overrides`` (``table.key=value``) applied.

        A component whose plugin is no longer installed is named with the
        distribution that provided it (from ``tokenizer.json``).
        """
        import tomllib

        path = self.file(self.RECIPE)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        data = apply_overrides(data, overrides or [])
        data.setdefault("output", {})["dir"] = str(self.path)
        try:
            return parse_recipe(data, name=self.path.name, source=str(path))
        except RecipeError:
            self._explain_missing_plugins(data)
            raise

    def _explain_missing_plugins(self, data: dict[str, Any]) -> None:
        try:
            recorded = json.loads(self.file(self.TOKENIZER).read_text()).get("plugins") or {}
        except (OSError, ValueError, AttributeError):
            return
        for table, role, kind in (
            ("model", "architecture", "architectures"),
            ("quantizer", "quantizer", "quantizers"),
            ("bottleneck", "bottleneck", "bottlenecks"),
        ):
            name = (data.get(table) or {}).get("name")
            message = missing_plugin(kind, name, recorded.get(role)) if name else None
            if message:
                raise CheckpointError(f"cannot use the run {self.path}: {message}")

    def dataset(self, recipe: Recipe | None = None) -> Dataset:
        """The dataset the run was trained on (its recipe's ``[data]``)."""
        recipe = recipe or self.recipe()
        return build("datasets", recipe.data.name, recipe.data.options)

    # the tokenizer ----------------------------------------------------------------

    def tokenizer(self, device: torch.device | str = "cpu") -> Tokenizer:
        """The run's trained tokenizer, in eval mode on ``device``."""
        return Tokenizer.load(self.path, map_location=device)

    # the metrics log ---------------------------------------------------------------

    def log_rows(self, upto: float = math.inf) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` up to step ``upto`` (a line cut short by a kill is skipped)."""
        path = self.file(self.METRICS)
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= upto:
                rows.append(row)
        return rows

    def truncate_log(self, step: int) -> None:
        """Drop the rows after ``step`` (a resume continues from the checkpoint's step)."""
        rows = self.log_rows(step)
        write_text(self.file(self.METRICS), "".join(json.dumps(r) + "\n" for r in rows))

    def open_log(self) -> MetricsLog:
        """``metrics.jsonl`` open for appending rows (a context manager)."""
        return MetricsLog(self.file(self.METRICS))

    # checkpoints ----------------------------------------------------------------------

    def save_checkpoint(
        self,
        step: int,
        parts: Checkpoint,
        *,
        elapsed: float,
        rngs: dict[str, list[torch.Tensor]] | None = None,
    ) -> None:
        """Write ``state.safetensors`` (:func:`tok.checkpoint.save_state`; ``rngs``: every
        rank's random states under torchrun), ``state.json``, then the tokenizer, atomically:
        with a moving average of the weights (``parts.ema``), the average into the run
        folder and the trained weights into ``raw/``."""
        save_state(self.file(self.STATE), step, parts, elapsed=elapsed, rngs=rngs)
        write_json(self.file(self.STATE_JSON), {"step": step, "elapsed_seconds": round(elapsed, 2)})
        if parts.ema is not None:
            parts.tokenizer.save(self.file(self.RAW))
            parts.ema.model.save(self.path)
        else:
            parts.tokenizer.save(self.path)

    def load_checkpoint(self, parts: Checkpoint) -> tuple[int, float]:
        """Restore ``parts`` in place from ``state.safetensors`` (:func:`tok.checkpoint.load_state`);
        return ``(step, elapsed)``."""
        path = self.file(self.STATE)
        if not path.is_file():
            raise CheckpointError(
                f"cannot resume {self.path}: no {self.STATE} (the run never reached its first checkpoint)"
            )
        check_readable(path)  # the OS's cause, not safetensors' "no such file"
        recorded = recorded_config(self.file(self.WEIGHTS))
        differ = recorded and config_differences(
            parts.tokenizer.model_config(), recorded, self.RECIPE
        )
        if differ:  # recipe.toml edited by hand: the resume check compares it with itself
            raise CheckpointError(f"cannot resume {self.path}: {differ}")
        return load_state(path, parts, run=self.path)

    # pictures ------------------------------------------------------------------------

    def save_samples(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> list[Path]:
        """Originals above their reconstructions (:func:`tok.media.save_comparison`):
        ``recon.png`` for images, ``recon.gif`` + ``recon_frames.png`` for videos."""
        return media.save_comparison(self.path, originals, reconstructions)

    def save_usage(self, counts: CodeCounts, step: int) -> None:
        """``usage.png``: the codebook-usage histogram of an evaluation (its ``counts``)."""
        plots.save_usage_histogram(
            self.file(self.USAGE_PNG), counts, title=f"codebook usage at step {step}"
        )

    def save_kl(self, kl_dims: list[float], threshold: float, step: int) -> None:
        """``kl.png``: a continuous tokenizer's KL per latent dimension at an evaluation,
        with the active-dimension threshold."""
        plots.save_kl_bars(
            self.file(self.KL_PNG), kl_dims, threshold=threshold,
            title=f"KL per latent dimension at step {step}",
        )  # fmt: skip

    def save_curves(self) -> None:
        """``loss.png``: training loss and test MSE over the steps of the log."""
        rows = self.log_rows()
        train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
        test = [(r["step"], r["mse"]) for r in rows if r.get("split") == "test"]
        curves = {"train loss": train, "test mse": test}
        plots.save_line_plot(
            self.file(self.LOSS_PNG), curves, title="loss", ylabel="loss", logy=True
        )

    # evaluation -------------------------------------------------------------------------

    def evaluate(
        self,
        *,
        split: str = "test",
        samples: int = 0,
        device: torch.device | str = "cpu",
        recipe: Recipe | None = None,
        quality: ImageQuality | None = None,
    ) -> dict[str, Any]:
        """:func:`evaluate` the run's tokenizer on ``split`` of its dataset (the first
        ``samples`` items; 0: all), with the ``quality`` metrics if given. Adds ``split``
        and ``protocol``: the split, the number of items, their shape ``[c, h, w]`` (or
        ``[c, t, h, w]``), the dataset's ``[data]`` table (its crop/resize options are the
        evaluation's) and, with ``quality``, what each metric measured with which network
        (:meth:`tok.image_metrics.ImageQuality.protocol`)."""
        if samples < 0:
            raise TokError(f"--samples must be 0 (all) or a positive number, got {samples}")
        recipe = recipe or self.recipe()
        tokenizer = self.tokenizer(device)
        dataset = self.dataset(recipe)
        keys = dataset.keys(split)[:samples] if samples else None
        data = dataset.read(split, keys) if keys else dataset.load(split)
        extra = (
            {"likelihood": likelihood_of(recipe), "active_threshold": recipe.train.active_threshold}
            if tokenizer.continuous
            else {}
        )
        result = evaluate(tokenizer, data, device=device, quality=quality, **extra)
        protocol = {
            "split": split,
            "items": len(data),
            "shape": list(data.images.shape[1:]),
            "data": resolved_options("datasets", recipe.data.name, recipe.data.options),
            "psnr": "10 log10(1 / MSE) per item, reconstructions clamped to [0, 1]; mean",
            **result.pop("protocol", {}),
        }
        return {**result, "split": split, "protocol": protocol}


MetricsLog = JsonLines  # metrics.jsonl: one row per logged step and per evaluation


class _NoLog:
    """The log of a process that writes no files (ranks other than 0): rows go nowhere."""

    def __enter__(self) -> _NoLog:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write(self, row: dict[str, Any]) -> None:
        pass


NO_LOG = _NoLog()
