"""One writer per folder: a lock held on a run folder or token folder for a whole command.

``tok train`` (new runs and ``--resume``), ``tok encode`` and ``tok decode`` hold
:func:`folder_lock` on the folder they write for as long as they run. A second
command on the same folder stops at once with one line::

    tok: error: runs/fsq_mnist is in use by another tok process (pid 4242)

The lock is an advisory ``flock`` taken through the ``filelock`` library on a
lock file outside the folder — ``$TOK_LOCK_DIR``, by default
``<tempdir>/tok-locks-<uid>`` — named by the sha256 of the folder's resolved
path, so nothing is added to the user's folders and a folder reached through
a symlink or a relative path is the same folder. The operating system drops
the lock when its process ends, however it ends: a lock left by a killed
process never blocks a resume. Scope: one machine and one user (the lock
folder is per user); two machines writing one network folder are not seen.

Under ``torchrun`` the lock belongs to the job: the process of global rank 0
(``RANK=0``) holds it for all ranks, which do not take it themselves, so the
ranks of one job are one writer and another job's rank 0 is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import filelock

from .errors import FileAccessError, FolderInUseError

__all__ = ["folder_lock", "lock_file", "holder_pid"]


def lock_file(folder: str | os.PathLike[str]) -> Path:
    """The lock file of ``folder`` (which need not exist yet)."""
    resolved = os.fsencode(Path(folder).expanduser().resolve())
    root = os.environ.get("TOK_LOCK_DIR") or Path(
        tempfile.gettempdir(), f"tok-locks-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )
    return Path(root, hashlib.sha256(resolved).hexdigest()[:32] + ".lock")


def holder_pid(lock: Path) -> int | None:
    """The pid that holds an ``flock`` on ``lock``: from ``/proc/locks`` (Linux), else the
    pid the holder wrote into the file; ``None`` when neither says."""
    try:
        st = lock.stat()
        with open("/proc/locks") as f:
            for line in f:  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146541 0 EOF"
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK":
                    major, minor, inode = fields[5].split(":")
                    if int(inode) == st.st_ino and (
                        os.makedev(int(major, 16), int(minor, 16)) == st.st_dev
                    ):
                        return int(fields[4])
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError, ValueError):
        return int(lock.read_text().split()[0])
    return None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of ``folder`` for the ``with`` block.

    :raises FolderInUseError: another process (another job, under ``torchrun``) holds it;
        the message names ``folder`` and that process's pid.
    """
    if os.environ.get("RANK", "0") != "0":  # torchrun: the job's rank 0 holds it
        yield
        return
    path = lock_file(folder)
    lock = filelock.FileLock(path, timeout=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock.acquire()
    except filelock.Timeout:
        pid = holder_pid(path)
        raise FolderInUseError(
            f"{folder} is in use by another tok process (pid {pid if pid else 'unknown'}); "
            "wait for it to finish or stop it, then run this again"
        ) from None
    except OSError as exc:  # TOK_LOCK_DIR read-only, full …
        raise FileAccessError(
            f"cannot lock {folder}: its lock file {path}: {exc.strerror or exc} "
            "(set TOK_LOCK_DIR to a writable folder)"
        ) from exc
    try:
        with contextlib.suppress(OSError), open(path, "r+") as f:  # where /proc/locks is not
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
        yield
    finally:
        lock.release()
