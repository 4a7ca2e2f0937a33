"""Tamper evidence and keys on PostgreSQL, as on files: what the database holds is input an attacker (or
an operator with the owner's rights) may have edited.

- a sealed budget snapshot row edited (seal kept), replaced by one sealed with another key, or unsealed, is
  ignored and the ledger replayed: the spend it hid is still counted;
- a ledger row rewritten (the append-only trigger disabled by the owner) makes every decision deny, naming
  the event, as ``caracal ledger verify`` does;
- a host whose checkpoint signing key is not the home's is refused with a message saying what to copy.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest

from caracal.core.checkpoint import load_public_key
from caracal.core.sealed import seal
from caracal.core.verify import verify_ledger
from caracal.core.windows import parse_window
from caracal.exceptions import (
    BudgetExceededError,
    ConfigurationError,
    LedgerCorruptError,
    LedgerVerificationError,
)
from caracal.storage.home import EmbeddedHome
from tests.caches import cache_key
from tests.core.test_verify_tamper import rewrite_with_chain
from tests.pg import storage_config

CHARGE = {"resource_type": "tool.call", "quantity": "1", "cost": "0.40"}


def make_home(folder: Path, url: str) -> EmbeddedHome:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(storage_config(url) + "[ledger]\ncheckpoint_every = 3\n")
    return EmbeddedHome(folder)


@pytest.fixture
def spent(tmp_path: Path, pg_url: str) -> tuple[Path, str]:
    """A home on the database with an agent that has spent 0.80 of 1.00, and a saved snapshot."""
    home = make_home(tmp_path / "home", pg_url)
    agent = home.agents.register("worker", "ops@example.com")
    home.policies.create(agent.agent_id, "1.00", parse_window("total"), "USD")
    enforcer = home.enforcer()
    for _ in range(2):
        hold = enforcer.reserve("worker", "0.40")
        enforcer.settle(hold.hold_id, [CHARGE])
    enforcer.save_snapshot()
    home.close()
    return tmp_path / "home", pg_url


def remaining(folder: Path) -> Decimal:
    home = EmbeddedHome(folder)
    try:
        return home.enforcer().check("worker").remaining  # type: ignore[return-value]
    finally:
        home.close()


def set_cache(url: str, name: str, body: bytes) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE caracal_caches SET body = %s WHERE name = %s", (body, name))


@pytest.mark.parametrize("forgery", ["edited-seal-kept", "foreign-key", "unsealed"])
def test_a_forged_snapshot_row_is_ignored(spent: tuple[Path, str], forgery: str, tmp_path: Path) -> None:
    folder, url = spent
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT body FROM caracal_caches WHERE name = 'budget'").fetchone()
    assert row is not None
    payload = bytes(row[0]).split(b"\n", 1)[1]
    data = orjson.loads(payload)
    data["state"] = {**data["state"], "spend": {}}  # the agent "spent nothing"
    forged = orjson.dumps(data)
    if forgery == "edited-seal-kept":
        body = bytes(row[0]).split(b"\n", 1)[0] + b"\n" + forged
    elif forgery == "foreign-key":
        body = seal(cache_key("budget", tmp_path / "other.key"), "budget", forged)
    else:
        body = forged
    set_cache(url, "budget", body)
    assert remaining(folder) == Decimal("0.20")  # replayed: the 0.80 still counts
    home = EmbeddedHome(folder)
    try:
        with pytest.raises(BudgetExceededError):
            home.enforcer().reserve("worker", "0.40")
    finally:
        home.close()


def test_a_rewritten_ledger_row_denies_every_decision(spent: tuple[Path, str]) -> None:
    folder, url = spent
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE caracal_ledger DISABLE TRIGGER caracal_ledger_append_only")
        line = bytes(conn.execute("SELECT line FROM caracal_ledger WHERE event_id = 2").fetchone()[0])
        assert b'"cost":"0.40"' in line
        conn.execute(
            "UPDATE caracal_ledger SET line = %s WHERE event_id = 2",
            (line.replace(b'"cost":"0.40"', b'"cost":"0.00"'),),
        )
        conn.execute("DELETE FROM caracal_caches")  # and the snapshot that remembers it
    home = EmbeddedHome(folder)
    try:
        # Denied as on files: by the writer, which refuses a broken chain, or by the checked replay.
        with pytest.raises((LedgerCorruptError, LedgerVerificationError)) as denied:
            home.enforcer().reserve("worker", "0.10")
        error = denied.value
        bad = error.event_id if isinstance(error, LedgerCorruptError) else error.first_bad_event_id
        assert bad == 2
        report = verify_ledger(home.ledger, public_key=load_public_key(home.key_path))
        assert not report.ok and report.first_bad_event_id == 2
    finally:
        home.close()


def test_a_rewrite_signed_over_while_a_step_waits_is_caught(
    spent: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a reserve waits for the ledger's head row, another host appends three rows and stores a signed
    checkpoint over them; the rows are then rewritten with a recomputed chain (the chain alone cannot tell).
    The step reads the rows and hands them to the budget state, which must still read that checkpoint (the
    step learns checkpoints are new in the round trip that takes the head row) and refuse."""
    folder, url = spent
    home = EmbeddedHome(folder)
    other = EmbeddedHome(folder)
    try:
        enforcer = home.enforcer()
        enforcer.check("worker")
        store = enforcer.live.store
        begin = store.begin
        first = [0]

        def appended_while_waiting() -> None:
            monkeypatch.setattr(store, "begin", begin)
            writer = other.writer()
            events = [writer.append_event("someone", "tool.call", "1", "0.40") for _ in range(3)]
            writer.checkpoint()
            first[0] = events[0].event_id
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER TABLE caracal_ledger DISABLE TRIGGER caracal_ledger_append_only")
                rows = conn.execute(
                    "SELECT event_id, line FROM caracal_ledger WHERE event_id >= %s ORDER BY event_id",
                    (first[0],),
                ).fetchall()
                lines = rewrite_with_chain(1)([bytes(line) for _id, line in rows])
                for (event_id, _old), line in zip(rows, lines, strict=True):
                    conn.execute("UPDATE caracal_ledger SET line = %s WHERE event_id = %s", (line, event_id))
            begin()

        monkeypatch.setattr(store, "begin", appended_while_waiting)
        with pytest.raises(LedgerVerificationError) as caught:
            enforcer.reserve("worker", "0.10")
        assert caught.value.first_bad_event_id == first[0]
        with pytest.raises(LedgerVerificationError):
            enforcer.check("worker")
    finally:
        other.close()
        home.close()


def test_a_host_with_another_signing_key_is_refused(spent: tuple[Path, str], tmp_path: Path) -> None:
    _folder, url = spent
    stranger = make_home(tmp_path / "other-host", url)  # its own, new key
    try:
        with pytest.raises(ConfigurationError, match=r"Copy keys/checkpoint\.key"):
            stranger.writer()
    finally:
        stranger.close()


@pytest.mark.parametrize("batch", [None, 2], ids=["one-batch", "gap-at-a-batch-edge"])
def test_a_deleted_ledger_row_is_found_not_skipped(
    spent: tuple[Path, str], batch: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are read in id ranges (ids are contiguous); a range that comes back short because a row was
    deleted must not end the reading there: the rows after the gap are still read, and the gap named."""
    from caracal.storage.postgres import ledger as pg_ledger

    if batch is not None:
        monkeypatch.setattr(pg_ledger, "BATCH", batch)
    folder, url = spent
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE caracal_ledger DISABLE TRIGGER caracal_ledger_append_only")
        conn.execute("DELETE FROM caracal_ledger WHERE event_id = 2")
        conn.execute("DELETE FROM caracal_caches")
        total = conn.execute("SELECT count(*), max(event_id) FROM caracal_ledger").fetchone()
    assert total is not None and total[1] > 3
    home = EmbeddedHome(folder)
    try:
        lines = [position for position, _line in home.ledger.iter_lines(0)]  # type: ignore[union-attr]
        assert lines == [1, *range(3, total[1] + 1)]  # everything after the gap, once, in order
        report = verify_ledger(home.ledger, public_key=load_public_key(home.key_path))
        assert not report.ok and report.first_bad_event_id in (2, 3)
        with pytest.raises((LedgerCorruptError, LedgerVerificationError)):
            home.enforcer().reserve("worker", "0.10")
    finally:
        home.close()


HOST_AHEAD = """
import sys
from datetime import datetime, timedelta, timezone
import caracal.storage.postgres.ledger as pg_ledger
import caracal.storage.prices as prices
from caracal.storage.home import EmbeddedHome

class Ahead(datetime):  # this host's clock runs an hour ahead
    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(hours=1)

pg_ledger._utc_now = lambda: Ahead.now(timezone.utc)
prices.datetime = Ahead
home = EmbeddedHome(sys.argv[1])
home.prices.set("tool.lookup.calls", "0.25")
home.close()
"""


def test_a_price_set_on_a_host_whose_clock_runs_ahead_is_in_effect_on_every_host(
    spent: tuple[Path, str], tmp_path: Path
) -> None:
    """Prices, like entries, take the database's time: a price set "now" on a host whose clock is an hour
    ahead prices the charges other hosts make right after (with that host's time, they were refused as
    unpriced for an hour)."""
    import subprocess
    import sys

    from caracal.sdk.client import CaracalClient

    folder, _url = spent
    script = tmp_path / "host_ahead.py"
    script.write_text(HOST_AHEAD)
    done = subprocess.run(
        [sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    with CaracalClient(folder) as client:
        event = client.emit_event("worker", "tool.lookup.calls", 1)
    assert event.cost == Decimal("0.25")
