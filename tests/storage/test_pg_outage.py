"""PostgreSQL goes away under load, and comes back: every action during the outage is denied with a
reason (fail closed), the clients recover by themselves once it is back, and nothing acknowledged is lost
or counted twice.

A private server (:mod:`tests.pg_instance`: the machine's shared server is never restarted by a test) is
stopped in the middle of four threads of embedded clients doing reserve + settle, and started again. Then:

- every reserve that returned a hold is in the ledger exactly once, and every settle that returned closed
  its hold exactly once (a COMMIT whose outcome was unknown may have landed or not, but never twice);
- some actions were denied during the outage, each with a typed Caracal error and a message;
- actions succeeded again after the restart, without restarting the clients;
- the ledger verifies.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.ledger import LedgerReader
from caracal.core.verify import verify_ledger
from caracal.core.windows import parse_window
from caracal.exceptions import CaracalError, LedgerVerificationError
from caracal.sdk.client import CaracalClient
from caracal.storage.home import EmbeddedHome
from tests.pg import storage_config, unavailable
from tests.pg_instance import PrivateServer, available

THREADS = 4
CHARGE = [{"resource_type": "tool.call", "quantity": "1", "cost": "0.01"}]


def wait_for(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a bound on waiting, not a performance assertion
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_an_outage_under_load_denies_then_recovers_losing_and_doubling_nothing(tmp_path: Path) -> None:
    with PrivateServer() as server:
        home_dir = tmp_path / "home"
        home_dir.mkdir()
        (home_dir / "config.toml").write_text(storage_config(server.url) + "[ledger]\nlock_timeout = 1\n")
        home = EmbeddedHome(home_dir)
        home.backend.initialize()
        agent = home.agents.register("worker", "ops@example.com")
        home.policies.create(agent.agent_id, "1000000", parse_window("total"), "USD")
        home.close()

        lock = threading.Lock()
        reserved: list[str] = []
        settled: list[str] = []
        denied: list[tuple[str, CaracalError]] = []
        phase = ["before"]
        successes = Counter[str]()
        stop = threading.Event()

        recovered: set[int] = set()

        def work(index: int) -> None:
            client = CaracalClient(home_dir)
            try:
                while not stop.is_set():
                    try:
                        hold = client.reserve("worker", "0.01", ttl=3600)
                    except CaracalError as exc:
                        with lock:
                            denied.append((phase[0], exc))
                        time.sleep(0.01)
                        continue
                    with lock:
                        reserved.append(hold.hold_id)
                    try:
                        client.settle(hold, CHARGE)
                    except CaracalError as exc:
                        with lock:
                            denied.append((phase[0], exc))
                        continue
                    with lock:
                        settled.append(hold.hold_id)
                        successes[phase[0]] += 1
                        if phase[0] == "after":
                            recovered.add(index)
            finally:
                client.close()

        threads = [threading.Thread(target=work, args=(index,)) for index in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: successes["before"] >= 40, "work before the outage")
            phase[0] = "outage"
            server.stop("fast")  # open transactions are rolled back, connections cut
            wait_for(lambda: sum(p == "outage" for p, _ in denied) >= THREADS, "denials during the outage")
            server.start()
            phase[0] = "after"
            # Every client recovers by itself: an outage is never taken for a ledger that failed to verify.
            wait_for(lambda: len(recovered) == THREADS, "every client to recover after the restart")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)

        outage = [exc for when, exc in denied if when == "outage"]
        assert outage and all(str(exc) for exc in outage)  # denied, each with a reason
        home = EmbeddedHome(home_dir)
        try:
            events = list(LedgerReader(home.ledger))
            holds = Counter(e.hold_id for e in events if e.kind == "hold")
            releases = Counter(e.hold_id for e in events if e.kind == "release")
            assert max(holds.values()) == 1 and max(releases.values()) == 1  # nothing twice
            assert set(reserved) <= set(holds)  # every acknowledged reserve is on record
            assert set(settled) <= set(releases)  # every acknowledged settle closed its hold
            charges = [e for e in events if e.is_charge]
            assert len(charges) == len(releases) - sum(
                1 for e in events if e.kind == "release" and (e.metadata or {}).get("reason") != "settled"
            )
            assert sum((c.cost for c in charges), Decimal(0)) == Decimal("0.01") * len(charges)
            assert [e.event_id for e in events] == list(range(1, len(events) + 1))
            assert verify_ledger(home.ledger, public_key=home.writer().public_key).ok
        finally:
            home.close()


@pytest.fixture(autouse=True)
def _skip_without_server() -> None:
    if available() is not None:
        unavailable()


def test_reading_other_hosts_entries_during_an_outage_is_a_read_error_not_a_verification_failure(
    tmp_path: Path,
) -> None:
    """A process that must read what another appended while the database is down is denied for now (a
    read error), never marked as holding a ledger that failed verification (which would deny for good)."""
    with PrivateServer() as server:
        folders = []
        for name in ("a", "b"):
            folder = tmp_path / name
            (folder / "keys").mkdir(parents=True)
            (folder / "config.toml").write_text(
                storage_config(server.url) + "[ledger]\ncheckpoint_every = 2\nlock_timeout = 1\n"
            )
            folders.append(folder)
        first = EmbeddedHome(folders[0])
        first.backend.initialize()
        agent = first.agents.register("worker", "ops@example.com")
        first.policies.create(agent.agent_id, "1000", parse_window("total"), "USD")
        reader = first.enforcer()
        reader.catch_up()
        for name in ("keys/checkpoint.key", "keys/checkpoint.key.pub"):
            (folders[1] / name).write_bytes((folders[0] / name).read_bytes())
        other = EmbeddedHome(folders[1])
        charge = {"agent_id": agent.agent_id, "resource_type": "r", "quantity": "1", "cost": "0.5"}
        other.writer().append_events([charge] * 5)  # another host: checkpoints at 2 and 4
        other.close()
        server.stop("fast")
        with pytest.raises(CaracalError) as outage:
            reader.catch_up()
        assert not isinstance(outage.value, LedgerVerificationError), outage.value
        server.start()
        assert reader.catch_up().last_event_id == 5
        first.close()


def test_a_write_whose_outcome_cannot_be_asked_is_outcome_unknown_and_never_written_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server goes down as an append is sent: the store cannot ask whether it committed, so the append
    is reported as neither done nor failed (``outcome_unknown``); once the server is back, the writer reads
    what the ledger holds and goes on from there, with contiguous ids."""
    import caracal.storage.postgres.ledger as pg_ledger
    from caracal.core.ledger import LedgerWriter
    from caracal.exceptions import LedgerWriteError

    with PrivateServer() as server:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text(storage_config(server.url) + "[ledger]\nlock_timeout = 1\n")
        opened = EmbeddedHome(home)
        writer: LedgerWriter = opened.writer()
        writer.append_event("a", "r", "1", "0.10")
        monkeypatch.setattr(pg_ledger, "before_commit", lambda conn: server.stop("immediate"))
        with pytest.raises(LedgerWriteError) as caught:
            writer.append_event("a", "r", "1", "0.20")
        assert caught.value.outcome_unknown and "may or may not" in str(caught.value)
        monkeypatch.setattr(pg_ledger, "before_commit", None)
        server.start()
        third = writer.append_event("a", "r", "1", "0.30")
        events = list(LedgerReader(opened.ledger))
        assert [e.event_id for e in events] == list(range(1, len(events) + 1))
        assert third.event_id == len(events) and str(events[0].cost) == "0.10"
        assert [str(e.cost) for e in events].count("0.20") <= 1
        opened.close()


def test_the_first_append_after_a_restart_succeeds(tmp_path: Path) -> None:
    """The pool's idle connection died with the server; the first append after the restart takes a fresh
    one instead of failing (nothing was done on the dead one, so trying another is safe)."""
    from caracal.core.ledger import LedgerWriter

    with PrivateServer() as server:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text(storage_config(server.url) + "[ledger]\nlock_timeout = 5\n")
        opened = EmbeddedHome(home)
        try:
            writer: LedgerWriter = opened.writer()
            writer.append_event("a", "r", "1", "0.10")  # the step's connection goes back to the pool, idle
            server.stop("fast")
            server.start()
            second = writer.append_event("a", "r", "1", "0.20")
            assert second.event_id == 2
            assert [str(e.cost) for e in LedgerReader(opened.ledger)] == ["0.10", "0.20"]
        finally:
            opened.close()


def test_the_first_reads_after_a_quiet_restart_succeed(tmp_path: Path) -> None:
    """A process that was idle while the server restarted: its first budget check, registry read and
    ledger read each get a live connection (the pool checks a connection that sat idle), not an error."""
    from caracal.core.ledger import LedgerWriter
    from caracal.storage.postgres import connection

    with PrivateServer() as server:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text(storage_config(server.url))
        opened = EmbeddedHome(home)
        try:
            agent = opened.agents.register("a", "ops@example.com")
            writer: LedgerWriter = opened.writer()
            writer.append_event(agent.agent_id, "r", "1", "0.10")
            assert len(list(LedgerReader(opened.ledger))) == 1
            server.stop("fast")
            server.start()
            time.sleep(connection.IDLE_CHECK * 1.5)  # a quiet spell: the pooled connections sat idle
            assert opened.agents.get("a").agent_id == agent.agent_id
            assert [str(e.cost) for e in LedgerReader(opened.ledger)] == ["0.10"]
            assert writer.append_event(agent.agent_id, "r", "1", "0.20").event_id == 2
        finally:
            opened.close()
