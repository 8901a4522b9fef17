"""The conformance suite for continuous-bottleneck plugins: :func:`check_bottleneck`.

Every promise of the ContinuousBottleneck contract (``docs/plugins.md``, "Continuous
bottlenecks") is checked on small random inputs; a broken promise raises
``AssertionError`` naming the bottleneck and the promise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..bottleneck import ContinuousBottleneck, LatentOutput
from ..errors import TokError
from ._common import Check, diff, fork_rng, start, state_of

__all__ = ["check_bottleneck"]


def check_bottleneck(
    cls_or_name: type | str,
    *,
    config: Mapping[str, Any] | None = None,
    grids: Iterable[tuple[int, ...]] = ((1,), (7,), (4, 4), (2, 3, 3)),
    batch: int = 3,
    device: str | torch.device = "cpu",
) -> None:
    """Check that a continuous bottleneck keeps every promise of its contract.

    :param cls_or_name: a :class:`tok.bottleneck.ContinuousBottleneck` subclass, or the
        name it is registered under (``register_bottlenecks``).
    :param config: keyword arguments to build it with; without one, the class's
        ``example_config()``.
    :param grids: grid shapes to try; the input is ``(batch, *grid, dim)``.
    :param batch: batch size of the random inputs.
    :param device: where to run.
    :raises AssertionError: naming the bottleneck and the broken promise.

    Checked, on every grid:

    - the class subclasses ``ContinuousBottleneck``; ``dim`` and ``latent_dim`` are
      positive ints;
    - train mode: ``forward`` returns a :class:`tok.bottleneck.LatentOutput`; ``latent``
      is float32 ``(batch, *grid, dim)``, ``mean`` and ``kl`` float32 ``(batch, *grid,
      latent_dim)``; every ``kl`` is finite and ≥ 0; ``aux_loss`` is a finite scalar;
      ``metrics`` are detached scalar tensors; ``z`` is left unchanged; gradients of
      ``(w * latent).sum() + aux_loss`` reach ``z``, finite and non-zero somewhere;
    - eval mode (``torch.no_grad``): two calls are identical (no sampling), nothing in
      the state changes (``sample`` included), ``latent_to_codes(mean)`` equals
      ``latent`` (to 1e-6) and is float32 ``(batch, *grid, dim)``; ``sample(z,
      generator=g)`` is float32 shaped like ``latent`` and repeats for equal seeds; under bf16 autocast ``mean`` stays float32 and
      within 1e-2 of the float32 one;
    - ``config()`` round trips (JSON, ``cls(**config())``) and the state dict through
      safetensors, with identical eval outputs;
    - an input with the wrong last dimension, and latents with the wrong last dimension
      for ``latent_to_codes``, raise a :class:`tok.TokError`.
    """
    cls, check, cfg = start(
        cls_or_name, "bottlenecks", ContinuousBottleneck, "tok.bottleneck.ContinuousBottleneck",
        config, {"dim": 8},
    )  # fmt: skip
    device = torch.device(device)
    check.contract = "ContinuousBottleneck"
    with fork_rng(device):
        b = check.build(cls, cfg, "cls(**config) builds it").to(device)
        for name in ("dim", "latent_dim"):
            value = getattr(b, name, None)
            check.expect(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{name} is a positive int",
                f"got {value!r}",
            )
        inputs = [torch.randn(batch, *g, b.dim, device=device) for g in grids]
        for z, grid in zip(inputs, grids, strict=True):
            _check_train(check, b, z, grid)
        reference = [_check_eval(check, b, z, grid) for z, grid in zip(inputs, grids, strict=True)]

        def outputs_of(other: Any, promise: str) -> None:
            other.eval()
            with torch.no_grad():
                for z, grid, ref in zip(inputs, grids, reference, strict=True):
                    out = other(z)
                    for field in ("latent", "mean", "kl"):
                        a, c = getattr(ref, field), getattr(out, field)
                        check.expect(
                            torch.equal(a, c), f"{promise} (grid {grid})", f"{field}: {diff(a, c)}"
                        )

        check.rebuild(cls, b, outputs_of, device, noun="bottleneck")
        bad = torch.randn(batch, 2, b.dim + 1, device=device)
        check.expect_raises(
            lambda: b(bad), TokError, "a wrong input dim raises TokError", "forward"
        )
        wrong = torch.randn(batch, 2, b.latent_dim + 1, device=device)
        check.expect_raises(
            lambda: b.latent_to_codes(wrong), TokError,
            "latents with a wrong last dim raise TokError", "latent_to_codes",
        )  # fmt: skip


def _check_output(check: Check, b: Any, out: Any, z: Tensor, where: str) -> None:
    check.expect(
        isinstance(out, LatentOutput),
        f"forward returns a LatentOutput ({where})",
        f"got {type(out).__name__}",
    )
    lead = tuple(z.shape[:-1])
    for field, width in (("latent", b.dim), ("mean", b.latent_dim), ("kl", b.latent_dim)):
        t = getattr(out, field)
        check.expect(
            isinstance(t, Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (*lead, width),
            f"{field} is float32 (batch, *grid, {width}) ({where})",
            f"got {getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}",
        )
    check.expect(
        bool(torch.isfinite(out.kl).all()) and bool((out.kl >= 0).all()),
        f"kl is finite and ≥ 0 ({where})",
    )
    check.expect(
        isinstance(out.aux_loss, Tensor)
        and out.aux_loss.ndim == 0
        and bool(torch.isfinite(out.aux_loss)),
        f"aux_loss is a finite scalar tensor ({where})",
    )
    for k, v in out.metrics.items():
        check.expect(
            isinstance(v, Tensor) and v.ndim == 0 and not v.requires_grad,
            f"metrics are detached scalar tensors ({where})",
            f"metrics[{k!r}] is {v!r}",
        )


def _check_train(check: Check, b: Any, z: Tensor, grid: tuple[int, ...]) -> None:
    where = f"train mode, grid {grid}"
    b.train()
    z = z.clone().requires_grad_(True)
    before = z.detach().clone()
    out = check.call(lambda: b(z), f"forward runs ({where})", "forward")
    _check_output(check, b, out, z, where)
    check.expect(torch.equal(z.detach(), before), f"forward leaves z unchanged ({where})")
    w = torch.randn_like(out.latent)
    ((w * out.latent).sum() + out.aux_loss).backward()
    check.expect(
        z.grad is not None and bool(torch.isfinite(z.grad).all()) and bool(z.grad.abs().sum() > 0),
        f"gradients reach z, finite and non-zero ({where})",
    )


def _check_eval(check: Check, b: Any, z: Tensor, grid: tuple[int, ...]) -> LatentOutput:
    where = f"eval mode, grid {grid}"
    b.eval()
    before = state_of(b)
    with torch.no_grad():
        out = b(z)
        again = b(z)
        _check_output(check, b, out, z, where)
        for field in ("latent", "mean", "kl"):
            a, c = getattr(out, field), getattr(again, field)
            check.expect(
                torch.equal(a, c), f"eval mode is deterministic ({where})", f"{field}: {diff(a, c)}"
            )
        codes = b.latent_to_codes(out.mean)
        check.expect(
            codes.dtype == torch.float32 and codes.shape == out.latent.shape
            and torch.allclose(codes, out.latent, atol=1e-6, rtol=1e-6),
            f"latent_to_codes(mean) equals latent in eval mode ({where})",
            diff(codes, out.latent),
        )  # fmt: skip
        draws = [b.sample(z, generator=torch.Generator(z.device).manual_seed(5)) for _ in range(2)]
        check.expect(
            all(d.dtype == torch.float32 and d.shape == out.latent.shape for d in draws)
            and torch.equal(draws[0], draws[1]),
            f"sample(z, generator) is float32 like latent and repeats with the same seed ({where})",
            diff(draws[0], out.latent),
        )
        with torch.autocast(device_type=z.device.type, dtype=torch.bfloat16):
            cast = b(z)
        check.expect(
            cast.mean.dtype == torch.float32 and torch.allclose(cast.mean, out.mean, atol=1e-2),
            f"mean stays float32 under bf16 autocast ({where})",
            diff(cast.mean, out.mean),
        )
    check.expect_unchanged(before, b, f"eval mode changes no state ({where})")
    return out
