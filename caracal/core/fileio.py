"""Durable file primitives shared by the ledger and its sidecars.

- :func:`write_atomically`: readers see the old content or the new, never a mix; after it returns, the
  new content and its directory entry are on disk (temp file, fsync, rename, fsync of the directory).
- :func:`append_durably`: one ``write`` of complete bytes to an ``O_APPEND`` file, then fsync.
- :func:`fsync_directory`: makes a create, rename or unlink in a directory durable.
- :func:`flock_within`: an exclusive ``flock`` waited for at most a given time (for the short, rare
  critical sections of registries and backups; the ledger's hot path has its own hand-over wait).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import BinaryIO


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False, durable: bool = True
) -> None:
    """Replace (or, with ``exclusive``, create; FileExistsError if present) ``path`` with ``data``.

    ``durable=False`` skips the fsyncs: for caches that are checked before use and can be rebuilt, where
    a crash may leave the old content, the new, or an empty file, but never a mix.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{id(data):x}.tmp")
    try:
        with open(tmp, "wb", buffering=0, opener=lambda name, flags: os.open(name, flags, mode)) as handle:
            fd = handle.fileno()
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError instead of replacing
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if durable:
        fsync_directory(path.parent)


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` with one write and fsync it; the file is created when missing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def flock_within(fd: int, timeout: float) -> bool:
    """Take an exclusive ``flock`` on ``fd``, polling for at most ``timeout`` seconds; False if it stayed
    taken (the caller raises its own typed error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)


_NOATIME = getattr(os, "O_NOATIME", 0)


def open_for_reading(path: str | os.PathLike[str]) -> BinaryIO:
    """``open(path, "rb")``, without updating the file's access time where the OS allows (Linux
    ``O_NOATIME``, for files the process owns).

    Why: with ``relatime`` a read after a write dirties the inode, and the next ``fdatasync`` of the ledger
    then commits that too: measured here, a read between appends made each append's sync 2-3x slower. The
    live budget state reads the ledger's new lines after every append, so this matters on the hot path.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NOATIME)
    except PermissionError:
        if not _NOATIME:
            raise
        fd = os.open(path, os.O_RDONLY)  # not the file's owner: O_NOATIME is refused, read it normally
    return os.fdopen(fd, "rb")
