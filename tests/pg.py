"""Real PostgreSQL for tests: a fresh schema per test, dropped afterwards.

The server is ``$CARACAL_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, the
machine's PostgreSQL with trust auth). Each test gets its own schema (``caracal_t_<random>``) and a URL
whose ``options`` put it first on the ``search_path``, so tests running in parallel never see each other's
tables. When the server cannot be reached, the test is skipped with a reason naming the variable, except
under ``CI=true``, where it fails: CI must never pass by skipping the database.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse

import pytest

ENV = "CARACAL_TEST_DATABASE_URL"
DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
_unreachable: str | None = None


def server_url() -> str:
    return os.environ.get(ENV) or DEFAULT


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``options=-csearch_path=<schema>`` (kept alongside any other query parameters)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "options"] + [("options", f"-csearch_path={schema}")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def unavailable(request: pytest.FixtureRequest | None = None) -> None:
    """Skip (locally) or fail (CI) because PostgreSQL is not reachable."""
    reason = (
        f"PostgreSQL is not reachable at {server_url()} ({_unreachable}); set {ENV} to a server where this "
        "user may create schemas"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def create_schema() -> tuple[str, str]:
    """A fresh schema on the test server: ``(schema, url)``. Raises ``RuntimeError`` when unreachable."""
    global _unreachable
    if _unreachable is not None:
        raise RuntimeError(_unreachable)
    schema = f"caracal_t_{secrets.token_hex(6)}"
    try:
        with _connect(server_url()) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # any failure to reach the server: remembered, the test is skipped or failed
        _unreachable = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise RuntimeError(_unreachable) from None
    return schema, with_schema(server_url(), schema)


def drop_schema(schema: str) -> None:
    try:
        with _connect(server_url()) as connection:
            connection.execute("SET lock_timeout = '10s'")  # a connection a test leaked must not hang the run
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception:
        pass


def database_url_or_skip(request: pytest.FixtureRequest) -> str:
    """A fresh schema's URL for this test (dropped at its end); skip or fail when PostgreSQL is away."""
    try:
        schema, url = create_schema()
    except RuntimeError:
        unavailable(request)
        raise  # unreachable: unavailable() skips or fails
    request.addfinalizer(lambda: drop_schema(schema))
    return url


BACKEND_PARAMS = ("files", "postgresql")
"""For a module-scoped fixture that builds one home for a whole module: ``params=BACKEND_PARAMS`` and
:func:`home_database` (the module then sets ``BACKENDS_PER_MODULE = True`` so that its tests are not
doubled again by the function-level ``storage`` fixture)."""


def home_database(request: pytest.FixtureRequest) -> str | None:
    """The database URL of a module-scoped home for ``request.param`` (None: files). The schema is fresh,
    brought up to date, and dropped when the fixture ends."""
    if request.param != "postgresql":
        return None
    return initialized_database(request)


def initialized_database(request: pytest.FixtureRequest) -> str:
    """A fresh schema's URL for this test or fixture, with Caracal's tables created (dropped at its end)."""
    url = database_url_or_skip(request)
    from pathlib import Path

    from caracal.config import Settings
    from caracal.storage.backends import open_backend

    backend = open_backend(Path("."), Settings(), url)
    try:
        backend.initialize()
    finally:
        backend.close()
    return url


def storage_config(url: str | None) -> str:
    """The ``[storage]`` table of a test home's config.toml ('' for files)."""
    return "" if url is None else f'[storage]\nurl = "{url}"\n\n'


def ledger_end(ledger: object) -> int:
    """Where a home's ledger ends (the file's size, or the last event id): equal before and after means
    nothing was appended, on any backend."""
    from pathlib import Path

    if isinstance(ledger, Path):
        return ledger.stat().st_size if ledger.exists() else 0
    return int(ledger.end())  # type: ignore[attr-defined]


def ledger_lines(ledger: object) -> list[bytes]:
    """Every line of a home's ledger (the same bytes on every backend)."""
    from pathlib import Path

    if isinstance(ledger, Path):
        return ledger.read_bytes().splitlines() if ledger.exists() else []
    return [line for _position, line in ledger.iter_lines(0)]  # type: ignore[attr-defined]
