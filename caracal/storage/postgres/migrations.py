"""Versioned schema migrations, shipped in the package (``migrations/NNNN_name.sql``).

Invariants:

- **Versions only grow.** ``caracal_schema`` holds one row per applied migration; the schema's version is
  the largest. Migration N is applied only on top of N-1, in one transaction with its row in
  ``caracal_schema``: a migration is applied completely or not at all.
- **One migrator at a time.** :func:`upgrade` holds a session advisory lock keyed on the schema's name (so
  homes sharing one database in different schemas do not wait for each other) and re-reads the version
  under it: two hosts upgrading at once apply each migration once.
- **A home never runs against a schema it does not know.** :func:`ensure_current` (called before a backend's
  first operation) raises :class:`SchemaVersionError` when the schema is older than this Caracal's
  ("run 'caracal db upgrade'") or newer ("upgrade Caracal"). A database with no Caracal schema at all is
  set up there and then (first use, as the file backend creates its folder); one that is merely behind is
  never upgraded implicitly, since other hosts may still run the Caracal that knows only the old one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from caracal.exceptions import ConfigurationError, SchemaVersionError
from caracal.storage.postgres.connection import Database, advisory_key, redact

if TYPE_CHECKING:
    import psycopg

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations this Caracal ships, in version order (1, 2, ... without gaps)."""
    folder = resources.files("caracal.storage.postgres").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):  # a packaging bug, not user input
        raise ConfigurationError(f"Caracal's schema migrations are incomplete: {[m.version for m in found]}")
    return found


MIGRATIONS: list[Migration] | None = None


def migrations() -> list[Migration]:
    global MIGRATIONS
    if MIGRATIONS is None:
        MIGRATIONS = available()
    return MIGRATIONS


def known_version() -> int:
    """The schema version this Caracal runs against."""
    return len(migrations())


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The schema's version (0: no Caracal schema in the session's current schema)."""
    row = conn.execute("SELECT to_regclass('caracal_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    version = conn.execute("SELECT coalesce(max(version), 0) FROM caracal_schema").fetchone()
    return int(version[0]) if version is not None else 0


def _check(version: int, location: str) -> None:
    known = known_version()
    if version < known:
        raise SchemaVersionError(
            f"the database {location} has Caracal schema version {version}, older than version {known} "
            "that this Caracal needs; run 'caracal db upgrade' (after upgrading Caracal on every host that "
            "uses it)"
        )
    if version > known:
        raise SchemaVersionError(
            f"the database {location} has Caracal schema version {version}; this Caracal knows schema "
            f"{known}; upgrade Caracal on this host (another host already runs a newer one)"
        )


def ensure_current(conn: psycopg.Connection[Any], location: str, *, create: bool) -> int:
    """Check the schema version on ``conn`` (autocommit); create the schema when there is none and
    ``create`` is set. Returns the version."""
    version = current_version(conn)
    if version == 0 and create:
        version = _apply(conn)
    _check(version, location)
    return version


def _apply(conn: psycopg.Connection[Any]) -> int:
    """Apply every missing migration on ``conn`` (autocommit mode), under the schema's advisory lock."""
    schema_row = conn.execute("SELECT current_schema()").fetchone()
    if schema_row is None or schema_row[0] is None:
        raise ConfigurationError("the search_path names no existing schema: create it first")
    key = advisory_key("migrate", str(schema_row[0]))
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS caracal_schema ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        version = current_version(conn)
        for migration in migrations():
            if migration.version <= version:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())  # several statements: simple query protocol
                conn.execute(
                    "INSERT INTO caracal_schema (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            version = migration.version
        return version
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


@dataclass(frozen=True)
class SchemaStatus:
    """What ``caracal db status`` shows."""

    location: str
    schema: str
    version: int
    known: int

    @property
    def state(self) -> str:
        if self.version == self.known:
            return "current"
        return "older: run 'caracal db upgrade'" if self.version < self.known else "newer: upgrade Caracal"

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.location,
            "schema": self.schema,
            "version": self.version,
            "known": self.known,
            "state": self.state,
        }


def upgrade(url: str) -> SchemaStatus:
    """Bring the database's schema up to this Caracal's version (a no-op when it is current). Refuses a
    newer schema. Raises :class:`ConfigurationError` (or a subclass) when the database cannot be reached."""
    db = Database(url)
    with db.errors(ConfigurationError, "upgrade the schema of"):
        conn = db.connect()
        try:
            version = current_version(conn)
            if version > known_version():
                _check(version, db.location)
            version = _apply(conn)
            return SchemaStatus(db.location, _schema(conn), version, known_version())
        finally:
            conn.close()


def status(url: str) -> SchemaStatus:
    """The database's schema version (nothing is changed)."""
    db = Database(url)
    with db.errors(ConfigurationError, "read the schema version of"):
        conn = db.connect()
        try:
            return SchemaStatus(db.location, _schema(conn), current_version(conn), known_version())
        finally:
            conn.close()


def check(url: str) -> int:
    """Raise :class:`SchemaVersionError` unless the schema is exactly this Caracal's version."""
    found = status(url)
    _check(found.version, redact(url))
    return found.version


def _schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row is not None and row[0] is not None else ""


__all__ = [
    "Migration",
    "SchemaStatus",
    "check",
    "current_version",
    "ensure_current",
    "known_version",
    "migrations",
    "status",
    "upgrade",
]
