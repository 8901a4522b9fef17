"""``state.safetensors``: everything a resumed training run needs, without pickle.

The file holds tensors — ``model.*`` (the tokenizer's state dict), ``optim.*``
(AdamW's moments, :func:`tok._io.optimizer_tensors`), ``loss/NAME/…`` (each
loss's own weights and optimizers), ``ema.*`` (the moving average of the weights,
when the recipe keeps one), ``rng.torch`` (rank 0's CPU generator; under
torchrun ``rng.torch.R`` for each other rank R), ``rng.batches`` (the generator
that draws the global batches, alike on every rank) and ``rng.cuda`` — and in its
metadata the format (:data:`STATE_FORMAT`) and a JSON object with the step, the
elapsed seconds, the number of processes that trained it (``world_size``) and the
optimizers' settings.

:meth:`tok.run.Run.save_checkpoint` and :meth:`~tok.run.Run.load_checkpoint`
wrap :func:`save_state` and :func:`load_state` with the run's other files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ._io import (
    load_optimizer,
    nonfinite_tensors,
    optimizer_tensors,
    write_safetensors,
)
from .errors import CheckpointError
from .helpers import rank, world_size
from .models import Tokenizer

__all__ = [
    "Checkpoint",
    "STATE_FORMAT",
    "READABLE_STATES",
    "save_state",
    "load_state",
    "rng_states",
]

STATE_FORMAT = "tok.state/2"
#: checkpoint formats a resume reads: 1 has no loss state, otherwise the same
READABLE_STATES = ("tok.state/1", STATE_FORMAT)


@dataclass
class Checkpoint:
    """What a checkpoint holds, as live objects: restored in place by :func:`load_state`.

    ``tokenizer`` and ``optimizer`` are the model and its AdamW; ``losses`` the
    recipe's loss modules by name (their own optimizers come from
    ``Loss.optimizers()``); ``generator`` draws the batches; ``ema`` the moving average
    of the tokenizer's weights (:class:`tok.ema.EMA`) when the recipe keeps one.
    """

    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    losses: dict[str, nn.Module]
    generator: torch.Generator
    ema: nn.Module | None = None


def rng_states() -> dict[str, torch.Tensor]:
    """This process's random states: ``torch`` (the CPU generator) and, once CUDA is in
    use, ``cuda`` (the current GPU's)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _short(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{' …' if len(names) > 3 else ''}"


def save_state(
    path: Path,
    step: int,
    parts: Checkpoint,
    *,
    elapsed: float,
    rngs: dict[str, list[torch.Tensor]] | None = None,
) -> None:
    """Write ``path`` atomically. ``rngs``: every rank's :func:`rng_states`, each in rank
    order (:func:`tok.distributed.gather`); default: this process's.

    :raises CheckpointError: non-finite values anywhere (the file on disk is kept).
    """
    tensors = {
        f"model.{k}": v.detach().contiguous().cpu() for k, v in parts.tokenizer.state_dict().items()
    }
    if parts.ema is not None:
        tensors.update(
            {f"ema.{k}": v.detach().contiguous().cpu() for k, v in parts.ema.state_dict().items()}
        )
    opt_tensors, groups = optimizer_tensors("optim", parts.optimizer)
    tensors.update(opt_tensors)
    loss_groups: dict[str, dict[str, list]] = {}
    for name, loss in parts.losses.items():
        for k, v in loss.state_dict().items():
            tensors[f"loss/{name}/model.{k}"] = v.detach().contiguous().cpu()
        for opt_name, opt in loss.optimizers().items():
            more, loss_groups.setdefault(name, {})[opt_name] = optimizer_tensors(
                f"loss/{name}/optim/{opt_name}", opt
            )
            tensors.update(more)
    bad = nonfinite_tensors(tensors)
    if bad:  # never replace a sound checkpoint with a diverged one
        raise CheckpointError(
            f"refusing to write a checkpoint of {path.parent} at step {step}: non-finite "
            f"values in {_short(bad)}; the last checkpoint on disk is kept"
        )
    rngs = rngs or {name: [state] for name, state in rng_states().items()}
    for name, states in rngs.items():  # rank 0's as rng.NAME, as before torchrun
        tensors.update({f"rng.{name}" + (f".{r}" if r else ""): s for r, s in enumerate(states)})
    tensors["rng.batches"] = parts.generator.get_state()
    scalars = {
        "step": step,
        "elapsed": elapsed,
        "world_size": len(rngs["torch"]),
        "param_groups": groups,
        "loss_param_groups": loss_groups,
    }
    metadata = {"format": STATE_FORMAT, "state": json.dumps(scalars)}
    write_safetensors(path, tensors, metadata=metadata)


def load_state(path: Path, parts: Checkpoint, *, run: Path) -> tuple[int, float]:
    """Restore ``parts`` in place from ``path`` (the state file of the run folder ``run``,
    named in errors); return ``(step, elapsed seconds)``. Under torchrun each rank takes
    its own RNG state.

    :raises CheckpointError: an unreadable or damaged file, an unknown format, state that
        does not fit ``parts``, or another number of processes than the run trained with.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        scalars = json.loads(meta["state"])
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    found = meta.get("format", "tok.state/1")
    if found not in READABLE_STATES:
        raise CheckpointError(
            f"{path} was written in checkpoint format {found!r}; this version of tok "
            f"resumes {', '.join(READABLE_STATES)}"
        )
    trained_by = int(scalars.get("world_size", 1))
    if trained_by != world_size():
        how = "alone" if trained_by == 1 else f"with torchrun --nproc-per-node={trained_by} …"
        raise CheckpointError(
            f"cannot resume {run} with {world_size()} process(es): it was trained by "
            f"{trained_by}, and its checkpoint holds that many RNG states; resume it {how}"
        )
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"cannot resume {run}: its checkpoint {path.name} is damaged, with "
            f"non-finite values in {_short(bad)}"
        )
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        parts.tokenizer.load_state_dict(model)
    except RuntimeError as exc:  # shapes that do not fit: the recipe check missed a change
        detail = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"cannot resume {run}: its checkpoint does not fit the recipe's tokenizer ({detail})"
        ) from exc
    if parts.ema is not None:
        ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not ema:
            raise CheckpointError(
                f"cannot resume {run} with train.ema_decay: its checkpoint holds no moving "
                f"average of the weights (it was trained without one)"
            )
        parts.ema.load_state_dict(ema)
    load_optimizer(parts.optimizer, tensors, "optim", scalars["param_groups"], run=run)
    loss_groups = scalars.get("loss_param_groups", {})
    for name, loss in parts.losses.items():
        prefix = f"loss/{name}/model."
        loss.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        for opt_name, opt in loss.optimizers().items():
            groups = loss_groups.get(name, {}).get(opt_name)
            if groups is None:
                raise CheckpointError(
                    f"cannot resume {run}: its checkpoint has no state for the "
                    f"optimizer {opt_name!r} of loss {name!r}"
                )
            load_optimizer(opt, tensors, f"loss/{name}/optim/{opt_name}", groups, run=run)
    mine = "" if rank() == 0 else f".{rank()}"
    torch.set_rng_state(tensors[f"rng.torch{mine}"])
    if f"rng.cuda{mine}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda{mine}"])
    parts.generator.set_state(tensors["rng.batches"])
    return int(scalars["step"]), float(scalars.get("elapsed", 0.0))
