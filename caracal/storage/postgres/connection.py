"""Connections to one PostgreSQL database: the URL, the pool, the session settings, and error translation.

Invariants:

- **psycopg never escapes.** Every database call of this package runs under :meth:`Database.errors`, which
  turns a ``psycopg`` (or pool) exception into the caller's typed Caracal error
  (:class:`~caracal.exceptions.LedgerWriteError`, :class:`~caracal.exceptions.LedgerReadError`,
  :class:`~caracal.exceptions.RegistryError`...) with a message that names the database by its redacted URL
  and says what to do. The password never appears in a message (:func:`redact`).
- **Bounded waits.** Connecting gives up after ``connect_timeout``; every session runs with
  ``statement_timeout`` and ``lock_timeout`` (a statement or a lock wait that takes longer fails, and the
  caller denies: fail closed); taking a connection from the pool waits at most ``pool_timeout``.
- **No dead connection handed out after a quiet spell.** A pooled connection that sat idle for more than
  :data:`IDLE_CHECK` seconds is checked (one round trip) as it leaves the pool and replaced if the server
  closed it (a restart, a failover, a cut network): the first read or write after a quiet restart works
  instead of failing once per process. Connections in steady use skip the check.
- **Small pools.** One :class:`psycopg_pool.ConnectionPool` per backend object, ``min_size`` 1 and
  ``max_size`` 4: a process needs one connection for its append step and a few for reads; many hosts share
  one server, whose ``max_connections`` is the limit that matters.
- **The schema is checked before use.** The first operation of a :class:`Database` checks the schema
  version (:mod:`caracal.storage.postgres.migrations`): a schema older or newer than this Caracal knows
  raises :class:`~caracal.exceptions.SchemaVersionError` and nothing runs against it. A database without
  any Caracal schema is set up then (as the file backend creates its data folder on first use).
- **The driver is optional.** ``psycopg`` is imported when a database is first used; without it the user
  is told to install ``caracal-core[postgres]`` (:class:`~caracal.exceptions.ConfigurationError`).

Tests isolate themselves by schema: ``?options=-csearch_path%3Dmyschema`` in the URL is passed through, and
everything this package names (tables, advisory-lock keys, notification channels) is relative to the
session's ``current_schema()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from caracal.exceptions import (
    CaracalError,
    ConfigurationError,
    LedgerLockTimeoutError,
    LedgerWriteError,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

INSTALL_HINT = "install it with: pip install 'caracal-core[postgres]'"

IDLE_CHECK = 1.0
"""Seconds a pooled connection may sit idle before it is checked as it leaves the pool (see the module
docstring)."""


def require_driver() -> None:
    """Raise :class:`ConfigurationError` unless psycopg 3 and psycopg-pool are importable."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"this home's storage is a PostgreSQL database, but its driver is not installed ({exc}); "
            f"{INSTALL_HINT}"
        ) from None


def redact(url: str) -> str:
    """``url`` without its password (in the authority or as a ``password`` query parameter), for
    messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k.lower() != "password"]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=urllib.parse.urlencode(kept)))


@dataclass(frozen=True)
class ConnectionSettings:
    """How this process talks to the database (seconds)."""

    connect_timeout: float = 5.0
    statement_timeout: float = 10.0
    lock_timeout: float = 10.0
    pool_min: int = 1
    pool_max: int = 4
    pool_timeout: float = 10.0


def millis(seconds: float) -> str:
    """A PostgreSQL duration setting (``0``: no limit)."""
    return f"{max(0, round(seconds * 1000))}ms"


def advisory_key(purpose: str, schema: str) -> int:
    """A signed 64-bit advisory-lock key for ``purpose`` in ``schema`` (advisory locks are database-wide:
    the schema name keeps homes sharing one database apart)."""
    digest = hashlib.sha256(f"caracal:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema (channels are database-wide, and limited to 63 bytes)."""
    return "caracal_" + hashlib.sha256(schema.encode()).hexdigest()[:24]


class Database:
    """One database URL as this process uses it: a lazily opened pool, the schema it works in, and the
    translation of driver errors (see the module docstring). Safe to share between threads."""

    def __init__(self, url: str, settings: ConnectionSettings | None = None):
        self.url = url
        self.location = redact(url)
        self.settings = settings or ConnectionSettings()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        """When each pooled connection last went back to the pool (monotonic)."""
        self._ready = False
        self._closed = False
        self.schema = ""
        self.server_key = ""
        """``host:port/dbname/schema``: what identifies this ledger among every database of the process."""

    # ------------------------------------------------------------------ connecting

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every connection (the pool's and the listener's)."""
        return {
            "connect_timeout": max(1, round(self.settings.connect_timeout)),
            "application_name": "caracal",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }

    def configure_session(self, conn: psycopg.Connection[Any]) -> None:
        """Per-session settings: timeouts, read committed (the append step relies on it)."""
        import psycopg

        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        with conn.transaction():
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                (millis(self.settings.statement_timeout), millis(self.settings.lock_timeout)),
            )

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A new connection outside the pool (the listener's, migrations'); the caller closes it."""
        require_driver()
        import psycopg

        conn = psycopg.connect(self.url, autocommit=autocommit, **self.connect_kwargs())
        try:
            self.configure_session(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def pool(self, error: type[CaracalError]) -> ConnectionPool[Any]:
        """The pool, opened (and the schema checked) on first use."""
        pool = self._pool
        if pool is not None and self._ready:
            return pool
        with self._lock:
            if self._closed:  # used again after close (a home closed and reopened, as files allow)
                self._closed = False
            if not self._ready:
                self._prepare(error)
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    self.url,
                    min_size=self.settings.pool_min,
                    max_size=max(self.settings.pool_min, self.settings.pool_max),
                    kwargs=self.connect_kwargs(),
                    configure=self.configure_session,
                    check=self._check_if_idle,
                    reset=self._returned_to_pool,
                    timeout=self.settings.pool_timeout,
                    name=f"caracal {self.location}",
                    num_workers=1,
                    open=True,
                )
            return self._pool

    def _returned_to_pool(self, conn: psycopg.Connection[Any]) -> None:
        self._returned[conn] = time.monotonic()

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        """Raise (and so have the pool replace ``conn``) if it sat idle long enough to have died unseen."""
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > IDLE_CHECK:
            from psycopg_pool import ConnectionPool

            ConnectionPool.check_connection(conn)

    def _prepare(self, error: type[CaracalError]) -> None:
        """Connect once directly (a clear error when the server cannot be reached), learn the schema, and
        check (or create) the schema version."""
        from caracal.storage.postgres import migrations

        with self.errors(error, "connect to"):
            conn = self.connect()
            try:
                schema = conn.execute("SELECT current_schema()").fetchone()
                if schema is None or schema[0] is None:
                    raise ConfigurationError(
                        f"the database {self.location} has no schema to work in: the search_path names "
                        "no existing schema. Create it (CREATE SCHEMA ...) or fix the URL's options"
                    )
                self.schema = str(schema[0])
                info = conn.info
                self.server_key = f"{info.host}:{info.port}/{info.dbname}/{self.schema}"
                migrations.ensure_current(conn, self.location, create=True)
            finally:
                conn.close()
        self._ready = True

    @contextlib.contextmanager
    def connection(self, error: type[CaracalError], doing: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one transaction (committed at the end of the block, rolled back if it
        raises); driver errors become ``error``."""
        pool = self.pool(error)
        with self.errors(error, doing), pool.connection() as conn:
            yield conn

    def getconn(self, error: type[CaracalError], timeout: float) -> psycopg.Connection[Any]:
        """A pooled connection the caller returns with :meth:`putconn` (the append step spans calls)."""
        pool = self.pool(error)
        with self.errors(error, "get a connection to"):
            conn: psycopg.Connection[Any] = pool.getconn(timeout=max(timeout, 0.001))
            return conn

    def putconn(self, conn: psycopg.Connection[Any]) -> None:
        """Give a connection back (rolled back if it is still in a transaction; replaced if broken)."""
        pool = self._pool
        try:
            if not conn.closed and conn.info.transaction_status != 0:  # not idle: end it quietly
                with contextlib.suppress(Exception):
                    conn.rollback()
            if pool is not None:
                pool.putconn(conn)
            else:
                conn.close()
        except Exception:  # a pool that was closed meanwhile, a broken connection: just drop it
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close(timeout=2.0)

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def errors(self, error: type[CaracalError], doing: str) -> Iterator[None]:
        """Translate driver errors raised in the block into ``error`` (see :meth:`raise_as`)."""
        try:
            yield
        except CaracalError:
            raise
        except Exception as exc:
            if _is_driver_error(exc):
                self.raise_as(exc, error, doing)
            raise

    def discard_dead(self) -> None:
        """After a connection failed (the server restarted, the network cut): check the pool's idle
        connections now and drop the dead ones, so that the next action gets a live one instead of failing
        on a connection that died with the last (checking every connection as it leaves the pool would
        cost a round trip per action)."""
        pool = self._pool
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.check()

    def raise_as(self, exc: BaseException, error: type[CaracalError], doing: str) -> NoReturn:
        """Raise ``error`` for a driver exception, saying what happened and what to do."""
        import psycopg
        from psycopg import errors as pg_errors
        from psycopg_pool import PoolTimeout

        detail = _first_line(exc)
        if isinstance(exc, pg_errors.LockNotAvailable):
            if issubclass(error, LedgerWriteError):
                raise LedgerLockTimeoutError(
                    f"timed out waiting for a lock to {doing} {self.location} (another writer holds it): "
                    f"{detail}"
                ) from None
            raise error(f"timed out waiting for a lock to {doing} {self.location}: {detail}") from None
        if isinstance(exc, pg_errors.QueryCanceled):
            raise error(
                f"a statement to {doing} {self.location} took longer than the statement timeout "
                f"({self.settings.statement_timeout}s) and was cancelled; nothing was changed by it. "
                f"Check the database's load and locks"
            ) from None
        if isinstance(exc, PoolTimeout):
            raise error(
                f"could not get a connection to {self.location} in time ({detail}): the database is "
                "unreachable or every connection of this process is busy. Check that the server is up"
            ) from None
        if isinstance(exc, psycopg.OperationalError):
            self.discard_dead()
            raise error(
                f"cannot {doing} the database {self.location}: {detail}. Check that the server is "
                "running and reachable, and the URL ([storage] url or $CARACAL_DATABASE_URL)"
            ) from None
        if isinstance(exc, pg_errors.UndefinedTable):
            raise error(
                f"the database {self.location} lacks Caracal's tables ({detail}); run 'caracal db upgrade'"
            ) from None
        raise error(f"cannot {doing} the database {self.location}: {detail}") from None


def _is_driver_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("psycopg", "psycopg_pool"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def wait_deadline(deadline: float) -> float:
    """Seconds left until ``deadline`` (monotonic), never negative."""
    return max(0.0, deadline - time.monotonic())


__all__ = [
    "INSTALL_HINT",
    "ConnectionSettings",
    "Database",
    "advisory_key",
    "channel_name",
    "millis",
    "redact",
    "require_driver",
    "wait_deadline",
]
