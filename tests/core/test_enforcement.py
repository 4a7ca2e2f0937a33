# mypy: disable-error-code="comparison-overlap"
"""Enforcer: check, reserve, settle, charge, release, expire, on real files (an EmbeddedHome in a temporary
home) with an injected clock. Every denial must name the policy that denied and why; every refusal of bad
input must leave the ledger as it was."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from caracal.core import ledger as ledger_module
from caracal.core import replay as replay_module
from caracal.core.enforcement import HOLD_RESOURCE, Decision, Enforcer, Hold
from caracal.core.ledger import LedgerQuery, LedgerReader
from caracal.core.policy import Policy
from caracal.core.verify import verify_ledger
from caracal.core.windows import WindowSpec
from caracal.exceptions import (
    AgentNotFoundError,
    BudgetExceededError,
    CaracalError,
    HoldNotFoundError,
    InvalidAgentError,
    InvalidAmountError,
    InvalidLedgerEventError,
)
from caracal.storage.home import EmbeddedHome
from tests.caches import read_sealed, write_sealed
from tests.pg import ledger_end

UTC = timezone.utc
NOON = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
DAILY = WindowSpec.calendar("daily")
MIDNIGHT_AFTER_NOON = datetime(2030, 1, 16, tzinfo=UTC)


class Clock:
    """A settable clock for the enforcer."""

    def __init__(self, now: datetime = NOON):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Env:
    home: EmbeddedHome
    clock: Clock
    enforcer: Enforcer

    def agent(self, name: str, parent: str | None = None) -> str:
        return self.home.agents.register(name, "team@example.com", parent=parent).agent_id

    def policy(self, agent_id: str, limit: str, window: WindowSpec = DAILY, currency: str = "USD") -> Policy:
        return self.home.policies.create(agent_id, limit, window, currency)

    def ledger_size(self) -> int:
        return ledger_end(self.home.ledger)

    def events(self) -> list[Any]:
        return list(LedgerReader(self.home.ledger).iter_events())

    def spend(self, agent: str, amount: str) -> None:
        """Reserve ``amount`` and settle exactly that (a completed call)."""
        hold = self.enforcer.reserve(agent, amount)
        self.enforcer.settle(hold.hold_id, [charge(amount)])

    def reopen(self) -> Env:
        """A new home object and enforcer on the same files (a restart)."""
        home = EmbeddedHome(self.home.home)
        return Env(home, self.clock, Enforcer(home.writer(), home.directory, clock=self.clock))


def charge(cost: str, resource: str = "llm.tokens", quantity: str = "1", **extra: Any) -> dict[str, Any]:
    return {"resource_type": resource, "quantity": quantity, "cost": cost, **extra}


@pytest.fixture
def env(caracal_home: Path) -> Iterator[Env]:
    home = EmbeddedHome(caracal_home)
    clock = Clock()
    yield Env(home, clock, Enforcer(home.writer(), home.directory, clock=clock))
    home.close()


def denial(call: Callable[[], object]) -> Decision:
    with pytest.raises(BudgetExceededError) as info:
        call()
    decision = info.value.decision
    assert isinstance(decision, Decision)
    assert not decision.allowed
    return decision


# ---------------------------------------------------------------------------------------------- decisions


def test_allowed_reserve_reports_the_policy_and_holds_the_amount(env: Env) -> None:
    agent = env.agent("worker")
    policy = env.policy(agent, "10.00")

    hold = env.enforcer.reserve("worker", "3.25", ttl=60)

    assert isinstance(hold, Hold)
    assert hold.agent_id == agent and hold.amount == Decimal("3.25") and hold.currency == "USD"
    assert hold.expires_at == NOON + timedelta(seconds=60)
    decision = hold.decision  # as evaluated before the hold was recorded
    assert decision.allowed and decision.reason == "within budget"
    assert decision.policy_id == policy.policy_id and decision.policy_agent_id == agent
    assert (decision.limit, decision.spent, decision.held, decision.remaining) == (
        Decimal("10.00"),
        0,
        0,
        Decimal("10.00"),
    )
    assert decision.resets_at == MIDNIGHT_AFTER_NOON

    after = env.enforcer.check("worker")
    assert after.allowed
    assert (after.spent, after.held, after.remaining) == (0, Decimal("3.25"), Decimal("6.75"))
    (entry,) = env.events()
    assert entry.kind == "hold" and entry.hold_id == hold.hold_id and entry.cost == Decimal("3.25")
    assert entry.resource_type == HOLD_RESOURCE and entry.expires_at == "2030-01-15T12:01:00.000000Z"


def test_denied_reserve_names_the_policy_and_records_nothing(env: Env) -> None:
    agent = env.agent("worker")
    policy = env.policy(agent, "10")
    env.spend("worker", "1.50")
    env.enforcer.reserve("worker", "6")
    size = env.ledger_size()

    decision = denial(lambda: env.enforcer.reserve("worker", "2.51"))

    assert env.ledger_size() == size
    assert decision.policy_id == policy.policy_id and decision.policy_agent_id == agent
    assert decision.limit == 10 and decision.spent == Decimal("1.50") and decision.held == 6
    assert decision.remaining == Decimal("2.50") and decision.amount == Decimal("2.51")
    assert decision.resets_at == MIDNIGHT_AFTER_NOON
    assert policy.policy_id in decision.reason and "2.50 USD left" in decision.reason
    assert "2.51 USD requested" in decision.reason
    assert decision.to_dict()["resets_at"] == "2030-01-16T00:00:00.000000Z"
    # exactly what is left is allowed, and check() agrees with reserve()
    assert not env.enforcer.check("worker", "2.51").allowed
    assert env.enforcer.check("worker", "2.50").allowed
    env.enforcer.reserve("worker", "2.50")
    assert env.enforcer.check("worker").remaining == 0


def test_check_without_amount_denies_once_nothing_remains(env: Env) -> None:
    agent = env.agent("worker")
    env.policy(agent, "5")
    assert env.enforcer.check("worker").allowed
    hold = env.enforcer.reserve("worker", "5")
    decision = env.enforcer.check("worker")
    assert not decision.allowed and decision.remaining == 0 and decision.held == 5
    assert "requested" not in decision.reason
    env.enforcer.release(hold.hold_id)
    assert env.enforcer.check("worker").allowed


def test_a_zero_limit_allows_nothing(env: Env) -> None:
    env.policy(env.agent("frozen"), "0")
    assert not env.enforcer.check("frozen").allowed
    assert not env.enforcer.check("frozen", "0.01").allowed
    denial(lambda: env.enforcer.reserve("frozen", "0.000001"))


def test_spend_counts_against_every_ancestor(env: Env) -> None:
    parent = env.agent("team")
    first, second = env.agent("first", parent), env.agent("second", parent)
    shared = env.policy(parent, "15")
    own_first, own_second = env.policy(first, "10"), env.policy(second, "10")

    env.spend("first", "9")
    # second's own $10 is untouched, but the team has only $6 left
    decision = denial(lambda: env.enforcer.reserve("second", "7"))
    assert decision.policy_id == shared.policy_id and decision.policy_agent_id == parent
    assert (decision.limit, decision.spent, decision.remaining) == (15, 9, 6)
    # the tightest policy is reported when allowed
    allowed = env.enforcer.check("second", "6")
    assert allowed.allowed and allowed.policy_id == shared.policy_id and allowed.remaining == 6
    assert env.enforcer.check("first").policy_id == own_first.policy_id  # $1 left of its own $10

    hold = env.enforcer.reserve("second", "6")
    assert not env.enforcer.check("first", "0.01").allowed  # the sibling's hold counts against the team
    env.enforcer.settle(hold.hold_id, [charge("6")])
    assert env.enforcer.check("team").remaining == 0
    spent_out = env.enforcer.check("second")  # $4 left of its own $10, but nothing of the team's
    assert not spent_out.allowed and spent_out.policy_id == shared.policy_id
    assert env.home.policies.get(own_second.policy_id).limit == 10


def test_grandparent_policy_applies_to_grandchildren(env: Env) -> None:
    root = env.agent("org")
    team = env.agent("team", root)
    leaf = env.agent("leaf", team)
    org_policy = env.policy(root, "2")
    env.policy(team, "100")
    env.policy(leaf, "100")
    env.spend("leaf", "1.5")
    decision = denial(lambda: env.enforcer.reserve("leaf", "1"))
    assert decision.policy_id == org_policy.policy_id and decision.spent == Decimal("1.5")
    assert env.enforcer.check("org").remaining == Decimal("0.5")


def test_the_tightest_of_several_policies_denies(env: Env) -> None:
    agent = env.agent("worker")
    env.policy(agent, "100")  # daily
    hourly = env.policy(agent, "4", WindowSpec.calendar("hourly"))
    env.policy(agent, "50", WindowSpec.rolling(timedelta(hours=6)))
    env.policy(agent, "1000", WindowSpec.calendar("total"))

    allowed = env.enforcer.check("worker", "1")
    assert allowed.policy_id == hourly.policy_id and allowed.remaining == 4
    assert allowed.resets_at == NOON + timedelta(hours=1)
    env.spend("worker", "3")
    decision = denial(lambda: env.enforcer.reserve("worker", "1.01"))
    assert decision.policy_id == hourly.policy_id and decision.remaining == 1
    env.clock.advance(hours=1)  # the hourly window resets; the others still see the 3
    after = env.enforcer.check("worker", "4")
    assert after.allowed and after.policy_id == hourly.policy_id and after.spent == 0


def test_suspended_agent_is_denied_with_reason(env: Env) -> None:
    agent = env.agent("worker")
    env.policy(agent, "10")
    env.home.agents.suspend("worker")
    size = env.ledger_size()

    decision = env.enforcer.check("worker", "1")
    assert not decision.allowed and decision.agent_id == agent
    assert (
        "agent worker is suspended" in decision.reason and "caracal agent activate worker" in decision.reason
    )
    assert decision.policy_id is None
    denied = denial(lambda: env.enforcer.reserve("worker", "1"))
    assert "suspended" in denied.reason
    assert env.ledger_size() == size

    env.home.agents.activate("worker")
    assert env.enforcer.check("worker", "1").allowed


def test_suspended_ancestor_denies_the_subtree(env: Env) -> None:
    parent = env.agent("team")
    child = env.agent("child", parent)
    env.policy(parent, "10")
    env.policy(child, "10")
    env.home.agents.suspend("team")

    decision = env.enforcer.check("child", "1")
    assert not decision.allowed
    assert "its ancestor team is suspended" in decision.reason and decision.agent_id != parent
    denial(lambda: env.enforcer.reserve("child", "1"))
    assert env.ledger_size() == 0


def test_no_active_policy_anywhere_is_denied(env: Env) -> None:
    parent = env.agent("team")
    env.agent("child", parent)
    env.policy(env.agent("other"), "10")  # someone else's policy does not help

    decision = env.enforcer.check("child", "1")
    assert not decision.allowed and "no active policy" in decision.reason
    assert decision.policy_id is None and decision.remaining is None
    assert not env.enforcer.check("child").allowed
    denied = denial(lambda: env.enforcer.reserve("child", "1"))
    assert "no active policy" in denied.reason
    assert env.ledger_size() == 0


def test_deactivated_policy_no_longer_allows(env: Env) -> None:
    agent = env.agent("worker")
    policy = env.policy(agent, "10")
    assert env.enforcer.check("worker", "1").allowed
    env.home.policies.deactivate(policy.policy_id)
    assert "no active policy" in env.enforcer.check("worker", "1").reason


def test_policy_in_another_currency_denies(env: Env) -> None:
    agent = env.agent("worker")
    euro = env.policy(agent, "10", currency="EUR")
    decision = env.enforcer.check("worker", "1")  # USD by default
    assert not decision.allowed and decision.policy_id == euro.policy_id
    assert "EUR" in decision.reason and "USD" in decision.reason
    denial(lambda: env.enforcer.reserve("worker", "1"))
    hold = env.enforcer.reserve("worker", "1", currency="EUR")
    assert hold.currency == "EUR"
    # a parent's USD policy cannot be proven with EUR spend either
    team = env.agent("team")
    child = env.agent("child", team)
    env.policy(child, "10", currency="EUR")
    env.policy(team, "10", currency="USD")
    assert "does not convert" in env.enforcer.check("child", "1", currency="EUR").reason


# ------------------------------------------------------------------------------------------------ holds


def test_holds_stop_counting_after_their_ttl_and_expire_records_it(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    short = env.enforcer.reserve("worker", "6", ttl=timedelta(seconds=30))
    long = env.enforcer.reserve("worker", "3", ttl=timedelta(minutes=10))
    assert env.enforcer.check("worker").held == 9
    denial(lambda: env.enforcer.reserve("worker", "2"))

    env.clock.advance(seconds=29)
    assert env.enforcer.check("worker").held == 9
    env.clock.advance(seconds=1)  # at expires_at exactly, the hold counts for nothing
    assert env.enforcer.check("worker").held == 3
    env.enforcer.reserve("worker", "7")
    size = len(env.events())

    assert env.enforcer.expire() == [short.hold_id]
    events = env.events()
    assert len(events) == size + 1
    release = events[-1]
    assert release.kind == "release" and release.hold_id == short.hold_id and release.cost == 0
    assert release.metadata == {"reason": "expired"}
    assert env.enforcer.expire() == []  # nothing left to close
    assert env.enforcer.catch_up().hold(short.hold_id) is None
    assert env.enforcer.catch_up().hold(long.hold_id) is not None
    with pytest.raises(HoldNotFoundError):
        env.enforcer.settle(short.hold_id, [charge("1")])


def test_settle_records_the_charges_and_closes_the_hold(env: Env) -> None:
    agent = env.agent("worker")
    env.policy(agent, "10")
    hold = env.enforcer.reserve("worker", "2")

    settlement = env.enforcer.settle(
        hold.hold_id,
        [
            charge("0.75", "llm.input", "1500", metadata={"model": "m"}, idempotency_key="k-1"),
            charge("0.50", "llm.output", "250"),
        ],
    )

    assert settlement.hold_id == hold.hold_id and settlement.total == Decimal("1.25")
    assert settlement.held == 2 and not settlement.over_hold and not settlement.after_expiry
    assert [c.cost for c in settlement.charges] == [Decimal("0.75"), Decimal("0.50")]
    for event in settlement.charges:
        assert event.is_charge and event.hold_id == hold.hold_id and event.agent_id == agent
        assert event.timestamp == "2030-01-15T12:00:00.000000Z"
    assert settlement.charges[0].metadata == {"model": "m"} and settlement.charges[1].metadata is None
    assert settlement.charges[0].idempotency_key == "k-1"
    last = env.events()[-1]
    assert last.kind == "release" and last.hold_id == hold.hold_id and last.metadata == {"reason": "settled"}
    decision = env.enforcer.check("worker")
    assert (decision.spent, decision.held, decision.remaining) == (Decimal("1.25"), 0, Decimal("8.75"))
    assert env.enforcer.catch_up().hold(hold.hold_id) is None
    assert env.enforcer.release(hold.hold_id) is False


def test_settle_with_no_charges_frees_the_hold(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "10")
    settlement = env.enforcer.settle(hold.hold_id, [])
    assert settlement.total == 0 and settlement.charges == []
    assert env.enforcer.check("worker").remaining == 10


def test_settle_above_the_hold_is_recorded_and_flagged(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "1")
    settlement = env.enforcer.settle(hold.hold_id, [charge("0.80"), charge("0.70", metadata={"step": 2})])
    assert settlement.over_hold and not settlement.after_expiry and settlement.total == Decimal("1.50")
    assert settlement.charges[0].metadata == {"over_hold": True}
    assert settlement.charges[1].metadata == {"step": 2, "over_hold": True}
    assert env.enforcer.check("worker").spent == Decimal("1.50")  # the money was spent: it counts


def test_settle_after_expiry_is_recorded_and_flagged(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "1", ttl=10)
    env.clock.advance(seconds=11)
    settlement = env.enforcer.settle(hold.hold_id, [charge("0.5")])
    assert settlement.after_expiry and not settlement.over_hold
    assert settlement.charges[0].metadata == {"after_hold_expiry": True}
    assert env.enforcer.check("worker").spent == Decimal("0.5")


def test_release_is_idempotent(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "4")
    assert env.enforcer.release(hold.hold_id) is True
    size = env.ledger_size()
    assert env.enforcer.release(hold.hold_id) is False
    assert env.enforcer.release("hold-never-existed") is False
    assert env.ledger_size() == size
    assert env.events()[-1].metadata == {"reason": "released"}
    assert env.enforcer.check("worker").remaining == 10


@pytest.mark.parametrize("closing", ["settle", "release", "expire", "unknown"])
def test_settle_and_charge_need_an_open_hold(env: Env, closing: str) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "1", ttl=5)
    hold_id = hold.hold_id
    if closing == "settle":
        env.enforcer.settle(hold_id, [charge("1")])
    elif closing == "release":
        env.enforcer.release(hold_id)
    elif closing == "expire":
        env.clock.advance(seconds=5)
        assert env.enforcer.expire() == [hold_id]
    else:
        hold_id = "hold-unknown"
    size = env.ledger_size()
    with pytest.raises(HoldNotFoundError):
        env.enforcer.settle(hold_id, [charge("1")])
    with pytest.raises(HoldNotFoundError):
        env.enforcer.charge(hold_id, charge("1"))
    assert env.ledger_size() == size


def test_charge_counts_as_spend_and_shrinks_the_hold(env: Env) -> None:
    agent = env.agent("worker")
    env.policy(agent, "10")
    hold = env.enforcer.reserve("worker", "5")

    (event,) = env.enforcer.charge(hold.hold_id, charge("2", metadata={"call": 1}))
    assert event.is_charge and event.hold_id == hold.hold_id and event.agent_id == agent
    assert event.metadata == {"call": 1}
    decision = env.enforcer.check("worker")
    assert (decision.spent, decision.held, decision.remaining) == (2, 3, 5)  # not 2 spent + 5 held

    env.enforcer.charge(hold.hold_id, charge("3"))
    decision = env.enforcer.check("worker")
    assert (decision.spent, decision.held, decision.remaining) == (5, 0, 5)
    assert env.enforcer.catch_up().hold(hold.hold_id) is not None  # charge never closes the hold

    settlement = env.enforcer.settle(hold.hold_id, [charge("0.25")])
    assert settlement.total == Decimal("5.25") and settlement.over_hold  # the earlier charges count
    assert [c.cost for c in settlement.charges] == [Decimal("0.25")]
    decision = env.enforcer.check("worker")
    assert (decision.spent, decision.held, decision.remaining) == (Decimal("5.25"), 0, Decimal("4.75"))


def test_charge_beyond_the_hold_or_after_expiry_is_flagged(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "1", ttl=60)
    (within,) = env.enforcer.charge(hold.hold_id, charge("1"))
    assert within.metadata is None
    (over,) = env.enforcer.charge(hold.hold_id, charge("0.01"))
    assert over.metadata == {"over_hold": True}
    env.clock.advance(seconds=60)
    (late,) = env.enforcer.charge(hold.hold_id, charge("0"))
    assert late.metadata == {"over_hold": True, "after_hold_expiry": True}
    assert env.enforcer.check("worker").spent == Decimal("1.01")


def test_charge_cannot_forge_entries_or_move_money(env: Env) -> None:
    agent = env.agent("worker")
    other = env.agent("other")
    env.policy(agent, "10")
    hold = env.enforcer.reserve("worker", "5")
    size = env.ledger_size()
    for item in (
        charge("0", kind="release"),
        charge("5", kind="hold", expires_at="2031-01-01T00:00:00Z"),
        charge("1", currency="EUR"),
        charge("1", agent_id=other),
        charge("1.0e-1", quantity="-1"),
    ):
        with pytest.raises((InvalidAmountError, InvalidLedgerEventError)):
            env.enforcer.charge(hold.hold_id, item)
    assert env.ledger_size() == size
    assert env.enforcer.catch_up().hold(hold.hold_id) is not None
    # naming the hold's own agent and currency is fine
    env.enforcer.charge(hold.hold_id, charge("1", agent_id=agent, currency="USD", kind="charge"))


def test_open_holds_and_spend_survive_a_restart(env: Env) -> None:
    parent = env.agent("team")
    child = env.agent("child", parent)
    env.policy(parent, "15")
    env.policy(child, "10")
    env.spend("child", "2.5")
    open_hold = env.enforcer.reserve("child", "4")
    charged = env.enforcer.reserve("child", "1")
    env.enforcer.charge(charged.hold_id, charge("0.4"))
    env.home.close()  # the "process" ends

    fresh = env.reopen()
    try:
        decision = fresh.enforcer.check("child")
        assert (decision.spent, decision.held) == (Decimal("2.9"), Decimal("4.6"))
        assert decision.remaining == Decimal("2.5")
        team = fresh.enforcer.check("team")
        assert (team.spent, team.held, team.remaining) == (Decimal("2.9"), Decimal("4.6"), Decimal("7.5"))
        state = fresh.enforcer.catch_up()
        assert {h.hold_id for h in state.open_holds(parent)} == {open_hold.hold_id, charged.hold_id}
        denial(lambda: fresh.enforcer.reserve("child", "2.6"))
        fresh.enforcer.settle(open_hold.hold_id, [charge("3")])
        fresh.enforcer.release(charged.hold_id)
        assert fresh.enforcer.check("child").remaining == Decimal("4.1")
        assert fresh.enforcer.catch_up().open_holds(parent) == []
        assert verify_ledger(fresh.home.ledger).ok
    finally:
        fresh.home.close()


def build_some_state(env: Env) -> dict[str, str]:
    """Spend, an open hold, a partly charged hold and an idempotent charge, for the restart tests."""
    parent = env.agent("team")
    env.policy(parent, "15")
    env.policy(env.agent("child", parent), "10")
    env.spend("child", "2.5")
    open_hold = env.enforcer.reserve("child", "4")
    charged = env.enforcer.reserve("child", "1")
    env.enforcer.charge(charged.hold_id, charge("0.4", idempotency_key="key-1"))
    return {"team": parent, "open": open_hold.hold_id, "charged": charged.hold_id}


def numbers(enforcer: Enforcer, agent: str) -> tuple[Any, ...]:
    decision = enforcer.check(agent)
    return decision.allowed, decision.policy_id, decision.spent, decision.held, decision.remaining


@pytest.mark.parametrize(
    "snapshot", ["saved", "stale", "corrupt", "missing", "other-ledger", "forged", "foreign-key", "unsealed"]
)
@pytest.mark.files_only(
    "edits the snapshot file (a sealed row on PostgreSQL: test_a_forged_snapshot_row_is_ignored)"
)
def test_a_restart_resumes_from_the_budget_snapshot_only_when_it_matches(
    env: Env, snapshot: str, tmp_path: Path
) -> None:
    ids = build_some_state(env)
    before = {agent: numbers(env.enforcer, agent) for agent in ("child", "team")}
    env.enforcer.close()  # saves the snapshot beside the ledger
    path = env.enforcer.snapshot_path
    assert path.exists() and path.parent == env.home.ledger_path.parent
    if snapshot == "stale":  # more entries after the snapshot was saved: folded in on open
        env.enforcer.release(ids["open"])
        env.spend("child", "0.1")
        before = {agent: numbers(env.enforcer, agent) for agent in ("child", "team")}
    elif snapshot == "corrupt":
        path.write_bytes(b'{"offset": 12, "state": {"last_event_id": ')
    elif snapshot == "missing":
        path.unlink()
    elif snapshot == "other-ledger":  # another ledger's numbers, its line ending at the same offset and id
        data = read_sealed(path, "budget")
        data["state"]["holds"] = []
        data["state"]["spend"] = []
        data["line_sha256"] = "0" * 64  # but that line was other bytes
        write_sealed(path, "budget", data)
    else:  # the attack: spend and holds wiped, offset and line hash kept, so only the seal tells
        data = read_sealed(path, "budget")
        data["state"]["holds"] = []
        data["state"]["spend"] = []
        if snapshot == "forged":  # the seal kept, the payload edited
            header, _, _payload = path.read_bytes().partition(b"\n")
            path.write_bytes(header + b"\n" + json.dumps(data).encode())
        elif snapshot == "foreign-key":  # sealed by another home's key
            write_sealed(path, "budget", data, key_path=tmp_path / "other-home" / "checkpoint.key")
        else:  # written as a plain JSON file, as before snapshots were sealed
            path.write_text(json.dumps(data))
    env.home.close()

    fresh = env.reopen()
    try:
        assert {agent: numbers(fresh.enforcer, agent) for agent in ("child", "team")} == before
        state = fresh.enforcer.catch_up()
        assert state.last_event_id == len(env.events())
        expected_open = {ids["charged"]} if snapshot == "stale" else {ids["open"], ids["charged"]}
        assert {h.hold_id for h in state.open_holds(ids["team"])} == expected_open
        assert state.charged_against(ids["charged"]) == Decimal("0.4")
        assert state.charge_with_key("key-1") is not None
        fresh.enforcer.settle(ids["charged"], [charge("0.6")])
        assert fresh.enforcer.catch_up().hold(ids["charged"]) is None
    finally:
        fresh.home.close()


@pytest.mark.files_only("replaces the ledger file")
def test_a_snapshot_of_a_replaced_ledger_is_not_trusted(env: Env) -> None:
    """A ledger started over (the old one removed) whose first line ends at the same offset, with the same
    event id, as the line a leftover snapshot recorded: the snapshot's numbers are not the ledger's.

    (While the new ledger is shorter than what the snapshot saw, the home is denied as a cut tail: the
    snapshot is set aside while the new ledger is begun, as an operator starting over would.)"""
    env.policy(env.agent("worker"), "10")
    env.enforcer.reserve("worker", "1.00")
    env.enforcer.close()
    env.home.close()
    snapshot = env.enforcer.snapshot_path
    for path in env.home.ledger_path.parent.glob("ledger.jsonl*"):
        if path.suffix != ".budget":
            path.unlink()
    aside = snapshot.rename(snapshot.with_name("set-aside"))

    second = env.reopen()
    second.enforcer.reserve("worker", "9.00")  # the same line length as the old event 1
    second.home.close()  # ends without Enforcer.close(): no snapshot of its own
    aside.rename(snapshot)  # the old snapshot is back beside the new ledger

    third = env.reopen()
    try:
        decision = third.enforcer.check("worker")
        assert (decision.held, decision.remaining) == (Decimal("9.00"), Decimal("1.00"))
        denial(lambda: third.enforcer.reserve("worker", "1.01"))
    finally:
        third.home.close()


def test_two_enforcers_on_one_ledger_see_each_other(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    other = env.reopen()
    try:
        env.enforcer.reserve("worker", "6")
        denial(lambda: other.enforcer.reserve("worker", "5"))
        other.enforcer.reserve("worker", "4")
        assert env.enforcer.check("worker").remaining == 0
    finally:
        other.home.close()


def counting(
    lines: Callable[..., Iterator[tuple[Any, bytes]]], read: list[bytes]
) -> Callable[..., Iterator[tuple[Any, bytes]]]:
    """``lines`` (a store's read), noting each line it yields in ``read``."""

    def counted(*args: Any) -> Iterator[tuple[Any, bytes]]:
        for position, line in lines(*args):
            read.append(line)
            yield position, line

    return counted


def test_a_step_reads_and_parses_what_another_process_appended_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer appends while a step waits for the ledger's lock. The step reads those lines under
    the lock and parses and validates each (it must: it chains after them, and a corrupt line is refused
    before anything chains onto it); the budget state folds in the same lines, checked, without reading
    them again, and takes the events the step built instead of parsing the same bytes again. A line the
    step did not parse (the writer's plain lines, checked by pattern) is parsed there."""
    worker = env.agent("worker")
    env.policy(worker, "10")
    other = env.reopen()
    try:
        other.enforcer.check("worker")
        store = other.enforcer.live.store
        begin = store.begin
        read: list[bytes] = []
        parsed: list[int] = []
        appended: list[int] = []

        def noting(validate: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], tuple[Any, ...]]:
            def validated(data: Any) -> tuple[Any, ...]:
                parsed.append(data["event_id"])
                return validate(data)

            return validated

        def appended_while_waiting() -> None:
            monkeypatch.setattr(store, "begin", begin)
            before = len(env.events())
            for _ in range(3):
                env.spend("worker", "1")
            env.enforcer.writer.append_event(worker, "llm.tokens", 1, "1")  # a plain line
            appended.extend(range(before + 1, len(env.events()) + 1))
            for name in ("new_lines", "iter_lines"):  # the append step's read, and a reader's
                monkeypatch.setattr(store, name, counting(getattr(store, name), read))
            for module in (ledger_module, replay_module):
                monkeypatch.setattr(module, "validate_event_dict", noting(module.validate_event_dict))
            begin()

        monkeypatch.setattr(store, "begin", appended_while_waiting)
        hold = other.enforcer.reserve("worker", "2")
        assert (hold.decision.spent, hold.decision.remaining) == (Decimal("4"), Decimal("6"))
        assert len(appended) >= 7
        assert len(read) == len(appended)
        assert len(set(read)) == len(read)
        assert Counter(event_id for event_id in parsed if event_id in appended) == dict.fromkeys(appended, 1)
    finally:
        other.home.close()


# ---------------------------------------------------------------------------------------------- windows


def test_yesterdays_spend_does_not_count_today(env: Env) -> None:
    env.clock.now = datetime(2030, 1, 15, 23, 58, 30, tzinfo=UTC)
    env.policy(env.agent("worker"), "10")
    env.spend("worker", "9.5")
    assert env.enforcer.check("worker").resets_at == MIDNIGHT_AFTER_NOON
    denial(lambda: env.enforcer.reserve("worker", "1"))
    env.clock.now = datetime(2030, 1, 15, 23, 59, 59, 999999, tzinfo=UTC)
    denial(lambda: env.enforcer.reserve("worker", "1"))

    env.clock.now = MIDNIGHT_AFTER_NOON
    decision = env.enforcer.check("worker")
    assert (decision.spent, decision.remaining) == (0, 10)
    assert decision.resets_at == datetime(2030, 1, 17, tzinfo=UTC)
    env.spend("worker", "10")
    assert not env.enforcer.check("worker").allowed


def test_a_hold_taken_yesterday_still_counts_until_it_expires(env: Env) -> None:
    env.clock.now = datetime(2030, 1, 15, 23, 59, tzinfo=UTC)
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "8", ttl=timedelta(minutes=5))
    env.clock.advance(minutes=2)  # 00:01 the next day
    decision = env.enforcer.check("worker")
    assert (decision.spent, decision.held) == (0, 8)
    settlement = env.enforcer.settle(hold.hold_id, [charge("7")])
    assert not settlement.after_expiry
    assert env.enforcer.check("worker").spent == 7  # settled today: counts today


def test_daily_window_in_a_time_zone(env: Env) -> None:
    berlin = WindowSpec.calendar("daily", "Europe/Berlin")
    env.clock.now = datetime(2030, 1, 15, 22, 30, tzinfo=UTC)  # 23:30 in Berlin
    env.policy(env.agent("worker"), "10", berlin)
    env.spend("worker", "10")
    assert env.enforcer.check("worker").resets_at == datetime(2030, 1, 15, 23, 0, tzinfo=UTC)
    env.clock.now = datetime(2030, 1, 15, 23, 0, tzinfo=UTC)  # Berlin midnight, 23:00 UTC
    assert env.enforcer.check("worker").remaining == 10


def test_rolling_window_lets_spend_drop_out(env: Env) -> None:
    env.policy(env.agent("worker"), "10", WindowSpec.rolling(timedelta(hours=1)))
    env.spend("worker", "6")  # at 12:00:00
    env.clock.advance(minutes=30)
    env.spend("worker", "4")  # at 12:30:00
    decision = env.enforcer.check("worker")
    assert not decision.allowed and decision.resets_at is None and decision.spent == 10

    env.clock.advance(minutes=29)  # 12:59: both still in the last hour
    assert env.enforcer.check("worker").spent == 10
    env.clock.advance(minutes=2)  # 13:01: the 12:00 charge has left the window
    decision = env.enforcer.check("worker")
    assert decision.allowed and decision.spent == 4 and decision.remaining == 6
    env.clock.advance(minutes=31)  # 13:32: both gone
    assert env.enforcer.check("worker").spent == 0


def test_total_window_never_resets(env: Env) -> None:
    env.policy(env.agent("worker"), "3", WindowSpec.calendar("total"))
    env.spend("worker", "3")
    env.clock.advance(days=400)
    decision = env.enforcer.check("worker")
    assert not decision.allowed and decision.resets_at is None


# ------------------------------------------------------------------------------------------- bad input


BAD_AMOUNTS = [
    1.5,
    float("nan"),
    float("inf"),
    "-1",
    Decimal("-0.01"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    "-0",
    "abc",
    "",
    " 1",
    "1_000",
    True,
    None,
    [1],
]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
def test_bad_amounts_are_refused_and_record_nothing(env: Env, amount: object) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "1")
    size = env.ledger_size()
    if amount is not None:
        with pytest.raises(InvalidAmountError):
            env.enforcer.check("worker", amount)
    with pytest.raises(InvalidAmountError):
        env.enforcer.reserve("worker", amount)
    with pytest.raises(InvalidAmountError):
        env.enforcer.settle(hold.hold_id, [charge("0.1"), {**charge("0"), "cost": amount}])
    with pytest.raises(InvalidAmountError):
        env.enforcer.charge(hold.hold_id, {**charge("0"), "cost": amount})
    assert env.ledger_size() == size
    assert env.enforcer.catch_up().hold(hold.hold_id) is not None


@pytest.mark.parametrize(
    "ttl",
    [
        0,
        -1,
        timedelta(0),
        timedelta(seconds=-5),
        timedelta(days=7, seconds=1),
        8 * 86400,
        float("nan"),
        float("inf"),
        -float("inf"),
        1e300,
        "60",
        None,
        True,
        Decimal(60),
    ],
    ids=repr,
)
def test_bad_ttl_is_refused_and_records_nothing(env: Env, ttl: Any) -> None:
    env.policy(env.agent("worker"), "10")
    with pytest.raises(InvalidAmountError):
        env.enforcer.reserve("worker", "1", ttl=ttl)
    assert env.ledger_size() == 0


def test_good_ttls(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    assert env.enforcer.reserve("worker", "1", ttl=0.5).expires_at == NOON + timedelta(milliseconds=500)
    assert env.enforcer.reserve("worker", "1", ttl=timedelta(days=7)).expires_at == NOON + timedelta(days=7)
    assert env.enforcer.reserve("worker", "1").expires_at == NOON + timedelta(minutes=5)


@pytest.mark.parametrize("currency", ["usd", "XXQ", "", None, "US"])
def test_bad_currency_is_refused(env: Env, currency: Any) -> None:
    env.policy(env.agent("worker"), "10")
    with pytest.raises(InvalidAmountError):
        env.enforcer.check("worker", "1", currency)
    with pytest.raises(InvalidAmountError):
        env.enforcer.reserve("worker", "1", currency)
    assert env.ledger_size() == 0


def test_unknown_or_malformed_agent_is_refused(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    for call in (
        lambda: env.enforcer.check("nobody"),
        lambda: env.enforcer.reserve("nobody", "1"),
        lambda: env.enforcer.reserve("00000000-0000-4000-8000-000000000000", "1"),
    ):
        with pytest.raises(AgentNotFoundError):
            call()
    for ref in ("", "   ", 42):
        with pytest.raises(InvalidAgentError):
            env.enforcer.reserve(ref, "1")  # type: ignore[arg-type]
    assert env.ledger_size() == 0


def test_malformed_settle_charges_are_refused_whole(env: Env) -> None:
    env.policy(env.agent("worker"), "10")
    hold = env.enforcer.reserve("worker", "1")
    size = env.ledger_size()
    bad_batches: list[list[dict[str, Any]]] = [
        [charge("0.1"), {**charge("0.1"), "agent_id": "x"}],  # unknown field
        [charge("0.1"), {**charge("0.1"), "kind": "release"}],
        [charge("0.1"), {"quantity": "1", "cost": "0.1"}],  # no resource_type
        [charge("0.1", quantity="-1")],
        [charge("0.1", resource="bad\nname")],
        [charge("0.1", metadata={"x": float("nan")})],
    ]
    for batch in bad_batches:
        with pytest.raises(CaracalError):
            env.enforcer.settle(hold.hold_id, batch)
    assert env.ledger_size() == size
    assert env.enforcer.catch_up().hold(hold.hold_id) is not None
    env.enforcer.settle(hold.hold_id, [charge("0.1")])


# ------------------------------------------------------------------------------------------ ledger sums


def test_ledger_query_sums_only_charges(env: Env) -> None:
    agent = env.agent("worker")
    env.policy(agent, "100")
    settled = env.enforcer.reserve("worker", "5")
    env.enforcer.settle(settled.hold_id, [charge("1.25", "llm.input")])
    env.enforcer.reserve("worker", "40")  # open: held, not spent
    released = env.enforcer.reserve("worker", "7")
    env.enforcer.release(released.hold_id)
    partly = env.enforcer.reserve("worker", "3")
    env.enforcer.charge(partly.hold_id, charge("0.5", "llm.output"))

    query = LedgerQuery(env.home.ledger)
    assert query.sum_spending(agent) == Decimal("1.75")
    assert query.aggregate_by_agent() == {agent: Decimal("1.75")}
    by_resource = query.summary_by_resource()
    assert set(by_resource) == {("llm.input", "USD"), ("llm.output", "USD")}
    assert HOLD_RESOURCE not in {key for key, _cur in by_resource}
    (day,) = query.summary_by_day().values()
    assert (day.events, day.cost) == (2, Decimal("1.75"))
    assert query.summarize("agent")[(agent, "USD")].events == 2
    assert query.sum_spending(agent) == env.enforcer.check("worker").spent

    charges = query.get_events()  # v0.1 callers sum this: charges only, so the sum is the spend
    assert [e.cost for e in charges] == [Decimal("1.25"), Decimal("0.5")]
    assert sum(e.cost for e in charges) == query.sum_spending(agent)
    everything = query.get_events(charges_only=False)
    assert len(everything) == len(env.events()) == 8  # holds and releases on request
    assert {e.kind for e in everything} == {"hold", "release", None}
    assert [e.event_id for e in query.iter_matching()] == [e.event_id for e in charges]
    assert len(list(query.iter_matching(charges_only=False))) == 8
    assert query.get_events(resource_type=HOLD_RESOURCE, agent_id=agent, charges_only=False)
