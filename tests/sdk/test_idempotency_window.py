"""Idempotency keys are remembered for a window (``[metering] idempotency_window``, 7 days by default),
measured on the ledger's time: a retry inside it returns the first charge (also after a restart from the
budget snapshot); a retry after it is a new charge; and the keys kept in memory and in the snapshot are one
window's, not the whole history's. Embedded clients with an injected clock on a real home."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from caracal.core.budget import DEFAULT_IDEMPOTENCY_WINDOW, BudgetState
from caracal.core.events import LedgerEvent
from caracal.exceptions import ConfigurationError
from caracal.sdk.client import CaracalClient
from tests import homes

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)
RESOURCE = "tool.search.calls"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(caracal_home: Path, clock: Clock) -> Callable[[], CaracalClient]:
    """A factory of embedded clients on the test's home (each one a fresh "process" once the last closed)."""
    made: list[CaracalClient] = []

    def make() -> CaracalClient:
        client = CaracalClient(clock=clock)
        made.append(client)
        return client

    first = make()
    first.register_agent("worker", "ops@example.com")
    first.create_policy("worker", "1000000", "total")
    first.set_price(RESOURCE, "0.01")
    yield make  # type: ignore[misc]
    for one in made:
        one.close()


def snapshot_keys(home: Path) -> list[str]:
    """The idempotency keys the sealed budget snapshot on disk carries."""
    data = homes.sealed_cache(home, "budget")
    assert data is not None
    records = [entry if isinstance(entry, dict) else entry[1] for entry in data["state"]["keys"]]
    return [LedgerEvent.from_dict(record).idempotency_key for record in records]


def charges(home: Path) -> list[LedgerEvent]:
    return homes.charges(home)


def test_a_retry_inside_the_window_returns_the_first_charge_across_a_restart(
    caracal_home: Path, clock: Clock, client: Callable[[], CaracalClient]
) -> None:
    first_client = client()
    first = first_client.emit_event("worker", RESOURCE, 1, idempotency_key="job-1")
    first_client.close()  # saves the snapshot: the next client resumes from it, no replay
    clock.now = T0 + DEFAULT_IDEMPOTENCY_WINDOW - timedelta(seconds=1)  # still inside the window
    again = client().emit_event("worker", RESOURCE, 1, idempotency_key="job-1")
    assert again.event_id == first.event_id
    assert len(charges(caracal_home)) == 1


def test_after_the_window_a_retry_is_a_new_charge_and_the_key_leaves_the_snapshot(
    caracal_home: Path, clock: Clock, client: Callable[[], CaracalClient]
) -> None:
    one = client()
    first = one.emit_event("worker", RESOURCE, 1, idempotency_key="job-1")
    one.close()
    assert snapshot_keys(caracal_home) == ["job-1"]
    clock.now = T0 + DEFAULT_IDEMPOTENCY_WINDOW  # a whole window later: forgotten
    other = client()
    second = other.emit_event("worker", RESOURCE, 1, idempotency_key="job-1")
    assert second.event_id != first.event_id  # the documented contract: a new charge
    assert [e.idempotency_key for e in charges(caracal_home)] == ["job-1", "job-1"]
    assert other.emit_event("worker", RESOURCE, 1, idempotency_key="job-1").event_id == second.event_id
    other.emit_event("worker", RESOURCE, 1, idempotency_key="job-2")
    other.close()
    # The snapshot keeps the key once, for the new charge (the old one is gone), and the new key.
    assert snapshot_keys(caracal_home) == ["job-1", "job-2"]
    state = client().enforcer.catch_up()
    assert state.charge_with_key("job-1") is not None
    assert state.charge_with_key("job-1").event_id == second.event_id  # type: ignore[union-attr]


def test_the_window_is_a_setting(
    caracal_home: Path, clock: Clock, client: Callable[[], CaracalClient]
) -> None:
    (caracal_home / "config.toml").write_text("[metering]\nidempotency_window = 3600\n")
    one = client()
    first = one.emit_event("worker", RESOURCE, 1, idempotency_key="job-1")
    clock.now = T0 + timedelta(minutes=59)
    assert one.emit_event("worker", RESOURCE, 1, idempotency_key="job-1").event_id == first.event_id
    clock.now = T0 + timedelta(hours=1)
    assert one.emit_event("worker", RESOURCE, 1, idempotency_key="job-1").event_id != first.event_id


@pytest.mark.parametrize("value", ["0", "-5", "'week'"])
def test_a_bad_window_is_refused(caracal_home: Path, value: str) -> None:
    (caracal_home / "config.toml").write_text(f"[metering]\nidempotency_window = {value}\n")
    with pytest.raises(ConfigurationError, match=r"metering\.idempotency_window"):
        CaracalClient().check("anyone")


def test_keys_held_are_bounded_by_the_window_not_the_history(
    caracal_home: Path, clock: Clock, client: Callable[[], CaracalClient]
) -> None:
    """50,000 keyed charges, one every 60 s (about 35 simulated days): the state and the snapshot keep only
    the last 7 days' keys (10,080 of them), and a retry of a recent one is still recognised."""
    one = client()
    meter = one.meter  # embedded: the same Meter emit_event uses, without a round of client checks
    total, step = 50_000, timedelta(seconds=60)
    firsts = {}
    for n in range(total):
        clock.now = T0 + n * step
        event = meter.emit("worker", RESOURCE, 1, idempotency_key=f"job-{n}")
        if n in (0, total - 1):
            firsts[n] = event
    one.close()  # saves the snapshot
    window_keys = int(DEFAULT_IDEMPOTENCY_WINDOW / step)  # 10,080
    kept = snapshot_keys(caracal_home)
    assert len(kept) == window_keys
    assert kept[0] == f"job-{total - window_keys}" and kept[-1] == f"job-{total - 1}"
    assert one.enforcer.catch_up().idempotency_key_count == window_keys
    again = client()
    assert again.emit_event("worker", RESOURCE, 1, idempotency_key=f"job-{total - 1}").event_id == (
        firsts[total - 1].event_id
    )
    forgotten = again.emit_event("worker", RESOURCE, 1, idempotency_key="job-0")  # a new charge
    assert forgotten.event_id > firsts[total - 1].event_id


def test_a_snapshot_with_keys_out_of_order_is_refused() -> None:
    state = BudgetState(lambda agent: (agent,))
    for n, minutes in enumerate((0, 5)):
        at = (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        state.apply(LedgerEvent(n + 1, "a", at, "r", Decimal(1), Decimal(1), "USD", idempotency_key=f"k{n}"))
    good = orjson.loads(orjson.dumps(state.to_snapshot()))
    assert BudgetState.from_snapshot(good, lambda agent: (agent,)).charge_with_key("k1") is not None
    for broken in ({**good, "keys": good["keys"][::-1]}, {**good, "keys": [good["keys"][0]] * 2}):
        with pytest.raises(ValueError):
            BudgetState.from_snapshot(broken, lambda agent: (agent,))
