"""Unit tests for LedgerWriter: ids, batches, timestamps, logging, backups, crash repair, fail-closed refusals
and the Merkle state sidecar. Every test works on a real ledger file in its own folder.

A "crash" is simulated the way it looks on disk afterwards: bytes without a final newline appended by hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from caracal.core.ledger import LedgerQuery, LedgerReader, LedgerWriter, sidecar_path
from caracal.core.merkle import leaf_hash, root_from_leaf_hashes
from caracal.core.verify import read_leaf_hashes
from caracal.exceptions import (
    ConfigurationError,
    InvalidLedgerEventError,
    LedgerCorruptError,
    LedgerError,
    LedgerLockTimeoutError,
    LedgerWriteError,
)
from tests.caches import read_sealed, write_sealed

STORED_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
T0 = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)


def open_writer(path: Path, **options: Any) -> LedgerWriter:
    """A writer whose checkpoints happen only when a test asks (count-based, explicit, or on close)."""
    options.setdefault("checkpoint_interval", 0)
    return LedgerWriter(path, **options)


def item(agent: str = "agent-1", cost: str = "0.030", **extra: Any) -> dict[str, Any]:
    return {"agent_id": agent, "resource_type": "tokens", "quantity": "1000", "cost": cost, **extra}


def charge(writer: LedgerWriter, agent: str = "agent-1", cost: str = "0.030", **extra: Any) -> Any:
    return writer.append_event(**item(agent, cost, **extra))


def lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a ledger ends at a complete line"
    return data.split(b"\n")[:-1]


def ids(path: Path) -> list[int]:
    return [orjson.loads(line)["event_id"] for line in lines(path)]


def build(path: Path, count: int, **options: Any) -> bytes:
    """A closed ledger of ``count`` events; returns its bytes."""
    with open_writer(path, **options) as writer:
        writer.append_events([item(f"agent-{n % 3}", f"0.{n:03d}") for n in range(1, count + 1)])
    return path.read_bytes()


def expected_root(path: Path) -> tuple[int, bytes]:
    leaves = read_leaf_hashes(path)
    return len(leaves), root_from_leaf_hashes(leaves)


def assert_sound(path: Path) -> None:
    """Ids 1..N, each line chained to the one before, every line a valid event."""
    raw = lines(path)
    events = list(LedgerReader(path))
    assert [e.event_id for e in events] == list(range(1, len(raw) + 1))
    previous = hashlib.sha256(b"").hexdigest()
    for line, event in zip(raw, events, strict=True):
        assert event.prev_hash == previous
        previous = leaf_hash(line).hex()


# ----------------------------------------------------------------------------------------------------------
# Opening and closing
# ----------------------------------------------------------------------------------------------------------


def test_creates_parent_folders_and_an_empty_ledger(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "ledger.jsonl"
    with open_writer(path) as writer:
        assert path.is_file()
        assert path.read_bytes() == b""
        assert writer.last_event_id == 0
        assert writer.root()[0] == 0
    assert not sidecar_path(path, "checkpoints").exists()  # nothing to checkpoint


def test_existing_ledger_is_opened_where_it_ends(ledger_path: Path) -> None:
    build(ledger_path, 4)
    with open_writer(ledger_path) as writer:
        assert writer.last_event_id == 4


@pytest.mark.parametrize(
    "options",
    [
        {"backup_count": -1},
        {"backup_count": True},
        {"backup_count": 1.5},
        {"checkpoint_every": -1},
        {"checkpoint_interval": -1},
        {"checkpoint_interval": float("nan")},
        {"backup_min_interval": "600"},
        {"lock_timeout": -0.5},
        {"lock_timeout": True},
    ],
)
def test_bad_settings_are_configuration_errors(ledger_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LedgerWriter(ledger_path, **options)
    assert not ledger_path.exists()


def test_a_closed_writer_refuses_appends_and_close_is_idempotent(ledger_path: Path) -> None:
    writer = open_writer(ledger_path)
    charge(writer)
    writer.close()
    writer.close()
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerWriteError, match="closed"):
        charge(writer)
    assert ledger_path.read_bytes() == before


# ----------------------------------------------------------------------------------------------------------
# Ids and the line format
# ----------------------------------------------------------------------------------------------------------


def test_ids_are_contiguous_across_single_and_batch_appends(ledger_path: Path) -> None:
    with open_writer(ledger_path) as writer:
        got = [charge(writer).event_id]
        got += [e.event_id for e in writer.append_events([item(), item(), item()])]
        got.append(charge(writer).event_id)
        got += [e.event_id for e in writer.append_events([item()])]
        assert writer.last_event_id == 6
    assert got == [1, 2, 3, 4, 5, 6]
    assert ids(ledger_path) == got
    assert_sound(ledger_path)


def test_ids_continue_across_restarts(ledger_path: Path) -> None:
    with open_writer(ledger_path) as writer:
        charge(writer)
        charge(writer)
    with open_writer(ledger_path) as writer:
        assert [e.event_id for e in writer.append_events([item(), item()])] == [3, 4]
    # A writer that was never closed (its process died) does not disturb the next one either.
    crashed = open_writer(ledger_path)
    assert charge(crashed).event_id == 5
    with open_writer(ledger_path) as writer:
        assert charge(writer).event_id == 6
    crashed.close()
    assert ids(ledger_path) == [1, 2, 3, 4, 5, 6]
    assert_sound(ledger_path)


def test_two_open_writers_learn_the_last_id_from_the_file(ledger_path: Path) -> None:
    with open_writer(ledger_path) as first, open_writer(ledger_path) as second:
        assert charge(first).event_id == 1
        assert charge(second).event_id == 2
        assert [e.event_id for e in first.append_events([item(), item()])] == [3, 4]
        assert charge(second).event_id == 5
        assert first.last_event_id == 4  # it has not looked at the file since its own append
        assert first.root() == second.root() == expected_root(ledger_path)
        assert first.last_event_id == 5
    assert ids(ledger_path) == [1, 2, 3, 4, 5]
    assert_sound(ledger_path)


def test_returned_events_are_exactly_what_the_file_holds(ledger_path: Path) -> None:
    with open_writer(ledger_path) as writer:
        one = writer.append_event("agent-1", "tokens", Decimal("1000"), "0.030", "EUR", {"model": "m"}, T0)
        batch = writer.append_events([item("agent-2", "1E+3", currency="JPY"), item(metadata={"k": [1]})])
    returned = [one, *batch]
    assert [e.to_bytes() for e in returned] == lines(ledger_path)
    assert list(LedgerReader(ledger_path)) == returned
    assert (str(one.quantity), str(one.cost), one.currency) == ("1000", "0.030", "EUR")
    assert str(batch[0].cost) == "1E+3"
    assert b'"cost":"1E+3"' in lines(ledger_path)[1]
    assert "metadata" not in orjson.loads(lines(ledger_path)[1])
    assert_sound(ledger_path)


# ----------------------------------------------------------------------------------------------------------
# Batches: all or nothing
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_index", [0, 2, 4])
@pytest.mark.parametrize(
    "bad_item",
    [
        item(cost="-1"),
        item(agent=""),
        item(currency="usd"),
        item(metadata={"x": float("nan")}),
        {**item(), "colour": "red"},
        ["not", "a", "mapping"],
        {"resource_type": "tokens", "quantity": "1", "cost": "1"},
    ],
    ids=[
        "negative-cost",
        "empty-agent",
        "currency",
        "nan-metadata",
        "unknown-field",
        "list",
        "missing-agent",
    ],
)
def test_a_batch_with_one_bad_item_writes_nothing(ledger_path: Path, bad_index: int, bad_item: Any) -> None:
    build(ledger_path, 2)
    before = ledger_path.read_bytes()
    items: list[Any] = [item() for _ in range(5)]
    items[bad_index] = bad_item
    with open_writer(ledger_path) as writer:
        with pytest.raises(InvalidLedgerEventError, match=rf"item {bad_index}\b"):
            writer.append_events(items)
        assert ledger_path.read_bytes() == before
        assert writer.last_event_id == 2
        assert [e.event_id for e in writer.append_events([item()])] == [3]


def test_an_empty_batch_returns_nothing_and_writes_nothing(ledger_path: Path) -> None:
    build(ledger_path, 1)
    before = ledger_path.read_bytes()
    with open_writer(ledger_path, backup_min_interval=0) as writer:
        assert writer.append_events([]) == []
        assert writer.append_events(iter(())) == []
    assert ledger_path.read_bytes() == before
    assert not sidecar_path(ledger_path, "bak.1").exists()


def test_a_batch_can_be_any_iterable(ledger_path: Path) -> None:
    with open_writer(ledger_path) as writer:
        events = writer.append_events(item(f"agent-{n}") for n in range(3))
    assert [e.agent_id for e in events] == ["agent-0", "agent-1", "agent-2"]


# ----------------------------------------------------------------------------------------------------------
# Timestamps
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (datetime(2026, 1, 31, 12, 0), "2026-01-31T12:00:00.000000Z"),
        (datetime(2026, 1, 31, 12, 0, 0, 250), "2026-01-31T12:00:00.000250Z"),
        (datetime(2026, 1, 31, 14, 0, tzinfo=timezone(timedelta(hours=2))), "2026-01-31T12:00:00.000000Z"),
        (datetime(2026, 1, 31, 0, 30, tzinfo=timezone(timedelta(hours=1))), "2026-01-30T23:30:00.000000Z"),
        ("2026-01-31T12:00:00", "2026-01-31T12:00:00.000000Z"),
        ("2026-01-31T12:00:00Z", "2026-01-31T12:00:00.000000Z"),
        ("2026-01-31T07:00:00.5-05:00", "2026-01-31T12:00:00.500000Z"),
    ],
)
def test_timestamps_are_stored_as_utc(ledger_path: Path, given: Any, stored: str) -> None:
    with open_writer(ledger_path) as writer:
        event = charge(writer, timestamp=given)
        [batched] = writer.append_events([item(timestamp=given)])
    assert event.timestamp == batched.timestamp == stored
    assert [orjson.loads(line)["timestamp"] for line in lines(ledger_path)] == [stored, stored]


def test_default_timestamps_are_now_in_the_stored_form(ledger_path: Path) -> None:
    before = datetime.now(timezone.utc)
    with open_writer(ledger_path) as writer:
        event = charge(writer)
    after = datetime.now(timezone.utc)
    assert STORED_TIMESTAMP.fullmatch(event.timestamp)
    assert before - timedelta(seconds=1) <= event.time <= after + timedelta(seconds=1)


def test_an_injected_clock_stamps_events_without_a_timestamp(ledger_path: Path) -> None:
    readings = iter(T0 + timedelta(seconds=n) for n in range(100))
    with open_writer(ledger_path, clock=lambda: next(readings)) as writer:
        first = charge(writer)
        batch = writer.append_events([item(), item(timestamp="2026-02-01T00:00:00Z"), item()])
        explicit = charge(writer, timestamp=T0 - timedelta(days=1))
    assert first.timestamp == "2026-01-31T12:00:00.000000Z"
    # A group commit reads the clock once: its events share their moment; a later explicit timestamp is
    # kept, and nothing after it is dated earlier (explicit or not).
    assert [e.timestamp for e in batch] == [
        "2026-01-31T12:00:01.000000Z",
        "2026-02-01T00:00:00.000000Z",
        "2026-02-01T00:00:00.000000Z",
    ]
    assert explicit.timestamp == "2026-02-01T00:00:00.000000Z"


@pytest.mark.parametrize("opened", ["before", "after"])
def test_timestamps_never_go_backwards_across_writers(ledger_path: Path, opened: str) -> None:
    """A process whose clock was a day ahead wrote an entry; a process with a correct clock (opened before
    that append, so it catches up under the lock, or after it, resuming from the saved state) never dates
    its entries earlier: the ledger stays in time order, and the day of its spend is the day the budget
    state counts it in."""
    ahead = T0 + timedelta(days=1)
    normal = open_writer(ledger_path, clock=lambda: T0) if opened == "before" else None
    with open_writer(ledger_path, clock=lambda: ahead) as skewed:
        charge(skewed)
    if normal is None:
        normal = open_writer(ledger_path, clock=lambda: T0)
    with normal:
        single = charge(normal)
        batch = normal.append_events([item(), item()])
        [grouped] = normal.transact_group([lambda: [item()]], lambda _events: None)
    assert isinstance(grouped, list)
    stamps = [orjson.loads(line)["timestamp"] for line in lines(ledger_path)]
    assert stamps == ["2026-02-01T12:00:00.000000Z"] * 5
    assert [e.timestamp for e in [single, *batch, *grouped]] == stamps[1:]
    days = LedgerQuery(ledger_path).summary_by_day()
    assert {day for day, _currency in days} == {"2026-02-01"}

    with open_writer(ledger_path, clock=lambda: ahead + timedelta(seconds=1)) as later:
        assert charge(later).timestamp == "2026-02-01T12:00:01.000000Z"  # a later clock is used as it is


def test_a_clock_in_another_zone_is_converted_to_utc(ledger_path: Path) -> None:
    tokyo = timezone(timedelta(hours=9))
    with open_writer(ledger_path, clock=lambda: datetime(2026, 1, 1, 8, 0, tzinfo=tokyo)) as writer:
        assert charge(writer).timestamp == "2025-12-31T23:00:00.000000Z"


# ----------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------


def test_each_appended_event_is_logged_at_info(ledger_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open_writer(ledger_path) as writer:
        caplog.set_level(logging.INFO, logger="caracal.ledger")
        charge(writer, "alice", "0.030")
        writer.append_events([item("bob", "1.50"), item("carol", "2")])
        with pytest.raises(InvalidLedgerEventError):
            charge(writer, "dave", "-1")
    appends = [r for r in caplog.records if r.getMessage().startswith("ledger append")]
    assert [r.levelno for r in appends] == [logging.INFO] * 3
    for record, (event_id, agent, cost) in zip(
        appends, [(1, "alice", "0.030"), (2, "bob", "1.50"), (3, "carol", "2")], strict=True
    ):
        message = record.getMessage()
        assert f"event_id={event_id} " in message
        assert f"agent_id={agent} " in message
        assert f"cost={cost} " in message
    assert not any("dave" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------------------


def test_lock_timeout_refuses_the_append_and_writes_nothing(ledger_path: Path) -> None:
    with open_writer(ledger_path, lock_timeout=0.05) as writer:
        charge(writer)
        before = ledger_path.read_bytes()
        fd = os.open(sidecar_path(ledger_path, "lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process holding the lock
            with pytest.raises(LedgerLockTimeoutError, match="lock"):
                charge(writer)
            assert ledger_path.read_bytes() == before
        finally:
            os.close(fd)
        assert charge(writer).event_id == 2


# ----------------------------------------------------------------------------------------------------------
# Rolling backups
# ----------------------------------------------------------------------------------------------------------


def backups(path: Path) -> dict[int, bytes]:
    found = {}
    for index in range(1, 10):
        backup = sidecar_path(path, f"bak.{index}")
        if backup.exists():
            found[index] = backup.read_bytes()
    return found


def test_each_new_writer_rotates_backups_of_earlier_prefixes(ledger_path: Path) -> None:
    prefixes = []
    for round_number in range(6):
        prefixes.append(ledger_path.read_bytes() if ledger_path.exists() else b"")
        with open_writer(ledger_path, backup_count=3, backup_min_interval=0) as writer:
            charge(writer, cost=f"{round_number}.5")
            charge(writer)  # only the first write of a writer makes a backup
    # prefixes[i] is the ledger as writer i found it; writer 0 found it empty and made no backup.
    assert prefixes[0] == b""
    found = backups(ledger_path)
    assert sorted(found) == [1, 2, 3]
    assert found[1] == prefixes[5]
    assert found[2] == prefixes[4]
    assert found[3] == prefixes[3]
    assert ledger_path.read_bytes().startswith(found[1])
    assert not [p.name for p in ledger_path.parent.iterdir() if "tmp" in p.name]


def test_backups_grow_one_at_a_time_up_to_backup_count(ledger_path: Path) -> None:
    build(ledger_path, 1)
    counts = []
    for _ in range(4):
        with open_writer(ledger_path, backup_count=2, backup_min_interval=0) as writer:
            charge(writer)
        counts.append(sorted(backups(ledger_path)))
    assert counts == [[1], [1, 2], [1, 2], [1, 2]]


def test_backup_count_zero_makes_no_backups(ledger_path: Path) -> None:
    for _ in range(3):
        with open_writer(ledger_path, backup_count=0, backup_min_interval=0) as writer:
            charge(writer)
    assert backups(ledger_path) == {}


def test_the_first_write_to_an_empty_ledger_makes_no_backup(ledger_path: Path) -> None:
    open_writer(ledger_path).close()  # an existing, empty ledger
    with open_writer(ledger_path, backup_min_interval=0) as writer:
        charge(writer)
    assert backups(ledger_path) == {}


def test_a_backup_equal_to_the_newest_is_skipped(ledger_path: Path) -> None:
    content = build(ledger_path, 3)
    newest = sidecar_path(ledger_path, "bak.1")
    shutil.copyfile(ledger_path, newest)  # an operator's copy, identical to the ledger
    with open_writer(ledger_path, backup_min_interval=0) as writer:
        charge(writer)
    assert backups(ledger_path) == {1: content}


def test_a_young_backup_is_not_replaced_within_backup_min_interval(ledger_path: Path) -> None:
    build(ledger_path, 1)
    with open_writer(ledger_path, backup_min_interval=0) as writer:
        charge(writer)
    first_backup = backups(ledger_path)
    assert list(first_backup) == [1]
    with open_writer(ledger_path) as writer:  # default interval: 600 s
        charge(writer)
    assert backups(ledger_path) == first_backup
    # Once the interval has passed (a clock far in the future), the next writer backs up again.
    before = ledger_path.read_bytes()
    later = datetime.now(timezone.utc) + timedelta(days=1)
    with open_writer(ledger_path, backup_min_interval=600, clock=lambda: later) as writer:
        charge(writer)
    found = backups(ledger_path)
    assert found == {1: before, 2: first_backup[1]}


# ----------------------------------------------------------------------------------------------------------
# Torn tail: an unacknowledged write cut short by a crash
# ----------------------------------------------------------------------------------------------------------

TORN = b'{"event_id":4,"agent_id":"agent-1","timestamp":"2026-01-3'


def tear(path: Path, data: bytes = TORN) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def test_a_torn_tail_is_moved_aside_when_a_writer_opens(ledger_path: Path) -> None:
    complete = build(ledger_path, 3)
    tear(ledger_path)
    with open_writer(ledger_path) as writer:
        assert ledger_path.read_bytes() == complete
        assert sidecar_path(ledger_path, "torn").read_bytes() == TORN + b"\n"
        assert writer.last_event_id == 3
        assert charge(writer).event_id == 4
    assert ids(ledger_path) == [1, 2, 3, 4]
    assert_sound(ledger_path)


def test_a_ledger_holding_only_a_torn_line_starts_again_at_one(ledger_path: Path) -> None:
    ledger_path.parent.mkdir(parents=True)
    ledger_path.write_bytes(b'{"event_id":1,"agent')
    with open_writer(ledger_path) as writer:
        assert ledger_path.read_bytes() == b""
        assert charge(writer).event_id == 1
    assert sidecar_path(ledger_path, "torn").read_bytes() == b'{"event_id":1,"agent\n'


def test_a_tail_torn_by_another_process_is_repaired_before_the_next_append(ledger_path: Path) -> None:
    with open_writer(ledger_path) as writer:
        charge(writer)
        charge(writer)
        charge(writer)
        complete = ledger_path.read_bytes()
        tear(ledger_path)  # another writer of this ledger crashed mid-write
        event = charge(writer)
        assert event.event_id == 4
        assert ledger_path.read_bytes() == complete + event.to_bytes() + b"\n"
        tear(ledger_path, b"second crash")
        [event] = writer.append_events([item()])
        assert event.event_id == 5
    assert sidecar_path(ledger_path, "torn").read_bytes() == TORN + b"\n" + b"second crash\n"
    assert ids(ledger_path) == [1, 2, 3, 4, 5]
    assert_sound(ledger_path)


def test_a_torn_tail_does_not_count_towards_the_merkle_tree(ledger_path: Path) -> None:
    build(ledger_path, 3)
    tear(ledger_path)
    with open_writer(ledger_path) as writer:
        assert writer.root() == expected_root(ledger_path)
        assert writer.root()[0] == 3


# ----------------------------------------------------------------------------------------------------------
# Corruption: refuse, never truncate
# ----------------------------------------------------------------------------------------------------------


def replace_line(path: Path, number: int, new: bytes) -> None:
    raw = lines(path)
    raw[number - 1] = new
    path.write_bytes(b"".join(line + b"\n" for line in raw))


@pytest.mark.parametrize(
    "garbage",
    [
        b"garbage",
        b"",
        b'{"event_id":',
        b"[1, 2, 3]",
        b'{"no_id": true}',
        b'{"event_id": 4}',  # the right id, but not an event
        b'{"event_id": 4.0, "agent_id": "a"}',
        b'{"event_id": 9}',
    ],
)
def test_a_complete_bad_line_at_the_end_makes_the_writer_refuse(ledger_path: Path, garbage: bytes) -> None:
    build(ledger_path, 3)
    tear(ledger_path, garbage + b"\n")
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerCorruptError) as info:
        open_writer(ledger_path)
    assert info.value.line_number == 4
    assert "line 4" in str(info.value)
    assert ledger_path.read_bytes() == before
    assert not sidecar_path(ledger_path, "torn").exists()


def test_a_duplicated_line_makes_the_writer_refuse(ledger_path: Path) -> None:
    build(ledger_path, 3)
    tear(ledger_path, lines(ledger_path)[-1] + b"\n")
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerCorruptError, match="event 4 was expected"):
        open_writer(ledger_path)
    assert ledger_path.read_bytes() == before


def test_a_garbage_line_in_the_middle_makes_the_writer_refuse(ledger_path: Path) -> None:
    build(ledger_path, 5)
    replace_line(ledger_path, 3, b"not json at all")
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerCorruptError) as info:
        open_writer(ledger_path)
    assert info.value.line_number == 3
    assert ledger_path.read_bytes() == before
    with pytest.raises(LedgerCorruptError, match="line 3"):
        LedgerQuery(ledger_path).get_events()


def test_corruption_appearing_under_an_open_writer_stops_it(ledger_path: Path) -> None:
    with open_writer(ledger_path) as writer:
        charge(writer)
        charge(writer)
        tear(ledger_path, b"garbage\n")
        before = ledger_path.read_bytes()
        with pytest.raises(LedgerCorruptError) as info:
            charge(writer)
        assert info.value.line_number == 3
        # Fail closed: every later append is refused too, and nothing was cut off the file.
        with pytest.raises(LedgerWriteError, match="refuses writes"):
            writer.append_events([item()])
        with pytest.raises(LedgerError):
            writer.checkpoint()
        assert ledger_path.read_bytes() == before
    assert ledger_path.read_bytes() == before
    assert not sidecar_path(ledger_path, "checkpoints").exists()  # close() signed nothing


def test_a_full_read_names_a_modified_line_by_the_chain_of_the_next(ledger_path: Path) -> None:
    build(ledger_path, 3)
    sidecar_path(ledger_path, "merkle").unlink()  # no cached state: the writer reads every line
    replace_line(ledger_path, 2, lines(ledger_path)[1].replace(b'"agent-', b'"AGENT-'))
    before = ledger_path.read_bytes()
    with pytest.raises(LedgerCorruptError, match="chain") as info:
        open_writer(ledger_path)
    assert (info.value.line_number, info.value.event_id) == (3, 2)
    assert ledger_path.read_bytes() == before


def test_a_ledger_that_shrank_under_an_open_writer_is_refused(ledger_path: Path) -> None:
    with open_writer(ledger_path) as writer:
        for _ in range(3):
            charge(writer)
        os.truncate(ledger_path, len(lines(ledger_path)[0]) + 1)
        before = ledger_path.read_bytes()
        with pytest.raises(LedgerWriteError, match="shrank"):
            charge(writer)
        with pytest.raises(LedgerWriteError, match="shrank"):
            charge(writer)
        assert ledger_path.read_bytes() == before


def test_a_tail_truncated_below_the_last_checkpoint_is_refused(ledger_path: Path) -> None:
    with open_writer(ledger_path, checkpoint_every=0) as writer:
        for _ in range(5):
            charge(writer)
        assert writer.checkpoint().size == 5
    raw = lines(ledger_path)
    ledger_path.write_bytes(b"".join(line + b"\n" for line in raw[:3]))
    before = ledger_path.read_bytes()
    checkpoints_before = sidecar_path(ledger_path, "checkpoints").read_bytes()
    writer = open_writer(ledger_path)
    try:
        with pytest.raises(LedgerWriteError, match="checkpoint") as info:
            charge(writer)
        assert "truncated" in str(info.value)
        with pytest.raises(LedgerWriteError):
            writer.append_events([item()])
    finally:
        writer.close()
    assert ledger_path.read_bytes() == before
    assert sidecar_path(ledger_path, "checkpoints").read_bytes() == checkpoints_before


# ----------------------------------------------------------------------------------------------------------
# The Merkle state sidecar is a cache: any damage to it costs a rebuild, never a wrong root
# ----------------------------------------------------------------------------------------------------------


def damage_state(path: Path, how: str) -> None:
    state_path = sidecar_path(path, "merkle")
    state = read_sealed(state_path, "merkle")
    if how == "deleted":
        state_path.unlink()
        return
    if how == "garbage":
        state_path.write_bytes(b"\x00garbage{")
        return
    if how == "empty":
        state_path.write_bytes(b"")
        return
    if how == "not-an-object":
        state_path.write_bytes(b"[1, 2]")
        return
    if how == "offset-inside-a-line":
        state["offset"] -= 7
    elif how == "offset-past-the-end":
        state["offset"] += 1000
    elif how == "offset-negative":
        state["offset"] = -1
    elif how == "offset-not-an-int":
        state["offset"] = "12"
    elif how == "offset-at-an-earlier-line":
        state["offset"] = len(lines(path)[0]) + 1
    elif how == "unsealed":  # a forged frontier that matches the file's last line, written without the key
        state["tree"]["nodes"] = ["11" * 32 for _ in state["tree"]["nodes"]]
    elif how == "leaf-not-hex":
        state["last_leaf"] = "zz"
    elif how == "tree-missing":
        del state["tree"]
    elif how == "tree-garbage":
        state["tree"] = {"size": 3, "nodes": ["xx"]}
    else:  # pragma: no cover
        raise AssertionError(how)
    if how != "unsealed":
        write_sealed(state_path, "merkle", state)
    else:
        state_path.write_bytes(orjson.dumps(state))


@pytest.mark.parametrize(
    "how",
    [
        "deleted",
        "garbage",
        "empty",
        "not-an-object",
        "offset-inside-a-line",
        "offset-past-the-end",
        "offset-negative",
        "offset-not-an-int",
        "offset-at-an-earlier-line",
        "leaf-not-hex",
        "tree-missing",
        "tree-garbage",
        "unsealed",
    ],
)
def test_a_damaged_merkle_state_is_rebuilt_from_the_file(ledger_path: Path, how: str) -> None:
    build(ledger_path, 7, checkpoint_every=3)
    assert sidecar_path(ledger_path, "merkle").exists()
    damage_state(ledger_path, how)
    with open_writer(ledger_path) as writer:
        assert writer.root() == expected_root(ledger_path)
        assert writer.last_event_id == 7
        assert charge(writer).event_id == 8
        assert writer.root() == expected_root(ledger_path)
    assert_sound(ledger_path)
    # The rebuilt state is saved again, and is good enough for the next writer.
    state = read_sealed(sidecar_path(ledger_path, "merkle"), "merkle")
    assert state["offset"] == ledger_path.stat().st_size
    with open_writer(ledger_path) as writer:
        assert writer.root() == expected_root(ledger_path)


def test_a_modified_last_line_is_refused_not_chained_onto(ledger_path: Path) -> None:
    """The ledger's last line has no successor whose ``prev_hash`` covers it and, between checkpoints, no
    signature: only the writer's sealed state remembers its bytes. An edit there (same id, valid JSON) must
    not be laundered by the next append chaining onto it (and the next checkpoint signing it)."""
    build(ledger_path, 7, checkpoint_every=3)  # the last checkpoint covers 6 events: event 7 is uncovered
    lines = ledger_path.read_bytes().splitlines(keepends=True)
    edited = lines[-1].replace(b'"cost":"', b'"cost":"1', 1)
    assert edited != lines[-1]
    ledger_path.write_bytes(b"".join(lines[:-1]) + edited)
    for _ in range(2):  # refused, and still refused: the sealed state is kept as evidence
        with pytest.raises(LedgerCorruptError, match="event 7 no longer has the bytes") as refused:
            open_writer(ledger_path)
        assert refused.value.event_id == 7
    assert ledger_path.read_bytes().splitlines(keepends=True)[-1] == edited  # nothing chained onto it


def test_a_stale_merkle_state_is_caught_up(ledger_path: Path) -> None:
    with open_writer(ledger_path, checkpoint_every=0) as writer:
        for _ in range(3):
            charge(writer)
        writer.checkpoint()
        stale = sidecar_path(ledger_path, "merkle").read_bytes()
        for _ in range(4):
            charge(writer)
    sidecar_path(ledger_path, "merkle").write_bytes(stale)
    with open_writer(ledger_path) as writer:
        assert writer.last_event_id == 7
        assert writer.root() == expected_root(ledger_path)


def test_a_lost_merkle_state_is_written_again_on_open(ledger_path: Path) -> None:
    build(ledger_path, 5)
    sidecar_path(ledger_path, "merkle").unlink()
    open_writer(ledger_path).close()  # no append, no new checkpoint
    state = read_sealed(sidecar_path(ledger_path, "merkle"), "merkle")
    assert state["offset"] == ledger_path.stat().st_size
    assert bytes.fromhex(state["last_leaf"]) == leaf_hash(lines(ledger_path)[-1])
