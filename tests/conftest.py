"""Shared fixtures: every test runs with its own Caracal home, so keys and default ledgers never touch ~.

**Both backends.** The suites listed in :data:`BOTH_BACKENDS` run every test twice: on the home's files
(``[files]``) and on a fresh PostgreSQL schema (``[postgresql]``: ``$CARACAL_DATABASE_URL`` is set for the
test and every process it starts, so the CLI, the SDK and ``caracal serve`` all use the database). A test
about the file backend's own machinery carries ``@pytest.mark.files_only("why")``: its PostgreSQL run is
skipped with that reason, so the gap shows. Without a reachable PostgreSQL the ``[postgresql]`` runs are
skipped locally and fail under ``CI=true`` (see :mod:`tests.pg`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

BOTH_BACKENDS = (
    "tests/sdk/",
    "tests/integrations/",
    "tests/server/",
    "tests/core/test_enforcement.py",
    "tests/core/test_overspend.py",
    "tests/core/test_hold_expiry.py",
    "tests/cli/test_cli_control_plane.py",
    "tests/cli/test_cli_serve.py",
    "tests/ui/test_ui_figures.py",
    "tests/mcp/",
    "tests/storage/test_responses.py",
)
"""Suites that run on every backend (the storage contract itself: tests/storage/test_contract.py)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "files_only(reason): a test about the file backend's own machinery (PostgreSQL run skipped)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    path = metafunc.definition.path.as_posix()
    if getattr(metafunc.module, "BACKENDS_PER_MODULE", False):
        return  # its module-scoped home is parametrised by backend instead (tests.pg.BACKEND_PARAMS)
    if "storage" in metafunc.fixturenames and any(f"/{suite}" in path for suite in BOTH_BACKENDS):
        marker = metafunc.definition.get_closest_marker("files_only")
        params = [
            pytest.param(kind, marks=pytest.mark.skip(reason=f"files only: {marker.args[0]}"))
            if marker is not None and kind == "postgresql"
            else kind
            for kind in ("files", "postgresql")
        ]
        metafunc.parametrize("storage", params, indirect=True)


@pytest.fixture
def storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test's backend: ``files``, or ``postgresql`` with ``$CARACAL_DATABASE_URL`` naming a fresh schema
    (brought up to date) for the test and every process it starts."""
    kind = getattr(request, "param", "files")
    monkeypatch.delenv("CARACAL_DATABASE_URL", raising=False)
    if kind == "postgresql":
        from tests.pg import initialized_database

        monkeypatch.setenv("CARACAL_DATABASE_URL", initialized_database(request))
    return str(kind)


@pytest.fixture(autouse=True)
def caracal_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, storage: str
) -> Path:
    """A fresh ``$CARACAL_HOME`` for each test (inherited by subprocesses the test starts), on the test's
    backend (``storage``)."""
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
