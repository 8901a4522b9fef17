"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader never sees a half-written file, and a killed process leaves at most a
``.tmp-*`` file behind, which the next run of the same command removes. Also
here, because they are the other ends of the same files: what the OS refused
as one :class:`FileAccessError` line (:func:`io_failure`, :func:`check_readable`,
:func:`check_writable`), the ``metrics.jsonl`` appender (:class:`JsonLines`), and
optimizer state as flat safetensors tensors (:func:`optimizer_tensors`), and
safetensors files whose bytes are a function of their contents
(:func:`write_safetensors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, FileAccessError

if TYPE_CHECKING:
    import torch

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = [
    "TMP_PREFIX",
    "JsonLines",
    "check_readable",
    "check_writable",
    "write_safetensors",
    "io_failure",
    "atomic_path",
    "write_json",
    "write_text",
    "remove_stale_tmp",
    "nonfinite_tensors",
    "optimizer_tensors",
    "load_optimizer",
]


def nonfinite_tensors(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a NaN or ±inf, each
    with its count (``"encoder.0.weight (12 of 864)"``): what must never be saved."""
    import torch

    found = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                found.append(f"{name} ({bad} of {t.numel()})")
    return found


_RANDOM_CHARS = 8  # what tempfile.mkstemp appends to the prefix


def tmp_prefix(path: Path) -> str:
    """``.tmp-NAME.`` for :func:`tempfile.mkstemp`, with ``NAME`` (the final name) cut so
    that the temporary name, random part included, fits in the folder's longest name
    (``NAME_MAX``, 255 bytes on most file systems): a final name that fits never
    fails for its temporary one. Cut at a byte; the name is only a hint for people."""
    try:
        name_max = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    room = name_max - len(TMP_PREFIX) - 1 - _RANDOM_CHARS
    return TMP_PREFIX + os.fsdecode(os.fsencode(path.name)[: max(0, room)]) + "."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path), dir=path.parent)
    except OSError as exc:
        raise FileAccessError(f"cannot write {path}: {os_reason(exc)}") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        reason = io_failure(exc)
        if reason is not None:  # the OS (or a file-format library) said no: name the file
            raise FileAccessError(f"cannot write {path}: {reason}") from exc
        raise


def os_reason(exc: OSError) -> str:
    """``"No space left on device"``: an OS error's cause, in the OS's words."""
    return exc.strerror or str(exc)


def io_failure(exc: BaseException) -> str | None:
    """The cause, when ``exc`` is the operating system refusing a read or write — an
    ``OSError``, or safetensors' ``SafetensorError`` around one ("I/O error: …") — else
    ``None`` (a programming error keeps its traceback)."""
    if isinstance(exc, FileAccessError):
        return None
    if isinstance(exc, OSError):
        return os_reason(exc)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and "I/O error: " in text:
        return re.sub(r" \(os error \d+\)$", "", text.split("I/O error: ", 1)[1])
    return None


def check_readable(path: str | os.PathLike[str]) -> None:
    """Open ``path`` for reading once, so that the OS's own cause is reported (safetensors
    says "No such file or directory" for a file it may not read).

    :raises FileAccessError: ``cannot read PATH: Permission denied``.
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise FileAccessError(f"cannot read {path}: {os_reason(exc)}") from exc


def check_writable(folder: str | os.PathLike[str], *, what: str) -> None:
    """Refuse, before the work, a ``folder`` tok will write in but cannot: it (or, when it
    does not exist yet, the nearest folder above it) must be writable.

    :raises FileAccessError: naming ``what`` and the folder.
    """
    path = Path(folder).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return  # a file in the way: the command's own check says so
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only_fs(existing) else "no write permission"
        raise FileAccessError(f"cannot write {what} in {existing}: {why}; nothing was changed")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_safetensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], *, metadata: dict[str, str]
) -> None:
    """Write ``tensors`` and ``metadata`` to the safetensors file ``path``, atomically
    (:func:`atomic_path`), with the header's ``__metadata__`` keys in sorted order.

    safetensors serialises the file in memory (``safetensors.torch.save``) and tok writes
    the bytes itself, for two reasons. ``save_file`` writes the metadata in the order of
    a Rust ``HashMap``, random per map (safetensors issue #584), so the same contents
    would give other bytes on every save — two processes encoding the same shard would
    disagree byte for byte; here the header is rewritten at its own length (safetensors
    pads it with spaces) with the keys sorted, the tensors' entries in the order
    safetensors gave them. And ``save_file`` goes through a temporary file of its own
    (``.tmpXXXXXX``, Rust's ``tempfile``) that a killed process leaves behind, under a
    name tok's clean-up of its own temporary files does not know. The file is held in
    memory once while it is written.
    """
    from safetensors.torch import save

    data = memoryview(save(tensors, metadata=metadata))
    size = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8 : 8 + size]))
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # never: both escape alike; keep safetensors' header then
        text = bytes(data[8 : 8 + size])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data[:8])
        f.write(text.ljust(size, b" "))
        f.write(data[8 + size :])


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove_stale_tmp(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete ``.tmp-*`` files left in ``folder`` by a killed writer; return what was removed."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(TMP_PREFIX + "*"):
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, list]:
    """An optimizer's state as flat tensors ``{prefix}.{param index}.{name}`` (for
    safetensors: no pickle) and its param groups (JSON); :func:`load_optimizer` reverses it."""
    import torch

    state = opt.state_dict()
    tensors = {
        f"{prefix}.{idx}.{key}": torch.as_tensor(value).detach().contiguous().cpu()
        for idx, values in state["state"].items()
        for key, value in values.items()
    }
    return tensors, state["param_groups"]


def load_optimizer(
    opt: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    prefix: str,
    groups: list,
    *,
    run: Path,
) -> None:
    """Restore ``opt`` from a checkpoint's flat tensors; a :class:`CheckpointError` naming
    ``run`` when the saved state has another number of parameters (the model changed)."""
    import torch

    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    saved = sum(len(g.get("params", ())) for g in groups)
    now = sum(len(g["params"]) for g in opt.param_groups)
    if saved != now or len(groups) != len(opt.param_groups):
        raise CheckpointError(
            f"cannot resume {run}: its checkpoint holds optimizer state for {saved} parameter "
            f"tensors, the model now has {now} (the architecture or a plugin changed since); "
            "start a new run, or train from its model.safetensors"
        )
    opt.load_state_dict({"state": state, "param_groups": groups})
    for group in opt.param_groups:  # moments saved contiguous, laid out as their parameter
        for param in group["params"]:  # again (a fused step reads them as flat memory)
            for name, value in opt.state.get(param, {}).items():
                if value.shape == param.shape and value.stride() != param.stride():
                    opt.state[param][name] = torch.empty_like(param).copy_(value)


class JsonLines:
    """A JSON-lines file open for appending (a run's ``metrics.jsonl``): ``write(row)`` adds
    one line and flushes. A write the OS refuses raises :class:`FileAccessError` naming it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "a")  # noqa: SIM115 - closed by close() / the with block
        except OSError as exc:
            raise FileAccessError(f"cannot write {path}: {os_reason(exc)}") from exc

    def write(self, row: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as exc:
            raise FileAccessError(f"cannot write {self.path}: {os_reason(exc)}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk already said so at write()
            self._file.close()

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
