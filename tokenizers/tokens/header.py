"""Token-file headers: what every token or latent file records about the tokenizer that
made its rows (:class:`TokenHeader` for integer tokens, :class:`LatentHeader` for a
continuous tokenizer's latents), the formats, and their parsing from a file's metadata
or a manifest. :mod:`tok.tokens.file` reads and writes the files themselves.

Why this module is longer than 500 lines: both header kinds share one base class, its
field validation and the parsers that tell the kinds apart (from a file's metadata, from
a manifest, from a tokenizer); split by kind, each half would import the other's checks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError, TokenFileError, TokError

__all__ = [
    "FORMAT",
    "LATENT_FORMAT",
    "RAGGED_FORMAT",
    "READ_FORMATS",
    "LATENT_DTYPES",
    "TENSOR",
    "LATENT_TENSOR",
    "INT_DTYPES",
    "STORE_DTYPES",
    "token_dtype",
    "unreadable_format",
    "Header",
    "TokenHeader",
    "LatentHeader",
    "header_for_tokenizer",
    "header_from_dict",
    "header_from_metadata",
]

#: the format of the token files (integer tokens) this version writes
FORMAT = "tok.tokens/2"
#: the format of the latent files (a continuous tokenizer's float latents) this version
#: writes: ``tok.tokens/2`` plus the ``kind`` field and the latent header
LATENT_FORMAT = "tok.tokens/3"
#: the format of files whose rows have grids of their own (``--resize keep``, either kind):
#: ``/3`` plus the ``ragged`` field and the ``grids`` and ``sizes`` tensors
RAGGED_FORMAT = "tok.tokens/4"
#: every token-file format this version reads (``tok.tokens/1``: no ``plugins``)
READ_FORMATS = ("tok.tokens/1", "tok.tokens/2", "tok.tokens/3", RAGGED_FORMAT)
#: the tensors of a ragged file besides its rows: each row's latent grid and the input
#: size it was encoded from (int64 ``(N, len(grid))`` each)
GRIDS_TENSOR = "grids"
SIZES_TENSOR = "sizes"
#: the name of the tensor in a token file
TENSOR = "tokens"
#: the name of the tensor in a latent file
LATENT_TENSOR = "latents"
#: the float dtypes a latent file may store its latents in, by the name its header gives
LATENT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

INT_DTYPES = {
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    *(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)),
}
STORE_DTYPES = {torch.uint8, torch.int16, torch.int32}


def token_dtype(codebook_sizes: tuple[int, ...]) -> torch.dtype:
    """Return the smallest integer dtype that holds every index of every codebook.

    ``uint8`` when the largest codebook has at most 256 entries, ``int16`` up
    to 32768 (largest index 32767), ``int32`` up to 2**31. Raises
    :class:`ConfigError` for an empty list, non-positive sizes or a codebook
    too large for ``int32`` (e.g. LFQ with more than 31 bits).
    """
    sizes = _check_sizes(codebook_sizes)
    if sizes is None or not sizes:
        raise ConfigError(
            f"codebook_sizes must be a non-empty list of positive ints, got {codebook_sizes!r}"
        )
    k = max(sizes)
    if k <= 2**8:
        return torch.uint8
    if k <= 2**15:
        return torch.int16
    if k <= 2**31:
        return torch.int32
    raise ConfigError(f"codebook size {k} is too large for a token file (at most 2**31 entries)")


def _check_sizes(value: Any) -> tuple[int, ...] | None:
    """``value`` as a tuple of ints (``None`` when it is not a list of positive ints)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return None
    return tuple(int(v) for v in value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _where(path: str | os.PathLike[str] | None) -> str:
    return f"{path}: " if path is not None else ""


def unreadable_format(fmt: Any, *, path: Any, reads: tuple[str, ...]) -> str:
    """The one-line refusal of a file or manifest that says it has format ``fmt``."""
    advice = "upgrade tok" if str(fmt).startswith("tok.") else "it was not written by tok"
    return (
        f"{path} was written in format {fmt!r}, which this version of tok cannot read "
        f"(it reads {', '.join(reads)}); {advice}"
    )


def _check_plugins(value: Any) -> bool:
    """Whether ``value`` is ``{role: {"plugin": ..., ...}}`` with string or null leaves."""
    return isinstance(value, dict) and all(
        isinstance(role, str)
        and isinstance(info, dict)
        and all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in info.items())
        for role, info in value.items()
    )


# ---------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------

#: the optional fields both kinds of header have: where the rows came from
_OPTIONAL = ("tokenizer_config", "tokenizer_path", "source", "plugins", "source_options")
_JSON_PROVENANCE = ("tokenizer_config", "plugins", "source_options", "ragged")


class _Header:
    """What :class:`TokenHeader` and :class:`LatentHeader` share: the grid, the weights
    fingerprint, the provenance fields and how they are stored."""

    #: ``"tokens"`` or ``"latents"``: what the rows are
    kind: ClassVar[str]
    #: the format a file of this kind is written in
    format: ClassVar[str]
    #: the name of the file's one tensor
    tensor: ClassVar[str]
    #: the dtype the rows are read back as
    read_dtype: ClassVar[torch.dtype]
    #: the fields of this kind (besides the optional ones), in the order ``to_dict`` gives
    _FIELDS: ClassVar[tuple[str, ...]]
    #: the fields stored JSON-encoded in safetensors metadata
    _JSON_FIELDS: ClassVar[tuple[str, ...]]

    grid: tuple[int, ...]
    tokenizer_sha256: str
    ragged: bool

    @property
    def file_format(self) -> str:
        """The format a file of these rows is written in: the kind's, or
        :data:`RAGGED_FORMAT` for ragged rows."""
        return RAGGED_FORMAT if self.ragged else self.format

    def _check_common(self) -> None:
        if not isinstance(self.ragged, bool):
            raise ConfigError(f"ragged must be true or false, got {self.ragged!r}")
        grid = _check_sizes(self.grid)
        if grid is None:
            raise ConfigError(f"grid must be a list of positive ints, got {self.grid!r}")
        plugins = getattr(self, "plugins", None)
        if plugins is not None and not _check_plugins(plugins):
            raise ConfigError(
                "plugins must map a role to {'plugin', 'distribution', 'version'} "
                f"(strings or None), got {plugins!r}"
            )
        object.__setattr__(self, "grid", grid)

    def same_tokenizer(self, other: Header | str) -> bool:
        """Return whether ``other`` (a header or a sha256) names the same tokenizer weights."""
        sha = other if isinstance(other, str) else other.tokenizer_sha256
        return self.tokenizer_sha256 == sha

    def same_layout(self, other: Header) -> bool:
        """Whether rows under ``other`` have the kind, shape and stored dtype of these rows."""
        return self.describe() == other.describe()

    @property
    def row_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        """The shape of one row: ``(*grid, S)`` for tokens, ``(*grid, l)`` for latents."""
        raise NotImplementedError

    @property
    def storage_dtype(self) -> torch.dtype:  # pragma: no cover - abstract
        """The dtype a file stores its rows in."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        """What a row is, in words: ``"tokens 7x7x1 (codebook sizes 1000)"``,
        ``"latents 1x20 float32"``."""
        raise NotImplementedError

    @property
    def width(self) -> int:  # pragma: no cover - abstract
        """The last axis of a row: streams ``S`` for tokens, ``l`` for latents."""
        raise NotImplementedError

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of the stored tensor without its first axis: ``row_shape``, or for
        ragged rows (all rows' positions one after another) ``(width,)``."""
        return (self.width,) if self.ragged else self.row_shape

    def empty(self) -> Tensor:
        """No rows: ``(0, *stored_shape)`` in the dtype rows are read back as."""
        return torch.zeros((0, *self.stored_shape), dtype=self.read_dtype)

    def to_dict(self) -> dict[str, Any]:
        """Return the header as a JSON-ready dict (lists for tuples; ``None`` fields left out;
        a latent header's ``kind`` first)."""
        d: dict[str, Any] = {}
        for name in self._FIELDS:
            value = self.kind if name == "kind" else getattr(self, name)
            d[name] = list(value) if isinstance(value, tuple) else value
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        if self.ragged:  # absent, not false, in headers of uniform rows (as before /4)
            d["ragged"] = True
        return d

    def to_metadata(self) -> dict[str, str]:
        """Return the header as safetensors metadata (``str -> str``, with ``format``).

        ``format`` is the kind's (:data:`FORMAT` for tokens, :data:`LATENT_FORMAT` for
        latents); non-string fields are JSON-encoded. Raises :class:`TokenFileError` if
        one cannot be (e.g. a config holding a tensor).
        """
        meta = {"format": self.file_format}
        for name, value in self.to_dict().items():
            if name in self._JSON_FIELDS:
                try:
                    meta[name] = json.dumps(value, sort_keys=True)
                except (TypeError, ValueError) as e:
                    raise TokenFileError(
                        f"token header field {name!r} cannot be stored as JSON: {e}"
                    ) from None
            else:
                meta[name] = str(value)
        return meta

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None) -> Any:
        """Return the header stored in ``d`` (as :meth:`to_dict` wrote it).

        Raises :class:`TokenFileError` naming ``path`` and the missing or bad field, or
        naming both kinds when ``d`` is the other kind's header
        (:func:`header_from_dict` reads either).
        """
        return _own_kind(cls, header_from_dict(d, path=path), path)

    @classmethod
    def from_metadata(
        cls, meta: Mapping[str, str] | None, *, path: str | os.PathLike[str] | None = None
    ) -> Any:
        """Return the header stored in safetensors metadata ``meta`` (any of
        :data:`READ_FORMATS`).

        Raises :class:`TokenFileError` as :meth:`from_dict` does
        (:func:`header_from_metadata` reads either kind).
        """
        return _own_kind(cls, header_from_metadata(meta, path=path), path)

    @classmethod
    def _parse(cls, d: Mapping[str, Any], where: str) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _parse_common(cls, d: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The fields both kinds have, from ``d``, checked (required ones of ``cls`` first)."""
        required = tuple(n for n in cls._FIELDS if n != "kind")
        missing = [name for name in required if name not in d]
        if missing:
            raise TokenFileError(
                f"{where}token header lacks field(s) {', '.join(missing)}; "
                "the file was not written by tok or is damaged"
            )
        bad = _bad(d, where)
        if not isinstance(d["tokenizer_sha256"], str) or not d["tokenizer_sha256"]:
            raise bad("tokenizer_sha256", "a non-empty string")
        grid = _check_sizes(d["grid"])
        if grid is None:
            raise bad("grid", "a list of positive ints")
        tok_config = d.get("tokenizer_config")
        if tok_config is not None and not isinstance(tok_config, dict):
            raise bad("tokenizer_config", "a JSON object")
        for name in ("tokenizer_path", "source"):
            if d.get(name) is not None and not isinstance(d[name], str):
                raise bad(name, "a string")
        plugins = d.get("plugins")
        if plugins is not None and not _check_plugins(plugins):
            raise bad("plugins", "a JSON object of {plugin, distribution, version} objects")
        options = d.get("source_options")
        if options is not None and not isinstance(options, dict):
            raise bad("source_options", "a JSON object")
        if "ragged" in d and d["ragged"] is not True:
            raise bad("ragged", "true (or absent)")
        return {
            "ragged": bool(d.get("ragged", False)),
            "grid": grid,
            "tokenizer_sha256": d["tokenizer_sha256"],
            "tokenizer_config": tok_config,
            "tokenizer_path": d.get("tokenizer_path"),
            "source": d.get("source"),
            "plugins": plugins,
            "source_options": options,
        }


def _bad(d: Mapping[str, Any], where: str):
    def bad(name: str, want: str) -> TokenFileError:
        return TokenFileError(f"{where}token header field {name!r} must be {want}, got {d[name]!r}")

    return bad


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


@dataclass(frozen=True)
class TokenHeader(_Header):
    """What a token file says about the tokens in it (everything but the rows' keys).

    ``plugins`` (new in ``tok.tokens/2``, ``None`` in files of ``tok.tokens/1``)
    says which plugin and distribution provided the architecture and the
    quantizer: ``{"architecture": {"plugin", "distribution", "version"},
    "quantizer": {...}}``. ``source_options`` (``tok.tokens/2``) are the options
    that shaped the inputs read from ``source`` (``{"resize": "center-crop", "fps":
    null}``): a resumed encode must use the same ones.
    """

    kind: ClassVar[str] = "tokens"
    format: ClassVar[str] = FORMAT
    tensor: ClassVar[str] = TENSOR
    read_dtype: ClassVar[torch.dtype] = torch.int64
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "quantizer",
        "quantizer_config",
        "codebook_sizes",
        "grid",
        "tokenizer_sha256",
    )
    _JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "quantizer_config",
        "codebook_sizes",
        "grid",
        *_JSON_PROVENANCE,
    )

    quantizer: str
    quantizer_config: dict
    codebook_sizes: tuple[int, ...]
    grid: tuple[int, ...]
    tokenizer_sha256: str
    tokenizer_config: dict | None = None
    tokenizer_path: str | None = None
    source: str | None = None
    plugins: dict | None = None
    source_options: dict | None = None
    ragged: bool = False

    def __post_init__(self) -> None:
        sizes = _check_sizes(self.codebook_sizes)
        if not sizes:
            raise ConfigError(
                f"codebook_sizes must be a non-empty list of positive ints, got {self.codebook_sizes!r}"
            )
        self._check_common()
        object.__setattr__(self, "codebook_sizes", sizes)

    @property
    def num_streams(self) -> int:
        """The number of token streams ``S`` (one per codebook)."""
        return len(self.codebook_sizes)

    @property
    def width(self) -> int:
        return self.num_streams

    @property
    def row_shape(self) -> tuple[int, ...]:
        """``(*grid, S)`` (for ragged rows, ``grid`` is the tokenizer's trained grid)."""
        return (*self.grid, self.num_streams)

    @property
    def storage_dtype(self) -> torch.dtype:
        """:func:`token_dtype` of the codebook sizes (:class:`ConfigError` if too large)."""
        return token_dtype(self.codebook_sizes)

    def describe(self) -> str:
        sizes = ", ".join(map(str, self.codebook_sizes))
        shape = f"ragged (grid per row)x{self.width}" if self.ragged else _size(self.row_shape)
        return f"tokens {shape} (codebook sizes {sizes})"

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: Any,
        *,
        path: str | None = None,
        source: str | None = None,
        source_options: dict | None = None,
        ragged: bool = False,
    ) -> TokenHeader:
        """The header of tokens made by ``tokenizer`` (a discrete :class:`tok.models.Tokenizer`).

        Its quantizer, codebook sizes, grid, config, weights sha256 and the
        plugins that provided its parts (``tokenizer.plugins()``); ``path``,
        ``source`` and ``source_options`` are recorded as given. Token files name the weights they
        were made with, so a tokenizer that was never saved or loaded (no
        ``weights_sha256`` yet) raises :class:`TokError`, and so does a continuous
        tokenizer, whose rows are latents (:meth:`LatentHeader.for_tokenizer`).
        """
        _check_saved(tokenizer)
        if tokenizer.continuous:
            raise TokError(
                f"this tokenizer is continuous (bottleneck {tokenizer.bottleneck_name!r}): it "
                "makes latents, not tokens; their header is a LatentHeader"
            )
        return cls(
            quantizer=tokenizer.bottleneck_name,
            quantizer_config=tokenizer.quantizer.config(),
            codebook_sizes=tokenizer.quantizer.codebook_sizes,
            ragged=ragged,
            **_provenance(tokenizer, path, source, source_options),
        )

    @classmethod
    def _parse(cls, d: Mapping[str, Any], where: str) -> TokenHeader:
        common = cls._parse_common(d, where)
        bad = _bad(d, where)
        if not isinstance(d["quantizer"], str) or not d["quantizer"]:
            raise bad("quantizer", "a non-empty string")
        if not isinstance(d["quantizer_config"], dict):
            raise bad("quantizer_config", "a JSON object")
        sizes = _check_sizes(d["codebook_sizes"])
        if not sizes:
            raise bad("codebook_sizes", "a non-empty list of positive ints")
        return cls(
            quantizer=d["quantizer"],
            quantizer_config=d["quantizer_config"],
            codebook_sizes=sizes,
            **common,
        )


@dataclass(frozen=True)
class LatentHeader(_Header):
    """What a latent file says about the latents in it (everything but the rows' keys).

    A continuous tokenizer (a VAE's Gaussian bottleneck) stores the posterior mean of each
    row, float ``(N, *grid, latent_dim)``, in the float dtype ``dtype`` names
    (``"float32"``, ``"float16"`` or ``"bfloat16"``: :data:`LATENT_DTYPES`). ``bottleneck``
    and ``bottleneck_config`` name the continuous bottleneck as a token header names its
    quantizer; the other fields are a :class:`TokenHeader`'s. Stored with ``kind:
    "latents"``, in files of format :data:`LATENT_FORMAT`.
    """

    kind: ClassVar[str] = "latents"
    format: ClassVar[str] = LATENT_FORMAT
    tensor: ClassVar[str] = LATENT_TENSOR
    read_dtype: ClassVar[torch.dtype] = torch.float32
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "kind",
        "bottleneck",
        "bottleneck_config",
        "latent_dim",
        "dtype",
        "grid",
        "tokenizer_sha256",
    )
    _JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "bottleneck_config",
        "latent_dim",
        "grid",
        *_JSON_PROVENANCE,
    )

    bottleneck: str
    bottleneck_config: dict
    latent_dim: int
    grid: tuple[int, ...]
    tokenizer_sha256: str
    dtype: str = "float32"
    tokenizer_config: dict | None = None
    tokenizer_path: str | None = None
    source: str | None = None
    plugins: dict | None = None
    source_options: dict | None = None
    ragged: bool = False

    def __post_init__(self) -> None:
        if not _positive_int(self.latent_dim):
            raise ConfigError(f"latent_dim must be a positive int, got {self.latent_dim!r}")
        if self.dtype not in LATENT_DTYPES:
            raise ConfigError(
                f"latents are stored as {', '.join(LATENT_DTYPES)}, not {self.dtype!r}"
            )
        self._check_common()

    @property
    def width(self) -> int:
        return self.latent_dim

    @property
    def row_shape(self) -> tuple[int, ...]:
        """``(*grid, latent_dim)``."""
        return (*self.grid, self.latent_dim)

    @property
    def storage_dtype(self) -> torch.dtype:
        """The torch dtype ``dtype`` names."""
        return LATENT_DTYPES[self.dtype]

    def describe(self) -> str:
        shape = f"ragged (grid per row)x{self.width}" if self.ragged else _size(self.row_shape)
        return f"latents {shape} {self.dtype}"

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: Any,
        *,
        dtype: str = "float32",
        path: str | None = None,
        source: str | None = None,
        source_options: dict | None = None,
        ragged: bool = False,
    ) -> LatentHeader:
        """The header of latents made by ``tokenizer`` (a continuous
        :class:`tok.models.Tokenizer`), stored as ``dtype``.

        Its bottleneck, latent dimensions, grid, config, weights sha256 and plugins, as
        :meth:`TokenHeader.for_tokenizer` records them. Raises :class:`TokError` for a
        tokenizer never saved or loaded or a discrete one (its rows are tokens), and
        :class:`ConfigError` for a ``dtype`` not in :data:`LATENT_DTYPES`.
        """
        _check_saved(tokenizer)
        if not tokenizer.continuous:
            raise TokError(
                f"this tokenizer is discrete (quantizer {tokenizer.bottleneck_name!r}): it makes "
                "tokens, not latents; their header is a TokenHeader"
            )
        return cls(
            bottleneck=tokenizer.bottleneck_name,
            bottleneck_config=tokenizer.bottleneck.config(),
            latent_dim=tokenizer.bottleneck.latent_dim,
            dtype=dtype,
            ragged=ragged,
            **_provenance(tokenizer, path, source, source_options),
        )

    @classmethod
    def _parse(cls, d: Mapping[str, Any], where: str) -> LatentHeader:
        common = cls._parse_common(d, where)
        bad = _bad(d, where)
        if not isinstance(d["bottleneck"], str) or not d["bottleneck"]:
            raise bad("bottleneck", "a non-empty string")
        if not isinstance(d["bottleneck_config"], dict):
            raise bad("bottleneck_config", "a JSON object")
        if not _positive_int(d["latent_dim"]):
            raise bad("latent_dim", "a positive int")
        if d["dtype"] not in LATENT_DTYPES:
            raise bad("dtype", f"one of {', '.join(LATENT_DTYPES)}")
        return cls(
            bottleneck=d["bottleneck"],
            bottleneck_config=d["bottleneck_config"],
            latent_dim=d["latent_dim"],
            dtype=d["dtype"],
            **common,
        )


#: either kind of header
Header = TokenHeader | LatentHeader
_KINDS: dict[str, type[TokenHeader] | type[LatentHeader]] = {
    "tokens": TokenHeader,
    "latents": LatentHeader,
}


def _provenance(
    tokenizer: Any, path: str | None, source: str | None, source_options: dict | None
) -> dict[str, Any]:
    """The fields every header kind records about the tokenizer and the source."""
    return {
        "grid": tokenizer.grid,
        "tokenizer_sha256": tokenizer.weights_sha256,
        "tokenizer_config": tokenizer.config(),
        "tokenizer_path": path,
        "source": source,
        "plugins": tokenizer.plugins(),
        "source_options": source_options,
    }


def _check_saved(tokenizer: Any) -> None:
    if not tokenizer.weights_sha256:
        raise TokError(
            "this tokenizer has no weights sha256 yet: save() or load() it before "
            "writing tokens it made"
        )


def _kind_of(d: Mapping[str, Any], where: str) -> type[TokenHeader] | type[LatentHeader]:
    kind = d.get("kind", "tokens")
    if kind not in _KINDS:
        raise TokenFileError(
            f"{where}token header field 'kind' must be one of {', '.join(_KINDS)}, got {kind!r}"
        )
    return _KINDS[kind]


def _own_kind(cls: type, header: Header, path: Any) -> Any:
    if not isinstance(header, cls):
        raise TokenFileError(
            f"{_where(path)}the header is of {header.kind}, not {cls.kind} (a {cls.__name__} "
            "was asked for; header_from_dict reads either)"
        )
    return header


def header_for_tokenizer(
    tokenizer: Any,
    *,
    dtype: str | None = None,
    path: str | None = None,
    source: str | None = None,
    source_options: dict | None = None,
    ragged: bool = False,
) -> Header:
    """The header of the rows ``tokenizer`` makes: a :class:`LatentHeader` stored as
    ``dtype`` (default ``"float32"``) for a continuous tokenizer, else a
    :class:`TokenHeader`; ``ragged`` for rows of one grid each (``--resize keep``).

    Raises :class:`TokError` for a tokenizer never saved or loaded, :class:`ConfigError`
    for a ``dtype`` given with a discrete tokenizer or not in :data:`LATENT_DTYPES`.
    """
    where = {"path": path, "source": source, "source_options": source_options, "ragged": ragged}
    if tokenizer.continuous:
        return LatentHeader.for_tokenizer(tokenizer, dtype=dtype or "float32", **where)
    if dtype is not None:
        raise ConfigError(
            f"--latent-dtype applies to continuous tokenizers only; this one is discrete "
            f"(quantizer {tokenizer.bottleneck_name!r}) and stores integer tokens"
        )
    return TokenHeader.for_tokenizer(tokenizer, **where)


def header_from_dict(d: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None) -> Header:
    """Return the header stored in ``d`` (a header's ``to_dict()``): a :class:`LatentHeader`
    when ``d["kind"]`` is ``"latents"``, else a :class:`TokenHeader`.

    Raises :class:`TokenFileError` naming ``path`` and the missing or bad field.
    """
    where = _where(path)
    if not isinstance(d, Mapping):
        raise TokenFileError(f"{where}token header is not a JSON object")
    return _kind_of(d, where)._parse(d, where)


def header_from_metadata(
    meta: Mapping[str, str] | None, *, path: str | os.PathLike[str] | None = None
) -> Header:
    """Return the header stored in safetensors metadata ``meta`` (any of :data:`READ_FORMATS`;
    the kind as :func:`header_from_dict` decides it).

    Raises :class:`TokenFileError` naming ``path`` and the missing or bad field.
    """
    where = _where(path)
    meta = dict(meta or {})
    cls = _kind_of(meta, where)
    d: dict[str, Any] = {}
    for name in (*cls._FIELDS, *_OPTIONAL, "ragged"):
        if name not in meta:
            continue
        value = meta[name]
        if name in cls._JSON_FIELDS:
            try:
                value = json.loads(value)
            except (TypeError, ValueError):
                raise TokenFileError(
                    f"{where}token header field {name!r} is not valid JSON: {value!r}"
                ) from None
        d[name] = value
    return cls._parse(d, where)
