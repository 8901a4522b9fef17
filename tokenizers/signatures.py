"""Checking keyword arguments against a class's constructor signature.

Components (quantizers, architectures, datasets, losses) take typed
keyword-only arguments. :func:`check_kwargs` compares a dict — a recipe
table, a ``config()`` — with the constructor's signature and returns every
problem at once: unknown keys (with the valid ones), missing required keys,
wrong types. :func:`describe_type` words an annotation for those messages.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union

__all__ = ["parameters", "check_kwargs", "check_value", "describe_type"]


def parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments ``cls(...)`` accepts, by name (``self`` and ``*args`` left out)."""
    sig = inspect.signature(cls.__init__)
    return {
        name: p
        for name, p in list(sig.parameters.items())[1:]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable hints are simply not checked
        return {}


def describe_type(tp: Any) -> str:
    """An annotation in words, for error messages: ``int or None``, ``a list of float``…"""
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = describe_type(args[0]) if args else "value"
        return f"a list of {inner}"
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as read from TOML or JSON) fits the annotation ``tp``."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(check_value(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return all(check_value(v, args[0]) for v in value) if args else True
    if origin in (dict, Mapping) or tp is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_kwargs(
    cls: type, kwargs: Mapping[str, Any], *, where: str, supplied: Iterable[str] = ()
) -> list[str]:
    """Every problem with calling ``cls(**kwargs)``; ``where`` prefixes each message.

    ``supplied`` names arguments someone else will pass later (tok fills them
    in from the data, see :mod:`tok.components`): their absence is no problem.
    """
    params = parameters(cls)
    hints = _type_hints(cls)
    supplied = set(supplied)
    problems = []
    valid = ", ".join(params) or "none"
    for key, value in kwargs.items():
        if key not in params:
            problems.append(f"{where}: unknown key {key!r} (valid keys: {valid})")
            continue
        tp = hints.get(key, inspect.Parameter.empty)
        if not check_value(value, tp):
            problems.append(
                f"{where}.{key}: expected {describe_type(tp)}, got {type(value).__name__} {value!r}"
            )
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in kwargs and key not in supplied:
            problems.append(f"{where}: missing required key {key!r}")
    return problems
