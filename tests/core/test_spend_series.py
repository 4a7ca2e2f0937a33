"""Spend over time for the dashboard (caracal.core.spend_series) and reading the ledger backwards."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from caracal.core.decisions import PolicyStatus
from caracal.core.events import LedgerEvent
from caracal.core.ledger import LedgerWriter
from caracal.core.ledger_read import LedgerQuery, LedgerReader
from caracal.core.policy import Policy
from caracal.core.spend_series import SpendSeries, nearest_limits, period_starts, scaled, used_fraction
from caracal.core.windows import policy_window

NOW = datetime(2026, 3, 11, 10, 30, tzinfo=timezone.utc)  # a Wednesday


def charge(
    event_id: int,
    when: datetime,
    agent: str = "a",
    cost: str = "0.10",
    resource: str = "r",
    currency: str = "USD",
    kind: str | None = None,
) -> LedgerEvent:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return LedgerEvent(event_id, agent, stamp, resource, Decimal("1"), Decimal(cost), currency, kind=kind)


def test_periods_start_at_utc_midnight_monday_and_the_first() -> None:
    starts = period_starts(NOW)
    assert starts["today"] == datetime(2026, 3, 11, tzinfo=timezone.utc)
    assert starts["week"] == datetime(2026, 3, 9, tzinfo=timezone.utc)
    assert starts["month"] == datetime(2026, 3, 1, tzinfo=timezone.utc)


def test_totals_are_exact_per_currency_and_skip_holds_and_old_entries() -> None:
    series = SpendSeries()
    events = [
        charge(1, NOW - timedelta(hours=1), cost="0.1"),
        charge(2, NOW - timedelta(minutes=5), cost="0.2"),
        charge(3, NOW - timedelta(days=1), agent="b", cost="0.3"),
        charge(4, NOW - timedelta(days=9), cost="1"),  # last month? no: 2 March, this month, last week
        charge(5, NOW, cost="7", kind="hold"),
        charge(6, NOW, cost="5", currency="EUR"),
        charge(7, NOW - timedelta(days=40), cost="100"),  # outside the retention
    ]
    for event in reversed(events):  # the first build reads backwards
        series.add(event, NOW)
    starts = period_starts(NOW)
    assert series.totals_since(starts["today"]) == {("", "USD"): Decimal("0.3"), ("", "EUR"): Decimal("5")}
    assert series.totals_since(starts["week"], by="agent") == {
        ("a", "USD"): Decimal("0.3"),
        ("b", "USD"): Decimal("0.3"),
        ("a", "EUR"): Decimal("5"),
    }
    assert series.totals_since(starts["month"], agents={"a"})[("", "USD")] == Decimal("1.3")
    assert series.totals_since(starts["today"], by="agent")[("a", "USD")] == Decimal("0.3")  # 0.1 + 0.2


def test_the_totals_equal_the_ledger_summary(tmp_path: Path) -> None:
    path = tmp_path / "ledger" / "ledger.jsonl"
    with LedgerWriter(path, signing_key_path=tmp_path / "key") as writer:
        for index in range(30):
            writer.append_event(f"agent-{index % 3}", "tool", "1", f"0.0{index % 7 + 1}")
    now = datetime.now(timezone.utc)
    series = SpendSeries()
    for event in LedgerReader(path).iter_events():
        series.add(event, now)
    summary = LedgerQuery(path).summarize("agent", start_time=now.date())
    assert series.totals_since(period_starts(now)["today"], by="agent") == {
        key: totals.cost for key, totals in summary.items()
    }


def test_bars_cover_every_bucket_and_stack_by_group() -> None:
    series = SpendSeries()
    series.add(charge(1, NOW - timedelta(hours=2), agent="a", resource="x", cost="1"), NOW)
    series.add(charge(2, NOW - timedelta(hours=2), agent="b", resource="x", cost="2"), NOW)
    series.add(charge(3, NOW, agent="a", resource="y", cost="4"), NOW)
    bars = series.bars("hour", "agent", "USD", NOW, count=3)
    assert [bar.start for bar in bars] == [NOW.replace(minute=0) - timedelta(hours=h) for h in (2, 1, 0)]
    assert [bar.parts for bar in bars] == [(("a", Decimal(1)), ("b", Decimal(2))), (), (("a", Decimal(4)),)]
    assert [bar.total for bar in series.bars("day", "resource", "USD", NOW, count=2)] == [0, 7]
    assert series.bars("hour", "agent", "USD", NOW, agents={"b"}, count=3)[0].parts == (("b", Decimal(2)),)
    series.trim(NOW + timedelta(days=60))
    assert series.hours == {} and series.days == {}


def status(policy_id: str, limit: str, spent: str, held: str = "0") -> PolicyStatus:
    policy = Policy(policy_id, "agent", Decimal(limit), "USD", policy_window("daily", None, "UTC"))
    remaining = Decimal(limit) - Decimal(spent) - Decimal(held)
    return PolicyStatus(policy, Decimal(spent), Decimal(held), remaining, None, None)


def test_nearest_limits_ranks_by_the_share_spent_or_held() -> None:
    statuses = [status("p1", "10", "5"), status("p2", "1", "0.5", "0.4"), status("p3", "100", "1")]
    found = nearest_limits([*statuses, status("p2", "1", "0")], 2)
    assert [s.policy.policy_id for s in found] == ["p2", "p1"]
    assert used_fraction(found[0]) == Decimal("0.9")
    assert used_fraction(status("p4", "0", "0")) == 1


def test_scaled_heights() -> None:
    assert scaled([Decimal(0), Decimal(1), Decimal(4)], 100) == [0, 25, 100]
    assert scaled([Decimal(0)], 100) == [0]


def test_events_before_pages_backwards(tmp_path: Path) -> None:
    path = tmp_path / "ledger" / "ledger.jsonl"
    with LedgerWriter(path, signing_key_path=tmp_path / "key") as writer:
        for _index in range(25):
            writer.append_event("a", "tool", "1", "0.01")
    reader = LedgerReader(path)
    seen: list[int] = []
    position: int | None = None
    while position != 0:
        page, total = reader.events_before(position, 10)
        assert total == path.stat().st_size
        if not page:
            break
        seen.extend(event.event_id for _start, event in page)
        position = page[-1][0]
    assert seen == list(range(25, 0, -1))
