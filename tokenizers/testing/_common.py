"""What the conformance checks share: reporting a broken promise, finding the class under
test (a class, or a name looked up in the registry), and comparing tensors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import torch
from torch import Tensor

__all__ = [
    "Check",
    "autocast_dtype",
    "config_for",
    "diff",
    "fork_rng",
    "resolve",
    "start",
    "state_of",
]


class Check:
    """Raises ``AssertionError`` naming the plugin, the contract and the broken promise.

    :param label: how the plugin is named, e.g. ``"quantizer 'fsq' (FSQ)"``.
    :param contract: the contract it breaks, e.g. ``"Quantizer"``.
    """

    def __init__(self, label: str, contract: str = "Quantizer") -> None:
        self.label = label
        self.contract = contract

    def fail(self, promise: str, detail: str = "") -> NoReturn:
        message = f"{self.label} breaks the {self.contract} contract: {promise}"
        raise AssertionError(f"{message} — {detail}" if detail else message)

    def build(self, cls: type, cfg: Mapping[str, Any], promise: str) -> Any:
        """``cls(**cfg)``; an exception fails ``promise``."""
        try:
            return cls(**cfg)
        except Exception as exc:  # noqa: BLE001 - reported as the broken promise
            self.fail(
                promise, f"{cls.__name__}(**{dict(cfg)!r}) raised {type(exc).__name__}: {exc}"
            )

    def call(self, fn: Callable[[], Any], promise: str, what: str) -> Any:
        """``fn()``; an exception fails ``promise`` (naming ``what`` raised it)."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - reported as the broken promise
            self.fail(promise, f"{what} raised {type(exc).__name__}: {exc}")

    def expect_raises(
        self, fn: Callable[[], Any], error: type[BaseException], promise: str, what: str
    ) -> None:
        """``fn()`` must raise ``error``: another exception, or none, fails ``promise``."""
        try:
            fn()
        except error:
            return
        except Exception as exc:  # noqa: BLE001 - any other error is the failure we report
            self.fail(promise, f"{what} raised {type(exc).__name__}: {exc}, not {error.__name__}")
        self.fail(promise, f"{what} was accepted silently")

    def rebuild(
        self,
        cls: type,
        module: Any,
        same_outputs: Callable[[Any, str], None],
        device: torch.device,
        *,
        noun: str,
    ) -> Any:
        """The promises every component's ``config()`` and state make, checked on ``module``:
        ``config()`` is a JSON-serialisable dict; ``cls(**config())``, built from the JSON
        round trip with another seed, gives the same ``config()``, takes the state dict and
        gives the same outputs (``same_outputs(other, promise)`` compares them); so does a
        fresh instance given the state dict through a safetensors file. Returns the rebuilt
        instance (``noun`` names the kind in the promises: ``"quantizer"`` …)."""
        from safetensors.torch import load_file, save_file

        try:
            cfg_json = json.dumps(module.config())
        except (TypeError, ValueError) as exc:
            self.fail("config() is JSON-serialisable", f"{type(exc).__name__}: {exc}")
        cfg = json.loads(cfg_json)
        self.expect(isinstance(cfg, dict), "config() returns a dict", f"got {cfg_json}")
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}

        promise = f"cls(**config()) rebuilds the {noun}"
        torch.manual_seed(1)  # a fresh instance must not match by sharing the seed
        rebuilt = self.build(cls, cfg, promise).to(device)
        again = json.loads(json.dumps(rebuilt.config()))
        self.expect(again == cfg, promise, f"config() {again!r} differs from {cfg!r}")
        _load_state(self, rebuilt, state, f"{promise}: it accepts the state dict")
        same_outputs(rebuilt, "cls(**config()) with the state dict gives the same outputs")

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{noun}.safetensors")
            try:
                save_file({k: v.contiguous() for k, v in state.items()}, path)
            except Exception as exc:  # noqa: BLE001
                self.fail(
                    "the state dict saves with safetensors",
                    f"save_file raised {type(exc).__name__}: {exc}",
                )
            loaded = load_file(path, device=str(device))
        torch.manual_seed(2)
        fresh = self.build(cls, cfg, promise).to(device)
        _load_state(self, fresh, loaded, "all learned state loads back from safetensors")
        same_outputs(fresh, "a safetensors save/load round trip gives the same outputs")
        return rebuilt

    def expect_unchanged(self, before: Mapping[str, Tensor], module: Any, promise: str) -> None:
        """Every buffer and parameter of ``module`` still equals ``before`` (:func:`state_of`)."""
        after = state_of(module)
        for key, value in before.items():
            self.expect(key in after and torch.equal(value, after[key]), promise, f"{key} changed")

    def expect(self, ok: bool, promise: str, detail: str = "") -> None:
        if not ok:
            self.fail(promise, detail)


def resolve(cls_or_name: type | str, kind: str = "quantizers") -> tuple[type, str]:
    """The class to check and how messages name it.

    :param cls_or_name: the class itself, or a name registered for ``kind``.
    :param kind: the registry to look names up in: ``"quantizers"``,
        ``"architectures"`` or ``"datasets"``.
    """
    noun = kind.removesuffix("s")
    if isinstance(cls_or_name, str):
        from ..registry import registry

        cls = registry(kind).get(cls_or_name)
        return cls, f"{noun} {cls_or_name!r} ({getattr(cls, '__qualname__', cls)})"
    name = getattr(cls_or_name, "__qualname__", repr(cls_or_name))
    return cls_or_name, f"{noun} {name}"


def config_for(
    cls: type, config: Mapping[str, Any] | None, default: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """``config`` if given, else the class's ``example_config()`` (a classmethod, or a plain
    dict attribute), else ``default`` (``None`` when there is no default either)."""
    if config is not None:
        return dict(config)
    hook = getattr(cls, "example_config", None)
    if hook is None:
        return None if default is None else dict(default)
    return dict(hook() if callable(hook) else hook)


def diff(a: Tensor, b: Tensor) -> str:
    """A short description of how two tensors differ."""
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.dtype != b.dtype:
        return f"dtypes {a.dtype} vs {b.dtype}"
    if a.is_floating_point():
        delta = (a.double() - b.double()).abs()
        return f"max abs difference {delta.max().item():.3g}" if delta.numel() else "empty"
    unequal = int((a != b).sum())
    return f"{unequal} of {a.numel()} entries differ"


def state_of(module: torch.nn.Module) -> dict[str, Tensor]:
    """A copy of every buffer and parameter, by ``"buffer name"`` / ``"parameter name"``."""
    state = {f"buffer {n}": b.detach().clone() for n, b in module.named_buffers()}
    state.update({f"parameter {n}": p.detach().clone() for n, p in module.named_parameters()})
    return state


@contextlib.contextmanager
def fork_rng(device: torch.device, seed: int = 0) -> Iterator[None]:
    """Run the block with its own random state (seeded with ``seed``) and give the caller's
    back afterwards, on the CPU and on ``device`` when it is a CUDA device."""
    devices = [] if device.type != "cuda" else [device.index or torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bf16, or fp16 on a CUDA device without bf16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _load_state(check: Check, module: Any, state: Mapping[str, Tensor], promise: str) -> None:
    try:
        module.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - reported as the broken promise
        check.fail(promise, f"load_state_dict raised {type(exc).__name__}: {exc}")


def start(
    cls_or_name: type | str,
    kind: str,
    base: type,
    base_name: str,
    config: Mapping[str, Any] | None,
    default: dict[str, Any] | None,
) -> tuple[type, Check, dict[str, Any] | None]:
    """What every check begins with: the class under test (resolved in the ``kind``
    registry when given by name), the :class:`Check` that reports for it (after checking
    that it subclasses ``base``, called ``base_name`` in the message), and the config to
    build it with (:func:`config_for`)."""
    cls, label = resolve(cls_or_name, kind)
    check = Check(label, base.__name__)
    check.expect(
        isinstance(cls, type) and issubclass(cls, base),
        f"the class is a subclass of {base_name}",
        f"got {cls!r}",
    )
    return cls, check, config_for(cls, config, default)
