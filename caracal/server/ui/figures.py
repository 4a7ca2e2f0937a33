"""What the dashboard shows, computed from the same objects the REST API answers from.

- Budget gauges: :meth:`Enforcer.status` (``GET /agents/{agent}/budget``).
- Spend today / this week / this month and spend over time: a :class:`SpendSeries` built once per process
  by reading the ledger *backwards* from its end to the oldest day kept (32 days), then updated from the
  entries appended since (a :class:`LedgerTail`), so a poll never re-reads the ledger. The totals equal
  ``GET /ledger/summary?since=<UTC day>`` (charges only, exact Decimals).
- Ledger page: newest first, a page at a time, from a position cursor (:meth:`LedgerReader.events_before`);
  a sparse filter scans at most :data:`SCAN_LIMIT` entries per request and says where it stopped.
- Checkpoint, inclusion proof, verification: :mod:`caracal.server.api`'s own helpers.

Agent keys see their agent and its descendants only (:func:`visible_agents`), as the API allows.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from caracal.core.apikeys import Principal
from caracal.core.decisions import PolicyStatus
from caracal.core.denials import DenialRecord
from caracal.core.events import LedgerEvent
from caracal.core.identity import Agent
from caracal.core.ledger_read import LedgerReader, LedgerTail
from caracal.core.spend_series import SpendSeries, nearest_limits, period_starts
from caracal.exceptions import LedgerVerificationError
from caracal.server.service import Service
from caracal.server.ui.session import shared_state
from caracal.server.verification import genuine, verify_and_record

PAGE_SIZE = 50
SCAN_LIMIT = 20_000
"""Entries a ledger page reads at most per request when its filters match few of them."""
_BACKWARD_BATCH = 2_000
DENIALS_WINDOW = timedelta(hours=24)
"""The denials shown: the last 24 hours, as ``GET /denials`` by default."""


def visible_agents(service: Service, principal: Principal) -> list[Agent]:
    """The agents a principal may read: all for the admin; an agent key's agent and its descendants."""
    agents = service.home.agents
    if principal.is_admin:
        return agents.list()
    assert principal.agent_id is not None
    return [agents.get(principal.agent_id), *agents.descendants(principal.agent_id)]


class LiveSeries:
    """The process's :class:`SpendSeries`, kept up to date from the ledger (thread-safe)."""

    def __init__(self) -> None:
        self.series = SpendSeries()
        self._tail: LedgerTail | None = None
        self._lock = threading.Lock()

    def refresh(self, service: Service) -> SpendSeries:
        with self._lock:
            now = service.home.now()
            if self._tail is None:
                tail = LedgerTail(service.home.ledger, from_end=True)
                self._build(service, tail.offset, now)
                self._tail = tail
            for event in self._tail.poll():
                self.series.add(event, now)
            self.series.trim(now)
            return self.series

    def _build(self, service: Service, end: int, now: datetime) -> None:
        """Read backwards from ``end`` until the entries are older than the oldest day bucket (an hour of
        slack for writers whose clocks differ)."""
        reader = LedgerReader(service.home.ledger)
        oldest = SpendSeries.oldest_day(now)
        position: int | None = end
        while position:
            page, _total = reader.events_before(position, _BACKWARD_BATCH)
            if not page:
                break
            for start, event in page:
                self.series.add(event, now)
                position = start
            if page[-1][1].time.timestamp() < oldest.timestamp() - 3600:
                break


@dataclass
class Overview:
    now: datetime
    periods: dict[str, dict[str, Decimal]]
    """``today``/``week``/``month`` → currency → spend."""
    by_agent: list[tuple[str, str, Decimal, Decimal]]
    """(agent name, currency, today, this month)."""
    nearest: list[PolicyStatus]
    holds: list[Any]
    denials: list[DenialRecord]
    ledger: dict[str, Any]
    series: SpendSeries
    agent_names: dict[str, str]
    visible: set[str] = field(default_factory=set)


def statuses(service: Service, agents: Collection[Agent]) -> list[PolicyStatus]:
    """Each agent's own active policies' live status (what ``GET /agents/{agent}/budget`` returns for it)."""
    return service.enforcer.own_statuses(agent.agent_id for agent in agents)


def ledger_state(service: Service) -> dict[str, Any]:
    """Size, last signed checkpoint and last verification (sealed by this home's servers: an edited or
    forged record in the shared document is not shown). A ledger that failed verification still has its
    page (the size this process last trusted), which shows the failure."""
    try:
        size = service.enforcer.catch_up().last_event_id
    except LedgerVerificationError:
        size = service.enforcer.decided_state.last_event_id
    checkpoint = service.enforcer.writer.checkpoints.latest()
    return {
        "size": size,
        "checkpoint": checkpoint.to_dict() if checkpoint is not None else None,
        "last_verify": genuine(service, shared_state(service).get("last_verify")),
    }


def denials_since(service: Service, since: datetime, agent_ids: Collection[str] | None) -> list[DenialRecord]:
    """The home's denial log from ``since`` (what ``GET /denials`` answers), latest first."""
    return service.home.denials.recent(since, agent_ids)


def overview(service: Service, principal: Principal, live: LiveSeries) -> Overview:
    agents = visible_agents(service, principal)
    ids = {agent.agent_id for agent in agents}
    scope = None if principal.is_admin else ids
    series = live.refresh(service)
    now = service.home.now()
    starts = period_starts(now)
    periods = {
        name: {cur: total for (_g, cur), total in sorted(series.totals_since(start, scope).items())}
        for name, start in starts.items()
    }
    names = {agent.agent_id: agent.name for agent in agents}
    today = series.totals_since(starts["today"], scope, by="agent")
    month = series.totals_since(starts["month"], scope, by="agent")
    by_agent = sorted(
        (names.get(agent, agent), cur, today.get((agent, cur), Decimal(0)), total)
        for (agent, cur), total in month.items()
    )
    roots = [a.agent_id for a in agents if a.parent_id is None or a.parent_id not in ids]
    return Overview(
        now=now,
        periods=periods,
        by_agent=by_agent,
        nearest=nearest_limits(statuses(service, agents), 8),
        holds=service.enforcer.open_holds(roots),
        denials=denials_since(service, now - DENIALS_WINDOW, scope),
        ledger=ledger_state(service),
        series=series,
        agent_names=names,
        visible=ids,
    )


@dataclass
class LedgerPage:
    events: list[LedgerEvent]
    scanned: int
    next_before: int | None
    """The position to continue from (None: the start of the ledger was reached)."""
    total: int


def ledger_page(
    service: Service,
    agents: Collection[str] | None,
    resource: str | None,
    kind: str | None,
    since: datetime | None,
    until: datetime | None,
    before: int | None,
    size: int = PAGE_SIZE,
) -> LedgerPage:
    """Up to ``size`` matching entries, newest first, before position ``before``; reads at most
    :data:`SCAN_LIMIT` entries (then ``next_before`` says where to go on)."""
    reader = LedgerReader(service.home.ledger)
    found: list[LedgerEvent] = []
    scanned = 0
    position: int | None = before
    total = 0
    while len(found) < size and scanned < SCAN_LIMIT and position != 0:
        page, total = reader.events_before(position, min(_BACKWARD_BATCH, SCAN_LIMIT - scanned))
        if not page:
            position = 0
            break
        for start, event in page:
            scanned += 1
            position = start
            if _matches(event, agents, resource, kind, since, until):
                found.append(event)
                if len(found) == size:
                    break
        if since is not None and page[-1][1].time < since:
            position = 0  # older entries cannot match (writers' clocks agree to within the slack of a page)
    return LedgerPage(found, scanned, position or None, total)


def _matches(
    event: LedgerEvent,
    agents: Collection[str] | None,
    resource: str | None,
    kind: str | None,
    since: datetime | None,
    until: datetime | None,
) -> bool:
    if agents is not None and event.agent_id not in agents:
        return False
    if resource is not None and event.resource_type != resource:
        return False
    if kind is not None and (event.kind or "charge") != kind:
        return False
    if since is not None or until is not None:
        moment = event.time
        if (since is not None and moment < since) or (until is not None and moment > until):
            return False
    return True


class VerifyJob:
    """A verification started from the dashboard, run in a thread; its progress and result are kept in the
    home's ``dashboard`` document, so every server process shows them."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, service: Service) -> bool:
        """Start one unless one is running in this process; returns whether it started."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False

            def progress(done: int, total: int) -> None:
                _set_progress(service, {"state": "running", "done": done, "total": total})

            def run() -> None:
                try:
                    verify_and_record(service, progress, trigger="dashboard")
                except Exception as exc:  # reported on the page; the thread must not die silently
                    _set_progress(service, {"state": "failed", "error": str(exc)})
                else:
                    _set_progress(service, {"state": "done"})

            _set_progress(service, {"state": "running", "done": 0, "total": 0})
            self._thread = threading.Thread(target=run, name="caracal-ui-verify", daemon=True)
            self._thread.start()
            return True


def _set_progress(service: Service, progress: dict[str, Any]) -> None:
    with service.home.dashboard.transaction() as document:
        document["verify_progress"] = progress


def verify_progress(service: Service) -> dict[str, Any] | None:
    found = shared_state(service).get("verify_progress")
    return found if isinstance(found, dict) else None
