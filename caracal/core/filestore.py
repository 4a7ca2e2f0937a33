"""The file backend's ledger store: ``ledger.jsonl`` under ``flock``, with its sidecars.

It implements :class:`caracal.core.store.LedgerStore` for one JSON Lines file; positions are byte offsets
just past a line's newline. It lives in ``core`` (not ``caracal.storage``) because the file is the seed's
ledger format and :class:`~caracal.core.ledger.LedgerWriter` opens one by path; ``caracal.storage.files``
builds the rest of the file backend (registries) around it.

Invariants:

- **One writer at a time.** A step holds a thread lock and an exclusive ``flock`` on ``<ledger>.lock``
  (``flock`` does not separate threads sharing one file description). Contended, a helper thread makes the
  blocking ``flock`` call, so the kernel hands the lock over the moment it is free (polling would let one
  process starve the others).
- **Nothing acknowledged is lost.** :meth:`FileLedgerStore.write` is one ``write`` and one ``fdatasync``;
  any failure (ENOSPC, EIO, a short write, a failed sync) truncates the file back to where it was and
  raises :class:`LedgerWriteError`: nothing recorded. If even that rollback fails, the store refuses every
  later step (complete lines of that write may survive a reopen, so the error says so).
- **Torn tails are repaired, corruption never is.** Under the lock, bytes after the last newline can only
  be a write a crashed process never acknowledged: :meth:`FileLedgerStore.new_lines` moves them to
  ``<ledger>.torn`` and cuts the file back, once the caller has read (and accepted) every complete line.
- **A file that shrank is refused.** A ledger shorter than what this store already saw lost acknowledged
  lines: every later step is refused (fail closed).
- **Backups.** :meth:`FileLedgerStore.backup` rotates ``<ledger>.bak.1..N`` and writes a fresh copy (temp
  file, fsync, rename) unless the newest backup holds the same bytes or is younger than
  ``backup_min_interval``: short-lived writers do not copy a large ledger each time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from caracal.core.checkpoint import CheckpointStore
from caracal.core.events import iter_lines, ledger_size, line_ending_at
from caracal.core.fileio import (
    append_durably,
    flock_within,
    fsync_directory,
    open_for_reading,
    write_atomically,
)
from caracal.exceptions import LedgerCorruptError, LedgerLockTimeoutError, LedgerReadError, LedgerWriteError

logger = logging.getLogger("caracal.ledger")

# The OS calls an append depends on, as module attributes so fault-injection tests can replace them with
# failing versions (ENOSPC, EIO, short writes, failed syncs) without touching Caracal's own logic.
_os_write = os.write
_os_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
_os_ftruncate = os.ftruncate


def sidecar_path(ledger_path: Path, suffix: str) -> Path:
    """``<ledger>.<suffix>``: lock, torn, merkle, budget, checkpoints, bak.N."""
    return ledger_path.with_name(f"{ledger_path.name}.{suffix}")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class FileLedgerStore:
    """The lines of ``ledger_path`` (see the module docstring). Safe to share between threads."""

    positions_are_ids = False

    def __init__(
        self,
        ledger_path: str | os.PathLike[str],
        *,
        lock_timeout: float = 10.0,
        backup_count: int = 3,
        backup_min_interval: float = 600.0,
        clock: Callable[[], datetime] = _utc_now,
    ):
        self.path = Path(ledger_path)
        self.location = str(self.path)
        self.lock_timeout = float(lock_timeout)
        self.backup_count = backup_count
        self.backup_min_interval = float(backup_min_interval)
        self.now = clock
        self.checkpoints = CheckpointStore(sidecar_path(self.path, "checkpoints"))
        self._thread_lock = threading.RLock()
        self._abandoned_helper: threading.Thread | None = None
        self._fd = -1
        self._lock_fd = -1
        self._end = 0  # offset just past the last complete line this store has read or written
        self._refused: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._lock_fd = os.open(sidecar_path(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
            if created:
                fsync_directory(self.path.parent)
        except OSError as exc:
            self.close()
            raise LedgerWriteError(f"cannot open the ledger {self.path}: {exc.strerror or exc}") from exc

    # ------------------------------------------------------------------ the append step

    def begin(self) -> None:
        """Take the thread lock, then the file lock (the append path calls this directly: no generator)."""
        lock = self._thread_lock
        if not lock.acquire(blocking=False) and not lock.acquire(
            timeout=self.lock_timeout if self.lock_timeout > 0 else -1
        ):
            raise LedgerLockTimeoutError(
                f"timed out after {self.lock_timeout}s waiting for another thread to finish appending "
                f"to {self.path}"
            )
        try:
            if self._fd < 0 or self._lock_fd < 0:
                raise LedgerWriteError(f"the writer for {self.path} is closed")
            self._acquire_file_lock()
        except BaseException:
            lock.release()
            raise
        if self._refused is not None:
            self.finish()
            raise LedgerWriteError(f"the ledger {self.path} refuses writes: {self._refused}")

    def finish(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def new_lines(self, after: int) -> Iterator[tuple[int, bytes]]:
        """The complete lines after byte ``after`` (under the lock); then a torn last line is repaired.

        One ``fstat`` when nothing changed. The caller validates what it reads; if it stops early (a
        corrupt line), no repair happens."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise LedgerWriteError(f"cannot stat the ledger {self.path}: {exc.strerror}") from exc
        if size < max(after, self._end):
            self.refuse(
                f"the ledger shrank from {max(after, self._end)} to {size} bytes while open: acknowledged "
                f"events were removed. Run 'caracal ledger verify' and restore from a backup"
            )
            raise LedgerWriteError(f"the ledger {self.path} refuses writes: {self._refused}")
        self._end = after
        if size == after:
            return
        with open_for_reading(self.path) as handle:
            for offset, line in _lines_after(handle, after, size, self.path):
                end = offset + len(line) + 1
                yield end, line
                self._end = end
            if self._end < size:
                self._repair_torn_tail(handle, size)

    def write(self, lines: list[bytes], first_event_id: int) -> int:
        """One write and one fdatasync at the end of the file; on any failure roll back and raise."""
        payload = b"\n".join(lines) + b"\n"
        try:
            written = _os_write(self._fd, payload)
            if written != len(payload):
                raise OSError(errno.EIO, f"short write: {written} of {len(payload)} bytes reached the file")
            _os_fdatasync(self._fd)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            try:
                _os_ftruncate(self._fd, self._end)
                _os_fdatasync(self._fd)
            except OSError as rollback_exc:
                self.refuse(
                    f"an append failed ({reason}) and rolling it back failed too "
                    f"({rollback_exc.strerror or rollback_exc}); reopen the ledger to repair it"
                )
                # Not "nothing was recorded": complete lines of this write may still be in the file, and a
                # writer that reopens it keeps them. Say so, or a caller's retry would charge twice.
                raise LedgerWriteError(
                    f"could not append to the ledger {self.path}: {reason}, and rolling the file back "
                    f"failed too ({rollback_exc.strerror or rollback_exc}). These events were not "
                    f"acknowledged but may still appear when the ledger is reopened; this writer refuses "
                    f"further appends",
                    outcome_unknown=True,
                ) from exc
            raise LedgerWriteError(
                f"could not append to the ledger {self.path}: {reason}. Nothing was recorded; "
                f"fix the cause (disk space, permissions, hardware) and try again"
            ) from exc
        self._end += len(payload)
        return self._end

    def refuse(self, reason: str) -> None:
        """Fail closed: remember why, log it, and refuse every later step of this store."""
        if self._refused is None:
            self._refused = reason
            logger.error("ledger %s refuses writes: %s", self.path, reason)

    @property
    def refused(self) -> str | None:
        return self._refused

    # ------------------------------------------------------------------ reading

    def end(self) -> int:
        return ledger_size(self.path)

    def iter_lines(self, after: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        return stream_lines(self.path, after, end)

    def line_at(self, position: int) -> bytes | None:
        return line_ending_at(self.path, position)

    def line_source(self) -> tuple[str, dict[str, Any]]:
        return "caracal.core.filestore:stream_lines", {"path": os.fspath(self.path)}

    # ------------------------------------------------------------------ caches and housekeeping

    def load_cache(self, name: str) -> bytes | None:
        try:
            return sidecar_path(self.path, name).read_bytes()
        except FileNotFoundError:
            return None

    def save_cache(self, name: str, data: bytes) -> None:
        write_atomically(sidecar_path(self.path, name), data, durable=False)

    def claim_key(self, key_id: str) -> str:
        """A home folder has one key (in its ``keys/``): nothing to record."""
        return key_id

    @contextlib.contextmanager
    def replay_lock(self, timeout: float) -> Iterator[bool]:
        path = sidecar_path(self.path, "replay.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerReadError(
                f"cannot open the replay lock {path}: {exc.strerror or exc}; the budget state cannot be "
                "rebuilt safely. Check that the data folder is writable by this user."
            ) from exc
        try:
            yield flock_within(fd, timeout if timeout > 0 else 0.0)
        finally:
            os.close(fd)  # releases the flock

    def backup(self, end: int) -> None:
        if self.backup_count == 0 or end == 0:
            return
        newest = sidecar_path(self.path, "bak.1")
        try:
            if newest.exists():
                stat = newest.stat()
                if self.now().timestamp() - stat.st_mtime < self.backup_min_interval:
                    return
                if stat.st_size == end and _same_edges(newest, self.path, end):
                    return
            self._write_backup(newest, end)
        except OSError as exc:  # backups are a convenience; the ledger itself stays the source of truth
            logger.warning("could not back up %s: %s", self.path, exc)

    def close(self) -> None:
        with self._thread_lock:
            for fd in (self._fd, self._lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = self._lock_fd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0

    # ------------------------------------------------------------------ internals

    def _repair_torn_tail(self, handle: Any, size: int) -> None:
        """Move the bytes after the last newline to ``<ledger>.torn`` and cut the file back.

        Under the exclusive lock no writer is mid-append, so these bytes are a write that a crashed
        process never acknowledged; keeping them aside (not deleting them) leaves a trace for operators.
        """
        handle.seek(self._end)
        torn = handle.read(size - self._end)
        try:
            append_durably(sidecar_path(self.path, "torn"), torn + b"\n")
            _os_ftruncate(self._fd, self._end)
            _os_fdatasync(self._fd)
        except OSError as exc:
            self.refuse(f"cannot repair a torn last line: {exc.strerror or exc}")
            raise LedgerWriteError(f"the ledger {self.path} refuses writes: {self._refused}") from exc
        logger.warning(
            "repaired %s: moved a torn last line of %d bytes (an unacknowledged write) to %s",
            self.path,
            len(torn),
            sidecar_path(self.path, "torn"),
        )

    def _acquire_file_lock(self) -> None:
        """Take the exclusive flock, waiting at most ``lock_timeout`` seconds (see the module docstring)."""
        fd = self._lock_fd
        abandoned = self._abandoned_helper
        if abandoned is not None:
            # A helper from an earlier, timed-out wait may still be queued for the lock on our shared file
            # description; if we took the lock now it could release it under us. Wait for it to finish.
            abandoned.join(self.lock_timeout)
            if abandoned.is_alive():
                raise self._timed_out()
            self._abandoned_helper = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self.lock_timeout
        acquired = threading.Event()
        state: dict[str, Any] = {"abandoned": False, "error": None}
        guard = threading.Lock()
        # The helper waits on its own duplicate of the descriptor: a flock belongs to the open file
        # description both share, so taking it through the duplicate takes it for this store; and if the
        # store closes its descriptor meanwhile, the helper never touches a number the process reused.
        helper_fd = os.dup(fd)

        def wait_for_lock() -> None:
            try:
                fcntl.flock(helper_fd, fcntl.LOCK_EX)
                with guard:
                    if state["abandoned"]:
                        fcntl.flock(helper_fd, fcntl.LOCK_UN)
                    else:
                        acquired.set()
            except OSError as exc:
                state["error"] = exc
                acquired.set()
            finally:
                os.close(helper_fd)  # the lock stays with the shared description until the store unlocks

        helper = threading.Thread(target=wait_for_lock, name="caracal-ledger-lock", daemon=True)
        helper.start()
        if not acquired.wait(max(0.0, deadline - time.monotonic())):
            with guard:
                if not acquired.is_set():
                    state["abandoned"] = True
                    self._abandoned_helper = helper
                    raise self._timed_out()
        if state["error"] is not None:
            raise LedgerWriteError(f"cannot lock the ledger {self.path}: {state['error']}")

    def _timed_out(self) -> LedgerLockTimeoutError:
        return LedgerLockTimeoutError(
            f"timed out after {self.lock_timeout}s waiting for the lock on {self.path}; "
            f"another process is appending or is stuck holding it"
        )

    def _write_backup(self, newest: Path, end: int) -> None:
        tmp = sidecar_path(self.path, f"bak.tmp-{os.getpid()}")
        with open(self.path, "rb") as source, open(tmp, "wb") as target:
            remaining = end
            while remaining:
                block = source.read(min(remaining, 1 << 20))
                if not block:
                    break
                target.write(block)
                remaining -= len(block)
            target.flush()
            os.fsync(target.fileno())
        for index in range(self.backup_count - 1, 0, -1):
            older = sidecar_path(self.path, f"bak.{index}")
            if older.exists():
                os.replace(older, sidecar_path(self.path, f"bak.{index + 1}"))
        os.replace(tmp, newest)
        fsync_directory(self.path.parent)
        logger.info("backed up %s to %s (%d bytes)", self.path, newest, end)


def _same_edges(a: Path, b: Path, size: int) -> bool:
    """Whether two files of ``size`` bytes start and end alike; for append-only files, that is equality."""
    probe = min(size, 4096)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if fa.read(probe) != fb.read(probe):
            return False
        fa.seek(size - probe)
        fb.seek(size - probe)
        return fa.read(probe) == fb.read(probe)


def stream_lines(path: str | os.PathLike[str], after: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """The complete lines of the ledger file after byte ``after`` (up to ``end``): ``(offset after the line,
    line)``. :meth:`FileLedgerStore.iter_lines`, and a replay helper's source (:meth:`line_source`)."""
    try:
        handle = open_for_reading(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerReadError(f"cannot read the ledger {path}: {exc.strerror}") from exc
    with handle:
        for offset, line in _lines_after(handle, after, end, path):
            yield offset + len(line) + 1, line


def _lines_after(
    handle: BinaryIO, after: int, end: int | None, path: str | os.PathLike[str]
) -> Iterator[tuple[int, bytes]]:
    """:func:`iter_lines` from byte ``after``, where a reader's last read ended: the end of a line. If the
    byte before it is no longer a newline, the lines before it were rewritten with other lengths (or the
    file was replaced) under the reader, and what it would read from there is the middle of some line:
    say so, instead of naming a line past the end as not valid JSON."""
    if after > 0:
        handle.seek(after - 1)
        if handle.read(1) != b"\n":
            raise LedgerCorruptError(
                f"the ledger {path} changed under this process: byte {after}, where its last read ended, is "
                "no longer the start of a line (lines before it were rewritten with other lengths, or the "
                "file was replaced). Run 'caracal ledger verify' and restore the ledger from a backup"
            )
    return iter_lines(handle, after, end)


__all__ = ["FileLedgerStore", "sidecar_path", "stream_lines"]
