# mypy: disable-error-code="comparison-overlap"
"""BudgetState and SpendSeries (pure), and a model-based state machine that drives a real Enforcer on a real
ledger through reserve / charge / settle / release / expire / clock moves and compares every budget
decision with a brute-force model (a plain list of charges and a dict of holds)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from caracal.core.budget import DEFAULT_IDEMPOTENCY_WINDOW, BudgetState, SpendSeries, minute_of
from caracal.core.enforcement import Enforcer, policy_status
from caracal.core.events import LedgerEvent
from caracal.core.policy import Policy
from caracal.core.verify import verify_ledger
from caracal.core.windows import WindowSpec
from caracal.exceptions import BudgetExceededError, HoldNotFoundError, LedgerCorruptError
from caracal.storage.home import EmbeddedHome

UTC = timezone.utc
T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
M0 = minute_of(T0)
D = Decimal

# ------------------------------------------------------------------------------------------- SpendSeries


def test_minute_of_floors() -> None:
    assert minute_of(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert minute_of(datetime(1970, 1, 1, 0, 0, 59, 999999, tzinfo=UTC)) == 0
    assert minute_of(datetime(1970, 1, 1, 0, 1, tzinfo=UTC)) == 1
    assert minute_of(datetime(1969, 12, 31, 23, 59, 30, tzinfo=UTC)) == -1
    berlin = timezone(timedelta(hours=1))
    assert minute_of(datetime(2030, 1, 15, 13, 0, tzinfo=berlin)) == M0


def test_empty_series() -> None:
    series = SpendSeries()
    assert series.total() == 0 and series.before(10) == 0 and series.since(None) == 0 and series.since(5) == 0


def test_series_is_cumulative_per_minute() -> None:
    series = SpendSeries()
    series.add(10, D("1.5"))
    series.add(10, D("0.25"))  # same minute: merged
    series.add(12, D("2"))
    series.add(20, D("0.001"))
    assert series.minutes == [10, 12, 20]
    assert series.totals == [D("1.75"), D("3.75"), D("3.751")]
    assert series.total() == D("3.751")
    before = [series.before(m) for m in (9, 10, 11, 12, 13, 20, 21)]
    assert before == [0, 0, D("1.75"), D("1.75"), D("3.75"), D("3.75"), D("3.751")]
    assert series.since(None) == D("3.751")
    assert series.since(11) == D("2.001")
    assert series.since(10) == D("3.751") and series.since(21) == 0


def test_series_counts_an_earlier_minute_at_the_latest() -> None:
    series = SpendSeries()
    series.add(10, D(1))
    series.add(5, D(2))  # out of order (clamped by the caller, in practice): lands in minute 10
    assert series.minutes == [10] and series.since(10) == 3 and series.before(10) == 0


# ------------------------------------------------------------------------------------------- BudgetState

CHAINS = {
    "leaf": ("leaf", "team", "org"),
    "sib": ("sib", "team", "org"),
    "team": ("team", "org"),
    "org": ("org",),
    "solo": ("solo",),
}


class Feed:
    """Builds ledger entries with contiguous ids and applies them to a BudgetState."""

    def __init__(self, idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW) -> None:
        self.window = idempotency_window
        self.state = BudgetState(lambda agent: CHAINS[agent], idempotency_window)
        self.next_id = 1

    def add(self, agent: str, at: datetime, cost: str, currency: str = "USD", **extra: Any) -> LedgerEvent:
        event = LedgerEvent(
            self.next_id,
            agent,
            at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "r" if extra.get("kind") in (None, "charge") else "caracal.hold",
            D(0),
            D(cost),
            currency,
            **extra,
        )
        self.state.apply(event)
        self.next_id += 1
        return event

    def hold(self, agent: str, at: datetime, cost: str, hold_id: str, ttl: timedelta, **extra: Any) -> None:
        self.add(
            agent,
            at,
            cost,
            kind="hold",
            hold_id=hold_id,
            expires_at=(at + ttl).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            **extra,
        )

    def release(self, agent: str, at: datetime, hold_id: str) -> None:
        self.add(agent, at, "0", kind="release", hold_id=hold_id)

    def spent(self, agent: str, since: datetime | None = None, currency: str = "USD") -> Decimal:
        return self.state.spent(agent, currency, since, inclusive_minute=False)


def test_entries_must_come_in_order_once() -> None:
    feed = Feed()
    feed.add("solo", T0, "1")
    for bad_id in (1, 3, 0):
        event = LedgerEvent(bad_id, "solo", "2030-01-15T12:00:00.000000Z", "r", D(0), D(1))
        with pytest.raises(LedgerCorruptError):
            feed.state.apply(event)
    assert feed.state.last_event_id == 1 and feed.spent("solo") == 1


def test_spend_counts_for_the_agent_and_every_ancestor_only() -> None:
    feed = Feed()
    feed.add("leaf", T0, "1.25")
    feed.add("sib", T0, "2")
    feed.add("team", T0, "0.5", kind="charge")
    feed.add("solo", T0, "7")
    assert feed.spent("leaf") == D("1.25") and feed.spent("sib") == 2
    assert feed.spent("team") == D("3.75") and feed.spent("org") == D("3.75")
    assert feed.spent("solo") == 7


def test_currencies_are_kept_apart() -> None:
    feed = Feed()
    feed.add("solo", T0, "1", "USD")
    feed.add("solo", T0, "5", "EUR")
    assert feed.spent("solo", currency="USD") == 1 and feed.spent("solo", currency="EUR") == 5
    assert feed.spent("solo", currency="JPY") == 0


def test_spent_since_window_start() -> None:
    feed = Feed()
    feed.add("solo", T0 - timedelta(minutes=1), "1")  # 11:59
    feed.add("solo", T0 + timedelta(seconds=30), "2")  # 12:00:30
    feed.add("solo", T0 + timedelta(minutes=1, seconds=59), "4")  # 12:01:59
    assert feed.spent("solo", None) == 7
    assert feed.spent("solo", T0) == 6  # a calendar window starting on the minute
    assert feed.spent("solo", T0 + timedelta(minutes=2)) == 0
    mid = T0 + timedelta(seconds=20)
    # a start inside a minute: calendar reading starts at the next minute, rolling counts the whole minute
    assert feed.state.spent("solo", "USD", mid, inclusive_minute=False) == 4
    assert feed.state.spent("solo", "USD", mid, inclusive_minute=True) == 6


def test_a_backdated_entry_counts_at_the_latest_minute() -> None:
    feed = Feed()
    feed.add("solo", T0 + timedelta(hours=1), "1")
    feed.add("solo", T0 - timedelta(days=3), "5")  # cannot move spend out of the current window
    assert feed.spent("solo", T0 + timedelta(hours=1)) == 6


def test_holds_count_until_released_or_expired() -> None:
    feed = Feed()
    feed.hold("leaf", T0, "3", "h1", timedelta(minutes=5))
    feed.hold("sib", T0, "2", "h2", timedelta(minutes=1))
    feed.hold("leaf", T0, "9", "h3", timedelta(minutes=5), currency="EUR")
    state = feed.state
    assert state.held("leaf", "USD", T0) == 3 and state.held("team", "USD", T0) == 5
    assert state.held("org", "USD", T0) == 5 and state.held("solo", "USD", T0) == 0
    assert state.held("leaf", "EUR", T0) == 9
    assert feed.spent("team") == 0  # a hold is not spend
    later = T0 + timedelta(minutes=1)
    assert state.held("team", "USD", later) == 3  # h2 expired at exactly this instant
    assert [h.hold_id for h in state.expired_holds(later)] == ["h2"]
    assert state.hold("h2") is not None  # expired, but open until released
    assert [h.hold_id for h in state.open_holds("team")] == ["h1", "h2", "h3"]
    assert state.open_holds("leaf")[0].members == ("leaf", "team", "org")

    feed.release("sib", later, "h2")
    feed.release("leaf", later, "h1")
    feed.release("leaf", later, "h1")  # a second release is harmless
    feed.release("leaf", later, "never")
    assert state.hold("h1") is None and state.held("team", "USD", later) == 0
    assert [h.hold_id for h in state.open_holds("org")] == ["h3"]
    assert state.open_holds("sib") == [] and state.expired_holds(later) == []


def test_charges_against_a_hold_shrink_it() -> None:
    feed = Feed()
    feed.hold("leaf", T0, "5", "h", timedelta(minutes=5))
    feed.add("leaf", T0, "2", hold_id="h")
    state = feed.state
    assert state.charged_against("h") == 2
    assert (feed.spent("team"), state.held("team", "USD", T0)) == (2, 3)
    feed.add("leaf", T0, "4", hold_id="h")  # past the hold: all spend, nothing held, never negative
    assert (feed.spent("team"), state.held("team", "USD", T0)) == (6, 0)
    feed.release("leaf", T0, "h")
    assert state.charged_against("h") == 0 and feed.spent("leaf") == 6
    feed.add("leaf", T0, "1", hold_id="h")  # a charge naming a closed hold is still spend
    assert feed.spent("leaf") == 7 and state.charged_against("h") == 0 and state.hold("h") is None


def test_a_repeated_hold_id_replaces_the_open_hold() -> None:
    """Only the plain ledger API can write one; the state must stay consistent (no KeyError on a check)."""
    feed = Feed()
    feed.hold("leaf", T0, "1", "h", timedelta(minutes=5))
    feed.add("leaf", T0, "0.5", hold_id="h")
    feed.hold("sib", T0, "2", "h", timedelta(minutes=5))
    state = feed.state
    assert [h.agent_id for h in state.open_holds("team")] == ["sib"] and state.open_holds("leaf") == []
    assert state.held("leaf", "USD", T0) == 0 and state.held("team", "USD", T0) == 2
    assert state.charged_against("h") == 0 and feed.spent("leaf") == D("0.5")
    feed.release("sib", T0, "h")
    assert [state.held(agent, "USD", T0) for agent in CHAINS] == [0] * len(CHAINS)


def test_charge_with_key_returns_the_first() -> None:
    feed = Feed()
    first = feed.add("solo", T0, "1", idempotency_key="k")
    feed.add("solo", T0, "1", idempotency_key="k")
    assert feed.state.charge_with_key("k") is first and feed.state.charge_with_key("other") is None


def probe(state: BudgetState, moments: list[datetime]) -> list[object]:
    """Every answer a state gives, for comparing two states."""
    answers: list[object] = [state.last_event_id]
    for agent in CHAINS:
        for currency in ("USD", "EUR"):
            for moment in moments:
                for inclusive in (False, True):
                    answers.append(state.spent(agent, currency, moment, inclusive_minute=inclusive))
                answers.append(state.held(agent, currency, moment))
            answers.append(state.spent(agent, currency, None, inclusive_minute=False))
        answers.append([(h, state.charged_against(h.hold_id)) for h in state.open_holds(agent)])
    answers.append(sorted(h.hold_id for h in state.expired_holds(moments[-1])))
    answers.append([state.charge_with_key(f"k{i}") for i in range(4)])
    return answers


ENTRY = st.tuples(
    st.sampled_from(["charge", "hold", "release", "charge-on-hold"]),
    st.sampled_from(list(CHAINS)),
    st.integers(0, 90),  # minutes after T0 (out of order on purpose: the state clamps)
    st.integers(0, 500),  # cents
    st.sampled_from(["USD", "USD", "EUR"]),
    st.integers(0, 3),  # which hold / idempotency key
)


def feed_entries(feed: Feed, entries: list[tuple[str, str, int, int, str, int]], cut: int = -1) -> None:
    """Apply generated entries; at index ``cut``, swap the state for one restored from its snapshot (through
    JSON, as on disk)."""
    for index in range(len(entries) + 1):
        if index == cut:
            data = orjson.loads(orjson.dumps(feed.state.to_snapshot()))
            feed.state = BudgetState.from_snapshot(data, lambda agent: CHAINS[agent], feed.window)
        if index == len(entries):
            return
        kind, agent, minutes, cents, currency, n = entries[index]
        at = T0 + timedelta(minutes=minutes, seconds=n * 7)
        cost = str(D(cents) / 100)
        if kind == "hold":
            feed.hold(agent, at, cost, f"h{n}", timedelta(minutes=n * 20 + 1), currency=currency)
        elif kind == "release":
            feed.release(agent, at, f"h{n}")
        else:
            hold_id = f"h{n}" if kind == "charge-on-hold" else None
            feed.add(agent, at, cost, currency, hold_id=hold_id, idempotency_key=f"k{n}")


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(ENTRY, max_size=30), cut=st.integers(0, 30))
def test_a_snapshot_resumes_exactly(entries: list[tuple[str, str, int, int, str, int]], cut: int) -> None:
    """Folding every entry in, or saving a snapshot part way and folding in the rest, gives a state that
    answers every question the same."""
    whole, resumed = Feed(), Feed()
    feed_entries(whole, entries)
    feed_entries(resumed, entries, min(cut, len(entries)))
    moments = [T0 + timedelta(minutes=m, seconds=s) for m in (-1, 0, 30, 89, 200) for s in (0, 30)]
    assert probe(resumed.state, moments) == probe(whole.state, moments)


def summed_one_by_one(state: BudgetState, agent: str, currency: str, now: datetime) -> Decimal:
    """What ``held`` means, from the open holds themselves."""
    total = D(0)
    for hold in state.open_holds(agent):
        if hold.currency == currency and hold.counts_at(now):
            total += max(hold.amount - state.charged_against(hold.hold_id), D(0))
    return total


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(ENTRY, max_size=40),
    cut=st.integers(0, 40),
    charging=st.sets(st.integers(0, 3)),
)
def test_held_is_the_open_holds_summed(
    entries: list[tuple[str, str, int, int, str, int]], cut: int, charging: set[int]
) -> None:
    """``held`` is kept as running sums (a check must not add up every open hold of a busy agent): after
    any holds, charges against them (past them too), releases, replaced holds, holds that charge on
    expiry (hold numbers in ``charging``) and a snapshot part way, it equals the open holds summed one by
    one, before and after their expiries, for every agent of the tree and both currencies."""
    feed = Feed()
    for index, (kind, agent, minutes, cents, currency, n) in enumerate(entries):
        if index == cut:
            data = orjson.loads(orjson.dumps(feed.state.to_snapshot()))
            feed.state = BudgetState.from_snapshot(data, lambda agent: CHAINS[agent], feed.window)
        at = T0 + timedelta(minutes=minutes, seconds=n * 7)
        cost = str(D(cents) / 100)
        if kind == "hold":
            on_expiry = "charge" if n in charging else None
            feed.hold(agent, at, cost, f"h{n}", timedelta(minutes=n * 20 + 1), currency=currency,
                      on_expiry=on_expiry)  # fmt: skip
        elif kind == "release":
            feed.release(agent, at, f"h{n}")
        else:
            feed.add(agent, at, cost, currency, hold_id=f"h{n}" if kind == "charge-on-hold" else None)
        state = feed.state
        for moment in (T0, T0 + timedelta(minutes=30), T0 + timedelta(minutes=200)):
            for member in CHAINS:
                for money in ("USD", "EUR"):
                    expected = summed_one_by_one(state, member, money, moment)
                    assert state.held(member, money, moment) == expected
    for member in CHAINS:  # nothing open, nothing held, and exactly zero (not 0.00)
        for hold in feed.state.open_holds(member):
            feed.release(hold.agent_id, T0, hold.hold_id)
    assert {str(feed.state.held(member, "USD", T0)) for member in CHAINS} == {"0"}


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(ENTRY, max_size=30), cut=st.integers(0, 30), window=st.integers(1, 60))
def test_idempotency_keys_are_kept_for_the_window_only(
    entries: list[tuple[str, str, int, int, str, int]], cut: int, window: int
) -> None:
    """With a window of a few minutes, a key is found exactly while the ledger's time (or the caller's
    ``now``) is less than a window past its first charge's effective time, the same with or without a
    snapshot part way; and the snapshot never carries a key the state has forgotten."""
    whole, resumed = Feed(timedelta(minutes=window)), Feed(timedelta(minutes=window))
    feed_entries(whole, entries)
    feed_entries(resumed, entries, min(cut, len(entries)))
    # The model: effective times, the first charge per key, forgotten a whole window later.
    last: datetime | None = None
    first: dict[str, tuple[datetime, int]] = {}
    for event_id, (kind, _agent, minutes, _cents, _currency, n) in enumerate(entries, 1):
        at = T0 + timedelta(minutes=minutes, seconds=n * 7)
        last = at if last is None or at > last else last
        for key, (when, _) in list(first.items()):
            if when <= last - timedelta(minutes=window):
                del first[key]
        if kind in ("charge", "charge-on-hold") and f"k{n}" not in first:
            first[f"k{n}"] = (last, event_id)
    for now in (None, T0, T0 + timedelta(minutes=45), T0 + timedelta(minutes=200)):
        moment = last if now is None or (last is not None and last > now) else now
        expected = [
            first[k][1]
            if k in first and (moment is None or first[k][0] > moment - timedelta(minutes=window))
            else None
            for k in (f"k{i}" for i in range(4))
        ]
        for state in (whole.state, resumed.state):
            found = [state.charge_with_key(f"k{i}", now) for i in range(4)]
            assert [None if e is None else e.event_id for e in found] == expected
    kept = [record["idempotency_key"] for _, record in whole.state.to_snapshot()["keys"]]
    assert sorted(kept) == sorted(first) == sorted(
        record["idempotency_key"] for _, record in resumed.state.to_snapshot()["keys"]
    )


def test_a_malformed_snapshot_is_refused() -> None:
    feed = Feed()
    feed.add("solo", T0, "1")
    feed.add("solo", T0 + timedelta(minutes=5), "2")
    good = feed.state.to_snapshot()
    for broken in (
        {**good, "spend": [["solo", "USD", [5, 1], ["1", "3"]]]},  # minutes out of order
        {**good, "spend": [["solo", "USD", [1], ["1", "3"]]]},  # lengths differ
        {k: v for k, v in good.items() if k != "holds"},
        {**good, "last_event_id": "x"},
    ):
        with pytest.raises((ValueError, KeyError, TypeError)):
            BudgetState.from_snapshot(broken, lambda agent: CHAINS[agent])


# ----------------------------------------------------------------------------------- model-based machine

START = datetime(2030, 1, 15, 23, 40, tzinfo=UTC)  # a step or two crosses midnight
ROLLING = timedelta(hours=2)


class MoveClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class ModelHold:
    agent: str
    amount: Decimal
    expires_at: datetime
    charged: Decimal = Decimal(0)
    charge_on_expiry: bool = False


@dataclass
class ModelCharge:
    agent: str
    at: datetime
    cost: Decimal
    flagged: bool


def midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


class EnforcementMachine(RuleBasedStateMachine):
    """team ($15 daily) with children a ($10 daily, $4 hourly) and b ($10 daily, $6 over a rolling 2 hours).

    Hourly windows reset often enough that short programs cross a reset; daily ones cross midnight."""

    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="caracal-sm-"))
        self.home = EmbeddedHome(self.tmp)
        agents = self.home.agents
        team = agents.register("team", "o").agent_id
        ids = {
            "team": team,
            "a": agents.register("a", "o", parent=team).agent_id,
            "b": agents.register("b", "o", parent=team).agent_id,
        }
        self.name_of = {agent_id: name for name, agent_id in ids.items()}
        create, daily = self.home.policies.create, WindowSpec.calendar("daily")
        self.policies: dict[str, list[Policy]] = {
            "a": [create(ids["a"], "10", daily), create(ids["a"], "4", WindowSpec.calendar("hourly"))],
            "b": [create(ids["b"], "10", daily), create(ids["b"], "6", WindowSpec.rolling(ROLLING))],
            "team": [create(ids["team"], "15", daily)],
        }
        self.chains = {"a": ("a", "team"), "b": ("b", "team"), "team": ("team",)}
        self.clock = MoveClock()
        self.enforcer = Enforcer(self.home.writer(), self.home.directory, clock=self.clock)
        self.charges: list[ModelCharge] = []
        self.open: dict[str, ModelHold] = {}

    def teardown(self) -> None:
        try:
            assert verify_ledger(self.home.ledger_path).ok
        finally:
            self.home.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ the model

    def subtree(self, member: str) -> set[str]:
        return {name for name, chain in self.chains.items() if member in chain}

    def in_window(self, policy: Policy, at: datetime) -> bool:
        now = self.clock.now
        if policy.window.kind == "rolling":  # the whole boundary minute counts (the safe side)
            return minute_of(at) >= minute_of(now - ROLLING)
        start = (
            midnight(now) if policy.window.kind == "daily" else now.replace(minute=0, second=0, microsecond=0)
        )
        return at >= start

    def status(self, policy: Policy) -> tuple[Decimal, Decimal, Decimal]:
        member = self.name_of[policy.agent_id]
        agents = self.subtree(member)
        spent = sum(
            (c.cost for c in self.charges if c.agent in agents and self.in_window(policy, c.at)), D(0)
        )
        held = sum(
            (
                max(h.amount - h.charged, D(0))
                for h in self.open.values()
                if h.agent in agents and (h.charge_on_expiry or h.expires_at > self.clock.now)
            ),
            D(0),
        )
        return spent, held, policy.limit - spent - held

    def expected(self, agent: str, amount: Decimal | None) -> tuple[bool, Policy, tuple[Decimal, ...]]:
        """(allowed, the policy the decision names, its (spent, held, remaining))."""
        tightest = None
        for member in self.chains[agent]:
            for policy in self.policies[member]:
                numbers = self.status(policy)
                remaining = numbers[2]
                if (remaining <= 0) if amount is None else (amount > remaining):
                    return False, policy, numbers
                if tightest is None or remaining < tightest[1][2]:
                    tightest = (policy, numbers)
        assert tightest is not None
        return True, tightest[0], tightest[1]

    def resets_at(self, policy: Policy) -> datetime | None:
        now = self.clock.now
        if policy.window.kind == "hourly":
            return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return None if policy.window.kind == "rolling" else midnight(now) + timedelta(days=1)

    def close_expired(self) -> set[str]:
        """What expire() does: close every expired hold; a charge-on-expiry one is first charged what is
        left of it (estimated)."""
        now = self.clock.now
        due = {hold_id for hold_id, hold in self.open.items() if hold.expires_at <= now}
        for hold_id in due:
            hold = self.open.pop(hold_id)
            left = hold.amount - hold.charged
            if hold.charge_on_expiry and left > 0:
                self.charges.append(ModelCharge(hold.agent, now, left, False))
        return due

    def sweep(self) -> None:
        """What every group of writes does first: expire() if a charge-on-expiry hold has expired."""
        if any(h.charge_on_expiry and h.expires_at <= self.clock.now for h in self.open.values()):
            self.close_expired()

    # ------------------------------------------------------------------ rules

    @rule(seconds=st.sampled_from([1, 29, 30, 59, 60, 61, 119, 300, 900, 1800, 3600, 7200, 4 * 3600]))
    def advance(self, seconds: int) -> None:
        self.clock.now += timedelta(seconds=seconds)

    @rule(
        target=holds,
        agent=st.sampled_from(["a", "b", "team"]),
        cents=st.integers(1, 900),
        ttl=st.sampled_from([30, 60, 300, 3600]),
        charge_on_expiry=st.booleans(),
    )
    def reserve(self, agent: str, cents: int, ttl: int, charge_on_expiry: bool = False) -> str:
        amount = D(cents) / 100
        self.sweep()
        allowed, policy, numbers = self.expected(agent, amount)
        on_expiry = "charge" if charge_on_expiry else "release"
        try:
            hold = self.enforcer.reserve(agent, amount, ttl=ttl, on_expiry=on_expiry)
        except BudgetExceededError as exc:
            decision = exc.decision
            assert not allowed, f"denied but the model allows {amount} for {agent}: {decision}"
            assert decision.policy_id == policy.policy_id  # type: ignore[attr-defined]
            assert (decision.spent, decision.held, decision.remaining) == numbers  # type: ignore[attr-defined]
            return "hold-denied"
        assert allowed, f"allowed but the model denies {amount} for {agent} by {policy.policy_id}"
        assert hold.decision.policy_id == policy.policy_id
        assert (hold.decision.spent, hold.decision.held, hold.decision.remaining) == numbers
        assert hold.expires_at == self.clock.now + timedelta(seconds=ttl)
        self.open[hold.hold_id] = ModelHold(agent, amount, hold.expires_at, charge_on_expiry=charge_on_expiry)
        return hold.hold_id

    @rule(hold_id=holds, percent=st.sampled_from([0, 10, 50, 99, 100, 101, 150]), parts=st.integers(0, 3))
    def settle(self, hold_id: str, percent: int, parts: int) -> None:
        self.sweep()
        hold = self.open.get(hold_id)
        base = hold.amount if hold is not None else D(1)
        total = (base * percent / 100).quantize(D("0.01"))
        costs = [total] if parts <= 1 else [(total / parts).quantize(D("0.01"))] * (parts - 1)
        if parts > 1:
            costs.append(total - sum(costs))
        if parts == 0:
            costs = []
        items = [{"resource_type": "llm", "quantity": "1", "cost": c} for c in costs]
        if hold is None:
            with pytest.raises(HoldNotFoundError):
                self.enforcer.settle(hold_id, items)
            return
        settlement = self.enforcer.settle(hold_id, items)
        now = self.clock.now
        grand = hold.charged + sum(costs, D(0))
        over, late = grand > hold.amount, now >= hold.expires_at
        assert (settlement.over_hold, settlement.after_expiry) == (over, late)
        assert settlement.total == grand and settlement.held == hold.amount
        assert [c.cost for c in settlement.charges] == costs
        for event in settlement.charges:
            flags = event.metadata or {}
            assert bool(flags.get("over_hold")) == over and bool(flags.get("after_hold_expiry")) == late
        self.charges += [ModelCharge(hold.agent, now, c, over or late) for c in costs]
        del self.open[hold_id]

    @rule(
        agent=st.sampled_from(["a", "b", "team"]),
        cents=st.integers(1, 600),
        percent=st.sampled_from([0, 50, 100, 120]),
    )
    def spend(self, agent: str, cents: int, percent: int) -> None:
        """A completed call: reserve, then settle at once (the common path, so programs accumulate spend)."""
        hold_id = self.reserve(agent, cents, 300)
        self.settle(hold_id, percent, 1)

    @rule(hold_id=holds, cents=st.integers(0, 400))
    def charge(self, hold_id: str, cents: int) -> None:
        cost = D(cents) / 100
        item = {"resource_type": "llm", "quantity": "1", "cost": cost}
        self.sweep()
        hold = self.open.get(hold_id)
        if hold is None:
            with pytest.raises(HoldNotFoundError):
                self.enforcer.charge(hold_id, item)
            return
        (event,) = self.enforcer.charge(hold_id, item)
        flagged = hold.charged + cost > hold.amount or self.clock.now >= hold.expires_at
        assert bool(event.metadata) == flagged
        hold.charged += cost
        self.charges.append(ModelCharge(hold.agent, self.clock.now, cost, flagged))

    @rule(hold_id=holds)
    def release(self, hold_id: str) -> None:
        self.sweep()
        assert self.enforcer.release(hold_id) is (hold_id in self.open)
        self.open.pop(hold_id, None)

    @rule()
    def expire(self) -> None:
        due = {h for h, hold in self.open.items() if hold.expires_at <= self.clock.now}
        assert set(self.enforcer.expire()) == due
        assert self.close_expired() == due

    @precondition(lambda self: len(self.open) > 0)
    @rule(save=st.booleans())
    def restart(self, save: bool) -> None:
        """A new home object and enforcer on the same files sees the same holds and spend, whether it
        resumes from a budget snapshot (``save``: the old one closed cleanly) or replays the ledger."""
        if save:
            self.enforcer.close()
        self.home.close()
        self.home = EmbeddedHome(self.tmp)
        self.enforcer = Enforcer(self.home.writer(), self.home.directory, clock=self.clock)
        assert {
            h.hold_id for h in self.enforcer.catch_up().open_holds(self.policies["team"][0].agent_id)
        } == set(self.open)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def decisions_match_the_model(self) -> None:
        for agent in ("a", "b", "team"):
            allowed, policy, numbers = self.expected(agent, None)
            decision = self.enforcer.check(agent)
            assert decision.allowed == allowed, (agent, decision, numbers)
            assert decision.policy_id == policy.policy_id, (agent, decision)
            assert (decision.spent, decision.held, decision.remaining) == numbers, (agent, decision)
            assert decision.limit == policy.limit and decision.resets_at == self.resets_at(policy)

    @invariant()
    def every_policy_matches_the_model(self) -> None:
        """Not only the tightest policy a Decision names: each policy's spent, held and remaining."""
        state = self.enforcer.catch_up()
        for policies in self.policies.values():
            for policy in policies:
                status = policy_status(policy, state, self.clock.now)
                assert (status.spent, status.held, status.remaining) == self.status(policy), policy
                assert status.resets_at == self.resets_at(policy)

    @invariant()
    def no_unflagged_overspend(self) -> None:
        for policies in self.policies.values():
            for policy in policies:
                spent, _held, _remaining = self.status(policy)
                agents = self.subtree(self.name_of[policy.agent_id])
                flagged = any(
                    c.flagged and c.agent in agents and self.in_window(policy, c.at) for c in self.charges
                )
                assert spent <= policy.limit or flagged, (policy, spent)


def test_enforcer_matches_the_model() -> None:
    run_state_machine_as_test(
        EnforcementMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
