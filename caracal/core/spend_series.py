"""Spend over time, for the dashboard: charges bucketed by hour and by day, updated one entry at a time.

Pure: the caller feeds ledger events (in any order: the first build reads backwards from the end, later
updates read forwards from where it stopped) and passes the clock in. Invariants:

- only charges count (holds and releases are not spend, as in :meth:`LedgerQuery.summarize`);
- sums are exact Decimals, per currency, never mixed;
- buckets are UTC (the ledger's summaries by day are UTC days too), keyed by their start;
- memory is bounded by the retention (``HOURS`` hour buckets, ``DAYS`` day buckets) times the number of
  (agent, resource, currency) groups seen in it: older buckets are dropped by :meth:`SpendSeries.trim`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Literal

from caracal.core.decisions import PolicyStatus
from caracal.core.events import LedgerEvent
from caracal.core.money import add

HOURS = 48
"""Hour buckets kept: the last two days."""
DAYS = 32
"""Day buckets kept: enough for this month and the last 30 days."""

Granularity = Literal["hour", "day"]
Group = Literal["agent", "resource"]
Key = tuple[str, str, str]
"""(agent id, resource type, currency)."""


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def day_start(moment: datetime) -> datetime:
    return hour_start(moment).replace(hour=0)


def period_starts(now: datetime) -> dict[str, datetime]:
    """The UTC starts of today, this week (Monday) and this month, as the ledger summaries' UTC days."""
    today = day_start(now)
    return {
        "today": today,
        "week": today - timedelta(days=today.weekday()),
        "month": today.replace(day=1),
    }


@dataclass(frozen=True)
class Bar:
    """One bucket of a chart: its start and the exact total of each stacked part (sorted by name)."""

    start: datetime
    parts: tuple[tuple[str, Decimal], ...]

    @property
    def total(self) -> Decimal:
        total = Decimal(0)
        for _name, value in self.parts:
            total = add(total, value)
        return total


class SpendSeries:
    """Charges bucketed by UTC hour and day. Feed events with :meth:`add`; ask with :meth:`bars` and
    :meth:`totals_since`. Every event must be added at most once (the caller tracks what it has read)."""

    def __init__(self) -> None:
        self.hours: dict[datetime, dict[Key, Decimal]] = {}
        self.days: dict[datetime, dict[Key, Decimal]] = {}

    def add(self, event: LedgerEvent, now: datetime) -> bool:
        """Count ``event`` if it is a charge inside the retention at ``now``; returns whether it counted.
        Events older than the oldest day bucket are ignored (the first build stops reading there)."""
        if not event.is_charge:
            return False
        moment = event.time
        if moment < self.oldest_day(now):
            return False
        key = (event.agent_id, event.resource_type, event.currency)
        for buckets, start in ((self.days, day_start(moment)), (self.hours, hour_start(moment))):
            bucket = buckets.setdefault(start, {})
            bucket[key] = add(bucket.get(key, Decimal(0)), event.cost)
        return True

    @staticmethod
    def oldest_day(now: datetime) -> datetime:
        return day_start(now) - timedelta(days=DAYS - 1)

    def trim(self, now: datetime) -> None:
        """Drop buckets older than the retention."""
        oldest_hour = hour_start(now) - timedelta(hours=HOURS - 1)
        for start in [s for s in self.hours if s < oldest_hour]:
            del self.hours[start]
        oldest_day = self.oldest_day(now)
        for start in [s for s in self.days if s < oldest_day]:
            del self.days[start]

    def totals_since(
        self, start: datetime, agents: Collection[str] | None = None, by: Group | None = None
    ) -> dict[tuple[str, str], Decimal]:
        """Exact spend from ``start`` (a UTC day start within the retention) to now, per ``(group,
        currency)``; the group is the agent, the resource, or "" (``by=None``: per currency only).
        ``agents`` limits it to those agents (None: all)."""
        totals: dict[tuple[str, str], Decimal] = {}
        for day, bucket in self.days.items():
            if day < start:
                continue
            for (agent, resource, currency), cost in bucket.items():
                if agents is not None and agent not in agents:
                    continue
                group = agent if by == "agent" else resource if by == "resource" else ""
                totals[(group, currency)] = add(totals.get((group, currency), Decimal(0)), cost)
        return totals

    def bars(
        self,
        granularity: Granularity,
        by: Group,
        currency: str,
        now: datetime,
        agents: Collection[str] | None = None,
        count: int | None = None,
    ) -> list[Bar]:
        """One bar per bucket (oldest first, empty buckets included) over the last ``count`` hours or days
        ending with the current one, stacked by agent or resource, in ``currency``."""
        if granularity == "hour":
            step, buckets, last = timedelta(hours=1), self.hours, hour_start(now)
            count = HOURS if count is None else min(count, HOURS)
        else:
            step, buckets, last = timedelta(days=1), self.days, day_start(now)
            count = DAYS if count is None else min(count, DAYS)
        bars = []
        for index in range(count - 1, -1, -1):
            start = last - step * index
            parts: dict[str, Decimal] = {}
            for (agent, resource, cur), cost in buckets.get(start, {}).items():
                if cur != currency or (agents is not None and agent not in agents):
                    continue
                name = agent if by == "agent" else resource
                parts[name] = add(parts.get(name, Decimal(0)), cost)
            bars.append(Bar(start, tuple(sorted(parts.items()))))
        return bars

    def currencies(self) -> list[str]:
        return sorted({key[2] for bucket in self.days.values() for key in bucket})


def used_fraction(status: PolicyStatus) -> Decimal:
    """How much of the limit is spent or held (1 = all of it; more when over). A zero limit counts as fully
    used."""
    share = status.used_share()
    if share is None:
        return Decimal(1) if status.used() <= 0 else Decimal("Infinity")
    return share


def nearest_limits(statuses: Iterable[PolicyStatus], count: int) -> list[PolicyStatus]:
    """The ``count`` policies nearest their limits (largest share used first; ties by policy id), each
    policy once."""
    unique: dict[str, PolicyStatus] = {}
    for status in statuses:
        unique.setdefault(status.policy.policy_id, status)
    ranked = sorted(unique.values(), key=lambda s: (-used_fraction(s), s.policy.policy_id))
    return ranked[: max(count, 0)]


def scaled(values: Sequence[Decimal], height: int) -> list[int]:
    """Pixel heights of ``values`` in a chart ``height`` pixels tall, scaled to the largest (exact
    arithmetic; geometry only, never shown as money)."""
    top = max(values, default=Decimal(0))
    if top <= 0:
        return [0 for _ in values]
    return [int(value * height / top) for value in values]


__all__ = [
    "Bar",
    "SpendSeries",
    "day_start",
    "hour_start",
    "nearest_limits",
    "period_starts",
    "scaled",
    "used_fraction",
]
