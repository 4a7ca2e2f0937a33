"""Unit tests for reading the ledger: LedgerReader, LedgerQuery (filters, exact sums, summaries) and
LedgerTail (following a growing file). Ledgers are written by a real LedgerWriter; damage is done by hand.
"""

from __future__ import annotations

import itertools
import os
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caracal.core.events import LedgerEvent
from caracal.core.ledger import LedgerQuery, LedgerReader, LedgerTail, LedgerWriter, SpendTotals
from caracal.exceptions import LedgerCorruptError, LedgerError, LedgerReadError

# (timestamp, agent, resource, quantity, cost, currency): ids 1..6 in this order.
SAMPLE = [
    ("2026-01-30T23:59:59.999999Z", "alice", "tokens", "1000", "0.030", "USD"),
    ("2026-01-31T00:00:00.000000Z", "alice", "images", "1", "0.040", "USD"),
    ("2026-01-31T12:00:00.000000Z", "bob", "tokens", "500", "0.015", "USD"),
    ("2026-01-31T23:59:59.999999Z", "alice", "tokens", "2000", "0.060", "USD"),
    ("2026-02-01T00:00:00.000000Z", "bob", "images", "2", "0.080", "USD"),
    ("2026-02-01T09:30:00.000000Z", "carol", "tokens", "100", "0.1", "EUR"),
]


def write(path: Path, rows: list[tuple[str, str, str, str, str, str]]) -> list[LedgerEvent]:
    items = [
        {
            "timestamp": timestamp,
            "agent_id": agent,
            "resource_type": resource,
            "quantity": quantity,
            "cost": cost,
            "currency": currency,
        }
        for timestamp, agent, resource, quantity, cost, currency in rows
    ]
    with LedgerWriter(path) as writer:
        return writer.append_events(items)


def append_raw(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def event_ids(events: list[LedgerEvent]) -> list[int]:
    return [event.event_id for event in events]


@pytest.fixture
def sample(ledger_path: Path) -> LedgerQuery:
    write(ledger_path, SAMPLE)
    return LedgerQuery(ledger_path)


# ----------------------------------------------------------------------------------------------------------
# LedgerReader
# ----------------------------------------------------------------------------------------------------------


def test_reader_yields_every_event_in_order(ledger_path: Path) -> None:
    written = write(ledger_path, SAMPLE)
    reader = LedgerReader(ledger_path)
    assert list(reader) == written
    assert list(reader.iter_events()) == written  # reading twice gives the same answer
    assert [str(event.cost) for event in reader] == [row[4] for row in SAMPLE]


def test_reader_of_a_missing_ledger_is_empty(tmp_path: Path) -> None:
    reader = LedgerReader(tmp_path / "nowhere" / "ledger.jsonl")
    assert list(reader) == []
    assert reader.last_events(5) == []


def test_a_partial_last_line_is_not_read(sample: LedgerQuery) -> None:
    append_raw(sample.ledger_path, b'{"event_id":7,"agent_id":"alice","timestamp":"2026-02-0')
    assert event_ids(list(sample)) == [1, 2, 3, 4, 5, 6]
    assert event_ids(sample.get_events(agent_id="alice")) == [1, 2, 4]
    assert event_ids(sample.last_events(2)) == [5, 6]


def test_a_garbage_line_is_corruption_naming_its_line(sample: LedgerQuery) -> None:
    raw = sample.ledger_path.read_bytes().split(b"\n")
    raw[2] = b"this is not json"
    sample.ledger_path.write_bytes(b"\n".join(raw))
    with pytest.raises(LedgerCorruptError, match="line 3") as info:
        sample.get_events()
    assert info.value.line_number == 3
    # Never skipped: a sum over a corrupt ledger is refused rather than silently short.
    with pytest.raises(LedgerCorruptError):
        sample.sum_spending("alice")
    with pytest.raises(LedgerCorruptError):
        sample.aggregate_by_agent(currency="USD")


def test_an_invalid_event_is_corruption_naming_its_line_and_id(sample: LedgerQuery) -> None:
    raw = sample.ledger_path.read_bytes().split(b"\n")
    data = orjson.loads(raw[1])
    data["cost"] = "-0.040"
    raw[1] = orjson.dumps(data)
    sample.ledger_path.write_bytes(b"\n".join(raw))
    with pytest.raises(LedgerCorruptError, match="line 2") as info:
        list(sample)
    assert (info.value.line_number, info.value.event_id) == (2, 2)


@pytest.mark.parametrize(("count", "expected"), [(0, []), (1, [6]), (3, [4, 5, 6]), (6, [1, 2, 3, 4, 5, 6])])
def test_last_events(sample: LedgerQuery, count: int, expected: list[int]) -> None:
    assert event_ids(sample.last_events(count)) == expected


def test_last_events_beyond_the_start_returns_everything(sample: LedgerQuery) -> None:
    assert sample.last_events(1000) == list(sample)


@pytest.mark.parametrize("count", [-1, 1.5, "3", None])
def test_last_events_refuses_a_bad_count(sample: LedgerQuery, count: Any) -> None:
    with pytest.raises(LedgerReadError, match="count"):
        sample.last_events(count)


def test_last_events_across_read_blocks(tmp_path: Path) -> None:
    """Lines of very different lengths, spanning many of the reader's 64 KiB blocks."""
    counter = itertools.count()

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=15000), min_size=1, max_size=30), st.data())
    def check(paddings: list[int], data: st.DataObject) -> None:
        path = tmp_path / f"ledger-{next(counter)}" / "ledger.jsonl"
        with LedgerWriter(path, backup_count=0) as writer:
            written = writer.append_events(
                [
                    {
                        "agent_id": "a",
                        "resource_type": "r",
                        "quantity": "1",
                        "cost": "1",
                        "metadata": {"p": "x" * n},
                    }
                    for n in paddings
                ]
            )
        count = data.draw(st.integers(min_value=0, max_value=len(written) + 2))
        assert LedgerReader(path).last_events(count) == written[len(written) - min(count, len(written)) :]

    check()


# ----------------------------------------------------------------------------------------------------------
# LedgerQuery: filters
# ----------------------------------------------------------------------------------------------------------


def test_get_events_without_filters_returns_everything(sample: LedgerQuery) -> None:
    assert event_ids(sample.get_events()) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"agent_id": "alice"}, [1, 2, 4]),
        ({"agent_id": "bob"}, [3, 5]),
        ({"agent_id": "nobody"}, []),
        ({"resource_type": "tokens"}, [1, 3, 4, 6]),
        ({"agent_id": "alice", "resource_type": "tokens"}, [1, 4]),
        ({"agent_id": "carol", "resource_type": "images"}, []),
    ],
)
def test_get_events_filters_by_agent_and_resource(
    sample: LedgerQuery, filters: dict[str, str], expected: list[int]
) -> None:
    assert event_ids(sample.get_events(**filters)) == expected


UTC = timezone.utc


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # Bounds are inclusive, at microsecond precision.
        (datetime(2026, 1, 31, tzinfo=UTC), datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), [2, 3, 4]),
        (datetime(2026, 1, 31, 0, 0, 0, 1, tzinfo=UTC), None, [3, 4, 5, 6]),
        (None, datetime(2026, 1, 30, 23, 59, 59, 999998, tzinfo=UTC), []),
        # Naive datetimes and strings without an offset are UTC.
        (datetime(2026, 1, 31, 12), datetime(2026, 1, 31, 12), [3]),
        ("2026-01-31T12:00:00", "2026-01-31T12:00:00Z", [3]),
        # Offsets are honoured: 13:00+01:00 is 12:00 UTC.
        ("2026-01-31T13:00:00+01:00", "2026-02-01T01:00:00+01:00", [3, 4, 5]),
        # A bare date as the end means the whole of that day; as the start, its beginning.
        (None, "2026-01-31", [1, 2, 3, 4]),
        (None, date(2026, 1, 31), [1, 2, 3, 4]),
        (date(2026, 1, 31), None, [2, 3, 4, 5, 6]),
        ("2026-01-31", "2026-01-31", [2, 3, 4]),
        (date(2026, 2, 1), date(2026, 2, 1), [5, 6]),
        (date(2026, 3, 1), None, []),
    ],
)
def test_get_events_time_window(sample: LedgerQuery, start: Any, end: Any, expected: list[int]) -> None:
    assert event_ids(sample.get_events(start_time=start, end_time=end)) == expected


def test_time_window_combines_with_other_filters(sample: LedgerQuery) -> None:
    assert event_ids(sample.get_events("alice", "2026-01-31", "2026-01-31", "tokens")) == [4]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-02-01", "2026-01-31"),
        (datetime(2026, 1, 31, 12, 0, 1), datetime(2026, 1, 31, 12)),
        ("2026-01-31T12:00:00+01:00", "2026-01-31T10:59:59Z"),
    ],
)
def test_a_start_after_the_end_is_refused(sample: LedgerQuery, start: Any, end: Any) -> None:
    with pytest.raises(LedgerReadError, match="after"):
        sample.get_events(start_time=start, end_time=end)


@pytest.mark.parametrize("bound", ["yesterday", "2026-02-30", 1700000000])
def test_an_unreadable_bound_is_refused(sample: LedgerQuery, bound: Any) -> None:
    with pytest.raises(LedgerReadError):
        sample.get_events(start_time=bound)
    with pytest.raises(LedgerReadError):
        sample.sum_spending("alice", end_time=bound)


# ----------------------------------------------------------------------------------------------------------
# LedgerQuery: exact sums and summaries
# ----------------------------------------------------------------------------------------------------------


def test_sum_spending_is_exact(sample: LedgerQuery) -> None:
    total = sample.sum_spending("alice")
    assert total == Decimal("0.130")
    assert str(total) == "0.130"
    assert sample.sum_spending("bob") == Decimal("0.095")
    assert sample.sum_spending("alice", end_time="2026-01-30") == Decimal("0.030")
    assert sample.sum_spending("alice", start_time="2026-01-31T00:00:00Z") == Decimal("0.100")
    assert sample.sum_spending("carol") == Decimal("0.1")  # one currency for this agent: no need to choose


def test_sum_spending_of_an_unknown_agent_is_zero(sample: LedgerQuery) -> None:
    total = sample.sum_spending("nobody")
    assert total == 0
    assert isinstance(total, Decimal)


def test_sums_never_drift_like_floats(ledger_path: Path) -> None:
    write(ledger_path, [("2026-01-01T00:00:00Z", "a", "r", "1", "0.1", "USD")] * 10)
    query = LedgerQuery(ledger_path)
    assert sum([0.1] * 10) != 1.0  # what a float ledger would report
    assert query.sum_spending("a") == Decimal("1.0")
    assert str(query.aggregate_by_agent()["a"]) == "1.0"


def test_aggregate_by_agent_refuses_to_mix_currencies(sample: LedgerQuery) -> None:
    with pytest.raises(LedgerError, match="currency=") as info:
        sample.aggregate_by_agent()
    assert "EUR" in str(info.value)
    assert "USD" in str(info.value)


def test_aggregate_by_agent_per_currency(sample: LedgerQuery) -> None:
    assert sample.aggregate_by_agent(currency="USD") == {"alice": Decimal("0.130"), "bob": Decimal("0.095")}
    assert sample.aggregate_by_agent(currency="EUR") == {"carol": Decimal("0.1")}
    assert sample.aggregate_by_agent(currency="JPY") == {}
    assert sample.aggregate_by_agent(end_time="2026-01-31") == {
        "alice": Decimal("0.130"),
        "bob": Decimal("0.015"),
    }


def test_sum_spending_refuses_to_mix_currencies_of_one_agent(ledger_path: Path) -> None:
    write(
        ledger_path,
        [
            ("2026-01-01T00:00:00Z", "dave", "r", "1", "1.00", "USD"),
            ("2026-01-01T00:00:01Z", "dave", "r", "1", "2.00", "EUR"),
            ("2026-01-01T00:00:02Z", "dave", "r", "1", "0.50", "USD"),
        ],
    )
    query = LedgerQuery(ledger_path)
    with pytest.raises(LedgerError, match="several currencies"):
        query.sum_spending("dave")
    assert query.sum_spending("dave", currency="USD") == Decimal("1.50")
    assert query.sum_spending("dave", currency="EUR") == Decimal("2.00")
    assert query.sum_spending("dave", currency="GBP") == 0


@pytest.mark.parametrize("currency", ["usd", "DOLLAR", "XYZ"])
def test_an_invalid_currency_filter_is_refused(sample: LedgerQuery, currency: str) -> None:
    with pytest.raises(LedgerReadError, match="currency"):
        sample.sum_spending("alice", currency=currency)
    with pytest.raises(LedgerReadError, match="currency"):
        sample.aggregate_by_agent(currency=currency)


def test_summary_by_resource(sample: LedgerQuery) -> None:
    assert sample.summary_by_resource() == {
        ("tokens", "USD"): SpendTotals(3, Decimal("3500"), Decimal("0.105")),
        ("images", "USD"): SpendTotals(2, Decimal("3"), Decimal("0.120")),
        ("tokens", "EUR"): SpendTotals(1, Decimal("100"), Decimal("0.1")),
    }
    assert sample.summary_by_resource(agent_id="bob", resource_type="images") == {
        ("images", "USD"): SpendTotals(1, Decimal("2"), Decimal("0.080")),
    }


def test_summary_by_day_uses_utc_days(sample: LedgerQuery) -> None:
    assert sample.summary_by_day() == {
        ("2026-01-30", "USD"): SpendTotals(1, Decimal("1000"), Decimal("0.030")),
        ("2026-01-31", "USD"): SpendTotals(3, Decimal("2501"), Decimal("0.115")),
        ("2026-02-01", "USD"): SpendTotals(1, Decimal("2"), Decimal("0.080")),
        ("2026-02-01", "EUR"): SpendTotals(1, Decimal("100"), Decimal("0.1")),
    }
    assert sample.summary_by_day(agent_id="alice", start_time="2026-01-31") == {
        ("2026-01-31", "USD"): SpendTotals(2, Decimal("2001"), Decimal("0.100")),
    }


def test_summarize_refuses_an_unknown_grouping(sample: LedgerQuery) -> None:
    with pytest.raises(LedgerReadError, match="group_by"):
        sample.summarize("month")


def test_queries_on_a_missing_ledger_are_empty(tmp_path: Path) -> None:
    query = LedgerQuery(tmp_path / "never-written.jsonl")
    assert query.get_events() == []
    assert query.get_events(agent_id="alice", start_time="2026-01-01") == []
    assert query.sum_spending("alice") == 0
    assert query.aggregate_by_agent() == {}
    assert query.summary_by_resource() == {}
    assert query.summary_by_day() == {}
    assert query.last_events(3) == []
    # LedgerQuery creates the missing file empty (Caracal Core v0.1's LedgerQuery did; v0.1 code relies on
    # it); it writes nothing into it, and plain readers create nothing.
    assert (tmp_path / "never-written.jsonl").read_bytes() == b""
    assert LedgerReader(tmp_path / "other.jsonl").last_events(3) == []
    assert not (tmp_path / "other.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------
# LedgerTail
# ----------------------------------------------------------------------------------------------------------


def item(n: int) -> dict[str, Any]:
    return {"agent_id": f"agent-{n}", "resource_type": "tokens", "quantity": "1", "cost": "0.01"}


def test_tail_returns_only_new_events(ledger_path: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        first = writer.append_events([item(1), item(2)])
        tail = LedgerTail(ledger_path)
        assert tail.poll() == first
        assert tail.poll() == []
        one = writer.append_event(**item(3))
        assert tail.poll() == [one]
        batch = writer.append_events([item(4), item(5), item(6)])
        assert tail.poll() == batch
        assert tail.poll() == []
        assert tail.last_event_id == 6
        assert tail.offset == ledger_path.stat().st_size


def test_tail_of_a_missing_ledger_waits_for_it(ledger_path: Path) -> None:
    tail = LedgerTail(ledger_path)
    tail_from_end = LedgerTail(ledger_path, from_end=True)
    assert tail.poll() == []
    assert tail_from_end.poll() == []
    with LedgerWriter(ledger_path) as writer:
        event = writer.append_event(**item(1))
    assert tail.poll() == [event]
    assert tail_from_end.poll() == [event]


def test_tail_from_end_skips_what_is_already_there(ledger_path: Path) -> None:
    write(ledger_path, SAMPLE)
    tail = LedgerTail(ledger_path, from_end=True)
    assert tail.last_event_id == 6
    assert tail.poll() == []
    with LedgerWriter(ledger_path) as writer:
        event = writer.append_event(**item(7))
    assert tail.poll() == [event]


def test_tail_does_not_return_a_line_still_being_written(ledger_path: Path) -> None:
    write(ledger_path, SAMPLE[:3])
    complete = ledger_path.read_bytes()
    with LedgerWriter(ledger_path) as writer:
        event = writer.append_event(**item(4))
    line = event.to_bytes() + b"\n"
    os.truncate(ledger_path, len(complete))  # rewind to just before that line was written

    tail = LedgerTail(ledger_path)
    assert event_ids(tail.poll()) == [1, 2, 3]
    append_raw(ledger_path, line[:40])
    assert tail.poll() == []
    append_raw(ledger_path, line[40:-1])
    assert tail.poll() == []
    append_raw(ledger_path, b"\n")
    assert tail.poll() == [event]


def test_tail_from_end_starts_after_the_last_complete_line(ledger_path: Path) -> None:
    write(ledger_path, SAMPLE[:2])
    append_raw(ledger_path, b'{"event_id":3,"agent_id":"torn')  # a crashed writer's unfinished line
    tail = LedgerTail(ledger_path, from_end=True)
    assert tail.last_event_id == 2
    assert tail.poll() == []
    with LedgerWriter(ledger_path) as writer:  # repairs the torn tail, then appends
        event = writer.append_event(**item(3))
    assert event.event_id == 3
    assert tail.poll() == [event]


def test_tail_survives_a_torn_tail_repair(ledger_path: Path) -> None:
    write(ledger_path, SAMPLE[:2])
    tail = LedgerTail(ledger_path)
    assert event_ids(tail.poll()) == [1, 2]
    append_raw(ledger_path, b'{"event_id":3,"agent_id":"torn')
    assert tail.poll() == []
    with LedgerWriter(ledger_path) as writer:
        event = writer.append_event(**item(3))
    assert tail.poll() == [event]


def test_tail_detects_a_ledger_that_shrank(ledger_path: Path) -> None:
    write(ledger_path, SAMPLE)
    tail = LedgerTail(ledger_path)
    tail.poll()
    first_line = ledger_path.read_bytes().split(b"\n")[0] + b"\n"
    ledger_path.write_bytes(first_line)
    with pytest.raises(LedgerCorruptError, match="shrank"):
        tail.poll()


def test_tail_detects_a_deleted_ledger(ledger_path: Path) -> None:
    write(ledger_path, SAMPLE[:1])
    tail = LedgerTail(ledger_path)
    tail.poll()
    ledger_path.unlink()
    with pytest.raises(LedgerCorruptError, match="shrank"):
        tail.poll()


def test_tail_detects_a_gap_in_the_ids(ledger_path: Path) -> None:
    written = write(ledger_path, SAMPLE[:2])
    tail = LedgerTail(ledger_path)
    tail.poll()
    skipped = written[-1].to_dict()
    skipped["event_id"] = 4
    append_raw(ledger_path, orjson.dumps(skipped) + b"\n")
    with pytest.raises(LedgerCorruptError, match="expected 3") as info:
        tail.poll()
    assert info.value.event_id == 4


def test_tail_reports_a_corrupt_new_line(ledger_path: Path) -> None:
    write(ledger_path, SAMPLE[:2])
    tail = LedgerTail(ledger_path)
    tail.poll()
    append_raw(ledger_path, b"garbage\n")
    with pytest.raises(LedgerCorruptError, match="line 3"):
        tail.poll()


def test_follow_yields_events_until_stopped(ledger_path: Path) -> None:
    written = write(ledger_path, SAMPLE[:3])
    tail = LedgerTail(ledger_path)
    calls = itertools.count()
    seen = list(tail.follow(interval=0, stop=lambda: next(calls) >= 2))
    assert seen == written


def test_tail_and_query_agree(ledger_path: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        tail = LedgerTail(ledger_path)
        seen: list[LedgerEvent] = []
        for n in range(5):
            writer.append_events([item(n)] * (n + 1))
            seen += tail.poll()
    assert seen == LedgerQuery(ledger_path).get_events()
    assert event_ids(seen) == list(range(1, 16))


def test_bound_as_aware_datetime_in_another_zone(sample: LedgerQuery) -> None:
    tokyo = timezone(timedelta(hours=9))
    start = datetime(2026, 2, 1, 9, 0, tzinfo=tokyo)  # 2026-02-01T00:00Z
    assert event_ids(sample.get_events(start_time=start)) == [5, 6]
