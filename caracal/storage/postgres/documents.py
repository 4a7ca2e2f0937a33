"""Registry documents in ``caracal_documents``: the :class:`caracal.storage.interface.Document` of the
PostgreSQL backend (agents, policies, prices, API keys).

Invariants:

- **Serialized read-modify-write.** :meth:`PostgresDocument.transaction` locks the document's row
  (``SELECT ... FOR UPDATE``, after creating it if absent), hands the caller the decoded document, and
  writes it back with ``version + 1`` only if it changed, then COMMITs. Concurrent transactions from any
  thread, process or host queue on the row: no update is lost. If the block raises, the transaction is
  rolled back: nothing is written.
- **Whole documents.** A reader sees the body some transaction committed, never a mix (one row, one
  value). ``body`` NULL means never written: the registry's ``default()``.
- **Cheap cached reads.** :meth:`read_cached` re-reads and re-parses only when the version may have changed:
  while the backend's listener is fresh, the version comes from notifications (no query at all);
  otherwise one query reads the version alone, and the body only when it differs.
- **Fail closed.** Anything that goes wrong (unreachable database, timeout, a body that is not a JSON
  object) raises :class:`RegistryError` naming the document; an empty document never stands in for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import orjson

from caracal.core.validation import dumps
from caracal.exceptions import RegistryError
from caracal.storage.postgres.connection import Database
from caracal.storage.postgres.listener import Listener

T = TypeVar("T")


class PostgresDocument:
    """The registry ``name`` in ``db``; ``default()`` is the document before its first write."""

    def __init__(
        self,
        db: Database,
        name: str,
        default: Callable[[], dict[str, Any]],
        listener: Listener,
    ):
        self.db = db
        self.name = name
        self.default = default
        self._listener = listener
        self._cached: tuple[int, Any] | None = None  # (version, parsed)
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"{self.db.location} (registry {self.name})"

    def read_cached(self, parse: Callable[[dict[str, Any]], T]) -> T:
        cached = self._cached
        if cached is not None and self._listener.fresh():
            if cached[0] >= self._listener.known.versions.get(self.name, 0):
                return cached[1]  # type: ignore[no-any-return]
        elif cached is not None:
            with self.db.connection(RegistryError, f"read the registry {self.name} in") as conn:
                row = conn.execute(
                    "SELECT version FROM caracal_documents WHERE name = %s", (self.name,)
                ).fetchone()
            if (int(row[0]) if row is not None else 0) == cached[0]:
                return cached[1]  # type: ignore[no-any-return]
        version, document = self._fetch()
        value = parse(document)
        with self._lock:
            if self._cached is None or version >= self._cached[0]:
                self._cached = (version, value)
        return value

    def read(self) -> dict[str, Any]:
        return self._fetch()[1]

    def _fetch(self) -> tuple[int, dict[str, Any]]:
        with self.db.connection(RegistryError, f"read the registry {self.name} in") as conn:
            row = conn.execute(
                "SELECT version, body FROM caracal_documents WHERE name = %s", (self.name,)
            ).fetchone()
        if row is None:
            return 0, self.default()
        version = int(row[0])
        self._listener.known.saw_version(self.name, version)
        return version, self._decode(row[1])

    def _decode(self, body: bytes | None) -> dict[str, Any]:
        if body is None:
            return self.default()
        try:
            document = orjson.loads(bytes(body))
        except orjson.JSONDecodeError as exc:
            raise RegistryError(
                f"{self.label} is not valid JSON ({exc}); restore it from a backup of the database"
            ) from None
        if not isinstance(document, dict):
            raise RegistryError(f"{self.label} must hold a JSON object, found {type(document).__name__}")
        return document

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        with self.db.connection(RegistryError, f"change the registry {self.name} in") as conn:
            conn.execute(
                "INSERT INTO caracal_documents (name, body, version) VALUES (%s, NULL, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )
            row = conn.execute(
                "SELECT version, body FROM caracal_documents WHERE name = %s FOR UPDATE", (self.name,)
            ).fetchone()
            if row is None:  # pragma: no cover - the row was just ensured
                raise RegistryError(f"{self.label} vanished during a transaction")
            document = self._decode(row[1])
            before = dumps(document)
            yield document
            after = dumps(document)
            if after == before:
                return
            updated = conn.execute(
                "UPDATE caracal_documents SET body = %s, version = version + 1 WHERE name = %s "
                "RETURNING version",
                (after, self.name),
            ).fetchone()
            version = int(updated[0]) if updated is not None else 0
            conn.execute("SELECT pg_notify(%s, %s)", (self._listener.channel, f"d {self.name} {version}"))
        self._listener.known.saw_version(self.name, version)


__all__ = ["PostgresDocument"]
