"""Token files: one safetensors file of tokens, their source keys and a :class:`TokenHeader`.

The format is described in :mod:`tok.tokens` and docs/token-format.md. This
module writes :data:`FORMAT` and reads every format in :data:`READ_FORMATS`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from .._io import check_readable, write_safetensors
from ..errors import ConfigError, IndexRangeError, TokenFileError, TokError
from .keys import MAX_HEADER_BYTES, keys_json, keys_sha256, metadata_bytes

__all__ = [
    "FORMAT",
    "READ_FORMATS",
    "token_dtype",
    "keys_json",
    "keys_sha256",
    "header_bytes",
    "MAX_HEADER_BYTES",
    "TokenHeader",
    "TokenFile",
    "write_tokens",
    "read_tokens",
]

#: the format of the token files this version writes
FORMAT = "tok.tokens/2"
#: every token-file format this version reads (``tok.tokens/1``: no ``plugins``)
READ_FORMATS = ("tok.tokens/1", "tok.tokens/2")
#: the name of the tensor in a token file
TENSOR = "tokens"

_INT_DTYPES = {
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    *(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)),
}
_STORE_DTYPES = {torch.uint8, torch.int16, torch.int32}


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
# header
# ---------------------------------------------------------------------------

_JSON_FIELDS = (
    "quantizer_config",
    "codebook_sizes",
    "grid",
    "tokenizer_config",
    "plugins",
    "source_options",
)
_REQUIRED = ("quantizer", "quantizer_config", "codebook_sizes", "grid", "tokenizer_sha256")
_OPTIONAL = ("tokenizer_config", "tokenizer_path", "source", "plugins", "source_options")


@dataclass(frozen=True)
class TokenHeader:
    """What a token file says about the tokens in it (everything but the rows' keys).

    ``plugins`` (new in ``tok.tokens/2``, ``None`` in files of ``tok.tokens/1``)
    says which plugin and distribution provided the architecture and the
    quantizer: ``{"architecture": {"plugin", "distribution", "version"},
    "quantizer": {...}}``. ``source_options`` (``tok.tokens/2``) are the options
    that shaped the inputs read from ``source`` (``{"resize": "center-crop", "fps":
    null}``): a resumed encode must use the same ones.
    """

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

    def __post_init__(self) -> None:
        sizes = _check_sizes(self.codebook_sizes)
        if not sizes:
            raise ConfigError(
                f"codebook_sizes must be a non-empty list of positive ints, got {self.codebook_sizes!r}"
            )
        grid = _check_sizes(self.grid)
        if grid is None:
            raise ConfigError(f"grid must be a list of positive ints, got {self.grid!r}")
        if self.plugins is not None and not _check_plugins(self.plugins):
            raise ConfigError(
                "plugins must map a role to {'plugin', 'distribution', 'version'} "
                f"(strings or None), got {self.plugins!r}"
            )
        object.__setattr__(self, "codebook_sizes", sizes)
        object.__setattr__(self, "grid", grid)

    @property
    def num_streams(self) -> int:
        """The number of token streams ``S`` (one per codebook)."""
        return len(self.codebook_sizes)

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: Any,
        *,
        path: str | None = None,
        source: str | None = None,
        source_options: dict | None = None,
    ) -> TokenHeader:
        """The header of tokens made by ``tokenizer`` (a :class:`tok.models.Tokenizer`).

        Its quantizer, codebook sizes, grid, config, weights sha256 and the
        plugins that provided its parts (``tokenizer.plugins()``); ``path``,
        ``source`` and ``source_options`` are recorded as given. Token files name the weights they
        were made with, so a tokenizer that was never saved or loaded (no
        ``weights_sha256`` yet) raises :class:`TokError`.
        """
        if not tokenizer.weights_sha256:
            raise TokError(
                "this tokenizer has no weights sha256 yet: save() or load() it before "
                "writing tokens it made"
            )
        return cls(
            quantizer=tokenizer.quantizer_name,
            quantizer_config=tokenizer.quantizer.config(),
            codebook_sizes=tokenizer.quantizer.codebook_sizes,
            grid=tokenizer.grid,
            tokenizer_sha256=tokenizer.weights_sha256,
            tokenizer_config=tokenizer.config(),
            tokenizer_path=path,
            source=source,
            plugins=tokenizer.plugins(),
            source_options=source_options,
        )

    def same_tokenizer(self, other: TokenHeader | str) -> bool:
        """Return whether ``other`` (a header or a sha256) names the same tokenizer weights."""
        sha = other.tokenizer_sha256 if isinstance(other, TokenHeader) else str(other)
        return self.tokenizer_sha256 == sha

    def to_dict(self) -> dict[str, Any]:
        """Return the header as a JSON-ready dict (lists for tuples; ``None`` fields left out)."""
        d: dict[str, Any] = {
            "quantizer": self.quantizer,
            "quantizer_config": self.quantizer_config,
            "codebook_sizes": list(self.codebook_sizes),
            "grid": list(self.grid),
            "tokenizer_sha256": self.tokenizer_sha256,
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        return d

    def to_metadata(self) -> dict[str, str]:
        """Return the header as safetensors metadata (``str -> str``, with ``format``).

        ``format`` is :data:`FORMAT`; non-string fields are JSON-encoded. Raises
        :class:`TokenFileError` if one cannot be (e.g. a config holding a tensor).
        """
        meta = {"format": FORMAT}
        for name, value in self.to_dict().items():
            if name in _JSON_FIELDS:
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
    def from_dict(
        cls, d: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None
    ) -> TokenHeader:
        """Return the header stored in ``d`` (as :meth:`to_dict` wrote it).

        Raises :class:`TokenFileError` naming ``path`` and the missing or bad field.
        """
        where = _where(path)
        if not isinstance(d, Mapping):
            raise TokenFileError(f"{where}token header is not a JSON object")
        missing = [name for name in _REQUIRED if name not in d]
        if missing:
            raise TokenFileError(
                f"{where}token header lacks field(s) {', '.join(missing)}; "
                "the file was not written by tok or is damaged"
            )

        def bad(name: str, want: str) -> TokenFileError:
            return TokenFileError(
                f"{where}token header field {name!r} must be {want}, got {d[name]!r}"
            )

        for name in ("quantizer", "tokenizer_sha256"):
            if not isinstance(d[name], str) or not d[name]:
                raise bad(name, "a non-empty string")
        if not isinstance(d["quantizer_config"], dict):
            raise bad("quantizer_config", "a JSON object")
        sizes = _check_sizes(d["codebook_sizes"])
        if not sizes:
            raise bad("codebook_sizes", "a non-empty list of positive ints")
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
        return cls(
            quantizer=d["quantizer"],
            quantizer_config=d["quantizer_config"],
            codebook_sizes=sizes,
            grid=grid,
            tokenizer_sha256=d["tokenizer_sha256"],
            tokenizer_config=tok_config,
            tokenizer_path=d.get("tokenizer_path"),
            source=d.get("source"),
            plugins=plugins,
            source_options=options,
        )

    @classmethod
    def from_metadata(
        cls, meta: Mapping[str, str] | None, *, path: str | os.PathLike[str] | None = None
    ) -> TokenHeader:
        """Return the header stored in safetensors metadata ``meta`` (any of :data:`READ_FORMATS`).

        Raises :class:`TokenFileError` naming ``path`` and the missing or bad field.
        """
        where = _where(path)
        meta = dict(meta or {})
        d: dict[str, Any] = {}
        for name in _REQUIRED + _OPTIONAL:
            if name not in meta:
                continue
            value = meta[name]
            if name in _JSON_FIELDS:
                try:
                    value = json.loads(value)
                except (TypeError, ValueError):
                    raise TokenFileError(
                        f"{where}token header field {name!r} is not valid JSON: {value!r}"
                    ) from None
            d[name] = value
        return cls.from_dict(d, path=path)


@dataclass(frozen=True)
class TokenFile:
    """Tokens read from disk: ``tokens`` is int64 ``(N, *grid, S)``, ``keys`` has N entries."""

    tokens: Tensor
    keys: list[str]
    header: TokenHeader
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------------------
# single token files
# ---------------------------------------------------------------------------


def _check_tokens(
    tokens: Tensor, keys: list[str], header: TokenHeader, path: Path, *, reading: bool
) -> Tensor:
    """Validate ``tokens`` against ``header`` and ``keys``; return them as int64 on the CPU."""
    verb = "" if reading else "cannot write "
    where = f"{verb}{path}: "
    if not isinstance(tokens, Tensor) or tokens.dtype not in _INT_DTYPES:
        got = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
        raise TokenFileError(f"{where}tokens must be an integer tensor, got {got}")
    s = header.num_streams
    want = ("N", *header.grid, s)
    if tokens.ndim != len(want) or tuple(tokens.shape[1:]) != (*header.grid, s):
        raise TokenFileError(
            f"{where}tokens have shape {tuple(tokens.shape)}, but the header says "
            f"{want} (grid {header.grid}, {s} stream(s))"
        )
    if len(keys) != tokens.shape[0]:
        raise TokenFileError(f"{where}{tokens.shape[0]} rows of tokens but {len(keys)} keys")
    if not all(isinstance(k, str) for k in keys):
        raise TokenFileError(f"{where}keys must be strings")
    tokens = tokens.detach().to("cpu", torch.int64)
    if tokens.numel():
        flat = tokens.reshape(-1, s)
        sizes = torch.tensor(header.codebook_sizes, dtype=torch.int64)
        bad = (flat < 0) | (flat >= sizes)
        if bool(bad.any()):
            row, stream = (int(i) for i in bad.nonzero()[0])
            value, size = int(flat[row, stream]), header.codebook_sizes[stream]
            message = (
                f"{where}token index {value} in stream {stream} is out of range for "
                f"codebook size {size} (valid: 0..{size - 1})"
            )
            raise TokenFileError(message) if reading else IndexRangeError(message)
    return tokens


def header_bytes(header: TokenHeader, keys: list[str]) -> int:
    """The size of the safetensors header of a token file holding ``keys`` (an upper bound
    within a few hundred bytes): what :data:`MAX_HEADER_BYTES` limits."""
    return metadata_bytes({**header.to_metadata(), "keys": keys_json(keys)})


def write_tokens(
    path: str | os.PathLike[str], tokens: Tensor, *, keys: list[str], header: TokenHeader
) -> Path:
    """Write ``tokens`` ``(N, *grid, S)`` with their ``keys`` to the token file ``path``.

    Validates shape, key count and index ranges (an index outside its stream's
    codebook raises :class:`IndexRangeError`; other problems
    :class:`TokenFileError`), stores the tokens in :func:`token_dtype` and
    writes atomically, in format :data:`FORMAT`. ``N`` may be 0. Returns the
    path written.
    """
    path = Path(path)
    keys = list(keys)
    tokens = _check_tokens(tokens, keys, header, path, reading=False)
    meta = header.to_metadata()
    meta["keys"] = keys_json(keys)
    size = header_bytes(header, keys)
    if size > MAX_HEADER_BYTES:  # safetensors would refuse, after the work, with a traceback
        raise TokenFileError(
            f"cannot write {path}: the keys of its {len(keys)} rows need a "
            f"{size / 1e6:.1f} MB header, over the {MAX_HEADER_BYTES / 1e6:.0f} MB safetensors "
            "allows; write fewer rows per file"
        )
    stored = tokens.to(token_dtype(header.codebook_sizes)).contiguous()
    write_safetensors(path, {TENSOR: stored}, metadata=meta)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    """Open ``path`` as a safetensors file and return its metadata (format checked)."""
    if not path.exists():
        raise TokenFileError(f"{path}: no such token file")
    if path.is_dir():
        raise TokenFileError(
            f"{path} is a folder, not a token file (use load_tokens for a token folder)"
        )
    check_readable(path)  # the OS's cause, not safetensors' "no such file"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            names = list(f.keys())
    except Exception as e:  # noqa: BLE001 - any failure to parse means "not safetensors"
        raise TokenFileError(
            f"{path} is not a safetensors file ({type(e).__name__}: {e})"
        ) from None
    meta = dict(meta or {})
    fmt = meta.get("format")
    if fmt is None:
        raise TokenFileError(
            f"{path} is a safetensors file but not a tok token file (no 'format' metadata; "
            f"expected {FORMAT!r})"
        )
    if fmt not in READ_FORMATS:
        raise TokenFileError(unreadable_format(fmt, path=path, reads=READ_FORMATS))
    if TENSOR not in names:
        raise TokenFileError(
            f"{path} has no {TENSOR!r} tensor (it holds {', '.join(names) or 'no tensors'})"
        )
    return meta


def _parse_keys(meta: Mapping[str, str], path: Path) -> list[str]:
    if "keys" not in meta:
        raise TokenFileError(f"{path}: token file lacks the 'keys' metadata field")
    try:
        keys = json.loads(meta["keys"])
    except ValueError:
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TokenFileError(f"{path}: metadata field 'keys' must be a JSON list of strings")
    return keys


def read_header(path: Path) -> tuple[TokenHeader, list[str]]:
    """The header and keys of token file ``path``, without loading the tokens."""
    meta = _read_metadata(path)
    return TokenHeader.from_metadata(meta, path=path), _parse_keys(meta, path)


def read_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Read one token file (any of :data:`READ_FORMATS`); return a :class:`TokenFile`.

    The tokens come back as int64. Raises :class:`TokenFileError` naming
    ``path`` when the file is missing, is not safetensors, is not a tok token
    file or has a format this version cannot read, lacks the ``tokens``
    tensor, or when shape, key count or index ranges disagree with its header.
    """
    path = Path(path)
    meta = _read_metadata(path)
    header = TokenHeader.from_metadata(meta, path=path)
    keys = _parse_keys(meta, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.get_tensor(TENSOR)
    except Exception as e:  # noqa: BLE001
        raise TokenFileError(f"{path}: cannot read the {TENSOR!r} tensor ({e})") from None
    if raw.dtype not in _STORE_DTYPES:
        raise TokenFileError(
            f"{path}: {TENSOR!r} tensor has dtype {raw.dtype}, expected an integer dtype"
        )
    tokens = _check_tokens(raw, keys, header, path, reading=True)
    return TokenFile(tokens=tokens, keys=keys, header=header, path=path)
