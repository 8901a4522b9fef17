"""The conformance suite for quantizer plugins: :func:`check_quantizer`.

Every promise of the Quantizer contract (``docs/`` and ``DESIGN.md``) is
checked on a small random input; a broken promise raises ``AssertionError``
whose message names the quantizer and the promise, so it reads well in a
pytest report. Use it in a plugin's own tests::

    import pytest
    from tok.testing import check_quantizer
    from my_plugin import MyQuantizer

    def test_my_quantizer_conforms():
        check_quantizer(MyQuantizer)

    # or, once the plugin is installed, by registered name:
    @pytest.mark.parametrize("name", ["mine"])
    def test_registered(name):
        check_quantizer(name, config={"dim": 16, "codebook_size": 64})

The suite runs with its own random seed inside ``torch.random.fork_rng`` and
leaves the caller's random state as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .errors import IndexRangeError, TokError
from .quantizer import Quantizer, QuantizerOutput

__all__ = ["check_quantizer"]

_DEFAULT_CONFIG: dict[str, Any] = {"dim": 8}


class _Check:
    """Raises ``AssertionError`` naming the quantizer and the broken promise."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, promise: str, detail: str = "") -> None:
        message = f"{self.label} breaks the Quantizer contract: {promise}"
        raise AssertionError(f"{message} — {detail}" if detail else message)

    def expect(self, ok: bool, promise: str, detail: str = "") -> None:
        if not ok:
            self.fail(promise, detail)


def _resolve(cls_or_name: type | str) -> tuple[type, str]:
    if isinstance(cls_or_name, str):
        from .registry import get_quantizer

        cls = get_quantizer(cls_or_name)
        return cls, f"quantizer {cls_or_name!r} ({getattr(cls, '__qualname__', cls)})"
    name = getattr(cls_or_name, "__qualname__", repr(cls_or_name))
    return cls_or_name, f"quantizer {name}"


def _config_for(cls: type, config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is not None:
        return dict(config)
    hook = getattr(cls, "example_config", None)
    if hook is None:
        return dict(_DEFAULT_CONFIG)
    return dict(hook() if callable(hook) else hook)


def _diff(a: Tensor, b: Tensor) -> str:
    """A short description of how two tensors differ."""
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.dtype != b.dtype:
        return f"dtypes {a.dtype} vs {b.dtype}"
    if a.is_floating_point():
        delta = (a.double() - b.double()).abs()
        return f"max abs difference {delta.max().item():.3g}"
    unequal = int((a != b).sum())
    return f"{unequal} of {a.numel()} entries differ"


def _same_output(check: _Check, a: QuantizerOutput, b: QuantizerOutput, promise: str) -> None:
    check.expect(
        torch.equal(a.indices, b.indices), promise, "indices: " + _diff(a.indices, b.indices)
    )
    check.expect(
        a.quantized.dtype == b.quantized.dtype and torch.equal(a.quantized, b.quantized),
        promise,
        "quantized: " + _diff(a.quantized, b.quantized),
    )
    check.expect(
        torch.equal(a.aux_loss, b.aux_loss),
        promise,
        f"aux_loss: {a.aux_loss.item()!r} vs {b.aux_loss.item()!r}",
    )


def _buffers(q: torch.nn.Module) -> dict[str, Tensor]:
    state = {f"buffer {n}": b.detach().clone() for n, b in q.named_buffers()}
    state.update({f"parameter {n}": p.detach().clone() for n, p in q.named_parameters()})
    return state


def _expect_raises(
    check: _Check, fn: Any, error: type[BaseException], promise: str, what: str
) -> None:
    try:
        fn()
    except error:
        return
    except Exception as exc:  # noqa: BLE001 - any other error is the failure we report
        check.fail(promise, f"{what} raised {type(exc).__name__}: {exc}, not {error.__name__}")
    check.fail(promise, f"{what} was accepted silently")


def _check_output(
    check: _Check, q: Quantizer, z: Tensor, out: Any, where: str, *, mode: str
) -> None:
    check.expect(
        isinstance(out, QuantizerOutput),
        "forward(z) returns a tok.QuantizerOutput",
        f"got {type(out).__name__} ({where})",
    )
    b, *grid, _ = z.shape
    quantized, indices, aux_loss, metrics = out.quantized, out.indices, out.aux_loss, out.metrics
    check.expect(
        isinstance(quantized, Tensor) and quantized.shape == z.shape,
        "quantized has the shape of z",
        f"z {tuple(z.shape)}, quantized {tuple(getattr(quantized, 'shape', ()))} ({where})",
    )
    check.expect(
        quantized.is_floating_point() and torch.finfo(quantized.dtype).bits >= 32,
        "quantized is a float32 (or wider) tensor",
        f"got {quantized.dtype} for a float32 z ({where})",
    )
    expected = (b, *grid, q.num_streams)
    check.expect(
        isinstance(indices, Tensor) and indices.dtype == torch.int64,
        "indices are int64",
        f"got {getattr(indices, 'dtype', type(indices).__name__)} ({where})",
    )
    check.expect(
        tuple(indices.shape) == expected,
        "indices have shape (batch, *grid, num_streams)",
        f"expected {expected}, got {tuple(indices.shape)} ({where})",
    )
    flat = indices.reshape(-1, q.num_streams)
    for s, k in enumerate(q.codebook_sizes):
        if flat.numel():
            lo, hi = int(flat[:, s].min()), int(flat[:, s].max())
            check.expect(
                lo >= 0 and hi < k,
                "indices lie in [0, codebook_sizes[s])",
                f"stream {s} holds {lo}..{hi}, codebook size {k} ({where})",
            )
    check.expect(
        isinstance(aux_loss, Tensor) and aux_loss.ndim == 0,
        "aux_loss is a scalar tensor",
        f"got {type(aux_loss).__name__} of shape {tuple(getattr(aux_loss, 'shape', ()))} ({where})",
    )
    check.expect(
        aux_loss.is_floating_point() and bool(torch.isfinite(aux_loss)),
        "aux_loss is a finite floating-point scalar",
        f"got {aux_loss.dtype} {aux_loss.item()!r} ({where})",
    )
    check.expect(isinstance(metrics, dict), "metrics is a dict", f"got {type(metrics).__name__}")
    for key, value in metrics.items():
        check.expect(
            isinstance(key, str) and isinstance(value, Tensor) and value.ndim == 0,
            "metrics values are scalar tensors",
            f"metrics[{key!r}] is {type(value).__name__} "
            f"of shape {tuple(getattr(value, 'shape', ()))} ({where}, {mode} mode)",
        )
        check.expect(
            not value.requires_grad and value.grad_fn is None,
            "metrics values are detached",
            f"metrics[{key!r}] is attached to the autograd graph ({where}, {mode} mode)",
        )


def check_quantizer(
    cls_or_name: type | str,
    *,
    config: Mapping[str, Any] | None = None,
    grids: Iterable[tuple[int, ...]] = ((7,), (4, 4), (2, 3, 3)),
    batch: int = 3,
    device: str | torch.device = "cpu",
) -> None:
    """Check that a quantizer keeps every promise of the Quantizer contract.

    :param cls_or_name: a :class:`tok.Quantizer` subclass, or the name it is
        registered under (looked up with :func:`tok.get_quantizer`).
    :param config: keyword arguments to build it with. Without one the suite
        calls the class's ``example_config()`` hook — a classmethod returning
        a dict; :class:`tok.Quantizer` provides ``{"dim": 8}``, so override it
        in your plugin to build a small, representative instance (e.g. one
        with a projection or several streams). A plain dict attribute named
        ``example_config`` works too.
    :param grids: grid shapes to try (sequences, images, video); the input is
        ``(batch, *grid, dim)``.
    :param batch: batch size of the random inputs.
    :param device: where to run (``"cpu"``, ``"cuda"``…).
    :raises AssertionError: naming the quantizer and the broken promise.

    Checked (the forward checks on every grid):

    - the class subclasses :class:`tok.Quantizer`; ``num_streams`` equals
      ``len(codebook_sizes)``, every size a positive int;
    - train mode: ``forward`` returns a :class:`tok.QuantizerOutput`;
      ``quantized`` is float32 (or wider) and shaped like ``z``; ``indices`` are
      int64 ``(batch, *grid, num_streams)`` inside ``[0, K_s)``; ``aux_loss``
      is a finite scalar tensor; ``metrics`` are detached scalar tensors;
      ``forward`` leaves ``z`` unchanged; gradients of ``quantized`` (weighted
      by a random ``w``) reach ``z``, non-zero somewhere, and
      ``((w * quantized).sum() + aux_loss).backward()`` leaves a finite
      ``z.grad``;
    - eval mode (under ``torch.no_grad``): forward leaves every buffer and
      parameter unchanged (EMA/statistics update only in train mode); two
      calls give identical outputs; ``indices_to_codes(indices)`` equals
      ``quantized`` exactly (``torch.equal``); under ``torch.autocast``
      (bf16) the indices equal the float32 ones;
    - ``config()`` is JSON-serialisable and ``cls(**config())`` — built from
      the JSON round trip, with another random seed — loads the state dict
      and gives identical outputs and the same ``config()``;
    - the state dict saved with ``safetensors.torch.save_file`` and loaded
      with ``load_file`` into a fresh ``cls(**config())`` gives identical
      outputs;
    - ``indices_to_codes`` raises :class:`tok.errors.IndexRangeError` for an
      index equal to the codebook size and for ``-1`` (per stream), never wraps;
    - an input with the wrong last dimension raises a :class:`tok.TokError`.
    """
    cls, label = _resolve(cls_or_name)
    check = _Check(label)
    check.expect(
        isinstance(cls, type) and issubclass(cls, Quantizer),
        "the class is a subclass of tok.Quantizer",
        f"got {cls!r}",
    )
    cfg = _config_for(cls, config)
    device = torch.device(device)
    grids = [tuple(int(n) for n in g) for g in grids]
    fork_devices = [] if device.type != "cuda" else [device.index or torch.cuda.current_device()]
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(0)
        _check_all(check, cls, cfg, grids, batch, device)


def _build(check: _Check, cls: type, cfg: dict[str, Any], device: torch.device, what: str) -> Any:
    try:
        q = cls(**cfg)
    except Exception as exc:  # noqa: BLE001 - reported as the broken promise
        check.fail(what, f"{cls.__name__}(**{cfg!r}) raised {type(exc).__name__}: {exc}")
    return q.to(device)


def _check_all(
    check: _Check,
    cls: type,
    cfg: dict[str, Any],
    grids: list[tuple[int, ...]],
    batch: int,
    device: torch.device,
) -> None:
    q = _build(check, cls, cfg, device, "it builds from its config")
    sizes = q.codebook_sizes
    check.expect(
        isinstance(sizes, tuple)
        and len(sizes) >= 1
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in sizes),
        "codebook_sizes is a non-empty tuple of positive ints",
        f"got {sizes!r}",
    )
    check.expect(
        q.num_streams == len(sizes),
        "num_streams == len(codebook_sizes)",
        f"num_streams {q.num_streams}, codebook_sizes {sizes}",
    )
    dim = q.dim
    inputs = [torch.randn(batch, *g, dim, device=device) for g in grids]

    # train mode: shapes, dtypes, ranges, gradient flow
    q.train()
    for z0, grid in zip(inputs, grids, strict=True):
        where = f"grid {grid}"
        z = z0.clone().requires_grad_(True)
        out = q(z)
        _check_output(check, q, z, out, where, mode="train")
        check.expect(torch.equal(z.detach(), z0), "forward leaves z unchanged", where)
        weight = torch.randn_like(out.quantized)
        check.expect(
            out.quantized.requires_grad,
            "gradients reach z",
            f"quantized is not attached to the autograd graph ({where})",
        )
        (grad,) = torch.autograd.grad(
            (out.quantized * weight).sum(), z, retain_graph=True, allow_unused=True
        )
        check.expect(
            grad is not None and bool(grad.abs().sum() > 0),
            "gradients reach z through quantized",
            f"d quantized / d z is {'None' if grad is None else 'all zero'} ({where})",
        )
        ((out.quantized * weight).sum() + out.aux_loss).backward()
        check.expect(
            z.grad is not None and bool(torch.isfinite(z.grad).all()),
            "gradients reach z",
            f"z.grad after (quantized.sum() + aux_loss).backward() is not finite ({where})",
        )

    # eval mode: no state updates, determinism, exact round trip
    q.eval()
    before = _buffers(q)
    reference = []
    with torch.no_grad():
        for z, grid in zip(inputs, grids, strict=True):
            where = f"grid {grid}, eval mode"
            out = q(z)
            _check_output(check, q, z, out, where, mode="eval")
            again = q(z)
            _same_output(check, out, again, f"eval mode is deterministic ({where})")
            codes = q.indices_to_codes(out.indices)
            check.expect(
                isinstance(codes, Tensor)
                and codes.dtype == out.quantized.dtype
                and torch.equal(codes, out.quantized),
                "indices_to_codes(indices) equals quantized exactly in eval mode",
                _diff(codes, out.quantized) + f" ({where})",
            )
            reference.append(out)
            autocast_dtype = (
                torch.bfloat16
                if device.type == "cpu" or torch.cuda.is_bf16_supported()
                else torch.float16
            )
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                low = q(z)
            check.expect(
                torch.equal(low.indices, out.indices),
                "autocast (bf16) gives the same indices as float32",
                f"{int((low.indices != out.indices).sum())} of {out.indices.numel()} indices differ ({where})",
            )
    after = _buffers(q)
    for key, value in before.items():
        check.expect(
            key in after and torch.equal(value, after[key]),
            "eval-mode forward leaves buffers and parameters unchanged (updates only in train mode)",
            f"{key} changed",
        )

    # config round trip
    try:
        cfg_json = json.dumps(q.config())
    except (TypeError, ValueError) as exc:
        check.fail("config() is JSON-serialisable", f"{type(exc).__name__}: {exc}")
    rebuilt_cfg = json.loads(cfg_json)
    check.expect(isinstance(rebuilt_cfg, dict), "config() returns a dict", f"got {cfg_json}")
    state = {k: v.detach().clone() for k, v in q.state_dict().items()}

    def outputs_of(other: Any, promise: str) -> None:
        other.eval()
        with torch.no_grad():
            for z, grid, ref in zip(inputs, grids, reference, strict=True):
                _same_output(check, ref, other(z), f"{promise} (grid {grid})")

    torch.manual_seed(1)  # a fresh instance must not match by sharing the seed
    rebuilt = _build(check, cls, rebuilt_cfg, device, "cls(**config()) rebuilds the quantizer")
    check.expect(
        json.loads(json.dumps(rebuilt.config())) == rebuilt_cfg,
        "cls(**config()) rebuilds the quantizer",
        f"config() {rebuilt.config()!r} differs from {rebuilt_cfg!r}",
    )
    check.expect(
        tuple(rebuilt.codebook_sizes) == tuple(sizes) and rebuilt.dim == dim,
        "cls(**config()) rebuilds the quantizer",
        f"codebook_sizes {rebuilt.codebook_sizes} / dim {rebuilt.dim}, expected {sizes} / {dim}",
    )
    try:
        rebuilt.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        check.fail(
            "cls(**config()) accepts the state dict",
            f"load_state_dict raised {type(exc).__name__}: {exc}",
        )
    outputs_of(rebuilt, "cls(**config()) with the state dict gives the same outputs")

    # save/load through safetensors
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "quantizer.safetensors")
        try:
            save_file({k: v.contiguous() for k, v in state.items()}, path)
        except Exception as exc:  # noqa: BLE001
            check.fail(
                "the state dict saves with safetensors",
                f"save_file raised {type(exc).__name__}: {exc}",
            )
        loaded = load_file(path, device=str(device))
    torch.manual_seed(2)
    fresh = _build(check, cls, rebuilt_cfg, device, "cls(**config()) rebuilds the quantizer")
    try:
        fresh.load_state_dict(loaded)
    except Exception as exc:  # noqa: BLE001
        check.fail(
            "all learned state loads back from safetensors",
            f"load_state_dict raised {type(exc).__name__}: {exc}",
        )
    outputs_of(fresh, "a safetensors save/load round trip gives the same outputs")

    # bad indices raise IndexRangeError, never wrap
    indices = reference[0].indices
    for s, k in enumerate(sizes):
        for bad in (k, -1):
            wrong = indices.reshape(-1, len(sizes)).clone()
            wrong[0, s] = bad
            wrong = wrong.reshape(indices.shape)
            with torch.no_grad():
                _expect_raises(
                    check,
                    lambda wrong=wrong: q.indices_to_codes(wrong),
                    IndexRangeError,
                    "out-of-range indices raise tok.errors.IndexRangeError, never wrap",
                    f"index {bad} in stream {s} (codebook size {k})",
                )

    # the wrong channel count is a TokError
    bad_z = torch.randn(batch, *grids[0], dim + 1, device=device)
    with torch.no_grad():
        _expect_raises(
            check,
            lambda: q(bad_z),
            TokError,
            "an input with the wrong last dimension raises a tok.TokError",
            f"z of shape {tuple(bad_z.shape)} for dim={dim}",
        )
