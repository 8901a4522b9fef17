"""Recipes: TOML files that describe a training run, read into frozen dataclasses.

A recipe has one table per component::

    # tok train recipes/fsq_mnist.toml
    [data]
    name = "mnist"            # a registered dataset; other keys are its options
    [model]
    name = "conv"             # a registered architecture; other keys are its options
    channels = [32, 64, 128]
    [quantizer]
    name = "fsq"              # a registered quantizer; other keys are its options
    levels = [8, 5, 5, 5]
    # or, for a continuous tokenizer (a VAE), instead of [quantizer]:
    # [bottleneck]
    # name = "gaussian"       # a registered continuous bottleneck
    [losses.lpips]            # optional: further registered losses, each with its options
    weight = 0.5
    [train]
    steps = 3000              # see TrainConfig
    [output]
    dir = "runs/fsq_mnist"    # see OutputConfig

Components are named by registry name, never by import path. Unknown keys and
wrong types are errors, and every problem in a recipe is reported at once.
Options tok fills in from the data (``in_channels``, the quantizer's ``dim``…,
see :mod:`tok.components`) may be left out. ``--set train.steps=200``
overrides a value (parsed as a TOML value; ``--set losses.adversarial.weight=0.2``
reaches into a nested table). :func:`dumps_toml` writes a recipe back with
``tomli_w``, so any string (newlines included) survives.

Why this module is longer than 500 lines: it is the recipe's whole schema — the
tables and their fields with their documentation, the bounds of each number, the keys
a resume may change — with the TOML reading and writing; split, a reader checking
what a key may hold would look in two places.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import tomli_w

from .components import problems as component_problems
from .errors import CheckpointError, RecipeError, TokError
from .helpers import differing_keys
from .registry import registry
from .signatures import check_value, describe_type

__all__ = [
    "Component",
    "TrainConfig",
    "OutputConfig",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "RecipeInfo",
    "list_recipes",
    "apply_overrides",
    "dumps_toml",
    "RESUMABLE_KEYS",
    "resume_conflicts",
    "check_resume",
]

TABLES = ("data", "model", "quantizer", "bottleneck", "losses", "train", "output")
_COMPONENT_KINDS = {
    "data": "datasets",
    "model": "architectures",
    "quantizer": "quantizers",
    "bottleneck": "bottlenecks",
}


@dataclass(frozen=True)
class Component:
    """A registered component and its options: ``name`` plus keyword arguments."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table."""

    steps: int = 2000
    """Optimizer steps in total (a resumed run continues up to this number)."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 2e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """AdamW betas."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to ``lr``."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """After warm-up: cosine decay to ``min_lr`` at ``steps``, or constant."""
    min_lr: float = 0.0
    """Learning rate at the end of a cosine schedule."""
    loss: str = "mse"
    """The reconstruction loss: a registered loss (``mse``, ``l1``, …) with weight 1; the
    ``[losses.NAME]`` tables and the quantizer's ``aux_loss`` are added to it."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 turns clipping off)."""
    seed: int = 0
    """Seeds the weights, the batch order and everything random."""
    device: str = "auto"
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` … or ``"auto"`` (CUDA when available)."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """``"bf16"`` runs encoder and decoder under bf16 autocast (quantizers stay float32);
    ``"auto"`` picks bf16 where the hardware does bf16 matrix work natively (CUDA with
    bf16 support, or a CPU with AMX), else fp32. Evaluation and encoding run in fp32."""
    threads: int = 0
    """CPU threads for torch (0 leaves torch's default)."""
    loader: Literal["auto", "preload", "stream"] = "auto"
    """How training reads the data: ``"preload"`` the whole split into memory once,
    ``"stream"`` each step's items from their files through ``workers`` DataLoader
    processes (memory bounded whatever the dataset's size), ``"auto"`` preloads the
    datasets that say they fit (MNIST, Moving MNIST) and streams the others
    (:mod:`tok.data.batches`)."""
    sampling: Literal["replacement", "epochs"] = "replacement"
    """How the preloaded loader draws each batch: ``"replacement"``, uniformly at random
    with replacement (from the run's batch generator); ``"epochs"``, each training item
    once per epoch in a fresh random order, as a shuffling ``DataLoader`` does (the
    streamed loader always works by epochs)."""
    workers: int = 2
    """DataLoader worker processes that decode streamed items (0: in the training process)."""
    random_crop: list[int] | None = None
    """``[height, width]``: train on a crop of each image at a random place (the test
    images are centre-cropped to it); the tokenizer's input size is the crop's."""
    hflip: bool = False
    """Mirror each training image left–right with probability ½."""
    log_every: int = 50
    """Write a line to ``metrics.jsonl`` every N steps."""
    eval_every: int = 500
    """Evaluate on the test split (``eval_samples`` images) every N steps and at the end."""
    eval_samples: int = 2000
    """How many test images the evaluations during training use."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N steps and at the end."""
    collapse_threshold: float = 0.1
    """Warn when a stream's codebook usage on the evaluation images falls below this fraction."""
    active_threshold: float = 0.01
    """Continuous tokenizers: a latent dimension whose KL over the evaluation images is
    below this many nats is inactive (posterior collapse); training warns naming them."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the tokenizer's weights with this decay
    (0: none; :mod:`tok.ema`); evaluation, ``model.safetensors`` and encoding then use
    the average, and ``raw/`` holds the trained weights."""


@dataclass(frozen=True)
class OutputConfig:
    """The ``[output]`` table."""

    dir: str = "runs/{name}"
    """The run folder; ``{name}`` is the recipe file's stem. Must not exist unless resuming."""
    samples: int = 32
    """Test images shown in the reconstruction grid."""


@dataclass(frozen=True)
class Recipe:
    """A whole recipe; ``source`` is the file it came from (if any). It has a
    ``quantizer`` (a discrete tokenizer) or a ``bottleneck`` (a continuous one), never
    both: :attr:`role` says which."""

    data: Component
    model: Component
    quantizer: Component | None
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    losses: tuple[Component, ...] = ()
    """Further training losses (``[losses.NAME]`` tables), added to ``train.loss``."""
    name: str = "run"
    source: str | None = None
    bottleneck: Component | None = None
    """A continuous bottleneck (``[bottleneck]``), in place of ``quantizer``."""

    @property
    def role(self) -> str:
        """``"quantizer"`` or ``"bottleneck"``: the table that names the bottleneck."""
        return "bottleneck" if self.bottleneck is not None else "quantizer"

    @property
    def latent(self) -> Component:
        """The ``[quantizer]`` or ``[bottleneck]`` component, whichever the recipe has."""
        return self.bottleneck if self.bottleneck is not None else self.quantizer

    def to_dict(self) -> dict[str, Any]:
        """The recipe as nested plain dicts (what ``recipe.toml`` in a run folder holds)."""
        data = {
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            self.role: self.latent.to_dict(),
            "train": dataclasses.asdict(self.train),
            "output": dataclasses.asdict(self.output),
        }
        if self.losses:
            data["losses"] = {loss.name: dict(loss.options) for loss in self.losses}
        return data

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir.replace("{name}", self.name))


def _at_least(low: float) -> tuple[str, Any]:
    return f"a number ≥ {low}", lambda v: v >= low  # NaN compares False: refused too


#: the values the numbers of ``[train]`` and ``[output]`` may take (beyond their types), so
#: that a recipe fails at once in one line instead of a traceback many steps later
_BOUNDS: dict[str, dict[str, tuple[str, Any]]] = {
    "train": {
        "steps": _at_least(1),
        "batch_size": _at_least(1),
        # torch's optimizers compute lr / (1 - beta1^t) and 1 - lr * weight_decay as float32
        "lr": ("a number in (0, 1e30]", lambda v: 0 < v <= 1e30),
        "weight_decay": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
        "betas": ("two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
        "warmup_steps": _at_least(0),
        "min_lr": ("a number in [0, 1e30]", lambda v: 0 <= v <= 1e30),
        "grad_clip": _at_least(0),
        "threads": _at_least(0),
        "workers": _at_least(0),
        "random_crop": (
            "[height, width], both at least 1",
            lambda v: v is None or (len(v) == 2 and min(v) >= 1),
        ),
        "log_every": _at_least(1),
        "eval_every": _at_least(1),
        "eval_samples": _at_least(1),
        "checkpoint_every": _at_least(1),
        "collapse_threshold": ("a fraction in [0, 1]", lambda v: 0 <= v <= 1),
        "active_threshold": _at_least(0),
        "ema_decay": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    },
    "output": {"samples": _at_least(1)},
}


def _check_table(cls: type, table: dict[str, Any], where: str) -> list[str]:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    problems = []
    for key, value in table.items():
        if key not in names:
            problems.append(f"[{where}]: unknown key {key!r} (valid keys: {', '.join(names)})")
        elif not check_value(value, hints[key]):
            problems.append(
                f"[{where}] {key}: expected {describe_type(hints[key])}, got {type(value).__name__} {value!r}"
            )
        elif key in _BOUNDS.get(where, {}) and not _BOUNDS[where][key][1](value):
            problems.append(f"[{where}] {key}: must be {_BOUNDS[where][key][0]}, got {value!r}")
    return problems


def _check_component(table_name: str, table: Any) -> tuple[Component | None, list[str]]:
    if not isinstance(table, dict):
        return None, [f"[{table_name}] must be a table"]
    options = dict(table)
    name = options.pop("name", None)
    if not isinstance(name, str):
        kind = _COMPONENT_KINDS[table_name]
        known = ", ".join(registry(kind).names()) or "none"
        return None, [f'[{table_name}]: missing name = "..." (registered: {known})']
    kind = _COMPONENT_KINDS[table_name]
    try:
        found = component_problems(kind, name, options, where=f"[{table_name}] {name}")
    except TokError as exc:
        return None, [f"[{table_name}] name: {exc}"]
    return Component(name=name, options=options), found


def _check_losses(table: Any, recon_loss: Any) -> tuple[tuple[Component, ...], list[str]]:
    """The ``[losses.NAME]`` tables, and ``train.loss``'s name checked against the registry."""
    problems = []
    if isinstance(recon_loss, str) and recon_loss not in registry("losses"):
        try:
            registry("losses").get(recon_loss)
        except TokError as exc:
            problems.append(f"[train] loss: {exc}")
    if not isinstance(table, dict):
        return (), problems + ["[losses] must hold one table per loss, e.g. [losses.lpips]"]
    losses = []
    for name, options in table.items():
        if not isinstance(options, dict):
            problems.append(f"[losses] {name}: must be a table ([losses.{name}])")
            continue
        if name == recon_loss:
            problems.append(
                f"[losses.{name}]: {name!r} is already the reconstruction loss (train.loss); "
                f"name it once"
            )
            continue
        try:
            problems += component_problems("losses", name, options, where=f"[losses.{name}]")
        except TokError as exc:
            problems.append(f"[losses.{name}]: {exc}")
            continue
        losses.append(Component(name=name, options=dict(options)))
    return tuple(losses), problems


def parse_recipe(data: dict[str, Any], *, name: str = "run", source: str | None = None) -> Recipe:
    """Validate a recipe given as nested dicts; raises :class:`RecipeError` listing every problem."""
    problems: list[str] = []
    for key in data:
        if key not in TABLES:
            problems.append(f"unknown table [{key}] (valid tables: {', '.join(TABLES)})")
    parts: dict[str, Any] = {}
    if "quantizer" in data and "bottleneck" in data:
        problems.append("[quantizer] and [bottleneck]: a recipe names one of the two")
    latent = "bottleneck" if "bottleneck" in data and "quantizer" not in data else "quantizer"
    parts["quantizer"] = None
    for table_name in ("data", "model", latent):
        if table_name not in data:
            extra = " (or [bottleneck] for a continuous tokenizer)" * (table_name == "quantizer")
            problems.append(f"missing table [{table_name}]{extra}")
            continue
        parts[table_name], found = _check_component(table_name, data[table_name])
        problems += found
    for table_name, cls in (("train", TrainConfig), ("output", OutputConfig)):
        table = data.get(table_name, {})
        if not isinstance(table, dict):
            problems.append(f"[{table_name}] must be a table")
            continue
        found = _check_table(cls, table, table_name)
        problems += found
        if not found:
            parts[table_name] = cls(**table)
    recon_loss = parts["train"].loss if "train" in parts else TrainConfig.loss
    parts["losses"], found = _check_losses(data.get("losses", {}), recon_loss)
    problems += found
    if problems:
        raise RecipeError(problems, source=source)
    return Recipe(name=name, source=source, **parts)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``table.key=value`` overrides (values parsed as TOML, else kept as strings);
    a longer path reaches into nested tables: ``losses.adversarial.start_step=500``."""
    data = copy.deepcopy(data)
    problems = []
    for item in overrides:
        path, sep, raw = item.partition("=")
        parts = [p.strip() for p in path.strip().split(".")]
        if not sep or len(parts) < 2 or not all(parts):
            problems.append(f"--set {item!r}: expected table.key=value, e.g. train.steps=200")
            continue
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        target = data
        for depth, name in enumerate(parts[:-1]):
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                problems.append(f"--set {item!r}: [{'.'.join(parts[: depth + 1])}] is not a table")
                break
        else:
            target[parts[-1]] = value
    if problems:
        raise RecipeError(problems)
    return data


#: Recipe keys a resumed run may change (``tok train --resume RUN --set KEY=VALUE``): the
#: schedule and the optimizer's hyperparameters, how often things happen, where and how
#: fast it runs, what it shows. Everything else — the data (but its ``root``), the model,
#: the quantizer, the ``[losses.*]`` tables, ``train.loss`` and ``train.seed`` — is fixed
#: when the run starts: the checkpoint holds weights and state shaped by them.
RESUMABLE_KEYS = (
    "data.root",
    "train.steps",
    "train.batch_size",
    "train.lr",
    "train.min_lr",
    "train.warmup_steps",
    "train.schedule",
    "train.weight_decay",
    "train.betas",
    "train.grad_clip",
    "train.device",
    "train.precision",
    "train.threads",
    "train.loader",
    "train.workers",
    "train.log_every",
    "train.eval_every",
    "train.eval_samples",
    "train.checkpoint_every",
    "train.collapse_threshold",
    "train.active_threshold",
    "train.sampling",
    "output.dir",
    "output.samples",
)


def resume_conflicts(run_recipe: Recipe, recipe: Recipe) -> list[str]:
    """What ``recipe`` changes, compared with ``run_recipe`` (a run's ``recipe.toml``),
    that a resume cannot: one ``"KEY (VALUE here, VALUE in the run)"`` per key outside
    :data:`RESUMABLE_KEYS` whose value differs (``absent`` where one side lacks it)."""
    return [
        f"{key} ({here!r} here, {there!r} in the run)"
        for key, there, here in differing_keys(run_recipe.to_dict(), recipe.to_dict())
        if key not in RESUMABLE_KEYS
    ]


def check_resume(run_recipe: Recipe, recipe: Recipe, *, run: str | Path) -> None:
    """Raise :class:`CheckpointError` (one line) when ``recipe`` changes what a resume of
    the run in ``run`` (whose ``recipe.toml`` is ``run_recipe``) cannot change, naming
    each key with both values and the keys that may change."""
    conflicts = resume_conflicts(run_recipe, recipe)
    if conflicts:
        raise CheckpointError(
            f"cannot resume {run}: {'; '.join(conflicts)} — these cannot change on resume "
            f"(only {', '.join(RESUMABLE_KEYS)} can); the run is untouched"
        )


@dataclass(frozen=True)
class RecipeInfo:
    """A recipe shipped with tok: its ``name`` (``tok train NAME``), its one-line
    ``purpose`` (the recipe's second line) and its ``path``."""

    name: str
    purpose: str
    path: Path


def list_recipes(pattern: str = "*") -> list[RecipeInfo]:
    """The recipes shipped inside the ``tok`` package (``tok.recipes``) whose names match the
    glob ``pattern``, sorted by name."""
    import fnmatch
    from importlib import resources

    found = []
    for entry in resources.files("tok.recipes").iterdir():
        name = entry.name
        if not name.endswith(".toml") or not fnmatch.fnmatchcase(name[:-5], pattern):
            continue
        lines = entry.read_text().splitlines()
        purpose = lines[1].lstrip("#").strip() if len(lines) > 1 else ""
        found.append(RecipeInfo(name=name[:-5], purpose=purpose, path=Path(str(entry))))
    return sorted(found, key=lambda r: r.name)


def _resolve(path_or_name: str | Path) -> Path:
    """A recipe file: ``path_or_name`` itself when it exists, else the shipped recipe of
    that name (``fsq_mnist`` or ``fsq_mnist.toml``)."""
    path = Path(path_or_name)
    if path.exists() or path.parent != Path("."):
        return path
    name = path.name[:-5] if path.name.endswith(".toml") else path.name
    shipped = {r.name: r.path for r in list_recipes()}
    if name in shipped:
        return shipped[name]
    raise RecipeError(
        [
            f"no recipe file {str(path_or_name)!r} and no shipped recipe of that name "
            f"(shipped: {', '.join(shipped) or 'none'}; `tok recipes` lists them)"
        ]
    )


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe: a file, or the name of a shipped one
    (``fsq_mnist``, see :func:`list_recipes`)."""
    path = _resolve(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError([f"cannot read recipe {path}: {exc.strerror or exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"not valid TOML: {exc}"], source=str(path)) from exc
    data = apply_overrides(data, overrides or [])
    return parse_recipe(data, name=path.stem, source=str(path))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return value


def dumps_toml(data: dict[str, Any], *, header: str = "") -> str:
    """Write nested ``{table: {key: value}}`` dicts as TOML with ``tomli_w`` (``None`` values
    are left out: TOML has no null); ``header`` lines (comments) go first.

    Whatever :func:`tomllib.loads` reads back equals ``data``: strings with
    newlines, quotes or backslashes included.
    """
    text = tomli_w.dumps(_without_none(data))
    return (header.rstrip() + "\n\n" if header else "") + text
