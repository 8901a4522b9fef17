"""Token files and token folders: how tok stores discrete tokens on disk.

A **token file** is one safetensors file (no pickle) holding

* one tensor ``tokens`` of shape ``(N, *grid, S)``: ``N`` rows (one per
  encoded image or clip), the latent ``grid`` (e.g. ``(7, 7)`` or
  ``(T, H, W)``) and ``S`` streams, one per codebook. It is stored in the
  smallest integer dtype that holds the largest codebook (see
  :func:`token_dtype`: ``uint8`` for codebooks of at most 256 entries,
  ``int16`` up to 32768, else ``int32``) and always read back as ``int64``;
* string metadata (safetensors metadata is ``str -> str``; non-strings are
  JSON-encoded):

  ``format``            ``"tok.tokens/1"`` (:data:`FORMAT`)
  ``quantizer``         the quantizer's registered name
  ``quantizer_config``  its config (JSON object)
  ``codebook_sizes``    one size per stream (JSON list)
  ``grid``              the latent grid (JSON list)
  ``tokenizer_sha256``  sha256 of the tokenizer weights that made the tokens
  ``tokenizer_config``  optional: the full tokenizer config (JSON object)
  ``tokenizer_path``    optional: where the tokenizer lived (a hint only)
  ``source``            optional: what was encoded (a folder, ``"mnist:test"``)
  ``keys``              the source key of every row, in order (JSON list)

A **token folder** (what ``tok encode SRC --out DIR`` writes) holds shards
``00000.safetensors``, ``00001.safetensors``, … — each a token file with the
keys of its rows — and ``manifest.json``::

    {"format": "tok.tokens/1", "header": {...}, "num_items": N,
     "shard_size": K, "keys_sha256": "...",
     "shards": [{"file": "00000.safetensors", "count": K, "done": true}, ...],
     "complete": false}

Every file is written under a temporary ``.tmp-*`` name and renamed into
place (:func:`tok._io.atomic_path`), so a reader never sees half a file. A
killed ``tok encode`` resumes: :meth:`TokenDir.open` keeps finished shards,
removes stale temporary files and lists only the shards still to do. tok
never writes into a folder holding files it did not make.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ._io import TMP_PREFIX, atomic_path, remove_stale_tmp, write_json
from .errors import (
    ConfigError,
    IndexRangeError,
    OutputDirError,
    TokenFileError,
    TokenizerMismatchError,
    TokError,
)

__all__ = [
    "FORMAT",
    "MANIFEST",
    "token_dtype",
    "keys_sha256",
    "TokenHeader",
    "TokenFile",
    "write_tokens",
    "read_tokens",
    "TokenDir",
    "read_token_dir",
    "iter_token_dir",
    "load_tokens",
]

FORMAT = "tok.tokens/1"
MANIFEST = "manifest.json"
TENSOR = "tokens"
SHARD_SUFFIX = ".safetensors"

_INT_DTYPES = {
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    *(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)),
}
_STORE_DTYPES = {torch.uint8, torch.int16, torch.int32}
# temporary files our own writers leave behind in a token folder
_OUR_TMP = re.compile(
    re.escape(TMP_PREFIX)
    + r"("
    + re.escape(MANIFEST)
    + r"|\d{5}"
    + re.escape(SHARD_SUFFIX)
    + r")\."
)


def token_dtype(codebook_sizes: tuple[int, ...]) -> torch.dtype:
    """Return the smallest integer dtype that holds every index of every codebook.

    ``uint8`` when the largest codebook has at most 256 entries, ``int16`` up
    to 32768 (largest index 32767), ``int32`` up to 2**31. Raises
    :class:`ConfigError` for an empty list, non-positive sizes or a codebook
    too large for ``int32``.
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


def keys_sha256(keys: list[str]) -> str:
    """Return the sha256 (hex) of a list of source keys, order included."""
    return hashlib.sha256(json.dumps(list(keys), ensure_ascii=False).encode("utf-8")).hexdigest()


def _check_sizes(value: Any) -> tuple[int, ...] | None:
    """``value`` as a tuple of ints (``None`` when it is not a list of positive ints)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return None
    return tuple(int(v) for v in value)


def _where(path: str | os.PathLike[str] | None) -> str:
    return f"{path}: " if path is not None else ""


# ---------------------------------------------------------------------------
# header
# ---------------------------------------------------------------------------

_JSON_FIELDS = ("quantizer_config", "codebook_sizes", "grid", "tokenizer_config")
_REQUIRED = ("quantizer", "quantizer_config", "codebook_sizes", "grid", "tokenizer_sha256")
_OPTIONAL = ("tokenizer_config", "tokenizer_path", "source")


@dataclass(frozen=True)
class TokenHeader:
    """What a token file says about the tokens in it (everything but the rows' keys)."""

    quantizer: str
    quantizer_config: dict
    codebook_sizes: tuple[int, ...]
    grid: tuple[int, ...]
    tokenizer_sha256: str
    tokenizer_config: dict | None = None
    tokenizer_path: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        sizes = _check_sizes(self.codebook_sizes)
        if not sizes:
            raise ConfigError(
                f"codebook_sizes must be a non-empty list of positive ints, got {self.codebook_sizes!r}"
            )
        grid = _check_sizes(self.grid)
        if grid is None:
            raise ConfigError(f"grid must be a list of positive ints, got {self.grid!r}")
        object.__setattr__(self, "codebook_sizes", sizes)
        object.__setattr__(self, "grid", grid)

    @property
    def num_streams(self) -> int:
        """The number of token streams ``S`` (one per codebook)."""
        return len(self.codebook_sizes)

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Any, *, path: str | None = None, source: str | None = None
    ) -> TokenHeader:
        """The header of tokens made by ``tokenizer`` (a :class:`tok.models.Tokenizer`).

        Its quantizer, codebook sizes, grid, config and weights sha256; ``path``
        and ``source`` are recorded as given. Token files name the weights they
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

        Non-string fields are JSON-encoded; raises :class:`TokenFileError` if one
        cannot be (e.g. a config holding a tensor).
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
        return cls(
            quantizer=d["quantizer"],
            quantizer_config=d["quantizer_config"],
            codebook_sizes=sizes,
            grid=grid,
            tokenizer_sha256=d["tokenizer_sha256"],
            tokenizer_config=tok_config,
            tokenizer_path=d.get("tokenizer_path"),
            source=d.get("source"),
        )

    @classmethod
    def from_metadata(
        cls, meta: Mapping[str, str] | None, *, path: str | os.PathLike[str] | None = None
    ) -> TokenHeader:
        """Return the header stored in safetensors metadata ``meta``.

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


def write_tokens(
    path: str | os.PathLike[str], tokens: Tensor, *, keys: list[str], header: TokenHeader
) -> Path:
    """Write ``tokens`` ``(N, *grid, S)`` with their ``keys`` to the token file ``path``.

    Validates shape, key count and index ranges (an index outside its stream's
    codebook raises :class:`IndexRangeError`; other problems
    :class:`TokenFileError`), stores the tokens in :func:`token_dtype` and
    writes atomically. Returns the path written.
    """
    path = Path(path)
    keys = list(keys)
    tokens = _check_tokens(tokens, keys, header, path, reading=False)
    meta = header.to_metadata()
    meta["keys"] = json.dumps(keys, ensure_ascii=False)
    stored = tokens.to(token_dtype(header.codebook_sizes)).contiguous()
    with atomic_path(path) as tmp:
        save_file({TENSOR: stored}, str(tmp), metadata=meta)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    """Open ``path`` as a safetensors file and return its metadata (format checked)."""
    if not path.exists():
        raise TokenFileError(f"{path}: no such token file")
    if path.is_dir():
        raise TokenFileError(
            f"{path} is a folder, not a token file (use load_tokens for a token folder)"
        )
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
    if fmt != FORMAT:
        raise TokenFileError(f"{path} has format {fmt!r}; this version of tok reads {FORMAT!r}")
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


def _read_header(path: Path) -> tuple[TokenHeader, list[str]]:
    """The header and keys of token file ``path``, without loading the tokens."""
    meta = _read_metadata(path)
    return TokenHeader.from_metadata(meta, path=path), _parse_keys(meta, path)


def read_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Read one token file; return a :class:`TokenFile` with int64 tokens.

    Raises :class:`TokenFileError` naming ``path`` when the file is missing, is
    not safetensors, is not a tok token file (format), lacks the ``tokens``
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


# ---------------------------------------------------------------------------
# token folders
# ---------------------------------------------------------------------------


def _shard_name(index: int) -> str:
    return f"{index:05d}{SHARD_SUFFIX}"


def _list_names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_manifest(folder: Path, *, for_writing: bool) -> dict[str, Any]:
    """The manifest of ``folder``, checked for shape; raises if it is not ours or is damaged."""
    path = folder / MANIFEST
    err = OutputDirError if for_writing else TokenFileError
    advice = " tok never overwrites it; choose a new or empty --out folder." if for_writing else ""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise err(f"{path} is not a tok token manifest ({e}).{advice}") from None
    if not isinstance(m, dict) or "format" not in m:
        raise err(f"{path} is not a tok token manifest (no 'format' field).{advice}")
    if m["format"] != FORMAT:
        raise err(
            f"{path} has format {m['format']!r}; this version of tok reads {FORMAT!r}.{advice}"
        )
    try:
        ok = (
            isinstance(m["num_items"], int)
            and isinstance(m["shard_size"], int)
            and isinstance(m["keys_sha256"], str)
            and isinstance(m["shards"], list)
            and all(
                isinstance(s, dict)
                and isinstance(s["file"], str)
                and isinstance(s["count"], int)
                and isinstance(s["done"], bool)
                for s in m["shards"]
            )
            and isinstance(m["header"], dict)
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise TokenFileError(f"{path} is damaged: it lacks or has malformed manifest fields")
    return m


class TokenDir:
    """A token folder being written: shards ``00000.safetensors``, … plus ``manifest.json``.

    Create or resume one with :meth:`open`; write what :meth:`pending` lists
    with :meth:`write_shard`.
    """

    def __init__(
        self,
        path: Path,
        *,
        header: TokenHeader,
        keys: list[str],
        shard_size: int,
        manifest: dict[str, Any],
        removed_tmp: list[Path] | None = None,
    ) -> None:
        self.path = path
        self.header = header
        self.keys = keys
        self.shard_size = shard_size
        self.manifest = manifest
        #: stale temporary files removed when the folder was reopened
        self.removed_tmp = removed_tmp or []

    # -- opening ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        out_dir: str | os.PathLike[str],
        *,
        header: TokenHeader,
        keys: list[str],
        shard_size: int,
    ) -> TokenDir:
        """Create the token folder ``out_dir``, or resume writing it; return the :class:`TokenDir`.

        A missing or empty folder gets a fresh manifest listing the planned
        shards. A folder with a manifest from the same tokenizer (sha256), the
        same keys and the same ``shard_size`` is resumed: stale ``.tmp-*``
        files are removed and finished shards kept. A manifest from another
        tokenizer raises :class:`TokenizerMismatchError`; other keys or shard
        size, or files tok did not write, raise :class:`OutputDirError`.
        """
        out = Path(out_dir)
        keys = list(keys)
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"shard_size must be a positive int, got {shard_size!r}")
        if not all(isinstance(k, str) for k in keys):
            raise ConfigError("token keys must be strings")
        if out.exists() and not out.is_dir():
            raise OutputDirError(
                f"{out} is a file, not a folder; tok never overwrites it. Choose a new --out folder."
            )
        header.to_metadata()  # fail now, not at the first shard, if the header cannot be stored
        if out.is_dir() and (out / MANIFEST).exists():
            return cls._resume(out, header=header, keys=keys, shard_size=shard_size)

        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        foreign = [n for n in entries if not _OUR_TMP.match(n)]
        if foreign:
            raise OutputDirError(
                f"{out} is not empty and is not a tok token folder (no {MANIFEST}); it holds "
                f"{_list_names(foreign)}. tok never overwrites files it did not write: "
                "choose a new or empty --out folder."
            )
        out.mkdir(parents=True, exist_ok=True)
        removed = []
        for name in entries:  # only temporary files of a killed first run are left
            (out / name).unlink()
            removed.append(out / name)
        shards = [
            {"file": _shard_name(i), "count": len(keys[start : start + shard_size]), "done": False}
            for i, start in enumerate(range(0, len(keys), shard_size))
        ]
        manifest = {
            "format": FORMAT,
            "header": header.to_dict(),
            "num_items": len(keys),
            "shard_size": shard_size,
            "keys_sha256": keys_sha256(keys),
            "shards": shards,
            "complete": not shards,
        }
        write_json(out / MANIFEST, manifest)
        return cls(
            out,
            header=header,
            keys=keys,
            shard_size=shard_size,
            manifest=manifest,
            removed_tmp=removed,
        )

    @classmethod
    def _resume(
        cls, out: Path, *, header: TokenHeader, keys: list[str], shard_size: int
    ) -> TokenDir:
        manifest = _read_manifest(out, for_writing=True)
        stored = TokenHeader.from_dict(manifest["header"], path=out / MANIFEST)
        if not stored.same_tokenizer(header):
            raise TokenizerMismatchError(
                f"{out} holds tokens from a different tokenizer (sha256 {stored.tokenizer_sha256[:12]}…, "
                f"this one is {header.tokenizer_sha256[:12]}…); tok will not mix them. "
                "Choose a new --out folder."
            )
        problems = []
        if manifest["num_items"] != len(keys) or manifest["keys_sha256"] != keys_sha256(keys):
            problems.append(
                f"it was started for {manifest['num_items']} other source items "
                f"(now {len(keys)}, or the same number in another order)"
            )
        if manifest["shard_size"] != shard_size:
            problems.append(f"its shard size is {manifest['shard_size']}, not {shard_size}")
        if stored.grid != header.grid or stored.codebook_sizes != header.codebook_sizes:
            problems.append("its grid or codebook sizes differ")
        if problems:
            raise OutputDirError(
                f"cannot resume {out}: " + "; ".join(problems) + ". Choose a new --out folder, "
                "or rerun with the same source and shard size."
            )
        expected = [len(keys[s : s + shard_size]) for s in range(0, len(keys), shard_size)]
        if [s["count"] for s in manifest["shards"]] != expected or [
            s["file"] for s in manifest["shards"]
        ] != [_shard_name(i) for i in range(len(expected))]:
            raise TokenFileError(
                f"{out / MANIFEST} is damaged: its shard list does not match its keys"
            )
        removed = remove_stale_tmp(out)
        self = cls(
            out,
            header=stored,
            keys=keys,
            shard_size=shard_size,
            manifest=manifest,
            removed_tmp=removed,
        )
        # A shard counts as finished only if it is marked done and its file is
        # there and says what we expect; otherwise it is written again.
        changed = False
        for i, shard in enumerate(manifest["shards"]):
            if shard["done"] and not self._verify(i):
                shard["done"] = False
                changed = True
        complete = all(s["done"] for s in manifest["shards"])
        if manifest["complete"] != complete:
            manifest["complete"] = complete
            changed = True
        if changed:
            write_json(out / MANIFEST, manifest)
        return self

    def _verify(self, index: int) -> bool:
        path = self.path / _shard_name(index)
        if not path.is_file():
            return False
        try:
            header, keys = _read_header(path)
        except TokenFileError:
            return False
        return header.same_tokenizer(self.header) and keys == self._shard_keys(index)

    # -- writing ----------------------------------------------------------

    def _shard_keys(self, index: int) -> list[str]:
        start = index * self.shard_size
        return self.keys[start : start + self.shard_size]

    @property
    def num_shards(self) -> int:
        """The number of shards planned."""
        return len(self.manifest["shards"])

    def pending(self) -> list[tuple[int, list[str]]]:
        """Return ``(index, keys)`` for every shard not yet written, in order."""
        return [
            (i, self._shard_keys(i))
            for i, shard in enumerate(self.manifest["shards"])
            if not (shard["done"] and (self.path / shard["file"]).is_file())
        ]

    def write_shard(self, index: int, tokens: Tensor) -> Path:
        """Write shard ``index`` (its keys' rows, ``(count, *grid, S)``), mark it done; return its path."""
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < self.num_shards
        ):
            raise ConfigError(f"shard index {index!r} out of range (0..{self.num_shards - 1})")
        shard = self.manifest["shards"][index]
        path = write_tokens(
            self.path / shard["file"], tokens, keys=self._shard_keys(index), header=self.header
        )
        shard["done"] = True
        self.manifest["complete"] = all(s["done"] for s in self.manifest["shards"])
        write_json(self.path / MANIFEST, self.manifest)
        return path

    @property
    def complete(self) -> bool:
        """Whether every shard has been written."""
        return bool(self.manifest["complete"])

    def shard_paths(self) -> list[Path]:
        """Return the paths of all planned shards, in order (written or not)."""
        return [self.path / s["file"] for s in self.manifest["shards"]]


def iter_token_dir(path: str | os.PathLike[str]) -> Iterator[TokenFile]:
    """Yield the shards of the complete token folder ``path`` in order, as :class:`TokenFile`.

    Raises :class:`TokenFileError` if the folder has no manifest, is incomplete
    (naming the missing shards) or a shard disagrees with the manifest, and
    :class:`TokenizerMismatchError` if shards come from different tokenizers.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise TokenFileError(f"{folder}: no such token folder")
    if not (folder / MANIFEST).exists():
        raise TokenFileError(f"{folder} is not a token folder: it has no {MANIFEST}")
    manifest = _read_manifest(folder, for_writing=False)
    header = TokenHeader.from_dict(manifest["header"], path=folder / MANIFEST)
    missing = [
        s["file"] for s in manifest["shards"] if not (s["done"] and (folder / s["file"]).is_file())
    ]
    if missing:
        raise TokenFileError(
            f"{folder} is incomplete: {len(missing)} of {len(manifest['shards'])} shard(s) missing "
            f"({_list_names(missing, 5)}). Run tok encode again with the same --out to finish it."
        )
    seen: list[str] = []
    for shard in manifest["shards"]:
        tf = read_tokens(folder / shard["file"])
        if not tf.header.same_tokenizer(header):
            raise TokenizerMismatchError(
                f"{tf.path} was made by a different tokenizer (sha256 "
                f"{tf.header.tokenizer_sha256[:12]}…) than the rest of {folder} "
                f"({header.tokenizer_sha256[:12]}…)"
            )
        if tf.header.grid != header.grid or tf.header.codebook_sizes != header.codebook_sizes:
            raise TokenFileError(
                f"{tf.path}: grid or codebook sizes differ from {folder / MANIFEST}"
            )
        if len(tf.keys) != shard["count"]:
            raise TokenFileError(
                f"{tf.path} holds {len(tf.keys)} rows, the manifest says {shard['count']}"
            )
        seen.extend(tf.keys)
        yield tf
    if len(seen) != manifest["num_items"] or keys_sha256(seen) != manifest["keys_sha256"]:
        raise TokenFileError(f"{folder}: the shards' keys do not match {folder / MANIFEST}")


def read_token_dir(path: str | os.PathLike[str]) -> list[TokenFile]:
    """Return the shards of the complete token folder ``path`` in order (see :func:`iter_token_dir`)."""
    return list(iter_token_dir(path))


def load_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Load a token file or a whole token folder; return one :class:`TokenFile`.

    For a folder the shards are concatenated in order (keys in source order)
    and the result's ``path`` is the folder. Errors as :func:`read_tokens` and
    :func:`iter_token_dir`.
    """
    path = Path(path)
    if not path.is_dir():
        return read_tokens(path)
    parts = read_token_dir(path)
    if not parts:
        manifest = _read_manifest(path, for_writing=False)
        header = TokenHeader.from_dict(manifest["header"], path=path / MANIFEST)
        empty = torch.zeros((0, *header.grid, header.num_streams), dtype=torch.int64)
        return TokenFile(tokens=empty, keys=[], header=header, path=path)
    tokens = torch.cat([p.tokens for p in parts]) if len(parts) > 1 else parts[0].tokens
    keys = [k for p in parts for k in p.keys]
    return TokenFile(tokens=tokens, keys=keys, header=parts[0].header, path=path)
