"""The PostgreSQL backend (``caracal-core[postgres]``): many hosts share one ledger and its registries.

Modules, one concern each:

- :mod:`~caracal.storage.postgres.connection`: URLs (:func:`redact`), the pool, session timeouts, and the
  translation of driver errors into Caracal's typed errors;
- :mod:`~caracal.storage.postgres.migrations`: the versioned schema (``caracal db upgrade``/``status``);
- :mod:`~caracal.storage.postgres.ledger`: :class:`PostgresLedgerStore` (the append step on the head row);
- :mod:`~caracal.storage.postgres.checkpoints`: :class:`PostgresCheckpointLog`;
- :mod:`~caracal.storage.postgres.documents`: :class:`PostgresDocument` (registries);
- :mod:`~caracal.storage.postgres.listener`: LISTEN/NOTIFY, so that budget checks need no query;
- :mod:`~caracal.storage.postgres.backend`: :class:`PostgresBackend`, which ties them together.

Importing this package does not import the driver (``psycopg``): that happens when a database is first
used, and its absence is a :class:`~caracal.exceptions.ConfigurationError` saying what to install.
"""

from __future__ import annotations

from caracal.storage.postgres.backend import PostgresBackend
from caracal.storage.postgres.connection import redact
from caracal.storage.postgres.ledger import PostgresLedgerStore

__all__ = ["PostgresBackend", "PostgresLedgerStore", "redact"]
