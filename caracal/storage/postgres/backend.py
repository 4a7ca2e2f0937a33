"""The PostgreSQL backend: a :class:`caracal.storage.interface.Backend` on one database URL.

One backend object owns one connection pool and one listener thread (both started on first use), shared
by every ledger store and document it hands out; :meth:`PostgresBackend.close` releases them. Nothing is
stored on this host: the signing key stays with each host's configuration (``keys/``), and the database
holds only what every host shares (the ledger, checkpoints, registries, sealed caches).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from caracal.exceptions import ConfigurationError
from caracal.storage.interface import REGISTRIES
from caracal.storage.postgres.connection import ConnectionSettings, Database, require_driver
from caracal.storage.postgres.documents import PostgresDocument
from caracal.storage.postgres.ledger import PostgresLedgerStore
from caracal.storage.postgres.listener import Listener

if TYPE_CHECKING:
    from caracal.config import Settings


class PostgresBackend:
    """The ledger and registries of a home in the database at ``url`` (``settings``: timeouts)."""

    kind = "postgresql"

    def __init__(self, url: str, settings: Settings | None = None):
        require_driver()
        connection = ConnectionSettings()
        if settings is not None:
            connection = ConnectionSettings(
                statement_timeout=float(settings.statement_timeout),
                lock_timeout=float(settings.lock_timeout),
                pool_timeout=float(settings.lock_timeout),  # no action waits longer for a connection
            )
        self.db = Database(url, connection)
        self.location = self.db.location
        self._step_lock = threading.Lock()
        self._listener = Listener(self.db)

    def initialize(self) -> None:
        """Bring the schema up to date (``caracal init``, ``caracal db upgrade``, ``caracal migrate``)."""
        from caracal.storage.postgres.migrations import upgrade

        upgrade(self.db.url)

    def ledger_store(
        self, *, lock_timeout: float, backup_count: int = 0, backup_min_interval: float = 0.0
    ) -> PostgresLedgerStore:
        """A ledger store (``backup_count`` and ``backup_min_interval`` do not apply: see
        :meth:`PostgresLedgerStore.backup`)."""
        return PostgresLedgerStore(self.db, self._listener, self._step_lock, lock_timeout=lock_timeout)

    def document(
        self, name: str, default: Callable[[], dict[str, Any]], *, mode: int = 0o644
    ) -> PostgresDocument:
        """The registry ``name`` (``mode`` does not apply: access is the database's GRANTs)."""
        if name not in REGISTRIES:
            raise ConfigurationError(f"unknown registry {name!r}; known: {', '.join(REGISTRIES)}")
        return PostgresDocument(self.db, name, default, self._listener)

    def close(self) -> None:
        """Stop the listener and close the pool (idempotent)."""
        self._listener.close()
        self.db.close()


__all__ = ["PostgresBackend"]
