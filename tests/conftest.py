"""Shared fixtures: every test runs with its own Caracal home, so keys and default ledgers never touch ~."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def caracal_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$CARACAL_HOME`` for each test (inherited by subprocesses the test starts)."""
    home = tmp_path_factory.mktemp("caracal-home")
    monkeypatch.setenv("CARACAL_HOME", str(home))
    return home


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Where a test's ledger lives: a folder apart from the home (the signing key must not sit beside it)."""
    return tmp_path / "ledger" / "ledger.jsonl"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for the whole test. It stays bound by a socket that
    never listens: a port probed and closed again could be taken by a server of a test running at the same
    time (another xdist worker binding port 0), which would then answer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A URL of the test PostgreSQL server whose ``search_path`` is a fresh schema, dropped after the test
    (see :mod:`tests.pg`: skipped when the server is unreachable, failed under ``CI=true``)."""
    from tests.pg import database_url_or_skip

    return database_url_or_skip(request)
