"""Fixtures of the PostgreSQL backend's own tests: backends on the test's fresh schema (``pg_url``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from caracal.config import Settings
from caracal.storage.postgres import PostgresBackend


@pytest.fixture
def open_backend(pg_url: str) -> Iterator[Callable[..., PostgresBackend]]:
    """``open_backend(**settings)``: a new backend object on the test's schema (as another process or host
    would open one); every one is closed at the end of the test."""
    opened: list[PostgresBackend] = []

    def make(url: str | None = None, **settings: object) -> PostgresBackend:
        backend = PostgresBackend(url or pg_url, Settings(**settings))  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def admin(pg_url: str) -> Iterator[object]:
    """A plain autocommit connection on the test's schema, for arranging and inspecting the database."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn
