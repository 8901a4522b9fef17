"""Building registered components, with the settings tok supplies from the data.

A component — a quantizer, an architecture, a dataset, a loss — is a class
registered under a name and built from keyword options (a recipe table, a
``config()``). Some options are facts about the data rather than choices: a
conv net's ``in_channels`` is the images' channels, a quantizer's ``dim`` is
the architecture's ``latent_dim``. A class names those constructor arguments
in its ``supplied_args`` class attribute, and tok fills them in, when the
options leave them out, from the :class:`Facts` it knows at that point.

The names and their meaning are fixed here, once (:data:`SUPPLIED`):

============  ==========================================================
name          value
============  ==========================================================
in_channels   ``c`` of the input shape ``(c, h, w)`` / ``(c, t, h, w)``
channels      the same (what datasets call it)
image_size    ``[h, w]`` of the input shape
size          the same (what datasets call it)
frames        ``t`` of a video input shape (images: not supplied)
dim           the architecture's ``latent_dim`` (quantizers, bottlenecks)
steps         the run's ``train.steps`` (a KL schedule's length)
============  ==========================================================

:func:`fill` is the one place where that happens. Recipe validation calls it
before any data is read (the names it would fill are then *pending*, not
missing); :meth:`tok.models.Tokenizer.from_config` calls it with the input
shape and the architecture's ``latent_dim``; ``tok encode`` calls it to open
a source for a tokenizer's input shape. Names a class declares but its
constructor does not take are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .registry import registry
from .signatures import check_kwargs, parameters

__all__ = ["Facts", "Filled", "SUPPLIED", "fill", "build", "problems", "create_quantizer"]


@dataclass(frozen=True)
class Facts:
    """What tok knows when it builds a component; ``None`` where it does not know yet.

    ``input_shape`` is ``(c, h, w)`` for images, ``(c, t, h, w)`` for videos;
    ``latent_dim`` is the architecture's latent channels; ``steps`` the run's training
    steps.
    """

    input_shape: tuple[int, ...] | None = None
    latent_dim: int | None = None
    steps: int | None = None


def _video_frames(facts: Facts) -> int | None:
    shape = facts.input_shape
    return None if shape is None or len(shape) != 4 else int(shape[1])


def _channels(facts: Facts) -> int | None:
    return None if facts.input_shape is None else int(facts.input_shape[0])


def _size(facts: Facts) -> list[int] | None:
    return None if facts.input_shape is None else [int(s) for s in facts.input_shape[-2:]]


#: supplied argument name -> how its value follows from the :class:`Facts` (``None``: unknown)
SUPPLIED: dict[str, Callable[[Facts], Any]] = {
    "in_channels": _channels,
    "channels": _channels,
    "image_size": _size,
    "size": _size,
    "frames": _video_frames,
    "dim": lambda facts: facts.latent_dim,
    "steps": lambda facts: facts.steps,
}


@dataclass(frozen=True)
class Filled:
    """The result of :func:`fill`: ``options`` with the supplied values added, and
    ``pending``, the supplied names whose value the facts do not know yet."""

    options: dict[str, Any]
    pending: tuple[str, ...] = ()


def fill(cls: type, options: Mapping[str, Any], facts: Facts = Facts()) -> Filled:
    """Add to ``options`` the arguments ``cls`` lets tok supply (``cls.supplied_args``)
    that ``options`` leaves out, computed from ``facts``.

    Options given explicitly always win. A declared name that is not in
    :data:`SUPPLIED` raises :class:`ConfigError` (a plugin bug, named).
    """
    accepted = parameters(cls)
    filled = dict(options)
    pending = []
    for name in getattr(cls, "supplied_args", ()):
        if name not in SUPPLIED:
            raise ConfigError(
                f"{cls.__qualname__}.supplied_args names {name!r}, which tok does not supply "
                f"(it supplies: {', '.join(SUPPLIED)})"
            )
        if name not in accepted or name in filled:
            continue
        value = SUPPLIED[name](facts)
        if value is None:
            pending.append(name)
        else:
            filled[name] = value
    return Filled(options=filled, pending=tuple(pending))


def problems(kind: str, name: str, options: Mapping[str, Any], *, where: str) -> list[str]:
    """Every problem with building the ``kind`` component ``name`` from ``options`` once
    tok has supplied what it supplies (recipe validation: no data read yet)."""
    cls = registry(kind).get(name)
    filled = fill(cls, options)
    return check_kwargs(cls, filled.options, where=where, supplied=filled.pending)


def build(kind: str, name: str, options: Mapping[str, Any], facts: Facts = Facts()) -> Any:
    """Build the ``kind`` component registered as ``name`` from ``options`` plus what
    ``facts`` supply; every problem with the options raises one :class:`ConfigError`."""
    cls = registry(kind).get(name)
    filled = fill(cls, options, facts)
    found = check_kwargs(cls, filled.options, where=name)
    if found:
        raise ConfigError("; ".join(found))
    return cls(**filled.options)


def create_quantizer(name: str, **kwargs: Any) -> Any:
    """Build the quantizer registered as ``name`` with keyword arguments (timm's ``create_model``)."""
    return build("quantizers", name, kwargs)


def resolved_options(kind: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of the registered ``kind`` ``name`` with every keyword-only default the
    options leave out filled in, as JSON values (what an evaluation's protocol records:
    a dataset's crop, resize and size included)."""
    import inspect
    import json

    cls = registry(kind).get(name)
    table: dict[str, Any] = {"name": name}
    for key, p in inspect.signature(cls).parameters.items():
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
            table[key] = p.default
    table.update(options)
    return json.loads(json.dumps(table, default=str))
