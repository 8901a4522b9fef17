"""Token folders: shards ``00000.safetensors``, … plus ``manifest.json`` (a :class:`Manifest`).

:class:`TokenDir` creates, resumes and writes one; :func:`iter_token_dir`,
:func:`read_token_dir` and :func:`load_tokens` read them back, verified
against the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from .._io import remove_stale_tmp, write_json
from ..errors import ConfigError, OutputDirError, TokenFileError, TokenizerMismatchError
from .file import (
    Header,
    TokenFile,
    keys_sha256,
    read_header,
    read_tokens,
    write_tokens,
)
from .manifest import (
    MANIFEST,
    OUR_TMP,
    Manifest,
    ShardEntry,
    check_shard_headers,
    list_names,
    read_manifest,
)

__all__ = ["TokenDir", "iter_token_dir", "read_token_dir", "load_tokens"]


def _options(options: dict | None) -> str:
    """``--resize center-crop --fps 5``: how encode options read on the command line."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items()) or "no options"


class TokenDir:
    """A token folder being written: shards ``00000.safetensors``, … plus ``manifest.json``.

    Create or resume one with :meth:`open`; write what :meth:`pending` lists
    with :meth:`write_shard`. ``keys`` are the planned source keys (fixed
    before encoding starts); ``manifest`` is the current :class:`Manifest`. The
    ``header`` says what the shards hold: tokens (a :class:`TokenHeader`) or a
    continuous tokenizer's latents (a :class:`LatentHeader`); everything else is the same.
    """

    def __init__(
        self,
        path: Path,
        *,
        header: Header,
        keys: list[str],
        shard_size: int,
        manifest: Manifest,
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
        header: Header,
        keys: list[str],
        shard_size: int,
    ) -> TokenDir:
        """Create the token folder ``out_dir``, or resume writing it; return the :class:`TokenDir`.

        A missing or empty folder gets a fresh manifest planning ``keys`` in
        shards of ``shard_size``. A folder whose manifest was planned by the
        same tokenizer (sha256) for the same keys and ``shard_size`` is resumed:
        stale ``.tmp-*`` files are removed and finished shards kept, including shard
        files written without their manifest entry (by another rank under torchrun, or
        by a run killed between the two writes), which are adopted (a manifest
        of ``tok.tokens/1`` is rewritten as ``tok.manifest/2``). A manifest
        from another tokenizer raises :class:`TokenizerMismatchError`; other
        keys or shard size, files tok did not write or a manifest format this
        version cannot read raise :class:`OutputDirError`; a damaged manifest
        :class:`TokenFileError`; bad arguments :class:`ConfigError`.
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
        _ = header.storage_dtype  # likewise for codebooks too large to store
        check_shard_headers(header, keys, shard_size)  # and for keys too long for one header
        if out.is_dir() and (out / MANIFEST).exists():
            return cls._resume(out, header=header, keys=keys, shard_size=shard_size)

        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        foreign = [n for n in entries if not OUR_TMP.match(n)]
        if foreign:
            raise OutputDirError(
                f"{out} is not empty and is not a tok token folder (no {MANIFEST}); it holds "
                f"{list_names(foreign)}. tok never overwrites files it did not write: "
                "choose a new or empty --out folder."
            )
        out.mkdir(parents=True, exist_ok=True)
        removed = []
        for name in entries:  # only temporary files of a killed first run are left
            (out / name).unlink()
            removed.append(out / name)
        manifest = Manifest.plan(header=header, keys=keys, shard_size=shard_size)
        write_json(out / MANIFEST, manifest.to_dict())
        return cls(
            out,
            header=header,
            keys=keys,
            shard_size=shard_size,
            manifest=manifest,
            removed_tmp=removed,
        )

    @classmethod
    def _resume(cls, out: Path, *, header: Header, keys: list[str], shard_size: int) -> TokenDir:
        manifest, stored_format = read_manifest(out, for_writing=True)
        stored = manifest.header
        if not stored.same_tokenizer(header):
            raise TokenizerMismatchError(
                f"{out} holds tokens from a different tokenizer (sha256 {stored.tokenizer_sha256[:12]}…, "
                f"this one is {header.tokenizer_sha256[:12]}…); tok will not mix them. "
                "Choose a new --out folder."
            )
        problems = []
        if manifest.planned_items != len(keys) or manifest.planned_keys_sha256 != keys_sha256(keys):
            problems.append(
                f"it was started for {manifest.planned_items} other source items "
                f"(now {len(keys)}, or the same number in another order)"
            )
        if manifest.shard_size != shard_size:
            problems.append(f"its shard size is {manifest.shard_size}, not {shard_size}")
        if not stored.same_layout(header):
            problems.append(f"it holds {stored.describe()}, not {header.describe()}")
        if (stored.source_options or {}) != (header.source_options or {}):
            problems.append(
                f"it was encoded with {_options(stored.source_options)}, "
                f"not {_options(header.source_options)}"
            )
        if problems:
            raise OutputDirError(
                f"cannot resume {out}: " + "; ".join(problems) + ". Choose a new --out folder, "
                "or rerun with the same source, options and shard size."
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
        shards = [self._settled(i, s) for i, s in enumerate(manifest.shards)]
        updated = manifest.with_shards(shards, keys=keys)
        if updated != manifest or stored_format != updated.format:
            self.manifest = updated
            write_json(out / MANIFEST, updated.to_dict())
        return self

    @classmethod
    def joined(
        cls, out_dir: str | os.PathLike[str], *, keys: list[str], shard_size: int
    ) -> TokenDir:
        """The token folder ``out_dir`` as another process (rank 0 under torchrun) opened it
        with :meth:`open` for the same ``keys`` and ``shard_size``, for writing shard files
        with ``record=False``: its manifest is read, never written."""
        out = Path(out_dir)
        manifest, _ = read_manifest(out, for_writing=True)
        return cls(out, header=manifest.header, keys=list(keys), shard_size=shard_size,
                   manifest=manifest)  # fmt: skip

    def _settled(self, index: int, shard: ShardEntry) -> ShardEntry:
        """Shard ``index``'s entry as its file says. The file is the record, written
        atomically before the manifest: a shard marked done counts only if its file is
        there and holds what the entry says (else it is written again); a shard not marked
        done whose file is there — written by another rank, which never writes the
        manifest, or by a run killed between the two writes — is adopted when the file
        is from this tokenizer and holds the shard's planned keys in order, less some
        (the skipped ones)."""
        written = self._written_keys(index, shard)
        if shard.done:
            if written == shard.written(self._shard_keys(index)):
                return shard
            return ShardEntry(file=shard.file, planned=shard.planned)
        if written is None:
            return shard
        kept = set(written)
        planned = self._shard_keys(index)
        return ShardEntry(
            file=shard.file,
            planned=shard.planned,
            count=len(written),
            skipped=tuple(k for k in planned if k not in kept),
            done=True,
        )

    def _written_keys(self, index: int, shard: ShardEntry) -> list[str] | None:
        """The keys in shard ``index``'s file, if it is there, reads, comes from this
        tokenizer and holds planned keys of the shard in their order; else ``None``."""
        path = self.path / shard.file
        if not path.is_file():
            return None
        try:
            header, keys = read_header(path)
        except TokenFileError:
            return None
        planned = iter(self._shard_keys(index))
        in_order = all(any(k == p for p in planned) for k in keys)  # a subsequence
        return keys if header.same_tokenizer(self.header) and in_order else None

    # -- writing ----------------------------------------------------------

    def _shard_keys(self, index: int) -> list[str]:
        start = index * self.shard_size
        return self.keys[start : start + self.shard_size]

    @property
    def num_shards(self) -> int:
        """The number of shards planned."""
        return len(self.manifest.shards)

    def pending(self) -> list[tuple[int, list[str]]]:
        """Return ``(index, planned keys)`` for every shard not yet written, in order."""
        return [
            (i, self._shard_keys(i))
            for i, shard in enumerate(self.manifest.shards)
            if not (shard.done and (self.path / shard.file).is_file())
        ]

    def write_shard(
        self,
        index: int,
        tokens: Tensor | list[Tensor] | None,
        *,
        keys: list[str] | None = None,
        skipped: Iterable[str] = (),
        record: bool = True,
        sizes: Tensor | list | None = None,
    ) -> Path:
        """Write shard ``index`` and mark it done in the manifest; return the shard's path.
        With ``record=False`` only the shard's file is written (atomically): the process
        that writes the manifest adopts it when it reopens the folder (:meth:`open`).

        ``skipped`` are planned keys of this shard whose source turned out
        unreadable; ``keys`` (default: the planned keys less ``skipped``) must
        be exactly the planned keys less ``skipped``, in order, and ``tokens``
        holds their rows, ``(len(keys), *grid, S)`` integer tokens or, in a folder of
        latents, ``(len(keys), *grid, l)`` float latents. A shard whose every key is
        skipped is written with zero rows (``tokens`` may then be ``None``). In a folder of
        ragged rows (``header.ragged``) ``tokens`` is a list of rows ``(*grid_i, S)`` and
        ``sizes`` their input sizes (:func:`tok.tokens.write_tokens`).
        Raises :class:`ConfigError` for a bad index, a skipped key that is not
        planned in this shard (or is given twice), ``keys`` that do not match,
        or ``tokens=None`` with rows to write; :class:`TokenFileError` or
        :class:`IndexRangeError` from :func:`write_tokens` for bad tokens or latents
        (non-finite ones included).
        """
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < self.num_shards
        ):
            raise ConfigError(f"shard index {index!r} out of range (0..{self.num_shards - 1})")
        planned = self._shard_keys(index)
        skipped = list(skipped)
        skip, planned_set = set(skipped), set(planned)
        stray = [k for k in skipped if k not in planned_set]
        if stray:
            raise ConfigError(
                f"cannot skip {stray[0]!r} in shard {index}: it is not one of that shard's "
                "planned keys"
            )
        if len(skip) != len(skipped):
            twice = next(k for k in skipped if skipped.count(k) > 1)
            raise ConfigError(f"shard {index}: skipped key {twice!r} is given twice")
        shard = self.manifest.shards[index]
        written = [k for k in planned if k not in skip]
        entry = ShardEntry(
            file=shard.file,
            planned=len(planned),
            count=len(written),
            skipped=tuple(k for k in planned if k in skip),
            done=True,
        )
        if keys is not None and list(keys) != written:
            got = list(keys)
            problems = []
            if len(got) != len(written):
                problems.append(f"expected {len(written)} key(s), got {len(got)}")
            pairs = enumerate(zip(written, got, strict=False))
            at = next((i for i, (a, b) in pairs if a != b), None)
            if at is not None:
                problems.append(f"at row {at} expected {written[at]!r}, got {got[at]!r}")
            detail = "; ".join(problems)
            raise ConfigError(
                f"keys of shard {index} must be its planned keys less the skipped ones, "
                f"in order: {detail}"
            )
        if tokens is None:
            if written:
                raise ConfigError(
                    f"shard {index} has {len(written)} row(s) to write but tokens is None"
                )
            tokens = [] if self.header.ragged else self.header.empty()
        path = write_tokens(
            self.path / shard.file, tokens, keys=written, header=self.header, sizes=sizes
        )
        shards = list(self.manifest.shards)
        shards[index] = entry
        self.manifest = self.manifest.with_shards(shards, keys=self.keys)
        if record:
            write_json(self.path / MANIFEST, self.manifest.to_dict())
        return path

    @property
    def complete(self) -> bool:
        """Whether every shard has been written."""
        return self.manifest.complete

    def skipped(self) -> list[str]:
        """Return every planned key skipped so far (in written shards), in order."""
        return [k for s in self.manifest.shards for k in s.skipped]

    def shard_paths(self) -> list[Path]:
        """Return the paths of all planned shards, in order (written or not)."""
        return [self.path / s.file for s in self.manifest.shards]


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _open_folder(path: str | os.PathLike[str]) -> tuple[Path, Manifest]:
    folder = Path(path)
    if not folder.is_dir():
        raise TokenFileError(f"{folder}: no such token folder")
    if not (folder / MANIFEST).exists():
        raise TokenFileError(f"{folder} is not a token folder: it has no {MANIFEST}")
    return folder, read_manifest(folder, for_writing=False)[0]


def iter_token_dir(path: str | os.PathLike[str]) -> Iterator[TokenFile]:
    """Yield the shards of the complete token folder ``path`` in order, as :class:`TokenFile`.

    Each shard's rows are checked against its ``count`` and, at the end, every
    key against the manifest's ``keys_sha256``. Raises :class:`TokenFileError`
    if the folder has no manifest, its manifest is damaged or of a format this
    version cannot read, it is incomplete (naming the missing shards) or a
    shard disagrees with the manifest, and :class:`TokenizerMismatchError` if
    shards come from different tokenizers.
    """
    folder, manifest = _open_folder(path)
    header = manifest.header
    missing = [s.file for s in manifest.shards if not (s.done and (folder / s.file).is_file())]
    if missing:
        raise TokenFileError(
            f"{folder} is incomplete: {len(missing)} of {len(manifest.shards)} shard(s) missing "
            f"({list_names(missing, 5)}). Run tok encode again with the same --out to finish it."
        )
    seen: list[str] = []
    for shard in manifest.shards:
        tf = read_tokens(folder / shard.file)
        if not tf.header.same_tokenizer(header):
            raise TokenizerMismatchError(
                f"{tf.path} was made by a different tokenizer (sha256 "
                f"{tf.header.tokenizer_sha256[:12]}…) than the rest of {folder} "
                f"({header.tokenizer_sha256[:12]}…)"
            )
        if not tf.header.same_layout(header):
            raise TokenFileError(
                f"{tf.path}: holds {tf.header.describe()}, but {folder / MANIFEST} says "
                f"{header.describe()}"
            )
        if len(tf.keys) != shard.count:
            raise TokenFileError(
                f"{tf.path} holds {len(tf.keys)} rows, the manifest says {shard.count}"
            )
        seen.extend(tf.keys)
        yield tf
    if len(seen) != manifest.num_items or keys_sha256(seen) != manifest.keys_sha256:
        raise TokenFileError(f"{folder}: the shards' keys do not match {folder / MANIFEST}")


def read_token_dir(path: str | os.PathLike[str]) -> list[TokenFile]:
    """Return the shards of the complete token folder ``path`` in order (see :func:`iter_token_dir`)."""
    return list(iter_token_dir(path))


def load_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Load a token file or a whole token folder; return one :class:`TokenFile`.

    For a folder the shards are concatenated in order (keys in source order,
    skipped ones absent; ragged rows with their ``grids`` and ``sizes``) and the result's
    ``path`` is the folder; a folder
    with no rows gives int64 tokens of shape ``(0, *grid, S)`` (float32 latents
    ``(0, *grid, l)`` for a folder of latents). Errors as
    :func:`tok.tokens.read_tokens` and :func:`iter_token_dir`.
    """
    path = Path(path)
    if not path.is_dir():
        return read_tokens(path)
    parts = read_token_dir(path)
    if not parts:
        header = _open_folder(path)[1].header
        return TokenFile(tokens=header.empty(), keys=[], header=header, path=path)
    tokens = torch.cat([p.tokens for p in parts]) if len(parts) > 1 else parts[0].tokens
    keys = [k for p in parts for k in p.keys]
    grids = sizes = None
    if parts[0].header.ragged:  # every shard's, checked by iter_token_dir
        grids = torch.cat([p.grids for p in parts])
        sizes = torch.cat([p.sizes for p in parts])
    return TokenFile(
        tokens=tokens, keys=keys, header=parts[0].header, path=path, grids=grids, sizes=sizes
    )
