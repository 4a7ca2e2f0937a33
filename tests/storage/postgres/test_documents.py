"""Registry documents on PostgreSQL: serialized transactions across processes, cached reads that see other
processes' changes and cost no query while nothing changed, errors that name the document."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from caracal.exceptions import RegistryError
from caracal.storage.postgres import PostgresBackend
from tests.storage.postgres.helpers import eventually
from tests.storage.postgres.test_ledger_store import count_queries

Opener = Callable[..., PostgresBackend]


def empty() -> dict[str, Any]:
    return {"items": {}}


BUMPER = """
import sys
from caracal.storage.postgres import PostgresBackend
backend = PostgresBackend(sys.argv[1])
document = backend.document("agents", lambda: {"items": {}})
for _ in range(int(sys.argv[2])):
    with document.transaction() as data:
        data["items"]["n"] = data["items"].get("n", 0) + 1
backend.close()
"""


def test_transactions_from_several_processes_and_threads_lose_no_update(
    pg_url: str, open_backend: Opener
) -> None:
    document = open_backend().document("agents", empty)
    document.read()  # the schema, once
    processes = [subprocess.Popen([sys.executable, "-c", BUMPER, pg_url, "20"]) for _ in range(3)]

    def bump() -> None:
        for _ in range(20):
            with document.transaction() as data:
                data["items"]["n"] = data["items"].get("n", 0) + 1

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    assert document.read()["items"]["n"] == 100


def test_read_cached_sees_another_process_change_and_costs_no_query_when_unchanged(
    pg_url: str, open_backend: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = open_backend().document("agents", empty)
    parses: list[int] = []

    def parse(data: dict[str, Any]) -> int:
        parses.append(1)
        return int(data["items"].get("n", 0))

    assert document.read_cached(parse) == 0
    assert eventually(document._listener.fresh)
    subprocess.run([sys.executable, "-c", BUMPER, pg_url, "3"], check=True, timeout=60)
    assert eventually(lambda: document.read_cached(parse) == 3)
    parsed = len(parses)
    taken = count_queries(monkeypatch)
    for _ in range(100):
        assert document.read_cached(parse) == 3
    assert taken == [] and len(parses) == parsed  # no query, no parse


def test_read_cached_asks_for_the_version_when_the_listener_is_down(
    open_backend: Opener, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = open_backend().document("prices", empty), open_backend().document("prices", empty)
    assert reader.read_cached(lambda d: len(d["items"])) == 0
    listener = reader._listener
    assert eventually(listener.fresh)
    listener.close()  # the listener stops: no notification will come
    assert eventually(lambda: not listener.fresh())
    with writer.transaction() as data:
        data["items"]["x"] = 1
    assert reader.read_cached(lambda d: len(d["items"])) == 1  # at once: the version was asked for
    taken = count_queries(monkeypatch)
    assert reader.read_cached(lambda d: len(d["items"])) == 1
    assert len(taken) == 1  # one cheap query (the version), no body


def test_a_transaction_that_raises_writes_nothing_and_unchanged_ones_keep_the_version(
    open_backend: Opener, admin: Any
) -> None:
    document = open_backend().document("policies", empty)
    with pytest.raises(RuntimeError), document.transaction() as data:
        data["items"]["x"] = 1
        raise RuntimeError("stop")
    with document.transaction() as data:
        pass
    assert document.read() == empty()
    assert admin.execute(
        "SELECT version, body FROM caracal_documents WHERE name = 'policies'"
    ).fetchone() == (0, None)
    with document.transaction() as data:
        data["items"]["x"] = 1
    assert admin.execute("SELECT version FROM caracal_documents WHERE name = 'policies'").fetchone() == (1,)


def test_a_corrupt_document_is_an_error_naming_it(open_backend: Opener, admin: Any) -> None:
    document = open_backend().document("apikeys", empty)
    document.read()
    admin.execute("INSERT INTO caracal_documents (name, body, version) VALUES ('apikeys', 'not json', 1)")
    with pytest.raises(RegistryError, match=r"registry apikeys.*not valid JSON"):
        document.read()
    admin.execute("UPDATE caracal_documents SET body = '[1]', version = 2 WHERE name = 'apikeys'")
    with pytest.raises(RegistryError, match="must hold a JSON object"):
        document.read()


def test_a_lock_held_too_long_is_a_registry_error(open_backend: Opener) -> None:
    holder = open_backend().document("agents", empty)
    waiter = open_backend(lock_timeout=0.3).document("agents", empty)
    with holder.transaction() as data:
        data["items"]["x"] = 1
        with pytest.raises(RegistryError, match="registry agents"), waiter.transaction():
            pass


def test_an_unreachable_database_is_a_registry_error(closed_port: int) -> None:
    backend = PostgresBackend(f"postgresql://u:secret@127.0.0.1:{closed_port}/db")
    try:
        document = backend.document("agents", empty)
        with pytest.raises(RegistryError) as caught:
            document.read()
        assert "secret" not in str(caught.value)
        with pytest.raises(RegistryError), document.transaction():
            pass
        assert "registry agents" in document.label
    finally:
        backend.close()
