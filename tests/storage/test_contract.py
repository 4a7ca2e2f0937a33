"""The storage contract: every backend passes these tests, written once (``caracal.storage.interface``).

Each test gets a fresh, empty backend (a temporary home folder, or a fresh PostgreSQL schema) and uses it
only through the interface: ledger stores (several store objects stand for several processes or hosts),
the ledger writer on them, checkpoints, caches, the replay lock and the registry documents. Where a test
needs other OS processes, it starts real ones on the same backend.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.config import Settings
from caracal.core.ledger import LedgerReader, LedgerWriter
from caracal.core.store import LedgerStore
from caracal.core.verify import verify_ledger
from caracal.exceptions import LedgerLockTimeoutError, LedgerWriteError
from caracal.storage.backends import open_backend
from caracal.storage.interface import Backend
from tests.pg import database_url_or_skip

BACKENDS = ["files", "postgresql"]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Home:
    """A backend under test, and how to open more objects on it (as other processes would)."""

    def __init__(self, kind: str, root: Path, url: str | None):
        self.kind = kind
        self.root = root
        self.url = url
        self.key = root / "keys" / "checkpoint.key"
        self._opened: list[Backend] = []

    def backend(self) -> Backend:
        backend = open_backend(self.root, Settings(), self.url)
        self._opened.append(backend)
        return backend

    def store(self, lock_timeout: float = 5.0) -> LedgerStore:
        return self.backend().ledger_store(lock_timeout=lock_timeout, backup_count=0, backup_min_interval=0)

    def writer(self, **options: object) -> LedgerWriter:
        return LedgerWriter(self.store(), signing_key_path=self.key, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        for backend in self._opened:
            backend.close()


@pytest.fixture(params=BACKENDS)
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Home]:
    url = None
    if request.param == "postgresql":
        url = database_url_or_skip(request)
    subject = Home(request.param, tmp_path / "home", url)
    (subject.root / "data").mkdir(parents=True)
    yield subject
    subject.close()


def charge(agent: str = "a", cost: str = "0.10", **extra: object) -> dict[str, object]:
    return {"agent_id": agent, "resource_type": "r", "quantity": "1", "cost": cost, **extra}


# ---------------------------------------------------------------------------------------------- ledger store


def test_an_empty_store_has_no_lines(home: Home) -> None:
    store = home.store()
    assert store.end() == 0
    assert list(store.iter_lines(0)) == []
    assert store.line_at(0) is None
    assert store.load_cache("budget") is None


def test_a_step_writes_lines_that_every_reader_reads_back_exactly(home: Home) -> None:
    store, other = home.store(), home.store()
    lines = [b'{"x":1}', b'{"x":2}']
    store.begin()
    try:
        assert list(store.new_lines(0)) == []
        end = store.write(lines, 1)
    finally:
        store.finish()
    assert other.end() == end > 0
    read = list(other.iter_lines(0))
    assert [line for _position, line in read] == lines
    assert read[-1][0] == end
    assert other.line_at(end) == lines[-1]
    assert other.line_at(read[0][0]) == lines[0]
    assert list(other.iter_lines(read[0][0])) == read[1:]


def test_a_step_sees_what_another_store_wrote_before_it(home: Home) -> None:
    first, second = home.store(), home.store()
    first.begin()
    end = first.write([b'{"n":1}'], 1)
    first.finish()
    second.begin()
    try:
        assert list(second.new_lines(0)) == [(end, b'{"n":1}')]
        end2 = second.write([b'{"n":2}'], 2)
    finally:
        second.finish()
    assert [line for _p, line in first.iter_lines(end)] == [b'{"n":2}']
    assert first.end() == end2


def test_the_append_lock_excludes_other_stores_until_the_step_ends(home: Home) -> None:
    holder, waiter = home.store(), home.store(lock_timeout=0.2)
    holder.begin()
    try:
        with pytest.raises(LedgerLockTimeoutError):
            waiter.begin()
    finally:
        holder.finish()
    waiter.begin()  # free again
    waiter.finish()


def test_caches_round_trip_and_replace(home: Home) -> None:
    store, other = home.store(), home.store()
    store.save_cache("budget", b"one")
    store.save_cache("budget", b"two")
    assert other.load_cache("budget") == b"two"
    assert other.load_cache("merkle") is None


def test_the_replay_lock_is_held_by_one_store_at_a_time(home: Home) -> None:
    first, second = home.store(), home.store()
    with first.replay_lock(1.0) as taken:
        assert taken
        with second.replay_lock(0.1) as also:
            assert not also
    with second.replay_lock(1.0) as taken_after:
        assert taken_after


# ------------------------------------------------------------------------------------------ the ledger on it


def test_writers_on_several_stores_keep_ids_contiguous_and_the_chain_whole(home: Home) -> None:
    writers = [home.writer(checkpoint_every=7), home.writer(checkpoint_every=7)]
    for round_ in range(10):
        writers[round_ % 2].append_events([charge(cost=f"0.{round_}1")] * 3)
    for writer in writers:
        writer.close()
    store = home.store()
    events = list(LedgerReader(store))
    assert [e.event_id for e in events] == list(range(1, 31))
    report = verify_ledger(store, public_key=writers[0].public_key)
    assert report.ok, report.problems
    assert report.events == 30 and report.checkpoints_total >= 4


def test_a_failed_decision_appends_nothing_and_the_others_of_its_group_commit(home: Home) -> None:
    writer = home.writer()

    def refuse() -> list[dict[str, object]]:
        raise ValueError("no")

    results = writer.transact_group(
        [lambda: [charge()], refuse, lambda: [charge(), charge()]], lambda _e: None
    )
    assert isinstance(results[1], ValueError)
    assert [e.event_id for e in results[0]] + [e.event_id for e in results[2]] == [1, 2, 3]  # type: ignore[union-attr]
    assert [e.event_id for e in LedgerReader(home.store())] == [1, 2, 3]
    writer.close()


def test_every_backend_stores_the_same_line_bytes(home: Home, tmp_path: Path) -> None:
    """The same events give byte-identical lines on every backend (so proofs, checkpoints and exports
    do not depend on it)."""
    items = [charge(cost="0.030", metadata={"k": "v"}, timestamp=T0), charge(agent="b", timestamp=T0)]
    writer = home.writer()
    writer.append_events(items)
    writer.transact(
        lambda: [charge(kind="hold", hold_id="h1", expires_at=T0 + timedelta(hours=1), timestamp=T0)]
    )
    writer.close()
    with LedgerWriter(tmp_path / "ref" / "ledger.jsonl", signing_key_path=tmp_path / "refkey") as reference:
        reference.append_events(items)
        reference.transact(
            lambda: [charge(kind="hold", hold_id="h1", expires_at=T0 + timedelta(hours=1), timestamp=T0)]
        )
    expected = (tmp_path / "ref" / "ledger.jsonl").read_bytes().splitlines()
    assert [line for _p, line in home.store().iter_lines(0)] == expected


def test_checkpoints_are_signed_roots_every_store_reads(home: Home) -> None:
    writer = home.writer(checkpoint_every=0)
    writer.append_events([charge()] * 5)
    checkpoint = writer.checkpoint()
    writer.checkpoint()  # the same size again: stored once
    log = home.store().checkpoints
    assert log.latest() == checkpoint
    assert log.roots() == {5: checkpoint.root}
    assert [c.size for c in log] == [5]
    first, cursor = log.read_from(0)
    assert [c.size for c in first] == [5]
    writer.append_events([charge()])
    later = writer.checkpoint()
    more, _ = log.read_from(cursor)
    assert more == [later]
    checkpoint.verify(writer.public_key)
    writer.close()


def test_a_writer_reopened_on_the_backend_continues_the_chain(home: Home) -> None:
    with home.writer() as writer:
        writer.append_events([charge()] * 3)
        key = writer.public_key
    with home.writer() as again:
        assert again.last_event_id == 3
        assert again.append_event("a", "r", "1", "0.5").event_id == 4
    assert verify_ledger(home.store(), public_key=key).ok


def test_timestamps_never_go_backwards_across_writers(home: Home) -> None:
    ahead = home.writer(clock=lambda: T0 + timedelta(days=1))
    behind = home.writer(clock=lambda: T0)
    first = ahead.append_event("a", "r", "1", "1")
    late = behind.append_event("a", "r", "1", "1")
    assert late.timestamp == first.timestamp  # stamped no earlier than the entry before it
    stamps = [e.timestamp for e in LedgerReader(home.store())]
    assert stamps == sorted(stamps)
    ahead.close()
    behind.close()


def test_threads_of_several_writers_lose_no_append(home: Home) -> None:
    writers = [home.writer(), home.writer()]
    errors: list[BaseException] = []

    def work(writer: LedgerWriter) -> None:
        try:
            for _ in range(20):
                writer.append_events([charge(cost="0.01")])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(writers[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    events = list(LedgerReader(home.store()))
    assert [e.event_id for e in events] == list(range(1, 81))
    assert sum((e.cost for e in events), Decimal(0)) == Decimal("0.80")
    for writer in writers:
        writer.close()


APPENDER = """
import sys
from pathlib import Path
from caracal.config import Settings
from caracal.core.ledger import LedgerWriter
from caracal.storage.backends import open_backend
root, url, key, count = Path(sys.argv[1]), sys.argv[2] or None, sys.argv[3], int(sys.argv[4])
backend = open_backend(root, Settings(), url)
store = backend.ledger_store(lock_timeout=30, backup_count=0, backup_min_interval=0)
with LedgerWriter(store, signing_key_path=key, checkpoint_every=10) as writer:
    for _ in range(count):
        writer.append_event("a", "r", "1", "0.01")
backend.close()
"""


def test_processes_appending_at_once_give_contiguous_ids(home: Home) -> None:
    with home.writer():  # creates the signing key once, before the processes race for it
        pass
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(home.root), home.url or "", str(home.key), "25"]
        )
        for _ in range(3)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    store = home.store()
    assert [e.event_id for e in LedgerReader(store)] == list(range(1, 76))
    with home.writer() as writer:
        assert verify_ledger(store, public_key=writer.public_key).ok


def test_a_closed_writer_refuses_appends(home: Home) -> None:
    writer = home.writer()
    writer.close()
    with pytest.raises(LedgerWriteError, match="closed"):
        writer.append_event("a", "r", "1", "1")


# ---------------------------------------------------------------------------------------------- documents


def empty() -> dict[str, object]:
    return {"items": {}}


def test_a_document_starts_as_its_default_and_keeps_what_a_transaction_wrote(home: Home) -> None:
    document = home.backend().document("agents", empty)
    assert document.read() == {"items": {}}
    with document.transaction() as data:
        data["items"]["x"] = 1
    assert home.backend().document("agents", empty).read() == {"items": {"x": 1}}
    assert document.label


def test_a_transaction_that_raises_writes_nothing(home: Home) -> None:
    document = home.backend().document("policies", empty)
    with pytest.raises(RuntimeError), document.transaction() as data:
        data["items"]["x"] = 1
        raise RuntimeError("stop")
    assert document.read() == {"items": {}}


def test_read_cached_sees_other_writers_changes(home: Home) -> None:
    reader = home.backend().document("prices", empty)
    writer = home.backend().document("prices", empty)
    parses: list[int] = []

    def parse(data: dict[str, object]) -> int:
        parses.append(1)
        return len(data["items"])  # type: ignore[arg-type]

    assert reader.read_cached(parse) == 0
    assert reader.read_cached(parse) == 0
    with writer.transaction() as data:
        data["items"]["a"] = 1
    assert _eventually(lambda: reader.read_cached(parse) == 1)
    count = len(parses)
    reader.read_cached(parse)
    reader.read_cached(parse)
    assert len(parses) == count  # unchanged: not parsed again


def test_concurrent_transactions_from_several_objects_lose_no_update(home: Home) -> None:
    documents = [home.backend().document("apikeys", empty) for _ in range(3)]

    def bump(document: object) -> None:
        for _ in range(15):
            with document.transaction() as data:  # type: ignore[attr-defined]
                data["items"]["n"] = data["items"].get("n", 0) + 1

    threads = [threading.Thread(target=bump, args=(d,)) for d in documents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert documents[0].read()["items"]["n"] == 45


def _eventually(check: Callable[[], bool], attempts: int = 200) -> bool:
    """Notifications between database connections arrive asynchronously: poll (never a wall-clock assert)."""
    import time

    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.01)
    return check()
