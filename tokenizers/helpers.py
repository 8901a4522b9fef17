"""Small helpers the plugins share, in one place.

- :func:`exists`, :func:`default`: ``None`` checks (lucidrains' idiom).
- :func:`is_distributed`, :func:`rank`, :func:`world_size`, :func:`all_reduce_`,
  :func:`broadcast_`: ``torch.distributed`` when a process group of more than
  one process is running, a no-op otherwise, so a quantizer's statistics are
  the same code with one process or many.
- :func:`make_norm`: the normalisation layer the conv architectures build.
- :func:`differing_keys`: where two nested configs differ, by dotted key (a resume's
  recipe against the run's, a ``tokenizer.json`` against its weights' record).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = [
    "exists",
    "default",
    "is_distributed",
    "rank",
    "world_size",
    "all_reduce_",
    "all_reduce_sum",
    "broadcast_",
    "Norm",
    "make_norm",
    "ABSENT",
    "differing_keys",
]

T = TypeVar("T")

Norm = Literal["group", "batch", "none"]


def exists(x: Any) -> bool:
    """``x is not None``."""
    return x is not None


def default(x: T | None, fallback: T) -> T:
    """``x`` unless it is ``None``, else ``fallback``."""
    return x if x is not None else fallback


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group of more than one process is running."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes share the work (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def all_reduce_(t: Tensor, op: Any = None) -> Tensor:
    """Sum (or ``op``) ``t`` in place over all ranks; returns ``t`` (a no-op alone)."""
    if is_distributed():
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
    return t


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # noqa: ANN001 - autograd's signature
        out = t.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over all ranks, differentiably: the gradient of each rank's copy is the
    sum of every rank's gradient of the result (a no-op alone). Under DDP, which averages
    gradients, a loss of the summed value then trains as if one process saw every batch."""
    return _AllReduceSum.apply(t) if is_distributed() else t


def broadcast_(t: Tensor) -> Tensor:
    """Overwrite ``t`` in place with rank 0's copy; returns ``t`` (a no-op alone)."""
    if is_distributed():
        torch.distributed.broadcast(t, src=0)
    return t


def make_norm(kind: Norm, channels: int) -> nn.Module:
    """A 2D normalisation layer over ``channels``: GroupNorm with the largest of
    8, 4, 2, 1 groups that divides ``channels``, BatchNorm, or identity.

    Raises :class:`ConfigError` for another ``kind``.
    """
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}: use 'group', 'batch' or 'none'")


class _Absent:
    def __repr__(self) -> str:
        return "absent"


#: stands for the value of a key that one side of :func:`differing_keys` lacks (shown as
#: ``absent``)
ABSENT = _Absent()


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf of the nested dicts ``a`` and
    ``b`` whose values differ, sorted by key; :data:`ABSENT` where one side lacks it."""
    fa, fb = _flat(a), _flat(b)
    return [
        (key, fa.get(key, ABSENT), fb.get(key, ABSENT))
        for key in sorted(set(fa) | set(fb))
        if fa.get(key, ABSENT) != fb.get(key, ABSENT)
    ]
