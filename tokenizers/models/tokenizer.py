"""``Tokenizer``: an architecture's encoder → a bottleneck → the decoder.

The bottleneck is a quantizer (a discrete tokenizer: tokens are int64 ``(b, *grid,
s)``) or a continuous bottleneck such as ``gaussian`` (a VAE: latents are float32
means ``(b, *grid, l)``); :mod:`tok.bottleneck` has the contract. Images go in and
come out as floats in ``[0, 1]``, ``(b, c, h, w)``. A saved tokenizer is a folder with
``model.safetensors`` (the weights, plus one metadata entry, ``tok.config``: the
architecture and quantizer configs they were trained with, so that weights and a
``tokenizer.json`` that disagree are named key by key; ``sha256sum`` of the file is
the fingerprint recorded in token files) and ``tokenizer.json`` (the
registry names and configs that rebuild it). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .._io import check_readable, file_sha256, nonfinite_tensors, write_json, write_safetensors
from ..bottleneck import Bottleneck
from ..components import Facts, build
from ..errors import CheckpointError, ConfigError, TokError, UnknownNameError
from ..helpers import differing_keys
from ..quantizer import Quantizer
from ..registry import missing_plugin, provenance, registry
from .base import Architecture

__all__ = ["Tokenizer", "TokenizerOutput", "WEIGHTS", "CONFIG", "TOKENIZER_FORMAT"]

WEIGHTS = "model.safetensors"
#: the metadata key of ``model.safetensors`` that records the configs the weights belong to
WEIGHTS_CONFIG = "tok.config"
CONFIG = "tokenizer.json"
TOKENIZER_FORMAT = "tok.tokenizer/2"
#: formats :meth:`Tokenizer.load` reads: 1 lacks ``plugins`` (which distribution
#: provided each component), otherwise the same
READABLE_FORMATS = ("tok.tokenizer/1", TOKENIZER_FORMAT)


#: the two roles a bottleneck can have: tokenizer.json key -> registry kind
ROLES = {"quantizer": "quantizers", "bottleneck": "bottlenecks"}


@dataclass(frozen=True)
class TokenizerOutput:
    """What ``Tokenizer.forward`` returns.

    - ``reconstruction``: float32, the input's shape, in ``[0, 1]`` only approximately
      (not clamped, so the loss sees the raw output).
    - ``codes``: what tok stores for the input — int64 token indices ``(b, *grid, s)``
      for a quantizer, float32 latent means ``(b, *grid, l)`` for a continuous
      bottleneck.
    - ``aux_loss``, ``metrics``: the bottleneck's.
    - ``kl``: float32 ``(b, *grid, l)``, each latent unit's KL in nats (continuous
      bottlenecks); ``None`` for a quantizer.
    - ``logits``: float32, the input's shape: the decoder's logits when its architecture
      has ``output_logits`` (``reconstruction`` is their sigmoid); else ``None``.
    """

    reconstruction: Tensor
    codes: Tensor
    aux_loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    kl: Tensor | None = None
    logits: Tensor | None = None

    @property
    def indices(self) -> Tensor:
        """The token indices ``(b, *grid, s)`` of a discrete tokenizer.

        :raises TokError: for a continuous tokenizer, which has latents (``codes``)."""
        if self.codes.is_floating_point():
            raise TokError("a continuous tokenizer has no token indices: its latents are .codes")
        return self.codes


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(n)) for n in shape)


def _where(position: tuple[int, ...]) -> str:
    names = ("channel", "frame", "row", "column") if len(position) == 4 else ("channel", "row", "column")  # fmt: skip
    return ", ".join(f"{n} {i}" for n, i in zip(names, position, strict=False))


def recorded_config(weights_path: str | Path) -> dict[str, Any] | None:
    """The configs a ``model.safetensors`` records (``tok.config``, see
    :meth:`Tokenizer.model_config`); ``None`` for a file without the record (written
    before tok recorded it) or one that cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as f:
            return json.loads((f.metadata() or {})[WEIGHTS_CONFIG])
    except Exception:  # noqa: BLE001 - no record, or an unreadable one: nothing to compare
        return None


def config_differences(config: dict[str, Any], recorded: dict[str, Any], where: str) -> str:
    """``"KEY is A in WHERE but B in the weights"`` for each key of two
    :meth:`Tokenizer.model_config` dicts that differ, joined by ``; `` (empty: none)."""
    return "; ".join(
        f"{key} is {ours!r} in {where} but {theirs!r} in the weights"
        for key, ours, theirs in differing_keys(config, recorded)
    )


class Tokenizer(nn.Module):
    """An image tokenizer: ``encode(images) -> codes`` and ``decode(codes) -> images``.

    Codes are token indices for a discrete tokenizer (a quantizer between encoder and
    decoder) and latent means for a continuous one (a :class:`ContinuousBottleneck`).

    :param architecture: the encoder/decoder module.
    :param quantizer: a quantizer (or any :class:`tok.bottleneck.Bottleneck`); its ``dim``
        must equal ``architecture.latent_dim``.
    :param bottleneck: a continuous bottleneck instead of ``quantizer`` (give one of the two).
    :param input_shape: ``(c, h, w)`` of the images it was built for.
    :raises TokError: neither or both of ``quantizer`` and ``bottleneck``; a ``dim`` that
        does not match the architecture.
    """

    def __init__(
        self,
        *,
        architecture: Architecture,
        quantizer: Bottleneck | None = None,
        bottleneck: Bottleneck | None = None,
        input_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        if (quantizer is None) == (bottleneck is None):
            raise TokError("a tokenizer takes one bottleneck: a quantizer or a continuous one")
        module = quantizer if quantizer is not None else bottleneck
        if module.dim != architecture.latent_dim:
            raise TokError(
                f"{'quantizer' if module.discrete else 'bottleneck'} dim {module.dim} does not "
                f"match the architecture's latent_dim {architecture.latent_dim}"
            )
        self.architecture = architecture
        #: the tokenizer.json key and state-dict prefix of the bottleneck
        self.role = "quantizer" if module.discrete else "bottleneck"
        self._modules[self.role] = module
        self.input_shape = tuple(int(v) for v in input_shape)
        self.architecture_name = (
            registry("architectures").name_of(architecture) or type(architecture).__name__.lower()
        )
        self.bottleneck_name = (
            registry(ROLES[self.role]).name_of(module) or type(module).__name__.lower()
        )
        self.weights_sha256: str | None = None  # set by save() and load()

    @property
    def bottleneck(self) -> Bottleneck:
        """The module between encoder and decoder: the quantizer or the continuous bottleneck."""
        return self._modules[self.role]

    @property
    def quantizer(self) -> Quantizer | None:
        """The quantizer of a discrete tokenizer; ``None`` for a continuous one."""
        return self._modules.get("quantizer")

    @property
    def continuous(self) -> bool:
        """True when the codes are float latents (a continuous bottleneck), not indices."""
        return not self.bottleneck.discrete

    # construction ------------------------------------------------------------

    @classmethod
    def from_config(cls, config: dict[str, Any], *, steps: int | None = None) -> Tokenizer:
        """Build an untrained tokenizer from a ``config()`` dict (registry names + kwargs).

        ``config`` needs ``architecture``, ``quantizer`` or ``bottleneck`` (``{"name",
        "config"}``) and ``input_shape``; the options the components let tok supply and
        the config leaves out (``in_channels``, the bottleneck's ``dim`` …) come from
        the input shape, the architecture and ``steps``, the run's training steps
        (:func:`tok.components.fill`).
        """
        role = "bottleneck" if "bottleneck" in config else "quantizer"
        arch_cfg, q_cfg = config["architecture"], config[role]
        input_shape = tuple(int(v) for v in config["input_shape"])
        architecture = build(
            "architectures",
            arch_cfg["name"],
            arch_cfg.get("config", {}),
            Facts(input_shape=input_shape),
        )
        module = build(
            ROLES[role],
            q_cfg["name"],
            q_cfg.get("config", {}),
            Facts(latent_dim=architecture.latent_dim, steps=steps),
        )
        return cls(architecture=architecture, **{role: module}, input_shape=input_shape)

    def config(self) -> dict[str, Any]:
        """Registry names and configs that rebuild this tokenizer (JSON-serialisable):
        ``quantizer`` and ``codebook_sizes`` for a discrete tokenizer, ``bottleneck`` and
        ``latent_dim`` for a continuous one."""
        b = self.bottleneck
        return {
            "format": TOKENIZER_FORMAT,
            "architecture": {"name": self.architecture_name, "config": self.architecture.config()},
            self.role: {"name": self.bottleneck_name, "config": b.config()},
            "input_shape": list(self.input_shape),
            "grid": list(self.grid),
            **(
                {"latent_dim": b.latent_dim}
                if self.continuous
                else {"codebook_sizes": list(b.codebook_sizes)}
            ),
            "plugins": self.plugins(),
        }

    def model_config(self) -> dict[str, Any]:
        """What the weights depend on — ``architecture``, ``quantizer`` (or ``bottleneck``)
        and ``input_shape`` of :meth:`config` —, as ``model.safetensors`` records it
        (``tok.config``)."""
        config = self.config()
        return {k: config[k] for k in ("architecture", self.role, "input_shape")}

    def plugins(self) -> dict[str, dict[str, str | None]]:
        """Which plugin and distribution (and version) provided the architecture and the
        bottleneck (:func:`tok.registry.provenance`); empty for unregistered classes."""
        found = {}
        for role, kind, name in (
            ("architecture", "architectures", self.architecture_name),
            (self.role, ROLES[self.role], self.bottleneck_name),
        ):
            if name in registry(kind):
                found[role] = provenance(kind, name)
        return found

    @property
    def grid(self) -> tuple[int, ...]:
        """The latent grid of one input (``(h', w')`` for images, ``(K,)`` for 1D tokens)."""
        return tuple(self.architecture.grid(self.input_shape))

    @property
    def bits_per_pixel(self) -> float:
        """Token bits per input pixel (a discrete tokenizer's rate; NaN for a continuous
        one, whose rate is its KL, measured by :func:`tok.run.evaluate`)."""
        if self.continuous:
            return float("nan")
        positions = 1
        for g in self.grid:
            positions *= g
        pixels = 1
        for s in self.input_shape[1:]:
            pixels *= s
        return positions * self.quantizer.bits_per_position / pixels

    # the model -----------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The architecture's floating-point dtype (float32 unless the module was cast):
        inputs and latents are cast to it; outputs are float32 whatever it is."""
        for p in self.architecture.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def check_input(self, images: Tensor, *, finite: bool = True) -> None:
        """Raise a :class:`tok.errors.ConfigError` unless ``images`` is a float tensor
        ``(b, *input_shape)`` whose sizes the architecture takes (``Architecture.grid``:
        e.g. any multiple of the stride for ``conv``, the trained size for ``seq1d``) and,
        with ``finite``, whose values are all finite — the message says how many are
        not and where the first one is."""
        if not isinstance(images, Tensor) or not images.is_floating_point():
            got = images.dtype if isinstance(images, Tensor) else type(images).__name__
            hint = " (divide uint8 images by 255)" if got == torch.uint8 else ""
            raise ConfigError(f"a tokenizer takes float images in [0, 1], got {got}{hint}")
        shape = tuple(images.shape)
        if images.ndim != len(self.input_shape) + 1:
            axes = "c, t, h, w" if len(self.input_shape) == 4 else "c, h, w"
            raise ConfigError(
                f"a tokenizer built for {_size(self.input_shape)} inputs takes a batch "
                f"(b, {axes}), got a tensor of shape {shape}"
            )
        try:
            self.architecture.grid(shape[1:])
        except TokError as exc:
            raise ConfigError(
                f"this tokenizer (trained on {_size(self.input_shape)}) cannot take "
                f"{_size(shape[1:])} inputs: {exc}"
            ) from exc
        if finite:
            bad = ~torch.isfinite(images)
            count = int(bad.sum())
            if count:
                first = tuple(int(i) for i in bad.nonzero()[0])
                nan = int(torch.isnan(images).sum())
                raise ConfigError(
                    f"the input holds {count} non-finite value(s) ({nan} NaN, "
                    f"{count - nan} ±inf) out of {images.numel()}; the first is in item "
                    f"{first[0]} at {_where(first[1:])}"
                )

    def forward(self, images: Tensor) -> TokenizerOutput:
        """Reconstruct ``images`` (``(b, c, h, w)`` in ``[0, 1]``) through the tokens.

        Sizes are checked (:meth:`check_input`), values are not (training calls this
        every step). The reconstruction is float32 whatever :attr:`dtype` is.
        """
        self.check_input(images, finite=False)
        dtype = self.dtype
        z = self.architecture.encode(self.to_input(images))
        q = self.bottleneck(z)
        y = self.architecture.decode(q.latent.to(dtype)).float()
        logits = y if self.architecture.output_logits else None
        if self.continuous:
            return TokenizerOutput(self.to_image(y), q.mean, q.aux_loss, q.metrics, q.kl, logits)
        return TokenizerOutput(self.to_image(y), q.indices, q.aux_loss, q.metrics, logits=logits)

    def to_input(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` → what the encoder reads, in :attr:`dtype`: ``2x − 1``, or
        the images themselves for an architecture with ``unit_input``."""
        x = images if self.architecture.unit_input else images * 2 - 1
        return x.to(self.dtype)

    def to_image(self, decoded: Tensor) -> Tensor:
        """The decoder's output → the image, float32, unclamped: ``y·½ + ½`` of its
        ``[-1, 1]`` output, or the sigmoid of its logits (``output_logits``)."""
        if self.architecture.output_logits:
            return torch.sigmoid(decoded.float())
        return decoded.float() * 0.5 + 0.5

    @torch.no_grad()
    def sample_forward(
        self, images: Tensor, *, generator: torch.Generator | None = None
    ) -> TokenizerOutput:
        """``forward`` with the decoder reading one posterior sample per image
        (:meth:`tok.bottleneck.ContinuousBottleneck.sample`, drawn with ``generator``)
        instead of what the bottleneck's mode gives; no state changes (the ELBO's
        one-sample estimate in evaluation). A discrete tokenizer's is its ``forward``."""
        self.check_input(images, finite=False)
        if not self.continuous:
            return self(images)
        z = self.architecture.encode(self.to_input(images))
        q = self.bottleneck(z)
        y = self.architecture.decode(self.bottleneck.sample(z, generator=generator).to(self.dtype))
        logits = y.float() if self.architecture.output_logits else None
        return TokenizerOutput(self.to_image(y), q.mean, q.aux_loss, q.metrics, q.kl, logits)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images ``(b, c, h, w)`` in ``[0, 1]`` → codes: token indices, int64 ``(b, *grid,
        s)``, or for a continuous tokenizer the latent means, float32 ``(b, *grid, l)``
        (eval mode gives the same means a training forward samples around).

        :raises ConfigError: for images the tokenizer cannot take (:meth:`check_input`):
            not float, another channel count or a size the architecture refuses, or
            non-finite values; and when the encoder's latents are not finite (damaged
            weights), instead of returning meaningless tokens.
        """
        self.check_input(images)
        z = self.architecture.encode(self.to_input(images))
        if not bool(torch.isfinite(z).all()):
            dtype = str(self.dtype).removeprefix("torch.")
            raise ConfigError(
                f"the encoder gave non-finite latents for finite images (values "
                f"{float(images.min()):.3g} to {float(images.max()):.3g}; a tokenizer takes "
                f"[0, 1]): input far out of range for its {dtype} weights, or damaged weights"
            )
        if self.continuous:
            was_training = self.bottleneck.training
            self.bottleneck.eval()  # the mean, never a sample
            try:
                return self.bottleneck(z).mean
            finally:
                self.bottleneck.train(was_training)
        return self.quantizer(z).indices

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (:meth:`encode`'s: indices ``(b, *grid, s)``, or latents ``(b, *grid, l)``
        for a continuous tokenizer) → float32 images ``(b, c, h, w)`` clamped to ``[0, 1]``.

        :raises IndexRangeError: indices out of a codebook's range.
        :raises ConfigError: latents of the wrong shape or dtype.
        """
        b = self.bottleneck
        latent = b.latent_to_codes(codes) if self.continuous else b.indices_to_codes(codes)
        return self.to_image(self.architecture.decode(latent.to(self.dtype))).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """``decode(encode(images))`` in one pass, clamped to ``[0, 1]``; the same
        checks as :meth:`encode`."""
        self.check_input(images)
        return self(images).reconstruction.clamp(0, 1)

    # files ---------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` and ``tokenizer.json`` atomically into ``folder``.

        Returns the folder. Sets ``weights_sha256`` to the sha256 of the weights file.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        bad = nonfinite_tensors(state)
        if bad:
            raise CheckpointError(
                f"refusing to save the tokenizer into {folder}: non-finite weights in "
                f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} (a diverged run?)"
            )
        metadata = {WEIGHTS_CONFIG: json.dumps(self.model_config())}
        write_safetensors(folder / WEIGHTS, state, metadata=metadata)
        self.weights_sha256 = file_sha256(folder / WEIGHTS)
        write_json(folder / CONFIG, {**self.config(), "weights_sha256": self.weights_sha256})
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, map_location: str | torch.device = "cpu") -> Tokenizer:
        """Load a tokenizer saved with :meth:`save` (a folder, e.g. a run folder), in eval mode."""
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        if not folder.exists():
            raise CheckpointError(f"no tokenizer at {folder}: no such folder")
        config_path, weights_path = folder / CONFIG, folder / WEIGHTS
        for p in (config_path, weights_path):
            if not p.is_file():
                raise CheckpointError(
                    f"no tokenizer in {folder}: {p.name} is missing "
                    f"(expected a run folder written by `tok train`)"
                )
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {config_path}: {exc}") from exc
        if not isinstance(config, dict) or config.get("format") not in READABLE_FORMATS:
            found = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise CheckpointError(
                f"{config_path} is not a tok tokenizer config this version of tok reads "
                f"(format {found!r}; it reads {', '.join(READABLE_FORMATS)})"
            )
        try:
            tokenizer = cls.from_config(config)
        except UnknownNameError as exc:  # the plugin that made it is gone?
            recorded = config.get("plugins") or {}
            for role, kind in (("architecture", "architectures"), *ROLES.items()):
                name = (config.get(role) or {}).get("name")
                message = missing_plugin(kind, name, recorded.get(role)) if name else None
                if message:
                    raise CheckpointError(
                        f"cannot load the tokenizer in {folder}: {message}"
                    ) from exc
            raise CheckpointError(f"cannot rebuild the tokenizer in {config_path}: {exc}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{config_path} is damaged: cannot rebuild the tokenizer from it "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        except CheckpointError:
            raise
        except TokError as exc:  # unknown name (a plugin missing?), bad options, dim mismatch
            raise CheckpointError(f"cannot rebuild the tokenizer in {config_path}: {exc}") from exc
        check_readable(weights_path)  # the OS's cause, not safetensors' "no such file"
        try:
            state = load_file(weights_path, device=str(map_location))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise CheckpointError(f"cannot read weights {weights_path}: {exc}") from exc
        recorded = recorded_config(weights_path)
        differ = recorded and config_differences(tokenizer.model_config(), recorded, CONFIG)
        if differ:  # the same shapes need not be the same model (levels [8, 5, 5, 4])
            raise CheckpointError(
                f"weights in {weights_path} do not fit {config_path.name}: {differ}"
            )
        try:
            missing, unexpected = tokenizer.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            detail = str(exc).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"weights in {weights_path} do not fit {config_path.name}: {detail}"
            ) from exc
        if missing or unexpected:
            raise CheckpointError(
                f"weights in {weights_path} do not fit {config_path.name}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        bad = nonfinite_tensors(state)
        if bad:
            raise CheckpointError(
                f"weights in {weights_path} are damaged: non-finite values in "
                f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}"
            )
        tokenizer.weights_sha256 = file_sha256(weights_path)
        return tokenizer.eval()
