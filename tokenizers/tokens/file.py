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
    GRIDS_TENSOR,
    INT_DTYPES,
    LATENT_DTYPES,
    LATENT_FORMAT,
    LATENT_TENSOR,
    RAGGED_FORMAT,
    READ_FORMATS,
    SIZES_TENSOR,
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
    "RAGGED_FORMAT",
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
    "pack_rows",
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
    #: ragged files (``header.ragged``, format ``tok.tokens/4``): each row's grid, int64
    #: ``(N, len(grid))``; ``tokens`` then holds every row's positions one after
    #: another, ``(P, S)`` (``P`` the sum of the grids' products). ``None`` otherwise.
    grids: Tensor | None = None
    #: ragged files: the input size each row was encoded from (``(h, w)`` or ``(t, h,
    #: w)``, before padding), int64 ``(N, len(grid))``, what decoding crops back to.
    sizes: Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def kind(self) -> str:
        """``"tokens"`` or ``"latents"`` (the header's kind)."""
        return self.header.kind

    def row(self, i: int) -> Tensor:
        """Row ``i``: ``(*grid_i, S)`` tokens (or ``(*grid_i, l)`` latents), a view."""
        if self.grids is None:
            return self.tokens[i]
        counts = self.grids.prod(1)
        start = int(counts[:i].sum())
        grid = [int(g) for g in self.grids[i]]
        return self.tokens[start : start + int(counts[i])].reshape(*grid, self.tokens.shape[-1])

    def rows(self) -> list[Tensor]:
        """Every row as :meth:`row` gives it, in order."""
        if self.grids is None:
            return list(self.tokens)
        counts = [int(c) for c in self.grids.prod(1)]
        flat = torch.split(self.tokens, counts) if counts else []
        return [
            part.reshape(*(int(g) for g in grid), self.tokens.shape[-1])
            for part, grid in zip(flat, self.grids, strict=True)
        ]


def pack_rows(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Rows of their own grids, ``(*grid_i, width)`` each (at least one), as one ``(P,
    width)`` tensor of their positions one after another and their grids, int64 ``(N,
    len(grid))`` (how a ragged file stores them)."""
    grids = torch.tensor([list(r.shape[:-1]) for r in rows], dtype=torch.int64)
    return torch.cat([r.reshape(-1, r.shape[-1]) for r in rows]), grids


# ---------------------------------------------------------------------------
# single token files
# ---------------------------------------------------------------------------


def _check_rows(
    rows: Tensor,
    keys: list[str],
    header: Header,
    path: Path,
    *,
    reading: bool,
    grids: Tensor | None = None,
) -> Tensor:
    """Validate ``rows`` against ``header`` and ``keys`` (ragged: the flat rows against
    ``grids``); return them on the CPU, as int64 tokens or the latents in their stored
    dtype."""
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
    width = header.width
    what = f"{width} latent dimension(s)" if latents else f"{width} stream(s)"
    if header.ragged:
        owner = _check_grids(rows, keys, header, grids, where, what)
    else:
        want = ("N", *header.row_shape)
        if rows.ndim != len(want) or tuple(rows.shape[1:]) != header.row_shape:
            raise TokenFileError(
                f"{where}{header.kind} have shape {tuple(rows.shape)}, but the header says "
                f"{want} (grid {header.grid}, {what})"
            )
        if len(keys) != rows.shape[0]:
            raise TokenFileError(
                f"{where}{rows.shape[0]} rows of {header.kind} but {len(keys)} keys"
            )
        owner = None
    if not all(isinstance(k, str) for k in keys):
        raise TokenFileError(f"{where}keys must be strings")
    if latents:
        return _check_latents(rows, keys, header, where, owner)
    tokens = rows.detach().to("cpu", torch.int64)
    if tokens.numel():
        flat = tokens.reshape(-1, width)
        sizes = torch.tensor(header.codebook_sizes, dtype=torch.int64)
        bad = (flat < 0) | (flat >= sizes)
        if bool(bad.any()):
            row, stream = (int(i) for i in bad.nonzero()[0])
            value, size = int(flat[row, stream]), header.codebook_sizes[stream]
            of = f" of row {keys[int(owner[row])]!r}" if owner is not None else ""
            message = (
                f"{where}token index {value} in stream {stream}{of} is out of range for "
                f"codebook size {size} (valid: 0..{size - 1})"
            )
            raise TokenFileError(message) if reading else IndexRangeError(message)
    return tokens


def _check_grids(
    rows: Tensor, keys: list[str], header: Header, grids: Tensor | None, where: str, what: str
) -> Tensor:
    """Check ragged ``rows`` ``(P, width)`` against ``grids`` ``(N, len(grid))``; return
    the row (index into ``keys``) of each position."""
    if rows.ndim != 2 or rows.shape[1] != header.width:
        raise TokenFileError(
            f"{where}ragged {header.kind} have shape {tuple(rows.shape)}, but the header says "
            f"(P, {header.width}) ({what})"
        )
    axes = len(header.grid)
    if (
        not isinstance(grids, Tensor)
        or grids.dtype not in INT_DTYPES
        or tuple(grids.shape) != (len(keys), axes)
        or (grids.numel() and int(grids.min()) < 1)
    ):
        got = tuple(grids.shape) if isinstance(grids, Tensor) else type(grids).__name__
        raise TokenFileError(
            f"{where}the {GRIDS_TENSOR!r} of {len(keys)} ragged rows must be positive ints of "
            f"shape ({len(keys)}, {axes}), got {got}"
        )
    counts = grids.long().prod(1) if len(keys) else torch.zeros(0, dtype=torch.int64)
    if int(counts.sum()) != rows.shape[0]:
        raise TokenFileError(
            f"{where}the grids of its {len(keys)} rows hold {int(counts.sum())} positions, but "
            f"the {header.kind} hold {rows.shape[0]}"
        )
    return torch.repeat_interleave(torch.arange(len(keys)), counts)


def _check_latents(
    rows: Tensor, keys: list[str], header: LatentHeader, where: str, owner: Tensor | None = None
) -> Tensor:
    """``rows`` in the header's dtype on the CPU; :class:`TokenFileError` if any is not
    finite there (NaN, ±inf, or beyond the range of a narrower dtype)."""
    stored = rows.detach().to("cpu", header.storage_dtype)
    bad = ~torch.isfinite(stored)
    count = int(bad.sum())
    if not count:
        return stored
    if owner is not None:
        first = int(owner[int(bad.any(-1).nonzero()[0])])
    else:
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
    path: str | os.PathLike[str],
    tokens: Tensor | list[Tensor],
    *,
    keys: list[str],
    header: Header,
    sizes: Tensor | list | None = None,
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

    With a ragged header (``header.ragged``: rows of their own grids, written by ``tok
    encode --resize keep``), ``tokens`` is a list of ``N`` rows ``(*grid_i, S)`` (or
    ``(*grid_i, l)``) and ``sizes`` the ``(N, len(grid))`` input sizes they were encoded
    from (``(h, w)`` or ``(t, h, w)``); the file, format :data:`RAGGED_FORMAT`, stores the
    rows' positions one after another plus the tensors ``grids`` and ``sizes``.
    """
    path = Path(path)
    keys = list(keys)
    extra: dict[str, Tensor] = {}
    grids = None
    if header.ragged:
        if isinstance(tokens, Tensor) and tokens.ndim == 2 and not keys:
            tokens = []
        if not isinstance(tokens, (list, tuple)) or not all(
            isinstance(t, Tensor) and t.ndim == len(header.grid) + 1 for t in tokens
        ):
            raise TokenFileError(
                f"cannot write {path}: ragged rows are a list of tensors (*grid, "
                f"{header.width}), one per key"
            )
        if tokens:
            tokens, grids = pack_rows(list(tokens))
        else:
            tokens, grids = header.empty(), torch.zeros((0, len(header.grid)), dtype=torch.int64)
        size_t = torch.as_tensor(sizes if sizes is not None else [], dtype=torch.int64)
        size_t = size_t.reshape(len(keys), -1) if size_t.numel() else size_t.reshape(0, 0)
        if not keys:
            size_t = size_t.reshape(0, len(header.grid))
        if tuple(size_t.shape) != (len(keys), len(header.grid)) or (
            size_t.numel() and int(size_t.min()) < 1
        ):
            raise TokenFileError(
                f"cannot write {path}: ragged rows need sizes, {len(keys)} positive input "
                f"sizes of {len(header.grid)} sides, got {tuple(size_t.shape)}"
            )
        extra = {GRIDS_TENSOR: grids.contiguous(), SIZES_TENSOR: size_t.contiguous()}
    elif sizes is not None:
        raise TokenFileError(f"cannot write {path}: sizes are stored for ragged rows only")
    rows = _check_rows(tokens, keys, header, path, reading=False, grids=grids)
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
    write_safetensors(path, {header.tensor: stored, **extra}, metadata=meta)
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
    if (meta.get("ragged") == "true") != (fmt == RAGGED_FORMAT):
        raise TokenFileError(
            f"{path}: only files of format {RAGGED_FORMAT!r} hold ragged rows, and all of them "
            f"do (this one is {fmt!r}); the file was not written by tok or is damaged"
        )
    if meta.get("kind", "tokens") != "tokens" and fmt not in (LATENT_FORMAT, RAGGED_FORMAT):
        raise TokenFileError(
            f"{path}: a file of kind {meta['kind']!r} is of format {LATENT_FORMAT!r}, not "
            f"{fmt!r}; the file was not written by tok or is damaged"
        )
    tensor = LATENT_TENSOR if meta.get("kind") == "latents" else TENSOR
    wanted = [tensor, GRIDS_TENSOR, SIZES_TENSOR] if fmt == RAGGED_FORMAT else [tensor]
    for tensor in wanted:
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
    grids = sizes = None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.get_tensor(name)
            if header.ragged:
                grids, sizes = f.get_tensor(GRIDS_TENSOR), f.get_tensor(SIZES_TENSOR)
    except Exception as e:  # noqa: BLE001
        raise TokenFileError(f"{path}: cannot read the {name!r} tensor ({e})") from None
    if sizes is not None and (
        sizes.dtype not in INT_DTYPES
        or tuple(sizes.shape) != (len(keys), len(header.grid))
        or (sizes.numel() and int(sizes.min()) < 1)
    ):
        raise TokenFileError(
            f"{path}: the {SIZES_TENSOR!r} tensor must hold {len(keys)} positive input sizes "
            f"of {len(header.grid)} sides, got shape {tuple(sizes.shape)}"
        )
    if header.kind == "latents":
        if raw.dtype != header.storage_dtype:
            raise TokenFileError(
                f"{path}: {name!r} tensor has dtype {raw.dtype}, but the header says {header.dtype}"
            )
    elif raw.dtype not in STORE_DTYPES:
        raise TokenFileError(
            f"{path}: {name!r} tensor has dtype {raw.dtype}, expected an integer dtype"
        )
    rows = _check_rows(raw, keys, header, path, reading=True, grids=grids)
    return TokenFile(
        tokens=rows.to(header.read_dtype),
        keys=keys,
        header=header,
        path=path,
        grids=None if grids is None else grids.long(),
        sizes=None if sizes is None else sizes.long(),
    )
