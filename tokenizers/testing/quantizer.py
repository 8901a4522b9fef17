"""The conformance suite for quantizer plugins: :func:`check_quantizer`.

Every promise of the Quantizer contract (``docs/plugins.md``) is checked on
small random inputs, and the eval-mode promises that depend on the data once
more on an input of realistic size; a broken promise raises
``AssertionError`` naming the quantizer and the promise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import IndexRangeError, TokError
from ..quantizer import Quantizer, QuantizerOutput
from ._common import Check, autocast_dtype, diff, fork_rng, start, state_of

__all__ = ["check_quantizer", "REALISTIC_BATCH", "REALISTIC_GRID"]

_DEFAULT_CONFIG: dict[str, Any] = {"dim": 8}

#: the realistic-size pass: ``REALISTIC_BATCH`` inputs of ``REALISTIC_GRID`` positions each
#: (8 × 32 × 32 = 8,192 vectors, a batch of 32×32 latent grids).
REALISTIC_BATCH = 8
REALISTIC_GRID = (32, 32)
#: the first training forward, before the train-mode checks: ``(WARMUP_VECTORS, 1, dim)``
WARMUP_VECTORS = 8192


def _same_output(check: Check, a: QuantizerOutput, b: QuantizerOutput, promise: str) -> None:
    check.expect(
        torch.equal(a.indices, b.indices), promise, "indices: " + diff(a.indices, b.indices)
    )
    check.expect(
        a.quantized.dtype == b.quantized.dtype and torch.equal(a.quantized, b.quantized),
        promise,
        "quantized: " + diff(a.quantized, b.quantized),
    )
    check.expect(
        torch.equal(a.aux_loss, b.aux_loss),
        promise,
        f"aux_loss: {a.aux_loss.item()!r} vs {b.aux_loss.item()!r}",
    )


def _check_output(
    check: Check, q: Quantizer, z: Tensor, out: Any, where: str, *, mode: str
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
    _check_range(check, q, indices, where)
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


def _check_range(check: Check, q: Quantizer, indices: Tensor, where: str) -> None:
    flat = indices.reshape(-1, q.num_streams)
    for s, k in enumerate(q.codebook_sizes):
        if flat.numel():
            lo, hi = int(flat[:, s].min()), int(flat[:, s].max())
            check.expect(
                lo >= 0 and hi < k,
                "indices lie in [0, codebook_sizes[s])",
                f"stream {s} holds {lo}..{hi}, codebook size {k} ({where})",
            )


def check_quantizer(
    cls_or_name: type | str,
    *,
    config: Mapping[str, Any] | None = None,
    grids: Iterable[tuple[int, ...]] = ((7,), (4, 4), (2, 3, 3)),
    batch: int = 3,
    device: str | torch.device = "cpu",
    realistic: bool = True,
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
    :param realistic: also run the eval-mode promises that depend on the data
        on a realistic input, ``8 × 32 × 32`` positions (8,192 vectors): a
        small configuration on a tiny input can hide failures that only a
        real batch shows, above all bf16-autocast indices that differ from
        the float32 ones for a few vectors in thousands. ``False`` skips it.
    :raises AssertionError: naming the quantizer and the broken promise.

    Checked (the forward checks on every grid):

    - the class subclasses :class:`tok.Quantizer`; ``num_streams`` equals
      ``len(codebook_sizes)``, every size a positive int;
    - train mode, after one training forward on ``(8192, 1, dim)`` (so that a
      data-dependent initialisation such as k-means has run): ``forward``
      returns a :class:`tok.QuantizerOutput`;
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
      ``quantized`` exactly (``torch.equal``), also under autocast; under ``torch.autocast``
      (bf16) the indices equal the float32 ones;
    - realistic size (``realistic=True``): on ``(8, 32, 32, dim)`` in eval
      mode, the indices lie in range, two calls are identical,
      ``indices_to_codes`` round-trips exactly, autocast (bf16) indices equal
      the float32 ones, and no buffer or parameter changes;
    - ``config()`` is JSON-serialisable and ``cls(**config())`` — built from
      the JSON round trip, with another random seed — loads the state dict
      and gives identical outputs and the same ``config()``;
    - the state dict saved with ``safetensors.torch.save_file`` and loaded
      with ``load_file`` into a fresh ``cls(**config())`` gives identical
      outputs;
    - ``indices_to_codes`` raises :class:`tok.errors.IndexRangeError` for an
      index equal to the codebook size and for ``-1`` (per stream), never wraps;
    - an input with the wrong last dimension raises a :class:`tok.TokError`;
    - non-finite input (a NaN and a +inf at two positions): in eval mode the
      indices stay in range, ``quantized`` is non-finite at those positions and
      every other position is quantized as without them; in train mode (after
      two clean batches, so that k-means-style initialisation has happened)
      ``metrics["nonfinite"]`` counts the two positions, the indices stay in
      range, every buffer and parameter stays finite, and a clean eval-mode
      input afterwards gives finite ``quantized``;
    - the module cast to bf16 and to fp16 (``.to(dtype)``): float32 and cast
      inputs give float32 (or wider) ``quantized`` with in-range indices that
      ``indices_to_codes`` maps back exactly in eval mode; a training forward
      and backward run, and every floating-point buffer the training forward
      changes is still float32 or wider (learned statistics accumulate at full
      precision: list them in ``float32_buffers``).
    """
    cls, check, cfg = start(
        cls_or_name, "quantizers", Quantizer, "tok.Quantizer", config, _DEFAULT_CONFIG
    )
    device = torch.device(device)
    grids = [tuple(int(n) for n in g) for g in grids]
    with fork_rng(device):
        _check_all(check, cls, cfg, grids, batch, device, realistic)


def _check_eval(
    check: Check, q: Quantizer, z: Tensor, where: str, device: torch.device
) -> QuantizerOutput:
    """The eval-mode promises on one input (call under ``torch.no_grad``); returns the output."""
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
        diff(codes, out.quantized) + f" ({where})",
    )
    with torch.autocast(device_type=device.type, dtype=autocast_dtype(device)):
        low = q(z)
        low_codes = q.indices_to_codes(out.indices)
    check.expect(
        isinstance(low_codes, Tensor)
        and low_codes.dtype == codes.dtype
        and torch.equal(low_codes, codes),
        "indices_to_codes gives the same codes under autocast (bf16) as in float32",
        diff(low_codes, codes) + f" ({where})",
    )
    differ = (
        int((low.indices != out.indices).sum()) if low.indices.shape == out.indices.shape else -1
    )
    check.expect(
        differ == 0,
        "autocast (bf16) gives the same indices as float32",
        f"{differ} of {out.indices.numel()} indices differ ({where})"
        if differ > 0
        else f"indices {diff(low.indices, out.indices)} ({where})",
    )
    return out


def _check_all(
    check: Check,
    cls: type,
    cfg: dict[str, Any],
    grids: list[tuple[int, ...]],
    batch: int,
    device: torch.device,
    realistic: bool,
) -> None:
    q = check.build(cls, cfg, "it builds from its config").to(device)
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

    # train mode: shapes, dtypes, ranges, gradient flow — after one training forward on a
    # realistic batch, so that data-dependent initialisation (k-means) has happened
    q.train()
    q(torch.randn(WARMUP_VECTORS, 1, dim, device=device))
    for z0, grid in zip(inputs, grids, strict=True):
        _check_train(check, q, z0, f"grid {grid}")

    # eval mode: no state updates, determinism, exact round trip, autocast
    q.eval()
    before = state_of(q)
    with torch.no_grad():
        reference = [
            _check_eval(check, q, z, f"grid {grid}, eval mode", device)
            for z, grid in zip(inputs, grids, strict=True)
        ]
        if realistic:
            big = torch.randn(REALISTIC_BATCH, *REALISTIC_GRID, dim, device=device)
            where = f"realistic size: batch {REALISTIC_BATCH}, grid {REALISTIC_GRID}, eval mode"
            _check_eval(check, q, big, where, device)
    check.expect_unchanged(
        before,
        q,
        "eval-mode forward leaves buffers and parameters unchanged (updates only in train mode)",
    )

    _check_rebuild(check, cls, q, inputs, grids, reference, device)
    _check_errors(check, q, reference[0].indices, batch, grids[0], device)
    _check_nonfinite(check, cls, cfg, device)
    for dtype in (torch.bfloat16, torch.float16):
        _check_cast(check, cls, cfg, dtype, device)


# the input of the robustness checks: 4 images of 6×6 positions (144 vectors); a NaN at
# position (0, 0, 0) and a +inf at (1, 2, 3)
_ROBUST_SHAPE = (4, 6, 6)
_BAD = ((0, 0, 0), (1, 2, 3))


def _with_nonfinite(z: Tensor) -> Tensor:
    z = z.clone()
    z[_BAD[0]][0] = float("nan")
    z[_BAD[1]][-1] = float("inf")
    return z


def _check_nonfinite(check: Check, cls: type, cfg: dict[str, Any], device: torch.device) -> None:
    """NaN and ±inf inputs: indices in range, NaN never hidden, never in the learned state."""
    q = check.build(cls, cfg, "it builds from its config").to(device)
    clean = torch.randn(*_ROBUST_SHAPE, q.dim, device=device)
    z = _with_nonfinite(clean)
    bad = torch.zeros(_ROBUST_SHAPE, dtype=torch.bool, device=device)
    for pos in _BAD:
        bad[pos] = True
    q.eval()
    with torch.no_grad():
        ref, out = q(clean), q(z)
    where = "eval mode, a NaN and a +inf in the input"
    _check_range(check, q, out.indices, where)
    check.expect(
        not bool(torch.isfinite(out.quantized[bad]).all()),
        "a non-finite input vector gives a non-finite quantized vector (never hidden)",
        f"quantized is finite at the non-finite positions ({where})",
    )
    check.expect(
        torch.equal(out.indices[~bad], ref.indices[~bad])
        and torch.equal(out.quantized[~bad], ref.quantized[~bad]),
        "non-finite input at some positions leaves the other positions' output unchanged",
        f"indices {diff(out.indices[~bad], ref.indices[~bad])} ({where})",
    )
    q.train()
    for _ in range(2):  # k-means-style initialisation sees clean data first
        q(torch.randn(*_ROBUST_SHAPE, q.dim, device=device).requires_grad_(True))
    out = q(z.clone().requires_grad_(True))
    where = "train mode, a NaN and a +inf in the input"
    _check_range(check, q, out.indices, where)
    count = out.metrics.get("nonfinite")
    check.expect(
        isinstance(count, Tensor) and count.numel() == 1 and float(count) == len(_BAD),
        'train-mode metrics["nonfinite"] counts the positions whose input is not finite',
        f"got {count!r} for {len(_BAD)} such positions ({where})",
    )
    for name, t in [*q.named_buffers(), *q.named_parameters()]:
        if t.is_floating_point():
            check.expect(
                bool(torch.isfinite(t).all()),
                "non-finite input never reaches learned state (EMA statistics, k-means, restart)",
                f"{name} holds non-finite values after a training forward ({where})",
            )
    q.eval()
    with torch.no_grad():
        after = q(clean)
    _check_range(check, q, after.indices, "eval mode after the non-finite training batch")
    check.expect(
        bool(torch.isfinite(after.quantized).all()),
        "non-finite input never reaches learned state (EMA statistics, k-means, restart)",
        "a clean input gives non-finite quantized after the non-finite training batch",
    )


def _check_cast(
    check: Check, cls: type, cfg: dict[str, Any], dtype: torch.dtype, device: torch.device
) -> None:
    """The module cast to ``dtype``: quantization stays float32, statistics stay float32."""
    name = str(dtype).removeprefix("torch.")
    promise = f"the quantizer works after module.to({name}); quantized stays float32"
    q = check.build(cls, cfg, "it builds from its config").to(device)
    try:
        q = q.to(dtype)
    except Exception as exc:  # noqa: BLE001 - the broken promise
        check.fail(promise, f".to({name}) raised {type(exc).__name__}: {exc}")
    z = torch.randn(*_ROBUST_SHAPE, q.dim, device=device)
    q.eval()
    for zin, what in ((z, "float32 input"), (z.to(dtype), f"{name} input")):
        where = f"module cast to {name}, {what}, eval mode"
        with torch.no_grad():
            out = check.call(lambda zin=zin: q(zin), promise, f"forward ({where})")
            _check_output(check, q, zin, out, where, mode="eval")
            codes = check.call(
                lambda o=out: q.indices_to_codes(o.indices), promise, "indices_to_codes"
            )
        check.expect(
            torch.equal(codes, out.quantized),
            "indices_to_codes(indices) equals quantized exactly in eval mode",
            diff(codes, out.quantized) + f" ({where})",
        )
    q.train()
    before = {k: v.clone() for k, v in q.named_buffers() if v.is_floating_point()}
    zt = z.clone().requires_grad_(True)
    where = f"module cast to {name}, train mode"
    out = check.call(lambda: q(zt), promise, f"forward ({where})")
    _check_output(check, q, zt, out, where, mode="train")
    check.call(lambda: (out.quantized.sum() + out.aux_loss).backward(), promise, "backward")
    check.expect(
        zt.grad is not None and bool(torch.isfinite(zt.grad).all()),
        promise,
        f"z.grad is {'None' if zt.grad is None else 'not finite'} ({where})",
    )
    buffers = dict(q.named_buffers())
    for key, old in before.items():
        new = buffers[key]
        if not torch.equal(new, old):
            check.expect(
                torch.finfo(new.dtype).bits >= 32,
                "learned statistics stay float32 when the module is cast (float32_buffers)",
                f"buffer {key} changes in training and was cast to {new.dtype} ({where})",
            )


def _check_train(check: Check, q: Quantizer, z0: Tensor, where: str) -> None:
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


def _check_rebuild(
    check: Check,
    cls: type,
    q: Quantizer,
    inputs: list[Tensor],
    grids: list[tuple[int, ...]],
    reference: list[QuantizerOutput],
    device: torch.device,
) -> None:
    """``config()`` round trip and the state dict through safetensors."""

    def outputs_of(other: Any, promise: str) -> None:
        other.eval()
        with torch.no_grad():
            for z, grid, ref in zip(inputs, grids, reference, strict=True):
                _same_output(check, ref, other(z), f"{promise} (grid {grid})")

    rebuilt = check.rebuild(cls, q, outputs_of, device, noun="quantizer")
    check.expect(
        tuple(rebuilt.codebook_sizes) == tuple(q.codebook_sizes) and rebuilt.dim == q.dim,
        "cls(**config()) rebuilds the quantizer",
        f"codebook_sizes {rebuilt.codebook_sizes} / dim {rebuilt.dim}, "
        f"expected {q.codebook_sizes} / {q.dim}",
    )


def _check_errors(
    check: Check,
    q: Quantizer,
    indices: Tensor,
    batch: int,
    grid: tuple[int, ...],
    device: torch.device,
) -> None:
    """Bad indices raise IndexRangeError (never wrap); a wrong last dimension is a TokError."""
    sizes = q.codebook_sizes
    for s, k in enumerate(sizes):
        for bad in (k, -1):
            wrong = indices.reshape(-1, len(sizes)).clone()
            wrong[0, s] = bad
            wrong = wrong.reshape(indices.shape)
            with torch.no_grad():
                check.expect_raises(
                    lambda wrong=wrong: q.indices_to_codes(wrong),
                    IndexRangeError,
                    "out-of-range indices raise tok.errors.IndexRangeError, never wrap",
                    f"index {bad} in stream {s} (codebook size {k})",
                )

    bad_z = torch.randn(batch, *grid, q.dim + 1, device=device)
    with torch.no_grad():
        check.expect_raises(
            lambda: q(bad_z),
            TokError,
            "an input with the wrong last dimension raises a tok.TokError",
            f"z of shape {tuple(bad_z.shape)} for dim={q.dim}",
        )
