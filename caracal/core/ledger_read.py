"""Reading the ledger: streaming its events (:class:`LedgerReader`), filtering and summing them
(:class:`LedgerQuery`) and following what writers append (:class:`LedgerTail`), on any backend.

Readers never take the writers' lock: the ledger is append-only, so any prefix of complete lines is a
consistent view. Parsing is strict: a complete line that is not a valid event raises
:class:`LedgerCorruptError` naming it, never skipped (a skipped line would make money vanish from a sum).
``caracal.core.ledger`` re-exports these names (where code written for earlier versions imports them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from caracal.core.events import (
    LedgerEvent,
    complete_end,
    iter_lines,
    ledger_size,
    parse_line,
    read_last_lines,
)
from caracal.core.fileio import open_for_reading
from caracal.core.money import add
from caracal.core.store import LedgerStore
from caracal.core.validation import check_currency, parse_timestamp
from caracal.exceptions import LedgerCorruptError, LedgerError, LedgerReadError

__all__ = ["LedgerQuery", "LedgerReader", "LedgerTail", "SpendTotals", "query_bound"]


@dataclass
class SpendTotals:
    """Running totals for one group of events (an agent, a resource, a day) in one currency."""

    events: int = 0
    quantity: Decimal = field(default_factory=Decimal)
    cost: Decimal = field(default_factory=Decimal)

    def add(self, event: LedgerEvent) -> None:
        self.events += 1
        self.quantity = add(self.quantity, event.quantity)  # exact: never rounded (caracal.core.money)
        self.cost = add(self.cost, event.cost)


def query_bound(
    value: datetime | date | str | None,
    name: str,
    error: type[Exception] = LedgerReadError,
    *,
    end: bool = False,
) -> datetime | None:
    """A query bound as an aware UTC datetime; a bare date is the start (for ``end``, the end) of that day.
    ``error`` is raised for something that is not a time."""
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, datetime.max.time() if end else datetime.min.time())
    elif isinstance(value, str) and len(value.strip()) == 10:
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return query_bound(day, name, error, end=end)
    return parse_timestamp(value, name, error)


class LedgerReader:
    """Streams the events of a ledger, in order, with strict parsing.

    ``ledger`` is a ledger file's path, or a :class:`LedgerStore` (any backend). Reading never takes the
    writers' lock: the ledger is append-only, so any prefix of complete lines is a consistent view. Bytes
    after the last newline (a write in progress) are not read.
    """

    def __init__(self, ledger: str | os.PathLike[str] | LedgerStore):
        if isinstance(ledger, (str, os.PathLike)):
            self.store: LedgerStore | None = None
            self.ledger_path = Path(ledger)
        else:
            path = getattr(ledger, "path", None)  # a file store: read its file directly, as for a path
            self.store = None if path is not None else ledger
            self.ledger_path = Path(path) if path is not None else Path(ledger.location)

    def iter_events(self) -> Iterator[LedgerEvent]:
        """Every event, in order. Raises :class:`LedgerCorruptError` on the first line that does not parse."""
        for _offset, _number, event in self._scan(0, 0):
            yield event

    def __iter__(self) -> Iterator[LedgerEvent]:
        return self.iter_events()

    def last_events(self, count: int, end: int | None = None) -> list[LedgerEvent]:
        """The last ``count`` events (before byte offset ``end``, a line boundary, if given), reading only
        the end of the file."""
        if not isinstance(count, int) or count < 0:
            raise LedgerReadError(f"count must be a non-negative integer, got {count!r}")
        if self.store is not None:  # positions are event ids
            last = self.store.end() if end is None else end
            return [parse_line(line, 0) for _id, line in self.store.iter_lines(max(0, last - count), last)]
        handle = self._open()
        if handle is None:
            return []
        with handle:
            if end is None:
                end = complete_end(handle, os.fstat(handle.fileno()).st_size)
            lines = read_last_lines(handle, end, count)
        return [parse_line(line, 0) for _offset, line in lines]

    def events_before(self, end: int | None, count: int) -> tuple[list[tuple[int, LedgerEvent]], int]:
        """Up to ``count`` events that end at or before position ``end`` (None: the ledger's end), newest
        first, each with its start position, and the ledger's end position as it was read.

        A start position is what to pass as ``end`` to read on backwards (a byte offset in a file, an event
        id minus one in a store): paging a ledger newest first costs ``count`` lines per page, whatever
        its size."""
        if not isinstance(count, int) or count < 0:
            raise LedgerReadError(f"count must be a non-negative integer, got {count!r}")
        if self.store is not None:
            total = self.store.end()
            last = total if end is None else min(end, total)
            stored = self.store.iter_lines(max(0, last - count), last)
            found = [(position - 1, parse_line(line, 0)) for position, line in stored]
            return found[::-1], total
        handle = self._open()
        if handle is None:
            return [], 0
        with handle:
            total = complete_end(handle, os.fstat(handle.fileno()).st_size)
            last = total if end is None else min(end, total)
            lines = read_last_lines(handle, last, count)
        return [(offset, parse_line(line, 0)) for offset, line in reversed(lines)], total

    def _open(self) -> Any:
        try:
            return open_for_reading(self.ledger_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LedgerReadError(f"cannot read the ledger {self.ledger_path}: {exc.strerror}") from exc

    def _scan(self, start: int, line_number: int) -> Iterator[tuple[int, int, LedgerEvent]]:
        """Yield ``(end_position, line_number, event)`` for each complete line from ``start``."""
        if self.store is not None:
            for position, line in self.store.iter_lines(start):
                line_number += 1
                yield position, line_number, parse_line(line, line_number)
            return
        handle = self._open()
        if handle is None:
            return
        try:
            with handle:
                for offset, line in iter_lines(handle, start):
                    line_number += 1
                    yield offset + len(line) + 1, line_number, parse_line(line, line_number)
        except OSError as exc:
            raise LedgerReadError(f"cannot read the ledger {self.ledger_path}: {exc.strerror}") from exc


class LedgerQuery(LedgerReader):
    """Filters and sums over the ledger (the original Caracal API, plus summaries).

    Time bounds are inclusive; naive datetimes are UTC; a bare date as ``end_time`` means the end of that
    day. Sums are exact Decimals. Summing across currencies is refused rather than silently mixed.
    """

    def __init__(self, ledger: str | os.PathLike[str] | LedgerStore):
        """As :class:`LedgerReader`; a ledger *path* whose file does not exist yet is created empty (as
        Caracal Core v0.1's ``LedgerQuery`` did), so a query of a new install reads an empty ledger."""
        super().__init__(ledger)
        if self.store is None and not self.ledger_path.exists():
            try:
                self.ledger_path.touch(exist_ok=True)  # not its folder: a mistyped path fails here
            except OSError as exc:
                raise LedgerReadError(f"cannot create {self.ledger_path}: {exc.strerror or exc}") from exc

    def get_events(
        self,
        agent_id: str | None = None,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        resource_type: str | None = None,
        *,
        charges_only: bool = True,
    ) -> list[LedgerEvent]:
        """The charges that match every given filter; ``charges_only=False`` adds holds and releases.

        Charges only by default because v0.1 callers sum what this returns: holds and releases are not
        spend, and counting them gave several times the real spend. Summing the default result gives
        exactly :meth:`sum_spending`."""
        return list(
            self.iter_matching(agent_id, start_time, end_time, resource_type, charges_only=charges_only)
        )

    def iter_matching(
        self,
        agent_id: str | None = None,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        resource_type: str | None = None,
        *,
        charges_only: bool = True,
    ) -> Iterator[LedgerEvent]:
        """Stream the events that match every given filter; only charges (spend) unless ``charges_only``
        is False: holds and releases are not spend, so sums built on this must never see them."""
        start = query_bound(start_time, "start_time")
        end = query_bound(end_time, "end_time", end=True)
        if start is not None and end is not None and start > end:
            raise LedgerReadError(f"start_time {start.isoformat()} is after end_time {end.isoformat()}")
        for event in self.iter_events():
            if charges_only and not event.is_charge:
                continue
            if agent_id is not None and event.agent_id != agent_id:
                continue
            if resource_type is not None and event.resource_type != resource_type:
                continue
            if start is not None or end is not None:
                moment = event.time
                if (start is not None and moment < start) or (end is not None and moment > end):
                    continue
            yield event

    def sum_spending(
        self,
        agent_id: str,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        currency: str | None = None,
    ) -> Decimal:
        """Total cost of ``agent_id``'s events in the window (inclusive)."""
        totals = self.summarize("agent", agent_id=agent_id, start_time=start_time, end_time=end_time)
        return _single_currency(totals, currency).get(agent_id, SpendTotals()).cost

    def aggregate_by_agent(
        self,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        currency: str | None = None,
    ) -> dict[str, Decimal]:
        """Total cost per agent in the window (inclusive)."""
        totals = self.summarize("agent", start_time=start_time, end_time=end_time)
        return {key: value.cost for key, value in _single_currency(totals, currency).items()}

    def summary_by_resource(self, **filters: Any) -> dict[tuple[str, str], SpendTotals]:
        """Totals per ``(resource_type, currency)``; accepts :meth:`get_events`'s filters."""
        return self.summarize("resource", **filters)

    def summary_by_day(self, **filters: Any) -> dict[tuple[str, str], SpendTotals]:
        """Totals per ``(UTC day as YYYY-MM-DD, currency)``; accepts :meth:`get_events`'s filters."""
        return self.summarize("day", **filters)

    def summarize(
        self,
        group_by: str,
        agent_id: str | None = None,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        resource_type: str | None = None,
    ) -> dict[tuple[str, str], SpendTotals]:
        """Totals per ``(key, currency)`` where key is the agent, resource or UTC day."""
        keys: dict[str, Callable[[LedgerEvent], str]] = {
            "agent": lambda e: e.agent_id,
            "resource": lambda e: e.resource_type,
            "day": lambda e: e.timestamp[:10] if e.timestamp.endswith("Z") else e.time.date().isoformat(),
        }
        if group_by not in keys:
            raise LedgerReadError(f"group_by must be one of {sorted(keys)}, got {group_by!r}")
        key_of = keys[group_by]
        totals: dict[tuple[str, str], SpendTotals] = {}
        for event in self.iter_matching(agent_id, start_time, end_time, resource_type):
            group = (key_of(event), event.currency)
            if group not in totals:
                totals[group] = SpendTotals()
            totals[group].add(event)
        return totals


def _single_currency(
    totals: dict[tuple[str, str], SpendTotals], currency: str | None
) -> dict[str, SpendTotals]:
    """Collapse ``(key, currency)`` totals to one currency, refusing to add different currencies."""
    currencies = {cur for _key, cur in totals}
    if currency is None:
        if len(currencies) > 1:
            raise LedgerError(
                f"the matching events are in several currencies ({', '.join(sorted(currencies))}); "
                f"pass currency= to choose one"
            )
    else:
        check_currency(currency, LedgerReadError)
    return {key: value for (key, cur), value in totals.items() if currency is None or cur == currency}


class LedgerTail(LedgerReader):
    """Follows a ledger as it grows: each :meth:`poll` returns only the events appended since the last one.

    Later parts keep live aggregates with it without ever re-reading the file. It checks that ids continue
    without a gap and that the file never shrinks; either would mean the ledger was rewritten, which is an
    error rather than something to paper over.
    """

    def __init__(self, ledger: str | os.PathLike[str] | LedgerStore, *, from_end: bool = False):
        super().__init__(ledger)
        self.offset = 0
        self.last_event_id = 0
        if from_end and self.store is not None:
            self.offset = self.last_event_id = self.store.end()
        elif from_end:
            handle = self._open()
            if handle is not None:
                with handle:
                    self.offset = complete_end(handle, os.fstat(handle.fileno()).st_size)
                    last = read_last_lines(handle, self.offset, 1)
                if last:
                    self.last_event_id = parse_line(last[0][1], 0).event_id

    def poll(self) -> list[LedgerEvent]:
        """Events appended since the previous call (complete lines only), in order."""
        size = ledger_size(self.ledger_path) if self.store is None else self.store.end()
        if size < self.offset:
            raise LedgerCorruptError(
                f"the ledger {self.ledger_path} shrank from {self.offset} to {size} bytes: it was truncated "
                f"or replaced"
            )
        if size == self.offset:
            return []  # the common case on a budget check: one stat, nothing to read
        events = []
        for end, number, event in self._scan(self.offset, self.last_event_id):
            if event.event_id != self.last_event_id + 1:
                raise LedgerCorruptError(
                    f"ledger line {number} holds event {event.event_id}, expected {self.last_event_id + 1}",
                    line_number=number,
                    event_id=event.event_id,
                )
            events.append(event)
            self.offset = end
            self.last_event_id = event.event_id
        return events

    def follow(self, interval: float = 0.5, stop: Callable[[], bool] | None = None) -> Iterator[LedgerEvent]:
        """Yield events as they are appended, polling every ``interval`` seconds until ``stop()`` is true."""
        while stop is None or not stop():
            batch = self.poll()
            yield from batch
            if not batch:
                time.sleep(interval)
