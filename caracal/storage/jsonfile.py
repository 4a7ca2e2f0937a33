"""A small JSON document file that several processes read and change safely: the file backend's
:class:`~caracal.storage.interface.Document` (registries: agents, policies, prices, API keys).

Invariants:

- **Atomic.** Every write goes to a temporary file that is fsynced and renamed over the document, then the
  folder is fsynced: a reader sees the old document or the new one, never a mix, and a crash never leaves
  a half-written registry.
- **Serialized.** :meth:`JsonDocument.transaction` holds an exclusive ``flock`` on ``<path>.lock`` from the
  read to the write, so concurrent read-modify-write cycles (other threads, other processes) never lose an
  update. Plain :meth:`JsonDocument.read` needs no lock, thanks to the atomic rename.
- **Backed up.** Before each write the current document is kept as ``<path>.bak.1`` (older ones rotate to
  ``.bak.N``), so a bad change can be undone by hand.
- **Fail closed.** A document that does not parse raises :class:`RegistryError` naming the file and the
  backups; it is never silently replaced by an empty one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from caracal.core.fileio import flock_within, open_for_reading, write_atomically
from caracal.core.validation import dumps
from caracal.exceptions import FileWriteError, RegistryError

T = TypeVar("T")

logger = logging.getLogger("caracal.registry")

WRITE_RETRIES = 2
"""How many more times a registry write that failed with a passing ``OSError`` is tried (50 ms, then 100)."""
_PERMANENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
"""Failures that trying again cannot change."""


class Codec(Protocol):
    """How a document is stored when the file is not our JSON object (Caracal Core v0.1's JSON lists and
    pricebook CSV): ``decode`` turns the file's bytes into the document (raising a :class:`RegistryError`
    naming the problem), ``encode`` the document into the file's bytes."""

    def decode(self, data: bytes, path: Path) -> dict[str, Any]: ...

    def encode(self, document: dict[str, Any]) -> bytes: ...


RACY_NS = 2_000_000_000
"""How old a file must be before an unchanged stat is taken to mean unchanged content."""


class JsonDocument:
    """One JSON object stored in ``path``; ``default()`` gives the document when the file does not exist."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default: Callable[[], dict[str, Any]] = dict,
        backup_count: int = 3,
        lock_timeout: float = 10.0,
        mode: int = 0o644,
        codec: Codec | None = None,
    ):
        self.path = Path(path)
        self.codec = codec
        """None: the file is the document's JSON; else how the file stores it (see :class:`Codec`)."""
        self.mode = mode
        self.default = default
        self.backup_count = backup_count
        self.lock_timeout = lock_timeout
        self._thread_lock = threading.RLock()
        self._parsed: tuple[tuple[int, ...], bytes | None, Any] | None = None

    @property
    def label(self) -> str:
        """For messages: the file's path."""
        return str(self.path)

    def read_cached(self, parse: Callable[[dict[str, Any]], T]) -> T:
        """``parse(document)``, recomputed only when the file may have changed (budget checks call this).

        The file is identified by its stat (inode, device, size, times). A matching stat is trusted only
        once the file is older than :data:`RACY_NS` (a rewrite within one timestamp tick, of the same size,
        onto a recycled inode would otherwise look unchanged); before that, the bytes are read and compared.
        One ``parse`` per document object.
        """
        try:
            st = os.stat(self.path)
            key: tuple[int, ...] = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            settled = time.time_ns() - st.st_mtime_ns > RACY_NS
        except FileNotFoundError:
            key, settled = (), True
        except OSError as exc:
            raise RegistryError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        cached = self._parsed
        if cached is not None and cached[0] == key and settled:
            return cached[2]  # type: ignore[no-any-return]
        data = self._read_bytes()
        value = cached[2] if cached is not None and cached[1] == data else parse(self._decode(data))
        self._parsed = (key, data, value)
        return value

    def read(self) -> dict[str, Any]:
        """The current document (a fresh copy; changing it changes nothing on disk)."""
        return self._decode(self._read_bytes())

    def _read_bytes(self) -> bytes | None:
        """The file's bytes, None when it does not exist."""
        try:
            with open_for_reading(self.path) as file:
                return file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(f"cannot read {self.path}: {exc.strerror or exc}") from exc

    def _decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            return self.default()
        if self.codec is not None:
            return self.codec.decode(data, self.path)
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RegistryError(
                f"{self.path} is not valid JSON ({exc}); restore it from {self.path.name}.bak.1 (or an older "
                f"backup) beside it"
            ) from None
        if not isinstance(document, dict):
            raise RegistryError(f"{self.path} must hold a JSON object, found {type(document).__name__}")
        return document

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Lock, read, let the caller change the document, and write it back if it changed.

        If the block raises, nothing is written.
        """
        with self._locked():
            document = self.read()
            before = dumps(document)
            yield document
            after = dumps(document)
            if after != before:
                self._write(after if self.codec is None else self.codec.encode(document))

    def _write(self, data: bytes) -> None:
        """Rotate the backups, then replace the file atomically. Each atomic write that fails with an
        ``OSError`` that may pass (not a missing folder or a refused permission) is tried again, at most
        :data:`WRITE_RETRIES` more times with a short backoff: repeating a whole-file replace is harmless,
        unlike repeating a ledger append. What still fails raises :class:`FileWriteError` (a
        :class:`RegistryError`) and leaves the previous document in place."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.backup_count and self.path.exists():
                for index in range(self.backup_count - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.bak.{index}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.bak.{index + 1}"))
                backup = self.path.with_name(f"{self.path.name}.bak.1")
                self._replace(backup, self.path.read_bytes())
            self._replace(self.path, data)
        except OSError as exc:
            raise FileWriteError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _replace(self, path: Path, data: bytes) -> None:
        for attempt in range(WRITE_RETRIES + 1):
            try:
                write_atomically(path, data, mode=self.mode)
                return
            except _PERMANENT:
                raise
            except OSError as exc:
                if attempt == WRITE_RETRIES:
                    raise
                logger.warning("writing %s failed (%s); trying again", path, exc)
                time.sleep(0.05 * 2**attempt)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise RegistryError(f"timed out after {self.lock_timeout}s waiting for {self.path}")
        try:
            lock_path = self.path.with_name(self.path.name + ".lock")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RegistryError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
            try:
                if not flock_within(fd, self.lock_timeout):
                    raise RegistryError(
                        f"timed out after {self.lock_timeout}s waiting for the lock on {self.path}; "
                        f"another process holds it"
                    )
                yield
            finally:
                os.close(fd)  # closing releases the flock
        finally:
            self._thread_lock.release()


def restore_hint(document: object) -> str:
    """Where to restore a broken registry from: the file's backups, or the database's."""
    if isinstance(document, JsonDocument):
        return f"{document.path.name}.bak.1 (or an older backup) beside it"
    return "a backup of the database"
