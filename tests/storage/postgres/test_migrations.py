"""Schema migrations: a fresh schema is created, upgrades are idempotent, and a home refuses a schema it
does not know (older: run 'caracal db upgrade'; newer: upgrade Caracal)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from caracal.exceptions import ConfigurationError, LedgerReadError, SchemaVersionError
from caracal.storage.postgres import PostgresBackend, migrations
from caracal.storage.postgres.migrations import Migration

TABLES = {
    "caracal_schema", "caracal_ledger", "caracal_head", "caracal_checkpoints", "caracal_documents",
    "caracal_caches", "caracal_meta",
}  # fmt: skip


def tables(admin: Any) -> set[str]:
    rows = admin.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchall()
    return {row[0] for row in rows}


def test_upgrade_creates_the_schema_and_is_idempotent(pg_url: str, admin: Any) -> None:
    assert migrations.status(pg_url).version == 0
    first = migrations.upgrade(pg_url)
    assert first.version == migrations.known_version() >= 1 and first.state == "current"
    assert tables(admin) == TABLES
    assert migrations.upgrade(pg_url).version == first.version  # again: nothing to do
    assert admin.execute("SELECT count(*) FROM caracal_schema").fetchone()[0] == first.version
    assert migrations.check(pg_url) == first.version


def test_concurrent_upgrades_apply_each_migration_once(pg_url: str, admin: Any) -> None:
    code = "import sys; from caracal.storage.postgres import migrations; migrations.upgrade(sys.argv[1])"
    processes = [subprocess.Popen([sys.executable, "-c", code, pg_url]) for _ in range(3)]
    assert [p.wait(timeout=60) for p in processes] == [0, 0, 0]
    assert admin.execute("SELECT count(*) FROM caracal_schema").fetchone()[0] == migrations.known_version()


def test_a_backend_sets_up_an_empty_schema_on_first_use(open_backend: Callable[..., PostgresBackend]) -> None:
    store = open_backend().ledger_store(lock_timeout=1)
    assert store.end() == 0


def test_a_newer_schema_is_refused(
    pg_url: str, admin: Any, open_backend: Callable[..., PostgresBackend]
) -> None:
    migrations.upgrade(pg_url)
    admin.execute("INSERT INTO caracal_schema (version, name) VALUES (99, 'from_the_future')")
    with pytest.raises(SchemaVersionError, match="knows schema 1; upgrade Caracal"):
        migrations.check(pg_url)
    with pytest.raises(SchemaVersionError, match="upgrade Caracal"):
        migrations.upgrade(pg_url)
    backend = open_backend()
    with pytest.raises(SchemaVersionError, match="version 99"):
        backend.ledger_store(lock_timeout=1).end()
    with pytest.raises(SchemaVersionError):
        backend.document("agents", dict).read()


def test_an_older_schema_is_refused_until_upgraded(
    pg_url: str, admin: Any, open_backend: Callable[..., PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(pg_url)  # version 1; then this Caracal learns a version 2
    later = Migration(2, "later", "CREATE TABLE caracal_later (x int);")
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.migrations(), later])
    with pytest.raises(SchemaVersionError, match="run 'caracal db upgrade'"):
        migrations.check(pg_url)
    with pytest.raises(SchemaVersionError, match="run 'caracal db upgrade'"):
        open_backend().ledger_store(lock_timeout=1).end()
    assert migrations.upgrade(pg_url).version == 2
    assert "caracal_later" in tables(admin)
    assert open_backend().ledger_store(lock_timeout=1).end() == 0


def test_a_failing_migration_changes_nothing(
    pg_url: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(pg_url)
    broken = Migration(2, "broken", "CREATE TABLE caracal_half (x int); SELECT no_such_function();")
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.migrations(), broken])
    with pytest.raises(ConfigurationError, match="no_such_function"):
        migrations.upgrade(pg_url)
    assert "caracal_half" not in tables(admin)
    assert migrations.status(pg_url).version == 1


def test_a_search_path_without_a_schema_is_a_clear_error(pg_url: str) -> None:
    from tests.pg import with_schema

    url = with_schema(pg_url, "caracal_no_such_schema")
    backend = PostgresBackend(url)
    try:
        with pytest.raises(ConfigurationError, match="no schema to work in"):
            backend.ledger_store(lock_timeout=1).end()
    finally:
        backend.close()


def test_an_unreachable_database_is_a_typed_error_without_the_password(closed_port: int) -> None:
    url = f"postgresql://caracal:hunter2@127.0.0.1:{closed_port}/caracal"
    backend = PostgresBackend(url)
    try:
        with pytest.raises(LedgerReadError) as caught:
            backend.ledger_store(lock_timeout=1).end()
        assert "hunter2" not in str(caught.value) and f"127.0.0.1:{closed_port}" in str(caught.value)
    finally:
        backend.close()


def test_without_the_driver_caracal_imports_and_says_what_to_install(tmp_path: Any) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "import caracal, caracal.storage.postgres\n"
        "from pathlib import Path\n"
        "from caracal.config import Settings\n"
        "from caracal.storage.backends import open_backend\n"
        "from caracal.exceptions import ConfigurationError\n"
        "assert open_backend(Path(sys.argv[1]), Settings()).kind == 'files'\n"
        "try:\n"
        "    open_backend(Path(sys.argv[1]), Settings(), 'postgresql://u@127.0.0.1/db')\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "caracal-core[postgres]" in result.stdout
