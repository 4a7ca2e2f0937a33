"""Live budget aggregates, kept incrementally from the ledger's entries (pure: no I/O, the clock passed in).

:class:`BudgetState` is fed every ledger entry once, in file order (:meth:`BudgetState.apply`), and
answers "how much has this agent's subtree spent in this window" and "how much does it hold right now" in
time that does not grow with the ledger:

- **Spend** is kept per (agent, currency) as a cumulative series at one-minute resolution, so the spend in
  any window is two binary searches and a subtraction, O(log minutes-with-spend). Every charge is added to
  its agent *and every ancestor* (a child's spend counts against its ancestors' budgets).
- **Effective time.** A charge counts at ``max(its timestamp, the effective time of the entry before it)``:
  a backdated timestamp cannot move spend out of the current window.
- **Rolling windows** start inside a minute; the whole boundary minute is counted. The error is on the safe
  side: spend is never under-counted, so a budget can only be enforced slightly early, never late.
- **Exact sums.** Spend and holds are added and subtracted in Caracal's money context
  (:mod:`caracal.core.money`): never rounded; a sum that could not be exact is refused.
- **Holds** are open from their ``hold`` entry until a ``release`` entry for the same id. A hold whose
  expiry means ``release`` (the default) counts only until its ``expires_at`` (a crashed worker cannot pin
  a budget); one whose expiry means ``charge`` keeps counting until it is closed, because expiring it
  charges it (freeing the money first and charging it later would let it be spent twice). They are
  indexed per subtree member, so summing them costs O(live holds of that subtree).
- **Clock skew cannot stretch a hold.** A hold stamped later than the reader's clock when the reader
  first folds it in (written by a clock that ran ahead) expires one TTL (``expires_at - timestamp``)
  after that moment instead of at its own ``expires_at``: a clock a day ahead cannot pin a budget for a
  day. The reader's moment is passed in (``seen_at``), so the state stays pure.
- **Idempotency keys are kept for a window** (``idempotency_window``, 7 days by default; ``[metering]
  idempotency_window`` in ``config.toml``). A key is remembered with the first charge recorded with it
  until the ledger's effective time (which never goes backwards) is a whole window past that charge; then
  it is forgotten, and a charge with the same key is a *new* charge. This is the contract: a retry must
  come within the window. Keys are kept in a deque ordered by effective time and pruned as entries are
  applied, so the memory they take (and the snapshot's size) is bounded by the charges of one window, not
  by the ledger's history.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, DecimalException
from typing import Any

from caracal.core.events import LedgerEvent
from caracal.core.money import MONEY_CONTEXT, add, subtract
from caracal.core.validation import format_timestamp, parse_timestamp
from caracal.exceptions import LedgerCorruptError

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ZERO = Decimal(0)

DEFAULT_IDEMPOTENCY_WINDOW = timedelta(days=7)
"""How long an idempotency key is remembered after its charge (see the module docstring)."""


def minute_of(moment: datetime) -> int:
    """Whole minutes since the Unix epoch (floor), for an aware datetime."""
    return int((moment - _EPOCH).total_seconds() // 60)


@dataclass
class SpendSeries:
    """Cumulative spend over time at one-minute resolution: ``totals[i]`` is all spend up to and including
    minute ``minutes[i]``; minutes strictly increase."""

    minutes: list[int] = field(default_factory=list)
    totals: list[Decimal] = field(default_factory=list)

    def add(self, minute: int, amount: Decimal) -> None:
        if self.minutes and minute <= self.minutes[-1]:
            self.totals[-1] = add(self.totals[-1], amount)  # the same minute, or (clamped) earlier: counts
            return  # at the latest minute
        self.minutes.append(minute)
        self.totals.append(add(self.totals[-1] if self.totals else _ZERO, amount))

    def total(self) -> Decimal:
        return self.totals[-1] if self.totals else _ZERO

    def before(self, minute: int) -> Decimal:
        """All spend in minutes strictly before ``minute``."""
        index = bisect.bisect_left(self.minutes, minute)
        return self.totals[index - 1] if index else _ZERO

    def since(self, minute: int | None) -> Decimal:
        """All spend from ``minute`` (inclusive) on; everything when None."""
        return self.total() if minute is None else subtract(self.total(), self.before(minute))


@dataclass(frozen=True)
class OpenHold:
    hold_id: str
    agent_id: str
    amount: Decimal
    currency: str
    expires_at: datetime
    members: tuple[str, ...]
    """The agent and its ancestors: every subtree whose budgets this hold counts against."""
    charge_on_expiry: bool = False
    """Its expiry means "charge what is left of it" (``on_expiry: charge``), not "release it"."""

    def counts_at(self, now: datetime) -> bool:
        """Whether the hold still reserves money at ``now`` (if open): until its expiry, or, when its expiry
        means charge, until it is closed."""
        return self.charge_on_expiry or self.expires_at > now


class BudgetState:
    """Spend and holds per agent subtree, updated one ledger entry at a time.

    ``chain_of(agent_id)`` returns the agent followed by its ancestors (nearest first); it comes from the
    identity registry and is called once per entry. ``idempotency_window`` (more than zero) is how long a
    key is remembered, measured on the ledger's effective time (see the module docstring).
    """

    def __init__(
        self,
        chain_of: Callable[[str], tuple[str, ...]],
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
    ):
        if idempotency_window <= timedelta(0):
            raise ValueError(f"the idempotency window must be more than 0, got {idempotency_window}")
        self._chain_of = chain_of
        self.idempotency_window = idempotency_window
        self._spend: dict[tuple[str, str], SpendSeries] = {}
        self._holds: dict[str, OpenHold] = {}
        self._holds_by_member: dict[str, set[str]] = {}
        self._charged: dict[str, Decimal] = {}  # per hold: what has been charged against it
        self._by_key: dict[str, LedgerEvent] = {}  # idempotency key -> the first charge recorded with it
        # (effective time, key, event id) per remembered key, oldest first: the order keys are forgotten in
        self._key_times: deque[tuple[datetime, str, int]] = deque()
        self._key_when: dict[str, datetime] = {}  # idempotency key -> the effective time of its charge
        self._last_time: datetime | None = None  # the effective time of the last entry
        self._charge_expiries: list[tuple[datetime, str]] = []  # min-heap over charge-on-expiry holds
        self._release_expiries: list[tuple[datetime, str]] = []  # min-heap over the other open holds
        # What the open holds reserve, per (member, currency): each hold's amount less what was charged
        # against it (never below zero), summed over the holds in the member's subtree. A budget check
        # reads it in O(1) while no hold has expired unreleased (see ``held``).
        self._held: dict[tuple[str, str], Decimal] = {}
        self.last_event_id = 0
        self._last_minute = 0
        self._stamp: tuple[str, datetime, int] = ("", _EPOCH, 0)  # last timestamp text, its value, its minute
        self._expiry: tuple[str, datetime] = ("", _EPOCH)  # last hold's expires_at text and its value

    def apply(self, event: LedgerEvent, seen_at: datetime | None = None) -> None:
        """Fold one entry in; entries must come in ledger order, each exactly once. ``seen_at`` is the
        reader's clock as it reads the entry (None: trust the entry's own clock; see the module docstring
        on skew)."""
        if event.event_id != self.last_event_id + 1:
            raise LedgerCorruptError(
                f"budget state expected event {self.last_event_id + 1}, got {event.event_id}",
                event_id=event.event_id,
            )
        self.last_event_id = event.event_id
        if event.timestamp != self._stamp[0]:  # entries of one batch share their timestamp: parse it once
            moment = event.time
            self._stamp = (event.timestamp, moment, minute_of(moment))
        _text, moment, moment_minute = self._stamp
        effective = moment if self._last_time is None or moment > self._last_time else self._last_time
        self._last_time = effective
        self._forget_keys(effective)
        minute = max(moment_minute, self._last_minute)
        self._last_minute = minute
        kind = event.kind
        if kind is None or kind == "charge":
            for member in self._chain_of(event.agent_id):
                key = (member, event.currency)
                series = self._spend.get(key)
                if series is None:
                    series = self._spend[key] = SpendSeries()
                series.add(minute, event.cost)
            if event.hold_id is not None:
                hold = self._holds.get(event.hold_id)
                if hold is not None:
                    before = self._remaining(hold)
                    self._charged[event.hold_id] = add(self._charged.get(event.hold_id, _ZERO), event.cost)
                    self._reserve(hold, subtract(self._remaining(hold), before))
            key_ = event.idempotency_key
            if key_ is not None and key_ not in self._by_key:
                self._by_key[key_] = event
                self._key_when[key_] = effective
                self._key_times.append((effective, key_, event.event_id))
        elif kind == "hold":
            assert event.hold_id is not None and event.expires_at is not None  # checked by the event parser
            # A hold id repeated while open (only the plain ledger API can write one) replaces the earlier
            # hold; closing it first keeps the per-member index consistent with the open holds.
            self._close(event.hold_id)
            members = self._chain_of(event.agent_id)
            expiry = event.expires_at
            if expiry != self._expiry[0]:  # the holds of one batch share their expiry: parse it once
                self._expiry = (expiry, parse_timestamp(expiry, "expires_at", LedgerCorruptError))
            expires_at = self._expiry[1]
            if seen_at is not None:
                expires_at = unskewed_expiry(moment, expires_at, seen_at)
            hold = OpenHold(
                event.hold_id,
                event.agent_id,
                event.cost,
                event.currency,
                expires_at,
                members,
                event.on_expiry == "charge",
            )
            self._open(hold)
        elif kind == "release":
            assert event.hold_id is not None
            self._close(event.hold_id)

    def to_snapshot(self) -> dict[str, Any]:
        """Everything the state holds, JSON-ready (Decimals as exact strings), to resume without a replay."""
        return {
            "last_event_id": self.last_event_id,
            "last_minute": self._last_minute,
            "last_time": None if self._last_time is None else format_timestamp(self._last_time),
            "spend": [
                [agent, currency, series.minutes, [str(total) for total in series.totals]]
                for (agent, currency), series in self._spend.items()
            ],
            "holds": [
                [
                    h.hold_id,
                    h.agent_id,
                    str(h.amount),
                    h.currency,
                    format_timestamp(h.expires_at),
                    list(h.members),
                    "charge" if h.charge_on_expiry else "release",
                ]
                for h in self._holds.values()
            ],
            "charged": {hold_id: str(amount) for hold_id, amount in self._charged.items()},
            # Only the keys still remembered (pruned as entries are applied): one window's worth at most.
            "keys": [
                [format_timestamp(when), self._by_key[key].to_dict()] for when, key, _ in self._key_times
            ],
        }

    @classmethod
    def from_snapshot(
        cls,
        data: Any,
        chain_of: Callable[[str], tuple[str, ...]],
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> BudgetState:
        """Rebuild a state saved by :meth:`to_snapshot`; raises ValueError/KeyError/TypeError if malformed.

        Keys older than ``idempotency_window`` (which may be shorter than when the snapshot was saved) are
        dropped as it loads."""
        state = cls(chain_of, idempotency_window)
        state.last_event_id = int(data["last_event_id"])
        state._last_minute = int(data["last_minute"])
        last_time = data["last_time"]
        state._last_time = None if last_time is None else parse_timestamp(last_time, "last_time", ValueError)
        for agent, currency, minutes, totals in data["spend"]:
            if len(minutes) != len(totals) or minutes != sorted(set(minutes)):
                raise ValueError("a spend series in the snapshot is not in order")
            state._spend[(agent, currency)] = SpendSeries(list(minutes), [Decimal(t) for t in totals])
        for hold_id, agent, amount, currency, expires, members, *on_expiry in data["holds"]:
            hold = OpenHold(
                hold_id, agent, Decimal(amount), currency, parse_timestamp(expires, "expires_at", ValueError),
                tuple(members), on_expiry == ["charge"],
            )  # fmt: skip
            state._open(hold)
        state._charged = {hold_id: Decimal(amount) for hold_id, amount in data["charged"].items()}
        state._held = {}
        for hold in state._holds.values():
            state._reserve(hold, state._remaining(hold))
        previous: datetime | None = None
        for when, record in data["keys"]:
            moment = parse_timestamp(when, "key time", ValueError)
            event = LedgerEvent.from_dict(record)
            key = event.idempotency_key
            if key is None or key in state._by_key or (previous is not None and moment < previous):
                raise ValueError("the idempotency keys in the snapshot are not one per key, in time order")
            previous = moment
            state._by_key[key] = event
            state._key_when[key] = moment
            state._key_times.append((moment, key, event.event_id))
        if state._last_time is not None:
            state._forget_keys(state._last_time)
        return state

    def apply_all(self, events: Iterable[LedgerEvent], seen_at: datetime | None = None) -> None:
        """:meth:`apply` each entry in order. A replay folds in millions, so the common entry (a plain
        charge: no kind, hold or idempotency key) is folded in here directly, with exactly :meth:`apply`'s
        steps; anything else goes through :meth:`apply`."""
        chain_of = self._chain_of
        chains: dict[str, tuple[str, ...]] = {}  # chain_of's answers, asked once per agent per call
        spend = self._spend
        money_add = MONEY_CONTEXT.add
        for event in events:
            if event.kind is not None or event.hold_id is not None or event.idempotency_key is not None:
                self.apply(event, seen_at)
                continue
            event_id = event.event_id
            if event_id != self.last_event_id + 1:
                raise LedgerCorruptError(
                    f"budget state expected event {self.last_event_id + 1}, got {event_id}",
                    event_id=event_id,
                )
            self.last_event_id = event_id
            stamp = self._stamp
            if event.timestamp != stamp[0]:  # entries of one batch share their timestamp: parse it once
                moment = event.time
                stamp = self._stamp = (event.timestamp, moment, minute_of(moment))
            moment = stamp[1]
            effective = self._last_time
            if effective is None or moment > effective:
                effective = self._last_time = moment
            if self._key_times:  # (with none remembered, forgetting has nothing to do)
                self._forget_keys(effective)
            minute = stamp[2]
            if minute < self._last_minute:
                minute = self._last_minute
            self._last_minute = minute
            cost = event.cost
            currency = event.currency
            chain = chains.get(event.agent_id)
            if chain is None:
                chain = chains[event.agent_id] = chain_of(event.agent_id)
            for member in chain:  # SpendSeries.add, inlined
                series = spend.get((member, currency))
                if series is None:
                    series = spend[(member, currency)] = SpendSeries()
                minutes, totals = series.minutes, series.totals
                if minutes and minute <= minutes[-1]:
                    before = totals[-1]
                    try:
                        totals[-1] = money_add(before, cost)
                    except DecimalException:
                        totals[-1] = add(before, cost)  # raises InexactMoneyError, as SpendSeries.add would
                else:
                    before = totals[-1] if totals else _ZERO
                    try:
                        total = money_add(before, cost)
                    except DecimalException:
                        total = add(before, cost)
                    minutes.append(minute)
                    totals.append(total)

    def _forget_keys(self, now: datetime) -> None:
        """Drop the keys whose charge is a whole window or more before ``now`` (effective time)."""
        cutoff = now - self.idempotency_window
        times = self._key_times
        while times and times[0][0] <= cutoff:
            _, key, event_id = times.popleft()
            earlier = self._by_key.get(key)
            if earlier is not None and earlier.event_id == event_id:
                del self._by_key[key]
                del self._key_when[key]

    def _open(self, hold: OpenHold) -> None:
        self._holds[hold.hold_id] = hold
        for member in hold.members:
            self._holds_by_member.setdefault(member, set()).add(hold.hold_id)
        self._reserve(hold, self._remaining(hold))
        charges = hold.charge_on_expiry
        heap = self._charge_expiries if charges else self._release_expiries
        heapq.heappush(heap, (hold.expires_at, hold.hold_id))
        if len(heap) > 2 * len(self._holds) + 64:
            # Closed holds leave their entries behind until they reach the top (where they are popped),
            # which a replay never asks: rebuilt from the open holds whenever it has grown to twice their
            # number, the heap stays bounded by the open holds, not the ledger (amortized O(1)).
            heap[:] = [
                (h.expires_at, h.hold_id) for h in self._holds.values() if h.charge_on_expiry == charges
            ]
            heapq.heapify(heap)

    def _remaining(self, hold: OpenHold) -> Decimal:
        """What the open ``hold`` reserves: its amount less what was charged against it, never below 0."""
        remaining = subtract(hold.amount, self._charged.get(hold.hold_id, _ZERO))
        return remaining if remaining > 0 else _ZERO

    def _reserve(self, hold: OpenHold, change: Decimal) -> None:
        """Add ``change`` to what is held against each subtree ``hold`` counts in. A sum that comes back
        to zero is dropped, so an agent with nothing held reads exactly 0 again."""
        if not change:
            return
        held = self._held
        for member in hold.members:
            key = (member, hold.currency)
            total = add(held.get(key, _ZERO), change)
            if total:
                held[key] = total
            else:
                del held[key]

    def _close(self, hold_id: str) -> None:
        hold = self._holds.get(hold_id)
        if hold is None:
            self._charged.pop(hold_id, None)
            return
        self._reserve(hold, self._remaining(hold).copy_negate())
        del self._holds[hold_id]
        self._charged.pop(hold_id, None)
        for member in hold.members:
            ids = self._holds_by_member.get(member)
            if ids is not None:
                ids.discard(hold_id)
                if not ids:
                    del self._holds_by_member[member]

    # ------------------------------------------------------------------ queries

    def spent(
        self, agent_id: str, currency: str, since: datetime | None, *, inclusive_minute: bool
    ) -> Decimal:
        """Spend of the agent's subtree in ``currency`` from ``since`` on (all time when None).

        ``inclusive_minute`` counts the whole minute ``since`` falls in (rolling windows: the safe side);
        calendar windows start on a minute boundary, where both readings agree.
        """
        series = self._spend.get((agent_id, currency))
        if series is None:
            return _ZERO
        if since is None:
            return series.total()
        minute = minute_of(since)
        if not inclusive_minute and (since - _EPOCH).total_seconds() % 60:
            minute += 1
        return series.since(minute)

    def held(self, agent_id: str, currency: str, now: datetime) -> Decimal:
        """What live holds (unreleased, and unexpired unless their expiry means charge) against the agent's
        subtree reserve in ``currency``.

        A hold counts for its amount less what has already been charged against it (the charged part is
        counted as spend), never below zero.

        O(1) from the running sums while no open hold has passed an expiry that releases it (the usual
        case: the server releases expired holds as they expire); otherwise the subtree's holds are summed
        one by one, leaving out those.
        """
        if not self._release_due(now):
            return self._held.get((agent_id, currency), _ZERO)
        total = _ZERO
        for hold_id in self._holds_by_member.get(agent_id, ()):
            hold = self._holds[hold_id]
            if hold.currency == currency and hold.counts_at(now):
                total = add(total, self._remaining(hold))
        return total

    def charge_with_key(self, idempotency_key: str, now: datetime | None = None) -> LedgerEvent | None:
        """The charge first recorded with this idempotency key within the window, if any.

        ``now`` is when a new charge would be recorded: a key whose charge is a whole window or more before
        ``max(now, the ledger's effective time)`` (the new charge's effective time) is forgotten, so a
        retry that late is a new charge. None: measured on the ledger's effective time alone.
        """
        earlier = self._by_key.get(idempotency_key)
        if earlier is None:
            return None
        moment = self._last_time
        if now is not None and (moment is None or now > moment):
            moment = now
        if moment is not None and self._key_when[idempotency_key] <= moment - self.idempotency_window:
            return None
        return earlier

    @property
    def idempotency_key_count(self) -> int:
        """How many idempotency keys are remembered (at most those of one window)."""
        return len(self._by_key)

    def hold(self, hold_id: str) -> OpenHold | None:
        """The open hold with this id (expired or not), or None if it was released or never existed."""
        return self._holds.get(hold_id)

    def charged_against(self, hold_id: str) -> Decimal:
        return self._charged.get(hold_id, _ZERO)

    @property
    def open_hold_count(self) -> int:
        """Holds not yet closed by a release entry (expired ones included until their release is written)."""
        return len(self._holds)

    def expired_holds(self, now: datetime) -> list[OpenHold]:
        """Open holds whose expiry has passed (``expire`` closes them on record: a release, or for a
        charge-on-expiry hold a charge of what is left of it and a release)."""
        return [hold for hold in self._holds.values() if hold.expires_at <= now]

    def charge_due(self, now: datetime) -> bool:
        """Whether an open charge-on-expiry hold has expired (it still reserves its money, and must be
        charged and closed). Cheap (a heap), so every group of writes can ask."""
        return self._expired_first(self._charge_expiries, True, now)

    def _release_due(self, now: datetime) -> bool:
        """Whether an open hold whose expiry releases it has expired (it no longer reserves its money,
        though it is still open until its release is written)."""
        return self._expired_first(self._release_expiries, False, now)

    def _expired_first(self, heap: list[tuple[datetime, str]], charges: bool, now: datetime) -> bool:
        """Whether the earliest open hold of ``heap`` (those whose ``charge_on_expiry`` is ``charges``) has
        expired at ``now``; entries of holds closed (or replaced) since they were pushed are popped."""
        while heap:
            expires_at, hold_id = heap[0]
            hold = self._holds.get(hold_id)
            if hold is not None and hold.charge_on_expiry == charges and hold.expires_at == expires_at:
                return expires_at <= now
            heapq.heappop(heap)
        return False

    def open_holds(self, agent_id: str) -> list[OpenHold]:
        return [self._holds[h] for h in sorted(self._holds_by_member.get(agent_id, ()))]


def unskewed_expiry(recorded: datetime, expires_at: datetime, seen_at: datetime) -> datetime:
    """When a hold recorded at ``recorded`` (by its writer's clock) and first seen by this reader at
    ``seen_at`` stops counting: its ``expires_at``, but never later than one TTL after the reader saw it.

    A writer whose clock ran ahead stamps both ``recorded`` and ``expires_at`` ahead; the difference (the
    TTL) is still right, so it is measured from ``seen_at`` instead. A hold the reader sees after it was
    recorded (the normal case, or a replay) keeps its own ``expires_at``, which is earlier.
    """
    if recorded <= seen_at:
        return expires_at
    return min(expires_at, seen_at + max(expires_at - recorded, timedelta(0)))
