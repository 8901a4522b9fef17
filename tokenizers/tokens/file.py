"""Token files: one safetensors file of rows, their source keys and a header.

A file holds one of two kinds of rows, which its header (:mod:`tok.tokens.header`,
re-exported here) names:

* **tokens** (a discrete tokenizer's indices): tensor ``tokens``, int ``(N, *grid, S)``,
  header :class:`TokenHeader`, format :data:`FORMAT` (``tok.tokens/2``);
* **latents** (a continuous tokenizer's latent means): tensor ``latents``, float
  ``(N, *grid, l)``, header :class:`LatentHeader` (``kind: "latents"``), format
  :data:`LATENT_FORMAT` (``tok.tokens/3``).

The format is described in :mod:`tok.tokens` and docs/token-format.md. This module
writes each kind in the oldest format that holds it — token files stay ``tok.tokens/2``,
byte for byte what tok wrote before latent files existed, so older tok reads them — and
reads every format in :data:`READ_FORMATS`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from .._io import check_readable, write_safetensors
from ..errors import IndexRangeError, TokenFileError
from .header import (
    FORMAT,
    INT_DTYPES,
    LATENT_DTYPES,
    LATENT_FORMAT,
    LATENT_TENSOR,
    READ_FORMATS,
    STORE_DTYPES,
    TENSOR,
    Header,
    LatentHeader,
    TokenHeader,
    header_for_tokenizer,
    header_from_dict,
    header_from_metadata,
    token_dtype,
    unreadable_format,
)
from .keys import MAX_HEADER_BYTES, keys_json, keys_sha256, metadata_bytes

__all__ = [
    "FORMAT",
    "LATENT_FORMAT",
    "READ_FORMATS",
    "LATENT_DTYPES",
    "token_dtype",
    "keys_json",
    "keys_sha256",
    "header_bytes",
    "MAX_HEADER_BYTES",
    "Header",
    "TokenHeader",
    "LatentHeader",
    "header_for_tokenizer",
    "header_from_dict",
    "header_from_metadata",
    "TokenFile",
    "write_tokens",
    "read_tokens",
]


@dataclass(frozen=True)
class TokenFile:
    """Rows read from disk, with their ``keys`` (N entries) and ``header``.

    ``tokens`` holds the rows: int64 ``(N, *grid, S)`` token indices when
    ``header`` is a :class:`TokenHeader`, float32 ``(N, *grid, l)`` latents when it is a
    :class:`LatentHeader` (``kind == "latents"``), whatever dtype the file stored.
    """

    tokens: Tensor
    keys: list[str]
    header: Header
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def kind(self) -> str:
        """``"tokens"`` or ``"latents"`` (the header's kind)."""
        return self.header.kind


# ---------------------------------------------------------------------------
# single token files
# ---------------------------------------------------------------------------


def _check_rows(
    rows: Tensor, keys: list[str], header: Header, path: Path, *, reading: bool
) -> Tensor:
    """Validate ``rows`` against ``header`` and ``keys``; return them on the CPU, as
    int64 tokens or the latents in their stored dtype."""
    verb = "" if reading else "cannot write "
    where = f"{verb}{path}: "
    latents = header.kind == "latents"
    ok = isinstance(rows, Tensor) and (
        rows.is_floating_point() if latents else rows.dtype in INT_DTYPES
    )
    if not ok:
        got = rows.dtype if isinstance(rows, Tensor) else type(rows).__name__
        want = "a float tensor" if latents else "an integer tensor"
        raise TokenFileError(f"{where}{header.kind} must be {want}, got {got}")
    width = header.row_shape[-1]
    want = ("N", *header.row_shape)
    if rows.ndim != len(want) or tuple(rows.shape[1:]) != header.row_shape:
        what = f"{width} latent dimension(s)" if latents else f"{width} stream(s)"
        raise TokenFileError(
            f"{where}{header.kind} have shape {tuple(rows.shape)}, but the header says "
            f"{want} (grid {header.grid}, {what})"
        )
    if len(keys) != rows.shape[0]:
        raise TokenFileError(f"{where}{rows.shape[0]} rows of {header.kind} but {len(keys)} keys")
    if not all(isinstance(k, str) for k in keys):
        raise TokenFileError(f"{where}keys must be strings")
    if latents:
        return _check_latents(rows, keys, header, where)
    tokens = rows.detach().to("cpu", torch.int64)
    if tokens.numel():
        flat = tokens.reshape(-1, width)
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


def _check_latents(rows: Tensor, keys: list[str], header: LatentHeader, where: str) -> Tensor:
    """``rows`` in the header's dtype on the CPU; :class:`TokenFileError` if any is not
    finite there (NaN, ±inf, or beyond the range of a narrower dtype)."""
    stored = rows.detach().to("cpu", header.storage_dtype)
    bad = ~torch.isfinite(stored)
    count = int(bad.sum())
    if not count:
        return stored
    first = int(bad.reshape(len(keys), -1).any(1).nonzero()[0])
    nan = int(torch.isnan(stored).sum())
    cause = ""
    if bool(torch.isfinite(rows.detach().cpu()).all()):  # finite until cast
        top = torch.finfo(header.storage_dtype).max
        cause = f": beyond {header.dtype}'s range (±{top:.4g}); store them as float32"
    raise TokenFileError(
        f"{where}{count} latent value(s) are not finite ({nan} NaN, {count - nan} ±inf) in "
        f"{header.dtype}, the first in row {keys[first]!r}{cause}; tok never stores "
        "non-finite latents"
    )


def header_bytes(header: Header, keys: list[str]) -> int:
    """The size of the safetensors header of a token file holding ``keys`` (an upper bound
    within a few hundred bytes): what :data:`MAX_HEADER_BYTES` limits."""
    return metadata_bytes({**header.to_metadata(), "keys": keys_json(keys)})


def write_tokens(
    path: str | os.PathLike[str], tokens: Tensor, *, keys: list[str], header: Header
) -> Path:
    """Write ``tokens`` with their ``keys`` to the token file ``path``; return the path.

    With a :class:`TokenHeader`, ``tokens`` are integer indices ``(N, *grid, S)``: an
    index outside its stream's codebook raises :class:`IndexRangeError`; they are stored
    in :func:`token_dtype`, in format :data:`FORMAT`. With a :class:`LatentHeader` they
    are float latents ``(N, *grid, l)``, stored in the float dtype the header names (in
    format :data:`LATENT_FORMAT`); a value that is not finite there (NaN, ±inf, or beyond
    float16's range) raises :class:`TokenFileError` naming the first row's key. Shape,
    dtype and key count are validated (:class:`TokenFileError`) and nothing is written
    on any error; the file is written atomically. ``N`` may be 0.
    """
    path = Path(path)
    keys = list(keys)
    rows = _check_rows(tokens, keys, header, path, reading=False)
    meta = header.to_metadata()
    meta["keys"] = keys_json(keys)
    size = header_bytes(header, keys)
    if size > MAX_HEADER_BYTES:  # safetensors would refuse, after the work, with a traceback
        raise TokenFileError(
            f"cannot write {path}: the keys of its {len(keys)} rows need a "
            f"{size / 1e6:.1f} MB header, over the {MAX_HEADER_BYTES / 1e6:.0f} MB safetensors "
            "allows; write fewer rows per file"
        )
    stored = rows.to(header.storage_dtype).contiguous()
    write_safetensors(path, {header.tensor: stored}, metadata=meta)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    """Open ``path`` as a safetensors file and return its metadata (format and tensor
    name checked)."""
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
    if meta.get("kind", "tokens") != "tokens" and fmt != LATENT_FORMAT:
        raise TokenFileError(
            f"{path}: a file of kind {meta['kind']!r} is of format {LATENT_FORMAT!r}, not "
            f"{fmt!r}; the file was not written by tok or is damaged"
        )
    tensor = LATENT_TENSOR if meta.get("kind") == "latents" else TENSOR
    if tensor not in names:
        raise TokenFileError(
            f"{path} has no {tensor!r} tensor (it holds {', '.join(names) or 'no tensors'})"
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


def read_header(path: Path) -> tuple[Header, list[str]]:
    """The header (either kind) and keys of token file ``path``, without loading the rows."""
    meta = _read_metadata(path)
    return header_from_metadata(meta, path=path), _parse_keys(meta, path)


def read_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Read one token or latent file (any of :data:`READ_FORMATS`); return a :class:`TokenFile`.

    Tokens come back as int64 ``(N, *grid, S)``, latents as float32 ``(N, *grid, l)``
    (``header.kind`` says which). Raises :class:`TokenFileError` naming ``path`` when
    the file is missing, is not safetensors, is not a tok token file or has a format
    this version cannot read, lacks its tensor (``tokens``, or ``latents``), stores
    another dtype than its header names, or when shape, key count, index ranges or
    finite latents disagree with its header.
    """
    path = Path(path)
    meta = _read_metadata(path)
    header = header_from_metadata(meta, path=path)
    keys = _parse_keys(meta, path)
    name = header.tensor
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.get_tensor(name)
    except Exception as e:  # noqa: BLE001
        raise TokenFileError(f"{path}: cannot read the {name!r} tensor ({e})") from None
    if header.kind == "latents":
        if raw.dtype != header.storage_dtype:
            raise TokenFileError(
                f"{path}: {name!r} tensor has dtype {raw.dtype}, but the header says {header.dtype}"
            )
    elif raw.dtype not in STORE_DTYPES:
        raise TokenFileError(
            f"{path}: {name!r} tensor has dtype {raw.dtype}, expected an integer dtype"
        )
    rows = _check_rows(raw, keys, header, path, reading=True).to(header.read_dtype)
    return TokenFile(tokens=rows, keys=keys, header=header, path=path)
