"""The manifest of a token folder (``manifest.json``) as a typed record: :class:`Manifest`.

The record is documented field by field in docs/token-format.md, and
docs/manifest.schema.json is its JSON Schema. This module writes
:data:`MANIFEST_FORMAT` for a folder of tokens, :data:`LATENT_MANIFEST_FORMAT` for a
folder of latents (the same record, its header a :class:`tok.tokens.LatentHeader`), and
reads every format in :data:`MANIFEST_READ_FORMATS` (a ``tok.tokens/1`` manifest is
converted in memory; :class:`tok.tokens.TokenDir` rewrites it as ``tok.manifest/2`` when
the folder is resumed).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .._io import TMP_PREFIX
from ..errors import ConfigError, OutputDirError, TokenFileError
from .file import Header, header_bytes, header_from_dict, unreadable_format
from .keys import MAX_HEADER_BYTES, key_header_bytes, keys_sha256

__all__ = [
    "check_shard_headers",
    "LATENT_MANIFEST_FORMAT",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MANIFEST_READ_FORMATS",
    "RAGGED_MANIFEST_FORMAT",
    "ShardEntry",
    "Manifest",
    "plan_shards",
]

#: the file name of a token folder's manifest
MANIFEST = "manifest.json"
#: the format of the manifests of token folders this version writes
MANIFEST_FORMAT = "tok.manifest/2"
#: the format of the manifests of latent folders (a continuous tokenizer's): ``/2`` whose
#: header may be a latent header
LATENT_MANIFEST_FORMAT = "tok.manifest/3"
#: the format of the manifests of folders of ragged rows (``tok encode --resize keep``):
#: ``/3`` whose header (of either kind) says ``ragged: true``
RAGGED_MANIFEST_FORMAT = "tok.manifest/4"
_LEGACY_FORMAT = "tok.tokens/1"  # manifests before skipped items had the token files' format
#: every manifest format this version reads
MANIFEST_READ_FORMATS = (
    _LEGACY_FORMAT,
    MANIFEST_FORMAT,
    LATENT_MANIFEST_FORMAT,
    RAGGED_MANIFEST_FORMAT,
)
SHARD_SUFFIX = ".safetensors"

# temporary files our own writers leave behind in a token folder
OUR_TMP = re.compile(
    re.escape(TMP_PREFIX)
    + r"("
    + re.escape(MANIFEST)
    + r"|\d{5}"
    + re.escape(SHARD_SUFFIX)
    + r")\."
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def manifest_format(header: Header) -> str:
    """The format of a manifest recording ``header``: the oldest that holds its kind and
    layout."""
    if header.ragged:
        return RAGGED_MANIFEST_FORMAT
    return LATENT_MANIFEST_FORMAT if header.kind == "latents" else MANIFEST_FORMAT


def check_shard_headers(header: Header, keys: list[str], shard_size: int) -> None:
    """Refuse, before any work, a plan whose shards would not fit in a safetensors header
    (:data:`tok.tokens.file.MAX_HEADER_BYTES`: every row key is in its shard's header).

    :raises ConfigError: naming the shard size asked for and the largest that fits.
    """
    base = header_bytes(header, [])
    room = MAX_HEADER_BYTES - base
    if len(keys) * 4 * 1024 < room:  # even 4 KiB keys would fit: the common case, no scan
        return
    cost = key_header_bytes(keys)

    def fits(size: int) -> bool:
        return all(sum(cost[i : i + size]) <= room for i in range(0, len(cost), size))

    if fits(shard_size):
        return
    if not fits(1):
        longest = max(range(len(keys)), key=cost.__getitem__)
        raise ConfigError(f"the key {keys[longest][:80]!r}… is too long for a token file")
    low, high = 1, shard_size  # fits(low) unless one key alone is too long
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    raise ConfigError(
        f"--shard-size {shard_size} is too large for these keys: a shard's keys go into its "
        f"safetensors header, which holds at most {MAX_HEADER_BYTES / 1e6:.0f} MB; the largest "
        f"shard size that fits is {low}"
    )


def plan_shards(keys: list[str], shard_size: int) -> list[list[str]]:
    """``keys`` cut into shards of ``shard_size`` (the last one may be shorter), in order:
    the one rule by which a token folder's rows are planned."""
    return [keys[start : start + shard_size] for start in range(0, len(keys), shard_size)]


def _shard_name(index: int) -> str:
    return f"{index:05d}{SHARD_SUFFIX}"


def list_names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _sha(v: Any) -> bool:
    return isinstance(v, str) and _SHA256.fullmatch(v) is not None


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


class _Fields:
    """Reads the fields of one JSON object of a manifest, naming ``path`` and the field on error."""

    def __init__(self, d: Any, *, path: Any, prefix: str = "", known: Iterable[str]) -> None:
        self.path, self.prefix = path, prefix
        what = f"field {prefix[:-1]!r}" if prefix else "manifest"
        if not isinstance(d, Mapping):
            raise TokenFileError(f"{path}: {what} must be a JSON object, got {_short(d)}")
        extra = sorted(set(d) - set(known))
        if extra:
            raise TokenFileError(
                f"{path}: {what} has unknown field(s) {', '.join(map(repr, extra))}; "
                "the manifest is damaged or was edited by hand"
            )
        self.d = d

    def fail(self, name: str, message: str) -> TokenFileError:
        return TokenFileError(f"{self.path}: manifest field {self.prefix + name!r} {message}")

    def get(self, name: str, check: Callable[[Any], bool], want: str) -> Any:
        if name not in self.d:
            raise self.fail(name, "is missing; the manifest is damaged")
        value = self.d[name]
        if not check(value):
            raise self.fail(name, f"must be {want}, got {_short(value)}")
        return value


# ---------------------------------------------------------------------------
# the manifest record
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    """One planned shard of a token folder, as ``manifest.json`` records it.

    ``planned`` rows were planned; once the shard is ``done``, ``count`` rows
    were written (``None`` before) and ``skipped`` lists, in order, the planned
    keys left out because their source turned out unreadable while encoding.
    """

    file: str
    planned: int
    count: int | None = None
    skipped: tuple[str, ...] = ()
    done: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "skipped", tuple(self.skipped))

    def written(self, planned_keys: list[str]) -> list[str]:
        """Return the keys of the rows this shard holds: ``planned_keys`` less the skipped ones."""
        skip = set(self.skipped)
        return [k for k in planned_keys if k not in skip]

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict."""
        return {
            "file": self.file,
            "planned": self.planned,
            "count": self.count,
            "skipped": list(self.skipped),
            "done": self.done,
        }


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a token folder, format :data:`MANIFEST_FORMAT`, or
    :data:`LATENT_MANIFEST_FORMAT` when ``header`` is a latent header (docs/token-format.md).

    Build one with :meth:`plan` or :meth:`from_dict` (which validates every
    field), change it with :meth:`with_shards`, store it with :meth:`to_dict`.
    ``planned_items`` source keys (ordered list hashed to
    ``planned_keys_sha256``) are planned in shards of ``shard_size``; that plan
    identifies "the same encode" when resuming. ``num_items`` rows are written
    in done shards; ``keys_sha256`` hashes every written key in order once the
    folder is ``complete`` (else ``None``).
    """

    format: str
    header: Header
    shard_size: int
    planned_items: int
    planned_keys_sha256: str
    shards: tuple[ShardEntry, ...]
    num_items: int
    keys_sha256: str | None
    complete: bool

    def __post_init__(self) -> None:
        want = manifest_format(self.header)
        if self.format != want:
            raise ConfigError(
                f"a Manifest of {self.header.kind} is of format {want!r}, not {self.format!r} "
                "(Manifest.from_dict converts older manifests)"
            )
        object.__setattr__(self, "shards", tuple(self.shards))

    @classmethod
    def plan(cls, *, header: Header, keys: list[str], shard_size: int) -> Manifest:
        """Return the manifest of a new folder: ``keys`` in shards of ``shard_size``, none done."""
        shards = [
            ShardEntry(file=_shard_name(i), planned=len(chunk))
            for i, chunk in enumerate(plan_shards(keys, shard_size))
        ]
        return cls(
            format=manifest_format(header),
            header=header,
            shard_size=shard_size,
            planned_items=len(keys),
            planned_keys_sha256=keys_sha256(keys),
            shards=tuple(shards),
            num_items=0,
            keys_sha256=keys_sha256([]) if not shards else None,
            complete=not shards,
        )

    def with_shards(self, shards: Iterable[ShardEntry], *, keys: list[str]) -> Manifest:
        """Return a copy with ``shards`` and the totals that follow from them.

        ``num_items``, ``complete`` and ``keys_sha256`` are recomputed; ``keys``
        are the planned keys (the written ones are hashed once complete).
        """
        shards = tuple(shards)
        complete = all(s.done for s in shards)
        written = None
        if complete:
            size = self.shard_size
            written = keys_sha256(
                [
                    k
                    for i, s in enumerate(shards)
                    for k in s.written(keys[i * size : (i + 1) * size])
                ]
            )
        return replace(
            self,
            format=manifest_format(self.header),
            shards=shards,
            num_items=sum(s.count or 0 for s in shards if s.done),
            keys_sha256=written,
            complete=complete,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as the JSON-ready dict ``manifest.json`` holds."""
        return {
            "format": self.format,
            "header": self.header.to_dict(),
            "shard_size": self.shard_size,
            "planned_items": self.planned_items,
            "planned_keys_sha256": self.planned_keys_sha256,
            "shards": [s.to_dict() for s in self.shards],
            "num_items": self.num_items,
            "keys_sha256": self.keys_sha256,
            "complete": self.complete,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, path: str | os.PathLike[str]) -> Manifest:
        """Return the manifest stored in ``d`` (JSON of any of :data:`MANIFEST_READ_FORMATS`).

        A ``tok.tokens/1`` manifest is converted (planned = written, nothing
        skipped). Raises :class:`TokenFileError` naming ``path`` and the field
        for a missing, malformed or inconsistent field, and in one line naming
        the format for a format this version cannot read.
        """
        if not isinstance(d, Mapping) or "format" not in d:
            raise TokenFileError(f"{path} is not a tok token manifest (no 'format' field)")
        if d["format"] not in MANIFEST_READ_FORMATS:
            raise TokenFileError(
                unreadable_format(d["format"], path=path, reads=MANIFEST_READ_FORMATS)
            )
        if d["format"] == _LEGACY_FORMAT:
            d = _from_legacy(d, path=path)
        f = _Fields(d, path=path, known=[x.name for x in fields(cls)])
        shard_size = f.get("shard_size", lambda v: _count(v) and v >= 1, "a positive int")
        planned_items = f.get("planned_items", _count, "a non-negative int")
        planned_sha = f.get("planned_keys_sha256", _sha, "a sha256 (64 hex digits)")
        raw_shards = f.get("shards", lambda v: isinstance(v, list), "a JSON list")
        num_items = f.get("num_items", _count, "a non-negative int")
        complete = f.get("complete", lambda v: isinstance(v, bool), "true or false")
        want_sha = "a sha256 (64 hex digits) as the folder is complete" if complete else "null"
        sha = f.get("keys_sha256", _sha if complete else (lambda v: v is None), want_sha)
        header = header_from_dict(f.get("header", lambda v: True, ""), path=path)
        if header.ragged != (d["format"] == RAGGED_MANIFEST_FORMAT):
            raise f.fail(
                "header",
                f"{'holds' if header.ragged else 'lacks'} ragged: true, which a manifest of "
                f"format {d['format']!r} cannot; the manifest is damaged or was edited by hand",
            )
        if header.kind == "latents" and d["format"] not in (
            LATENT_MANIFEST_FORMAT,
            RAGGED_MANIFEST_FORMAT,
        ):
            raise f.fail(
                "header",
                f"holds latents, which a manifest of format {d['format']!r} cannot; "
                "the manifest is damaged or was edited by hand",
            )
        planned = [min(shard_size, planned_items - s) for s in range(0, planned_items, shard_size)]
        if len(raw_shards) != len(planned):
            raise f.fail(
                "shards",
                f"lists {len(raw_shards)} shard(s), but {planned_items} planned items in shards "
                f"of {shard_size} make {len(planned)}",
            )
        shards = tuple(
            _shard_from_dict(s, index=i, planned=planned[i], path=path)
            for i, s in enumerate(raw_shards)
        )
        if num_items != sum(s.count or 0 for s in shards if s.done):
            raise f.fail("num_items", f"is {num_items}, but the done shards hold a different count")
        if complete != all(s.done for s in shards):
            raise f.fail("complete", f"is {str(complete).lower()}, which its shards contradict")
        return cls(
            format=manifest_format(header),
            header=header,
            shard_size=shard_size,
            planned_items=planned_items,
            planned_keys_sha256=planned_sha,
            shards=shards,
            num_items=num_items,
            keys_sha256=sha,
            complete=complete,
        )


def _shard_from_dict(d: Any, *, index: int, planned: int, path: Any) -> ShardEntry:
    f = _Fields(
        d, path=path, prefix=f"shards[{index}].", known=[x.name for x in fields(ShardEntry)]
    )
    name = f.get("file", lambda v: v == _shard_name(index), repr(_shard_name(index)))
    f.get(
        "planned",
        lambda v: _count(v) and v == planned,
        f"{planned} (from planned_items and shard_size)",
    )
    done = f.get("done", lambda v: isinstance(v, bool), "true or false")
    skipped = f.get(
        "skipped",
        lambda v: (
            isinstance(v, list)
            and all(isinstance(k, str) for k in v)
            and len(set(v)) == len(v) <= planned
            and (done or not v)
        ),
        f"a list of at most {planned} distinct keys" + ("" if done else ", empty until done"),
    )
    count = planned - len(skipped)
    want = f"{count} (planned less skipped)" if done else "null until the shard is done"
    f.get("count", lambda v: _count(v) and v == count if done else v is None, want)
    return ShardEntry(
        file=name, planned=planned, count=count if done else None, skipped=skipped, done=done
    )


def _from_legacy(d: Mapping[str, Any], *, path: Any) -> dict[str, Any]:
    """A ``tok.tokens/1`` manifest as the ``tok.manifest/2`` dict it stands for."""
    known = ("format", "header", "num_items", "shard_size", "keys_sha256", "shards", "complete")
    f = _Fields(d, path=path, known=known)
    num = f.get("num_items", _count, "a non-negative int")
    sha = f.get("keys_sha256", _sha, "a sha256 (64 hex digits)")
    complete = f.get("complete", lambda v: isinstance(v, bool), "true or false")
    shards = []
    for i, s in enumerate(f.get("shards", lambda v: isinstance(v, list), "a JSON list")):
        g = _Fields(s, path=path, prefix=f"shards[{i}].", known=("file", "count", "done"))
        count = g.get("count", _count, "a non-negative int")
        done = g.get("done", lambda v: isinstance(v, bool), "true or false")
        shards.append(
            {
                "file": g.get("file", lambda v: isinstance(v, str), "a string"),
                "planned": count,
                "count": count if done else None,
                "skipped": [],
                "done": done,
            }
        )
    return {
        "format": MANIFEST_FORMAT,
        "header": f.get("header", lambda v: True, ""),
        "shard_size": f.get("shard_size", lambda v: True, ""),
        "planned_items": num,
        "planned_keys_sha256": sha,
        "shards": shards,
        "num_items": sum(s["count"] for s in shards if s["done"]),
        "keys_sha256": sha if complete else None,
        "complete": complete,
    }


def read_manifest(folder: Path, *, for_writing: bool) -> tuple[Manifest, str]:
    """The manifest of ``folder`` and the format it was stored in; raises if not ours or damaged."""
    path = folder / MANIFEST
    err = OutputDirError if for_writing else TokenFileError
    advice = " tok never overwrites it; choose a new or empty --out folder." if for_writing else ""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise err(f"{path} is not a tok token manifest ({e}).{advice}") from None
    if not isinstance(m, dict) or "format" not in m:
        raise err(f"{path} is not a tok token manifest (no 'format' field).{advice}")
    if m["format"] not in MANIFEST_READ_FORMATS:
        message = unreadable_format(m["format"], path=path, reads=MANIFEST_READ_FORMATS)
        raise err(message + (", or choose a new --out folder" if for_writing else ""))
    return Manifest.from_dict(m, path=path), m["format"]
