"""What a hold's expiry means (release, or charge at its bound), how skewed clocks are kept from stretching
a hold, and how a charge beyond a hold is made loud: on real files (an EmbeddedHome in a temporary home)
with injected clocks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.enforcement import ESTIMATED_RESOURCE, Enforcer, OverHold
from caracal.core.ledger import LedgerQuery, LedgerReader, LedgerWriter
from caracal.core.verify import verify_ledger
from caracal.core.windows import WindowSpec
from caracal.exceptions import (
    BudgetExceededError,
    HoldNotFoundError,
    InvalidAmountError,
    InvalidLedgerEventError,
)
from caracal.storage.home import EmbeddedHome

UTC = timezone.utc
NOON = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = NOON):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def home(caracal_home: Path) -> Iterator[EmbeddedHome]:
    home = EmbeddedHome(caracal_home)
    agent = home.agents.register("worker", "team@example.com").agent_id
    home.policies.create(agent, "1.00", WindowSpec.calendar("daily"), "USD")
    yield home
    home.close()


def enforcer(home: EmbeddedHome, clock: Clock) -> Enforcer:
    return Enforcer(home.writer(), home.directory, clock=clock)


def remaining(enforcer: Enforcer) -> Decimal:
    return enforcer.status("worker")[0].remaining


# ------------------------------------------------------------------------------------ charge on expiry


def test_a_charge_on_expiry_hold_keeps_counting_and_expires_into_an_estimated_charge(
    home: EmbeddedHome,
) -> None:
    clock = Clock()
    enf = enforcer(home, clock)
    hold = enf.reserve("worker", "0.40", ttl=60, on_expiry="charge", metadata={"model": "m"})
    plain = enf.reserve("worker", "0.10", ttl=60)
    assert hold.on_expiry == "charge" and plain.on_expiry == "release"
    enf.charge(hold.hold_id, {"resource_type": "llm.tokens", "quantity": "1", "cost": "0.15"})
    clock.advance(seconds=61)
    # The plain hold stopped counting; the charge hold still reserves what is left of it (0.25).
    assert remaining(enf) == Decimal("1.00") - Decimal("0.15") - Decimal("0.25")
    assert not enf.check("worker", "0.70").allowed  # freeing it first would let it be spent twice
    assert sorted(enf.expire()) == sorted([hold.hold_id, plain.hold_id])
    events = list(LedgerReader(home.ledger).iter_events())
    estimated = [e for e in events if e.resource_type == ESTIMATED_RESOURCE]
    assert len(estimated) == 1
    bill = estimated[0]
    assert bill.is_charge and bill.cost == Decimal("0.25") and bill.hold_id == hold.hold_id
    assert (
        bill.metadata is not None
        and bill.metadata["estimated"] is True
        and "expired" in bill.metadata["reason"]
    )
    release = events[bill.event_id]  # the release follows the charge, in the same append
    assert release.kind == "release" and release.hold_id == hold.hold_id
    assert release.metadata == {"reason": "expired_charged"}
    hold_entry = next(e for e in events if e.kind == "hold" and e.hold_id == hold.hold_id)
    assert hold_entry.on_expiry == "charge" and hold_entry.metadata == {"model": "m"}
    assert next(e for e in events if e.hold_id == plain.hold_id).on_expiry is None  # release: field absent
    # Billed at the bound, exactly once: spend is the partial charge plus what was left.
    assert remaining(enf) == Decimal("0.60")
    with pytest.raises(BudgetExceededError):
        enf.reserve("worker", "0.70")
    summary = LedgerQuery(home.ledger).summary_by_resource()
    assert {resource for resource, _currency in summary} == {"llm.tokens", ESTIMATED_RESOURCE}
    assert enf.expire() == []
    with pytest.raises(HoldNotFoundError):
        enf.settle(hold.hold_id, [])
    assert verify_ledger(home.ledger).ok


def test_any_later_write_bills_an_expired_charge_hold(home: EmbeddedHome) -> None:
    """No server needs to run again: the next group of writes of any process closes it first."""
    clock = Clock()
    first = enforcer(home, clock)
    hold = first.reserve("worker", "0.30", ttl=60, on_expiry="charge")
    clock.advance(minutes=10)
    other_home = EmbeddedHome(home.home)
    try:
        other = enforcer(other_home, clock)
        other.reserve("worker", "0.05")  # an unrelated write by another process's enforcer
        charges = [e for e in LedgerReader(home.ledger).iter_events() if e.is_charge]
        assert [(e.resource_type, e.cost, e.hold_id) for e in charges] == [
            (ESTIMATED_RESOURCE, Decimal("0.30"), hold.hold_id)
        ]
        assert other.catch_up().hold(hold.hold_id) is None
    finally:
        other_home.close()


def test_a_settled_charge_hold_is_billed_at_its_usage_not_its_bound(home: EmbeddedHome) -> None:
    clock = Clock()
    enf = enforcer(home, clock)
    hold = enf.reserve("worker", "0.30", ttl=60, on_expiry="charge")
    enf.settle(hold.hold_id, [{"resource_type": "llm.tokens", "quantity": "10", "cost": "0.02"}])
    clock.advance(minutes=10)
    assert enf.expire() == []
    assert LedgerQuery(home.ledger).sum_spending(hold.agent_id) == Decimal("0.02")


def test_a_charge_hold_survives_a_restart_and_its_snapshot(home: EmbeddedHome) -> None:
    clock = Clock()
    enf = enforcer(home, clock)
    hold = enf.reserve("worker", "0.30", ttl=60, on_expiry="charge")
    enf.close()  # saves the budget snapshot
    clock.advance(minutes=10)
    again = EmbeddedHome(home.home)
    try:
        restarted = Enforcer(again.writer(), again.directory, clock=clock)
        assert remaining(restarted) == Decimal("0.70")  # still held after expiry, from the snapshot
        assert restarted.expire() == [hold.hold_id]
        assert remaining(restarted) == Decimal("0.70")  # now spent instead of held
    finally:
        again.close()


def test_on_expiry_is_validated(home: EmbeddedHome, caracal_home: Path) -> None:
    enf = enforcer(home, Clock())
    with pytest.raises(InvalidAmountError, match="on_expiry"):
        enf.reserve("worker", "0.10", on_expiry="refund")
    key = caracal_home / "keys" / "x.key"
    writer = LedgerWriter(caracal_home / "x" / "other.jsonl", signing_key_path=key)
    try:
        base = {"agent_id": "a", "resource_type": "r", "quantity": "1", "cost": "1"}
        with pytest.raises(InvalidLedgerEventError, match="only for hold entries"):
            writer.append_events([{**base, "on_expiry": "charge"}])
        with pytest.raises(InvalidLedgerEventError, match="on_expiry must be one of"):
            writer.append_events(
                [{**base, "kind": "hold", "hold_id": "h", "expires_at": NOON, "on_expiry": "never"}]
            )
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------- clock skew


def test_a_hold_written_by_a_clock_a_day_ahead_expires_after_its_ttl(home: EmbeddedHome) -> None:
    ahead = Clock(NOON + timedelta(days=1))
    skewed = enforcer(home, ahead)
    skewed.reserve("worker", "0.80", ttl=60)
    normal_home = EmbeddedHome(home.home)
    try:
        clock = Clock()
        normal = Enforcer(normal_home.writer(), normal_home.directory, clock=clock)
        assert normal.status("worker")[0].held == Decimal("0.80")  # it counts for its TTL...
        clock.advance(seconds=61)
        assert normal.status("worker")[0].held == Decimal(0)  # ...not for a day
        normal.reserve("worker", "0.90")
    finally:
        normal_home.close()


# -------------------------------------------------------------------------------------------- over hold


def test_a_settle_beyond_its_hold_is_loud(home: EmbeddedHome, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[OverHold] = []
    enf = Enforcer(home.writer(), home.directory, clock=Clock(), on_over_hold=seen.append)
    hold = enf.reserve("worker", "0.0002")
    with caplog.at_level(logging.WARNING, logger="caracal.enforcement"):
        settlement = enf.settle(
            hold.hold_id, [{"resource_type": "llm.tokens", "quantity": "1", "cost": "12.50"}]
        )
    assert settlement.over_hold
    assert seen == [OverHold(hold.agent_id, hold.hold_id, Decimal("0.0002"), Decimal("12.50"), "USD")]
    message = next(
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "caracal.enforcement"
    )
    assert "worker" in message and hold.hold_id in message and "12.50" in message and "0.0002" in message
    status = enf.status("worker")[0]
    assert status.remaining == Decimal("-11.50") and status.over_limit
    assert status.to_dict()["over_limit"] is True
