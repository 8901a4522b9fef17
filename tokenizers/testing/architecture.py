"""The conformance suite for architecture plugins: :func:`check_architecture`.

Every promise of the Architecture contract (``docs/plugins.md``,
"Architectures") is checked on a small random input; a broken promise raises
``AssertionError`` naming the architecture and the promise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import TokError
from ..models.base import Architecture
from ._common import Check, autocast_dtype, diff, fork_rng, start, state_of

__all__ = ["check_architecture"]


def check_architecture(
    cls_or_name: type | str,
    *,
    config: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    batch: int = 2,
    device: str | torch.device = "cpu",
) -> None:
    """Check that an architecture keeps every promise of the Architecture contract.

    :param cls_or_name: a :class:`tok.models.Architecture` subclass, or the name
        it is registered under (looked up with :func:`tok.get_architecture`).
    :param config: keyword arguments to build it with; default: the class's
        ``example_config()`` (:class:`~tok.models.Architecture` gives ``{}``, the
        constructor's defaults). A plain dict attribute works too.
    :param input_shape: the shape of one input without the batch, ``(c, h, w)``
        or, for video, ``(c, t, h, w)``; default: the class's
        ``example_input_shape()`` (the base class gives ``(3, 32, 32)``).
    :param batch: batch size of the random inputs (uniform in ``[-1, 1]``).
    :param device: where to run (``"cpu"``, ``"cuda"``…).
    :raises AssertionError: naming the architecture and the broken promise.

    Checked:

    - the class subclasses :class:`tok.models.Architecture`; it builds from
      its config; ``in_channels`` and ``latent_dim`` are ints ``≥ 1``;
    - ``grid(input_shape)`` is a tuple of positive ints; ``encode(x)`` of a
      float32 ``(batch, *input_shape)`` input returns a float tensor
      ``(batch, *grid, latent_dim)``, channel-last, whose grid axes are what
      ``grid`` said; ``decode(z)`` of it returns ``(batch, *input_shape)``;
    - in train mode, one backward of a loss on the decoder's output gives the
      input a finite gradient, non-zero somewhere, and every parameter that
      requires grad a non-``None``, finite gradient, at least one non-zero;
    - eval mode (under ``torch.no_grad``): ``encode`` and ``decode`` are
      deterministic (two calls ``torch.equal``) and leave every buffer and
      parameter unchanged;
    - ``config()`` is JSON-serialisable; ``cls(**config())`` — built from the
      JSON round trip, with another random seed — gives the same
      ``config()``, loads the state dict and gives identical ``encode`` and
      ``decode`` outputs in eval mode; so does a fresh instance loading the
      state dict from a ``safetensors`` file;
    - under ``torch.autocast`` (bf16) ``encode``, ``decode`` (of its output and
      of float32 latents, as a tokenizer's quantizer hands them over) and a
      backward run, with finite outputs of the right shapes;
    - other input sizes — one more channel, each other axis (height, width
      and, for video, frames) one longer: ``grid(shape)`` either raises a
      :class:`tok.TokError` (normally ``ConfigError``) or returns the grid
      ``encode`` then really produces; it never raises another exception; the
      error names the size it received (the number that changed appears in the
      message); and ``encode`` of an input that ``grid`` refuses raises a
      ``TokError`` too, never a raw torch error;
    - the module cast to bf16 and to fp16 (``.to(dtype)``) encodes an input of
      that dtype and decodes the latents, with finite outputs of the right
      shapes (a :class:`tok.models.Tokenizer` casts its inputs and latents to
      the architecture's dtype and returns float32).
    """
    cls, check, cfg = start(
        cls_or_name, "architectures", Architecture, "tok.models.Architecture", config, {}
    )
    if input_shape is None:
        input_shape = cls.example_input_shape()
    shape = tuple(int(n) for n in input_shape)
    device = torch.device(device)
    with fork_rng(device):
        _check_all(check, cls, cfg, shape, batch, device)


def _is_grid(grid: Any) -> bool:
    return isinstance(grid, tuple) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid
    )


def _check_all(
    check: Check,
    cls: type,
    cfg: dict[str, Any],
    shape: tuple[int, ...],
    batch: int,
    device: torch.device,
) -> None:
    arch = check.build(cls, cfg, "it builds from its config").to(device)
    for attr in ("in_channels", "latent_dim"):
        value = getattr(arch, attr, None)
        check.expect(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{attr} is an int ≥ 1",
            f"got {value!r}",
        )
    grid = check.call(
        lambda: arch.grid(shape),
        "grid(input_shape) gives the latent grid of the example input",
        f"grid({shape})",
    )
    check.expect(
        _is_grid(grid),
        "grid(input_shape) is a tuple of positive ints",
        f"grid({shape}) returned {grid!r}",
    )
    x = torch.rand(batch, *shape, device=device) * 2 - 1

    arch.train()
    _check_train(check, arch, x, grid)

    arch.eval()
    before = state_of(arch)
    with torch.no_grad():
        z = arch.encode(x)
        again = arch.encode(x)
        check.expect(torch.equal(z, again), "eval mode is deterministic (encode)", diff(z, again))
        y = arch.decode(z)
        again = arch.decode(z)
        check.expect(torch.equal(y, again), "eval mode is deterministic (decode)", diff(y, again))
    check.expect_unchanged(
        before, arch, "eval-mode encode and decode leave buffers and parameters unchanged"
    )

    _check_rebuild(check, cls, arch, x, z, y, device)
    _check_autocast(check, arch, x, z, grid, device)
    _check_other_sizes(check, arch, shape, device)
    for dtype in (torch.bfloat16, torch.float16):
        _check_cast(check, arch, x, grid, dtype)


def _check_cast(
    check: Check, arch: Architecture, x: Tensor, grid: tuple[int, ...], dtype: torch.dtype
) -> None:
    """A copy of ``arch`` cast to ``dtype`` encodes and decodes inputs of that dtype."""
    import copy

    name = str(dtype).removeprefix("torch.")
    promise = f"encode and decode work after module.to({name})"
    low = copy.deepcopy(arch).eval()
    check.call(lambda: low.to(dtype), promise, f".to({name})")
    xin = x.to(dtype)
    with torch.no_grad():
        z = check.call(lambda: low.encode(xin), promise, f"encode of a {name} input")
        y = check.call(lambda: low.decode(z), promise, "decode of its latents")
    _check_shapes(check, low, xin, z, y, grid, f"module cast to {name}")
    for what, t in (("encode", z), ("decode", y)):
        check.expect(
            bool(torch.isfinite(t.float()).all()),
            f"encode and decode give finite values after module.to({name})",
            f"{what} has non-finite values",
        )


def _check_shapes(
    check: Check,
    arch: Architecture,
    x: Tensor,
    z: Any,
    y: Any,
    grid: tuple[int, ...],
    where: str,
) -> None:
    b, d = x.shape[0], arch.latent_dim
    expected = (b, *grid, d)
    check.expect(
        isinstance(z, Tensor) and z.is_floating_point(),
        "encode(x) returns a float tensor",
        f"got {getattr(z, 'dtype', type(z).__name__)} ({where})",
    )
    got = tuple(z.shape)
    check.expect(
        len(got) == len(expected) and got[0] == b and got[-1] == d,
        "encode(x) returns channel-last latents (batch, *grid, latent_dim)",
        f"expected {expected} (latent_dim {d} last), got {got} ({where})",
    )
    check.expect(
        got == expected,
        "encode(x) produces the grid that grid(input_shape) states",
        f"grid({tuple(x.shape[1:])}) is {grid}, encode gave latents {got} ({where})",
    )
    check.expect(
        isinstance(y, Tensor) and y.is_floating_point() and y.shape == x.shape,
        "decode(z) returns a float tensor of the input's shape (batch, *input_shape)",
        f"input {tuple(x.shape)}, decode gave {getattr(y, 'dtype', type(y).__name__)} "
        f"{tuple(getattr(y, 'shape', ()))} ({where})",
    )


def _check_train(check: Check, arch: Architecture, x0: Tensor, grid: tuple[int, ...]) -> None:
    x = x0.clone().requires_grad_(True)
    z = check.call(lambda: arch.encode(x), "encode(x) takes the example input", "encode")
    y = check.call(lambda: arch.decode(z), "decode(z) takes encode's latents", "decode")
    _check_shapes(check, arch, x, z, y, grid, "train mode")
    check.expect(
        y.requires_grad,
        "gradients flow from decode's output back to the input",
        "decode(encode(x)) is not attached to the autograd graph",
    )
    arch.zero_grad(set_to_none=True)
    (y * torch.randn_like(y)).sum().backward()
    check.expect(
        x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool(x.grad.ne(0).any()),
        "gradients flow from decode's output back to the input",
        "x.grad is " + ("None" if x.grad is None else "not finite, or zero everywhere"),
    )
    nonzero = False
    for name, p in arch.named_parameters():
        if not p.requires_grad:
            continue
        check.expect(
            p.grad is not None,
            "gradients reach every parameter",
            f"parameter {name} got no gradient (unused in encode/decode?)",
        )
        check.expect(
            bool(torch.isfinite(p.grad).all()),
            "gradients reach every parameter",
            f"parameter {name} has a non-finite gradient",
        )
        nonzero = nonzero or bool(p.grad.ne(0).any())
    check.expect(
        nonzero or not any(p.requires_grad for p in arch.parameters()),
        "gradients reach every parameter",
        "every parameter's gradient is zero",
    )
    arch.zero_grad(set_to_none=True)


def _check_rebuild(
    check: Check,
    cls: type,
    arch: Architecture,
    x: Tensor,
    z: Tensor,
    y: Tensor,
    device: torch.device,
) -> None:
    """``config()`` round trip and the state dict through safetensors."""

    def same_outputs(other: Any, promise: str) -> None:
        other.eval()
        with torch.no_grad():
            z2 = other.encode(x)
            check.expect(torch.equal(z, z2), promise, "encode: " + diff(z, z2))
            y2 = other.decode(z)
            check.expect(torch.equal(y, y2), promise, "decode: " + diff(y, y2))

    check.rebuild(cls, arch, same_outputs, device, noun="architecture")


def _check_autocast(
    check: Check,
    arch: Architecture,
    x: Tensor,
    z32: Tensor,
    grid: tuple[int, ...],
    device: torch.device,
) -> None:
    """encode, decode and a backward under autocast, as bf16 training runs them."""
    promise = "encode and decode run under torch.autocast (bf16)"
    arch.train()
    with torch.autocast(device_type=device.type, dtype=autocast_dtype(device)):
        z = check.call(lambda: arch.encode(x), promise, "encode")
        y = check.call(lambda: arch.decode(z), promise, "decode of encode's output")
        y32 = check.call(lambda: arch.decode(z32), promise, "decode of float32 latents")
    _check_shapes(check, arch, x, z, y, grid, "under autocast")
    _check_shapes(check, arch, x, z, y32, grid, "under autocast, float32 latents")
    for what, t in (("encode", z), ("decode", y), ("decode of float32 latents", y32)):
        check.expect(
            bool(torch.isfinite(t).all()),
            "encode and decode give finite values under torch.autocast (bf16)",
            f"{what} has non-finite values",
        )
    if y.requires_grad:
        check.call(lambda: (y.float().sum() + y32.float().sum()).backward(), promise, "backward")
    arch.zero_grad(set_to_none=True)
    arch.eval()


def _other_shapes(shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], str]]:
    axes = ["height", "width"] if len(shape) == 3 else ["frames", "height", "width"]
    if len(shape) not in (3, 4):
        axes = [f"axis {i}" for i in range(1, len(shape))]
    out = [((shape[0] + 1, *shape[1:]), "one more channel")]
    for i, name in enumerate(axes, start=1):
        other = list(shape)
        other[i] += 1
        out.append((tuple(other), f"{name} + 1"))
    return out


def _check_other_sizes(
    check: Check, arch: Architecture, shape: tuple[int, ...], device: torch.device
) -> None:
    arch.eval()
    for other, what in _other_shapes(shape):
        x = torch.rand(1, *other, device=device) * 2 - 1
        try:
            grid = arch.grid(other)
        except TokError as exc:
            changed = next(n for n, m in zip(other, shape, strict=True) if n != m)
            check.expect(
                re.search(rf"(?<!\d){changed}(?!\d)", str(exc)) is not None,
                "grid(input_shape)'s error names the size it received",
                f"grid({other}) ({what}) raised {type(exc).__name__}: {exc} — "
                f"without the {what.split()[0]} it got ({changed})",
            )
            with torch.no_grad():
                check.expect_raises(
                    lambda x=x: arch.encode(x),
                    TokError,
                    "encode of an input that grid() refuses raises a tok.TokError "
                    "(ConfigError), not a raw torch error",
                    f"encode of a {tuple(x.shape)} input ({what}; grid({other}) raised)",
                )
            continue
        except Exception as exc:  # noqa: BLE001 - the broken promise
            check.fail(
                "grid(input_shape) raises a tok.TokError (ConfigError) for an input it "
                "cannot take, never another exception",
                f"grid({other}) ({what}) raised {type(exc).__name__}: {exc}",
            )
        promise = "grid(input_shape) agrees with encode for other input sizes"
        check.expect(_is_grid(grid), promise, f"grid({other}) ({what}) returned {grid!r}")
        with torch.no_grad():
            z = check.call(
                lambda x=x: arch.encode(x),
                promise,
                f"grid({other}) ({what}) returned {grid}, but encode of a {tuple(x.shape)} input",
            )
        expected = (1, *grid, arch.latent_dim)
        check.expect(
            isinstance(z, Tensor) and tuple(z.shape) == expected,
            promise,
            f"grid({other}) ({what}) returned {grid}, encode gave "
            f"{tuple(getattr(z, 'shape', ()))}, expected {expected}",
        )
