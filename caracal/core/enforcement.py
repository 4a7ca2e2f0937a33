"""Enforcement: check, reserve (hold), settle, release, expire; the one place where errors become "deny".

Every decision follows the same rule (:func:`caracal.core.decisions.evaluate`): for the agent and each of
its ancestors, for each active policy, ``spent in the window + live holds + amount <= limit``. Anything
that stops Caracal from proving that (a suspended agent, no active policy, a policy in another currency, an
unreadable ledger or one that fails verification, a lock timeout) is a denial with a reason a person can
act on.

:class:`Enforcer` makes check-and-reserve one atomic step with respect to every other thread and process:
it runs inside :meth:`LedgerWriter.transact_group`, under the ledger's exclusive lock, after folding in
every entry other writers appended (:class:`caracal.core.live.LiveBudget`, which checks each line it
reads), and the hold it records is on disk before the lock is released. Holds, settlements and releases
are ledger entries, so they survive restarts and every process sees the same holds.

**What a hold's expiry means** is chosen when it is taken (``on_expiry``): ``release`` (the default: the
holder crashed before spending; the money is freed) or ``charge`` (the money may have been spent, e.g. a
gateway call that may have reached the provider: the hold keeps counting after its expiry, and expiring it
records a charge of what is left of it on :data:`ESTIMATED_RESOURCE`, marked ``estimated``, plus the
release, in one append). Expired holds are closed by :meth:`Enforcer.expire` (the server runs it at start
and periodically) and, for charge-on-expiry holds, by *every* group of writes of any process
(:meth:`Enforcer.run_group`): such a hold ends billed as soon as anything writes to the ledger again.

**A settle above its hold** (usage beyond the worst case the hold was sized for) is recorded, because the
provider bills it, and flagged: ``over_hold`` in the charges' metadata, a WARNING log naming the agent,
the hold and both amounts, and the ``on_over_hold`` observer (the server counts it in a metric and can
suspend the agent: ``[holds] suspend_over_hold_factor``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

from caracal.core.budget import DEFAULT_IDEMPOTENCY_WINDOW, BudgetState, OpenHold
from caracal.core.decisions import (
    AgentLike,
    Decision,
    Directory,
    PolicyStatus,
    agent_name,
    describe_window,
    evaluate,
    policy_status,
)
from caracal.core.events import EXPIRY_MEANINGS
from caracal.core.ledger import LedgerEvent, LedgerWriter
from caracal.core.live import SNAPSHOT_EVERY, LiveBudget
from caracal.core.money import add, subtract
from caracal.core.validation import (
    check_currency,
    check_metadata,
    format_timestamp,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import (
    AgentNotFoundError,
    BudgetExceededError,
    CaracalError,
    HoldNotFoundError,
    InvalidAmountError,
    LedgerVerificationError,
)

HOLD_RESOURCE = "caracal.hold"
ESTIMATED_RESOURCE = "caracal.estimated.expired_hold"
"""The resource of the charge that closes an expired charge-on-expiry hold: one unit, costing what was
left of the hold (its bound, marked ``estimated`` in the metadata), so ledger summaries show it apart."""
logger = logging.getLogger("caracal.enforcement")
DEFAULT_TTL = timedelta(minutes=5)
MAX_TTL = timedelta(days=7)


T = TypeVar("T")


@dataclass(frozen=True)
class Operation(Generic[T]):
    """One atomic step against the ledger: ``decide()`` runs under the exclusive lock (after catching up)
    and returns the entries to append; ``finish(events)`` turns what was appended into the caller's result
    (or raises, e.g. :class:`BudgetExceededError` for a denied reserve).

    Operations run alone (:meth:`Enforcer.run`) or many under one lock hold and one fsync
    (:meth:`Enforcer.run_group`, what the server's group commit uses); the outcome of each is the same.
    """

    decide: Callable[[], list[Mapping[str, Any]] | None]
    finish: Callable[[list[LedgerEvent]], T]
    closes_expired: bool = False
    """True for :meth:`Enforcer.expire`'s operation: a group that starts with it skips the expiry sweep
    every other group runs first (it would find nothing to do)."""


@dataclass(frozen=True)
class Hold:
    """A reservation: ``amount`` is set aside for ``agent_id`` until settled, released or ``expires_at``."""

    hold_id: str
    agent_id: str
    amount: Decimal
    currency: str
    expires_at: datetime
    decision: Decision
    on_expiry: str = "release"
    """What its expiry means: ``release`` or ``charge`` (see the module docstring)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "agent_id": self.agent_id,
            "amount": str(self.amount),
            "currency": self.currency,
            "expires_at": format_timestamp(self.expires_at),
            "on_expiry": self.on_expiry,
            "decision": self.decision.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hold:
        return cls(
            str(data["hold_id"]),
            str(data["agent_id"]),
            Decimal(data["amount"]),
            str(data["currency"]),
            parse_timestamp(data["expires_at"], "expires_at", InvalidAmountError),
            Decision.from_dict(data["decision"]),
            str(data.get("on_expiry", "release")),
        )


@dataclass(frozen=True)
class Settlement:
    """What a settle recorded: the charges, and whether they exceeded the hold (the money was spent, so it
    is recorded anyway, and flagged) or came after the hold expired."""

    hold_id: str
    charges: list[LedgerEvent]
    total: Decimal
    held: Decimal
    over_hold: bool
    after_expiry: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "charges": [event.to_dict() for event in self.charges],
            "total": str(self.total),
            "held": str(self.held),
            "over_hold": self.over_hold,
            "after_expiry": self.after_expiry,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settlement:
        return cls(
            str(data["hold_id"]),
            [LedgerEvent.from_dict(event) for event in data["charges"]],
            Decimal(data["total"]),
            Decimal(data["held"]),
            bool(data["over_hold"]),
            bool(data["after_expiry"]),
        )


@dataclass(frozen=True)
class OverHold:
    """Money charged against a hold beyond its amount (reported to :class:`Enforcer`'s ``on_over_hold``)."""

    agent_id: str
    hold_id: str
    held: Decimal
    charged: Decimal
    currency: str


class Enforcer:
    """Check, reserve, settle and release against one ledger, atomically across threads and processes.

    ``on_over_hold`` (optional) is called after a settle or charge that took a hold's charges past its
    amount has been recorded; its errors are logged, never raised (the charge is on record either way).
    ``on_denial`` (optional) is called with the :class:`Decision` of every denied reserve (the home logs
    it: :mod:`caracal.storage.denials`), likewise never raising; a check is a question, not an action, and
    is not reported. ``idempotency_window``: how long idempotency keys are remembered (see
    :mod:`caracal.core.budget`).
    """

    def __init__(
        self,
        writer: LedgerWriter,
        directory: Directory,
        clock: Callable[[], datetime] | None = None,
        *,
        on_over_hold: Callable[[OverHold], None] | None = None,
        on_denial: Callable[[Decision], None] | None = None,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        replay_wait: float | None = None,
    ):
        self.writer = writer
        self.directory = directory
        self.on_over_hold = on_over_hold
        self.on_denial = on_denial
        self._clock = clock or writer.now  # the store's clock: the database's on PostgreSQL
        self.live = LiveBudget(writer, directory.chain, self.now, idempotency_window, replay_wait)
        self._state_lock = self.live.lock

    # ------------------------------------------------------------------ state

    @property
    def snapshot_path(self) -> Path | None:
        """The sealed budget snapshot's file (beside the ledger; None on a backend without files)."""
        return self.live.snapshot_path

    def catch_up(self) -> BudgetState:
        """Fold in every entry appended since the last call (by any process), each checked; returns the
        state. Raises :class:`LedgerVerificationError` for good once the ledger failed a check."""
        return self.live.catch_up()

    @property
    def distrusted(self) -> LedgerVerificationError | None:
        """Why every decision is denied for good (None while the ledger checks out)."""
        return self.live.distrusted

    def distrust(self, exc: LedgerVerificationError) -> None:
        """Deny every later decision with ``exc``, for good (a verification of the whole ledger failed)."""
        self.live.distrust(exc)

    def save_snapshot(self) -> None:
        """Save the live state (sealed) so the next process resumes from here instead of replaying."""
        self.live.save_snapshot()

    @property
    def decided_state(self) -> BudgetState:
        """The state a decision reads. Decisions run only inside :meth:`run_group`, under the ledger's lock,
        after the group folded in every other writer's entries (``caught_up``) and with every earlier
        decision of the group staged: it is current without another look at the file."""
        return self.live.state

    def close(self) -> None:
        """Save the state so the next process resumes from here. A ledger that cannot be read or fails
        verification by now keeps its last good snapshot: that is logged (every decision already raised
        why), not raised, so that closing (a server's shutdown, a ``finally: client.close()``) never
        replaces the error its caller is handling."""
        try:
            self.catch_up()
        except CaracalError as exc:
            logger.error("closing %s without saving the budget snapshot: %s", self.writer.location, exc)
            return
        self.save_snapshot()

    # ------------------------------------------------------------------ running operations

    def run(self, operation: Operation[T]) -> T:
        """Run one operation in its own lock hold and fsync (a group of one: see :meth:`run_group`)."""
        result = self.run_group([operation])[0]
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[no-any-return]

    def run_group(self, operations: Sequence[Operation[Any]]) -> list[Any]:
        """Run operations in order under one lock hold, with one write and one fsync for all (group commit).

        Each result is what :meth:`run` would return for that operation, or the exception it would raise
        (returned, not raised: one failing operation does not affect the others). Later operations see the
        entries of earlier ones, because each batch of entries is folded into the live state as soon as it
        has its ids (``staged``), before the write; if the write then fails, no entry of the group was
        acknowledged, every operation that appended gets the :class:`LedgerWriteError`, and the live state
        is rebuilt from the file (it had folded in entries the file does not hold).
        """
        if not operations:
            return []
        # Fold in what other processes appended so far *before* waiting for the ledger's lock, while another
        # process may hold it: under the lock (``caught_up``) only what was appended since is left to read,
        # so the lock is held for less time. The live state has its own lock and may be caught up at any
        # moment (a check does it without the ledger's lock). An error here is met again under the lock,
        # where it is handled; a verification failure is sticky, so nothing is decided on a ledger that
        # failed.
        with contextlib.suppress(CaracalError):
            self.live.catch_up()
        # First, under the same lock hold: bill expired charge-on-expiry holds (a heap peek when none is
        # due), so they end billed whichever process writes next (see the module docstring).
        swept = not operations[0].closes_expired
        decides = [op.decide for op in operations]
        if swept:
            decides.insert(0, self._sweep_decide)

        folded: list[bool] = []

        def staged(events: list[LedgerEvent]) -> None:
            folded.append(True)
            self.live.stage(events)

        try:
            outcomes = self.writer.transact_group(
                decides, staged, self.live.written, caught_up=self.live.catch_up
            )
        except CaracalError as exc:
            if folded:
                self.live.rebuild()
            return [exc] * len(operations)
        if swept:
            sweep = outcomes.pop(0)
            if isinstance(sweep, Exception):
                logger.warning("could not close expired holds: %s", sweep)
        results: list[Any] = []
        for operation, outcome in zip(operations, outcomes, strict=True):
            if isinstance(outcome, Exception):
                results.append(outcome)
                continue
            try:
                results.append(operation.finish(outcome))
            except Exception as exc:
                results.append(exc)
        return results

    # ------------------------------------------------------------------ operations

    def check(self, agent: str, amount: object | None = None, currency: str = "USD") -> Decision:
        """Would ``amount`` be allowed now? (None: is any budget left?) Reserves nothing."""
        value = None if amount is None else _amount(amount, "amount")
        check_currency(currency, InvalidAmountError)
        agent_id = self.directory.agent_id(agent)
        with self._state_lock:
            return evaluate(self.directory, self.catch_up(), agent_id, value, currency, self.now())

    def status(self, agent: str) -> list[PolicyStatus]:
        """Every active policy over the agent (its own, then its ancestors'): spent, held, what remains."""
        agent_id = self.directory.agent_id(agent)
        with self._state_lock:
            state = self.catch_up()
            now = self.now()
            return [
                policy_status(policy, state, now)
                for _member, policies in self.directory.policies(self.directory.chain(agent_id))
                for policy in policies
            ]

    def own_statuses(self, agent_ids: Iterable[str]) -> list[PolicyStatus]:
        """Each agent's *own* active policies' status (what :meth:`status` lists for it, less its
        ancestors'), in the order given; an agent the directory does not know has none."""
        found: list[PolicyStatus] = []
        for agent_id in agent_ids:
            try:
                statuses = self.status(agent_id)
            except AgentNotFoundError:
                continue
            found.extend(s for s in statuses if s.policy.agent_id == agent_id)
        return found

    def reserve(
        self,
        agent: str,
        amount: object,
        currency: str = "USD",
        ttl: timedelta | float = DEFAULT_TTL,
        *,
        on_expiry: str = "release",
        metadata: Mapping[str, Any] | None = None,
    ) -> Hold:
        """Atomically check ``amount`` against every policy of the agent and its ancestors and hold it.

        ``on_expiry`` says what the hold's expiry means (``release`` or ``charge``: see the module
        docstring); ``metadata`` is recorded on the hold entry (e.g. what the amount bounds). Raises
        :class:`BudgetExceededError` (with the :class:`Decision`) when denied; nothing is held then.
        """
        return self.run(self.reserve_op(agent, amount, currency, ttl, on_expiry=on_expiry, metadata=metadata))

    def reserve_op(
        self,
        agent: str,
        amount: object,
        currency: str = "USD",
        ttl: timedelta | float = DEFAULT_TTL,
        *,
        on_expiry: str = "release",
        metadata: Mapping[str, Any] | None = None,
    ) -> Operation[Hold]:
        """:meth:`reserve` as an :class:`Operation` (input is validated now; the decision is taken when it
        runs)."""
        value = _amount(amount, "amount")
        check_currency(currency, InvalidAmountError)
        duration = parse_ttl(ttl)
        if on_expiry not in EXPIRY_MEANINGS:
            raise InvalidAmountError(f"on_expiry must be one of {sorted(EXPIRY_MEANINGS)}, got {on_expiry!r}")
        metadata = check_metadata(metadata, InvalidAmountError)  # bad metadata: a clear error, nothing held
        agent_id = self.directory.agent_id(agent)
        hold_id = f"hold-{uuid.uuid4()}"
        outcome: list[Decision] = []
        expires: list[datetime] = []

        def decide() -> list[Mapping[str, Any]] | None:
            with self._state_lock:
                now = self.now()
                decision = evaluate(self.directory, self.decided_state, agent_id, value, currency, now)
            outcome.append(decision)
            if not decision.allowed:
                return None
            expires.append(now + duration)
            return [
                {
                    "agent_id": agent_id,
                    "resource_type": HOLD_RESOURCE,
                    "quantity": Decimal(0),
                    "cost": value,
                    "currency": currency,
                    "kind": "hold",
                    "hold_id": hold_id,
                    "expires_at": now + duration,
                    "on_expiry": None if on_expiry == "release" else on_expiry,  # absent reads as release
                    "metadata": None if metadata is None else dict(metadata),
                    "timestamp": now,
                }
            ]

        def finish(_events: list[LedgerEvent]) -> Hold:
            decision = outcome[0]
            if not decision.allowed:
                self._denied(decision)
                raise BudgetExceededError(f"denied: {decision.reason}", decision=decision)
            return Hold(hold_id, agent_id, value, currency, expires[0], decision, on_expiry)

        return Operation(decide, finish)

    def settle(self, hold_id: str, charges: Iterable[Mapping[str, Any]]) -> Settlement:
        """Record the actual ``charges`` against a hold and close it, in one atomic append.

        Each charge is a mapping of ``resource_type``, ``quantity``, ``cost`` (and optionally ``metadata``,
        ``idempotency_key``), in the hold's currency. Charges above the hold are recorded (the money was
        spent) and flagged in the result and in each charge's metadata.
        """
        return self.run(self.settle_op(hold_id, charges))

    def settle_op(self, hold_id: str, charges: Iterable[Mapping[str, Any]]) -> Operation[Settlement]:
        """:meth:`settle` as an :class:`Operation`."""
        items = [dict(charge) for charge in charges]
        result: list[Settlement] = []

        def decide() -> list[Mapping[str, Any]]:
            hold, already, now = self._open_hold(hold_id)
            total = already
            entries: list[Mapping[str, Any]] = []
            for index, item in enumerate(items):
                unknown = set(item) - {"resource_type", "quantity", "cost", "metadata", "idempotency_key"}
                if unknown:
                    raise InvalidAmountError(f"charge {index} has unknown fields: {sorted(unknown)}")
                total = add(total, _amount(item.get("cost"), f"charge {index} cost"))
            over = total > hold.amount
            after_expiry = now >= hold.expires_at
            for item in items:
                metadata = _flagged(item.get("metadata"), over, after_expiry)
                entries.append(
                    {
                        "agent_id": hold.agent_id,
                        "resource_type": item.get("resource_type"),
                        "quantity": item.get("quantity"),
                        "cost": item.get("cost"),
                        "currency": hold.currency,
                        "metadata": metadata,
                        "hold_id": hold_id,
                        "idempotency_key": item.get("idempotency_key"),
                        "timestamp": now,
                    }
                )
            entries.append(_release(hold.agent_id, hold.currency, hold_id, now, "settled"))
            result.append(Settlement(hold_id, [], total, hold.amount, over, after_expiry))
            return entries

        def finish(events: list[LedgerEvent]) -> Settlement:
            settlement = replace(result[0], charges=[e for e in events if e.is_charge])
            if settlement.over_hold and events:
                self._report_over_hold(
                    events[0].agent_id, hold_id, settlement.held, settlement.total, events[0].currency
                )
            return settlement

        return Operation(decide, finish)

    def charge(
        self,
        hold_id: str,
        item: Mapping[str, Any],
        *,
        before: Callable[[], LedgerEvent | None] | None = None,
        found: list[LedgerEvent] | None = None,
    ) -> list[LedgerEvent]:
        """Record one charge against an open hold without closing it (a ``budget_check`` block's usage).

        ``before``, if given, runs first under the lock; if it returns an event (an idempotent repeat), that
        event is put in ``found`` and nothing is appended.

        The charge is the hold's agent's, in the hold's currency (an ``agent_id`` or ``currency`` in
        ``item`` must match). Like :meth:`settle`, a charge that takes what was charged against the hold
        past its amount, or that comes after the hold expired, is recorded (the money was spent) and
        flagged in its metadata (``over_hold``, ``after_hold_expiry``).
        """
        return self.run(self.charge_op(hold_id, item, before=before, found=found))

    def charge_op(
        self,
        hold_id: str,
        item: Mapping[str, Any],
        *,
        before: Callable[[], LedgerEvent | None] | None = None,
        found: list[LedgerEvent] | None = None,
    ) -> Operation[list[LedgerEvent]]:
        """:meth:`charge` as an :class:`Operation`."""
        if item.get("kind", "charge") != "charge" or "expires_at" in item:
            raise InvalidAmountError("a charge cannot set 'kind' or 'expires_at': it is always a charge")
        cost = _amount(item.get("cost"), "charge cost")
        overs: list[OverHold] = []

        def decide() -> list[Mapping[str, Any]] | None:
            with self._state_lock:
                if before is not None:
                    earlier = before()
                    if earlier is not None:
                        if found is not None:
                            found.append(earlier)
                        return None
            hold, already, now = self._open_hold(hold_id)
            for name, expected in (("agent_id", hold.agent_id), ("currency", hold.currency)):
                if item.get(name, expected) != expected:
                    raise InvalidAmountError(
                        f"the charge's {name} {item[name]!r} is not its hold's ({expected!r}); hold "
                        f"{hold_id} can only be charged for its agent in its currency"
                    )
            over = add(already, cost) > hold.amount
            if over:
                overs.append(OverHold(hold.agent_id, hold_id, hold.amount, add(already, cost), hold.currency))
            metadata = _flagged(item.get("metadata"), over, now >= hold.expires_at)
            return [
                {
                    **item,
                    "metadata": metadata,
                    "agent_id": hold.agent_id,
                    "currency": hold.currency,
                    "hold_id": hold_id,
                    "timestamp": now,
                }
            ]

        def finish(events: list[LedgerEvent]) -> list[LedgerEvent]:
            if events and overs:
                over = overs[0]
                self._report_over_hold(over.agent_id, over.hold_id, over.held, over.charged, over.currency)
            return list(events)

        return Operation(decide, finish)

    def _report_over_hold(
        self, agent_id: str, hold_id: str, held: Decimal, charged: Decimal, currency: str
    ) -> None:
        """Make a charge beyond its hold loud (it is recorded already): a WARNING and the observer."""
        logger.warning(
            "agent %s was charged %s %s against hold %s, which held %s %s: usage beyond the bound the hold "
            "was sized for (recorded: the money was spent)",
            agent_name(self.directory, agent_id), charged, currency, hold_id, held, currency,
        )  # fmt: skip
        if self.on_over_hold is not None:
            try:
                self.on_over_hold(OverHold(agent_id, hold_id, held, charged, currency))
            except Exception:
                logger.exception("the over-hold observer failed for hold %s", hold_id)

    def open_holds(self, agent_ids: Iterable[str]) -> list[OpenHold]:
        """The open holds that count against any of ``agent_ids``' subtrees (caught up), each once, by id."""
        with self._state_lock:
            state = self.catch_up()
            found = {hold.hold_id: hold for agent_id in agent_ids for hold in state.open_holds(agent_id)}
        return [found[hold_id] for hold_id in sorted(found)]

    def _denied(self, decision: Decision) -> None:
        """Tell the denial observer (the home's denial log); its errors are logged, never raised: the
        denial stands either way."""
        if self.on_denial is not None:
            try:
                self.on_denial(decision)
            except Exception:
                logger.exception("the denial observer failed for agent %s", decision.agent_id)

    def open_hold(self, hold_id: str) -> OpenHold:
        """The open hold ``hold_id`` (caught up); :class:`HoldNotFoundError` if it is closed or unknown."""
        return _open_in(self.catch_up(), hold_id)

    def _open_hold(self, hold_id: str) -> tuple[OpenHold, Decimal, datetime]:
        """In a decision, under the state lock: the open hold, what was charged against it so far, and now.
        Raises :class:`HoldNotFoundError` if the hold is closed or unknown."""
        with self._state_lock:
            state = self.decided_state
            return _open_in(state, hold_id), state.charged_against(hold_id), self.now()

    def release(self, hold_id: str) -> bool:
        """Close a hold without charging it. Returns False if it was already closed (idempotent)."""
        return self.run(self.release_op(hold_id))

    def release_op(self, hold_id: str) -> Operation[bool]:
        """:meth:`release` as an :class:`Operation`."""
        released: list[bool] = []

        def decide() -> list[Mapping[str, Any]] | None:
            with self._state_lock:
                hold = self.decided_state.hold(hold_id)
                now = self.now()
            released.append(hold is not None)
            return (
                None if hold is None else [_release(hold.agent_id, hold.currency, hold_id, now, "released")]
            )

        return Operation(decide, lambda _events: released[0])

    def expire(self) -> list[str]:
        """Close every hold past its expiry, in one append; returns the ids closed.

        A hold whose expiry means release gets a release entry (it already counts for nothing; this closes
        it in the record). One whose expiry means charge gets a charge of what is left of it (its amount
        less what was charged against it) on :data:`ESTIMATED_RESOURCE`, marked ``estimated`` with the
        reason in its metadata, then its release: the money may have been spent, so it ends billed at its
        bound, never freed.
        """
        return self.run(self._expire_op([]))

    def _expire_op(self, closed: list[str]) -> Operation[list[str]]:
        """:meth:`expire` as an :class:`Operation` (the ids it closes are put in ``closed``)."""

        def decide() -> list[Mapping[str, Any]]:
            with self._state_lock:
                expired, entries = self._expiry_entries(self.decided_state, self.now())
            closed.extend(h.hold_id for h in expired)
            return entries

        return Operation(decide, lambda _events: closed, closes_expired=True)

    def _sweep_decide(self) -> list[Mapping[str, Any]]:
        """The decision every group of writes runs first (:meth:`run_group`): nothing unless a
        charge-on-expiry hold has expired, then what :meth:`expire` would append. The state was just caught
        up under the lock (the group's ``caught_up``), so when nothing is due a heap peek is all it costs."""
        with self._state_lock:
            now = self.now()
            if not self.decided_state.charge_due(now):
                return []
            return self._expiry_entries(self.decided_state, now)[1]

    @staticmethod
    def _expiry_entries(state: BudgetState, now: datetime) -> tuple[list[OpenHold], list[Mapping[str, Any]]]:
        """The expired holds and the entries that close them: a release each, preceded for a
        charge-on-expiry hold by the estimated charge of what is left of it."""
        expired = state.expired_holds(now)
        entries: list[Mapping[str, Any]] = []
        for hold in expired:
            left = subtract(hold.amount, state.charged_against(hold.hold_id))
            if hold.charge_on_expiry and left > 0:
                entries.append(_estimated_charge(hold, left, now))
            why = "expired_charged" if hold.charge_on_expiry else "expired"
            entries.append(_release(hold.agent_id, hold.currency, hold.hold_id, now, why))
        return expired, entries

    def now(self) -> datetime:
        """The enforcer's clock (injected in tests)."""
        return self._clock()


def _flagged(metadata: object, over_hold: bool, after_expiry: bool) -> dict[str, Any] | None:
    """A charge's metadata with the flags that mark money spent beyond (or after) its hold."""
    if metadata is not None and not isinstance(metadata, Mapping):
        return metadata  # type: ignore[return-value]  # not an object: the ledger refuses it, naming it
    flagged = dict(metadata or {})
    if over_hold:
        flagged["over_hold"] = True
    if after_expiry:
        flagged["after_hold_expiry"] = True
    return flagged or None


def _open_in(state: BudgetState, hold_id: str) -> OpenHold:
    hold = state.hold(hold_id)
    if hold is None:
        raise HoldNotFoundError(
            f"no open hold {hold_id!r}: it was settled or released already, or never existed"
        )
    return hold


def _release(agent_id: str, currency: str, hold_id: str, now: datetime, why: str) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "resource_type": HOLD_RESOURCE,
        "quantity": Decimal(0),
        "cost": Decimal(0),
        "currency": currency,
        "kind": "release",
        "hold_id": hold_id,
        "metadata": {"reason": why},
        "timestamp": now,
    }


def _estimated_charge(hold: OpenHold, cost: Decimal, now: datetime) -> dict[str, Any]:
    """The charge that bills an expired charge-on-expiry hold at what was left of it."""
    return {
        "agent_id": hold.agent_id,
        "resource_type": ESTIMATED_RESOURCE,
        "quantity": Decimal(1),
        "cost": cost,
        "currency": hold.currency,
        "hold_id": hold.hold_id,
        "metadata": {
            "estimated": True,
            "reason": "the hold expired before it was settled and its expiry means charge (the money may "
            "have been spent): billed at what was left of its bound",
            "expired_at": format_timestamp(hold.expires_at),
        },
        "timestamp": now,
    }


def _amount(value: object, name: str) -> Decimal:
    return parse_amount(value, name, InvalidAmountError)


def parse_ttl(ttl: object) -> timedelta:
    """A hold's time to live: a timedelta or a number of seconds, more than 0 and at most :data:`MAX_TTL`
    (:class:`InvalidAmountError` otherwise)."""
    if isinstance(ttl, bool) or not isinstance(ttl, (timedelta, int, float)):
        raise InvalidAmountError(f"ttl must be a timedelta or a number of seconds, got {ttl!r}")
    if not isinstance(ttl, timedelta) and not 0 < ttl <= MAX_TTL.total_seconds():  # NaN, inf, huge too
        raise InvalidAmountError(f"ttl must be more than 0 and at most {MAX_TTL}, got {ttl!r} seconds")
    duration = ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl)
    if not timedelta(0) < duration <= MAX_TTL:
        raise InvalidAmountError(f"ttl must be more than 0 and at most {MAX_TTL}, got {duration}")
    return duration


__all__ = [
    "DEFAULT_TTL",
    "SNAPSHOT_EVERY",
    "AgentLike",
    "ESTIMATED_RESOURCE",
    "HOLD_RESOURCE",
    "OverHold",
    "Decision",
    "Directory",
    "Enforcer",
    "Hold",
    "Operation",
    "PolicyStatus",
    "Settlement",
    "describe_window",
    "evaluate",
    "parse_ttl",
    "policy_status",
]
