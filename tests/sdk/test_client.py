"""CaracalClient as agent code uses it: budget_check, guard, emit_event, idempotency, restarts."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.ledger import LedgerQuery
from caracal.exceptions import (
    AgentNotFoundError,
    BudgetExceededError,
    CaracalError,
    ConfigurationError,
    IdempotencyConflictError,
    InvalidMeteringEventError,
    UnknownPriceError,
)
from caracal.sdk.client import CaracalClient


@pytest.fixture
def client(caracal_home: Path) -> CaracalClient:
    client = CaracalClient()
    client.register_agent("my-agent", "user@example.com")
    client.create_policy("my-agent", "1.00", "daily")
    client.set_price("tool.search.calls", "0.10")
    yield client
    client.close()


def charges(client: CaracalClient) -> list:
    return LedgerQuery(client.home.ledger_path).get_events(charges_only=True)


def test_the_original_quick_start(client: CaracalClient) -> None:
    with client.budget_check(agent_id="my-agent"):
        pass
    event = client.emit_event(agent_id="my-agent", resource_type="openai.gpt4.input_tokens", quantity=1000)
    assert event.cost == Decimal("0.030000")  # GPT-4 input: $30 per million tokens, exactly
    assert [e.event_id for e in charges(client)] == [event.event_id]


def test_budget_check_reserves_then_settles_what_the_block_charged(client: CaracalClient) -> None:
    with client.budget_check("my-agent", estimated_cost="0.50") as scope:
        assert client.check("my-agent").held == Decimal("0.50")
        client.emit_event("my-agent", "tool.search.calls", 2)
    assert scope.spent == Decimal("0.20")
    assert scope.settlement is not None and not scope.settlement.over_hold
    status = client.check("my-agent")
    assert (status.spent, status.held, status.remaining) == (Decimal("0.20"), 0, Decimal("0.80"))
    assert all(e.hold_id == scope.hold.hold_id for e in charges(client))


def test_a_denied_block_never_runs(client: CaracalClient) -> None:
    ran = []
    with pytest.raises(BudgetExceededError) as denied, client.budget_check("my-agent", estimated_cost="1.01"):
        ran.append(True)
    assert ran == []
    assert denied.value.decision.remaining == Decimal("1.00")
    assert "1.00" in str(denied.value)


def test_an_exception_in_the_block_still_closes_the_hold(client: CaracalClient) -> None:
    with pytest.raises(RuntimeError), client.budget_check("my-agent", estimated_cost="0.90"):
        client.emit_event("my-agent", "tool.search.calls", 1)
        raise RuntimeError("tool crashed")
    decision = client.check("my-agent")
    assert decision.held == 0 and decision.spent == Decimal("0.10")  # the money spent stays spent
    with pytest.raises(RuntimeError), client.budget_check("my-agent", estimated_cost="0.90"):
        raise RuntimeError("crashed before using anything")
    assert client.check("my-agent").held == 0


def test_without_an_estimate_budget_check_only_checks(client: CaracalClient) -> None:
    with client.budget_check("my-agent") as scope:
        assert scope.hold is None
        client.emit_event("my-agent", "tool.search.calls", 10)  # uses the whole budget
    with pytest.raises(BudgetExceededError), client.budget_check("my-agent"):
        pytest.fail("no budget remains: the block must not run")


def test_guard_wraps_functions_and_coroutines(client: CaracalClient) -> None:
    @client.guard("my-agent", estimated_cost="0.30")
    def search(n: int) -> int:
        client.emit_event("my-agent", "tool.search.calls", n)
        return n

    @client.guard("my-agent", estimated_cost="0.30")
    async def asearch(n: int) -> int:
        client.emit_event("my-agent", "tool.search.calls", n)
        return n

    assert search(2) == 2
    assert asyncio.run(asearch(3)) == 3
    assert client.check("my-agent").spent == Decimal("0.50")
    assert search.__name__ == "search"
    with pytest.raises(BudgetExceededError):
        for _ in range(10):
            search(3)


def test_async_budget_check(client: CaracalClient) -> None:
    async def main() -> Decimal:
        async with client.abudget_check("my-agent", estimated_cost="0.40") as scope:
            client.emit_event("my-agent", "tool.search.calls", 1)
        return scope.spent

    assert asyncio.run(main()) == Decimal("0.10")
    assert client.check("my-agent").held == 0


def test_idempotency_keys_record_one_charge(client: CaracalClient) -> None:
    first = client.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-1")
    again = client.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-1")
    assert again.event_id == first.event_id
    assert len(charges(client)) == 1
    with pytest.raises(IdempotencyConflictError):
        client.emit_event("my-agent", "tool.search.calls", 2, idempotency_key="req-1")
    assert len(charges(client)) == 1


def test_idempotency_survives_a_restart(caracal_home: Path, client: CaracalClient) -> None:
    first = client.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-9")
    client.close()
    other = CaracalClient()
    assert (
        other.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-9").event_id
        == first.event_id
    )
    other.close()


def test_a_backdated_timestamp_cannot_leave_the_current_window(client: CaracalClient) -> None:
    long_ago = datetime.now(timezone.utc) - timedelta(days=30)
    event = client.emit_event("my-agent", "tool.search.calls", 5, timestamp=long_ago)
    assert event.metadata is not None and event.metadata["occurred_at"].startswith(
        long_ago.date().isoformat()
    )
    assert client.check("my-agent").spent == Decimal("0.50")


def test_unknown_prices_and_agents_are_refused_and_record_nothing(client: CaracalClient) -> None:
    with pytest.raises(UnknownPriceError):
        client.emit_event("my-agent", "tool.never_priced.calls", 1)
    with pytest.raises(AgentNotFoundError):
        client.emit_event("nobody", "tool.search.calls", 1)
    with pytest.raises(InvalidMeteringEventError):
        client.emit_event("my-agent", "tool.search.calls", 0.5)  # a float
    assert charges(client) == []


def test_budgets_hold_across_clients_and_restarts(caracal_home: Path, client: CaracalClient) -> None:
    hold = client.reserve("my-agent", "0.70", ttl=60)
    other = CaracalClient()
    with pytest.raises(BudgetExceededError):
        other.reserve("my-agent", "0.40")
    client.close()
    resumed = CaracalClient()  # resumes from the budget snapshot
    assert resumed.check("my-agent").held == Decimal("0.70")
    resumed.settle(hold, [{"resource_type": "tool.search.calls", "quantity": "7", "cost": "0.70"}])
    assert other.check("my-agent").remaining == Decimal("0.30")
    other.close()
    resumed.close()


def test_remote_transport_is_not_here_yet() -> None:
    with pytest.raises(ConfigurationError):
        CaracalClient(base_url="http://127.0.0.1:1", api_key="k")


def test_bad_calls_raise_caracal_errors_and_change_nothing(client: CaracalClient) -> None:
    size = client.home.ledger_path.stat().st_size if client.home.ledger_path.exists() else 0
    for call in (
        lambda: client.reserve("my-agent", "-1"),
        lambda: client.reserve("my-agent", "NaN"),
        lambda: client.reserve("my-agent", 0.5),
        lambda: client.reserve("my-agent", "1", ttl=0),
        lambda: client.check("ghost"),
        lambda: client.settle("hold-unknown"),
    ):
        with pytest.raises(CaracalError):
            call()
    assert client.release("hold-unknown") is False
    assert (client.home.ledger_path.stat().st_size if client.home.ledger_path.exists() else 0) == size


def test_config_toml_is_read(caracal_home: Path) -> None:
    (caracal_home / "config.toml").write_text(
        "[holds]\ndefault_ttl = 42\n[pricing]\nuse_llm_prices = false\n"
    )
    client = CaracalClient()
    client.register_agent("a", "o@example.com")
    client.create_policy("a", "5")
    hold = client.reserve("a", "1")
    assert 41 <= (hold.expires_at - client.enforcer.now()).total_seconds() <= 42
    with pytest.raises(UnknownPriceError):  # LLM prices switched off by the file
        client.emit_event("a", "openai.gpt4.input_tokens", 10)
    client.close()


@pytest.mark.parametrize(
    "text",
    ["[holds]\ndefault_ttl = 'soon'\n", "[holds]\ndefault_tll = 5\n", "[nope]\n", "not toml at all ["],
)
def test_a_bad_config_toml_fails_closed_with_a_clear_error(caracal_home: Path, text: str) -> None:
    (caracal_home / "config.toml").write_text(text)
    with pytest.raises(ConfigurationError) as error:
        CaracalClient()
    assert "config.toml" in str(error.value)


def test_a_corrupt_ledger_denies_every_reservation(caracal_home: Path, client: CaracalClient) -> None:
    client.emit_event("my-agent", "tool.search.calls", 1)
    client.close()
    ledger = caracal_home / "data" / "ledger.jsonl"
    with ledger.open("ab") as handle:
        handle.write(b'{"event_id": "garbage"}\n')
    fresh = CaracalClient()
    ran = []
    with pytest.raises(CaracalError), fresh.budget_check("my-agent", estimated_cost="0.10"):
        ran.append(True)
    assert ran == []
    fresh.home.close()


def test_a_held_lock_times_out_and_denies(caracal_home: Path, client: CaracalClient) -> None:
    import fcntl
    import os

    client.check("my-agent")
    (caracal_home / "config.toml").write_text("[ledger]\nlock_timeout = 0.2\n")
    impatient = CaracalClient()
    lock = os.open(caracal_home / "data" / "ledger.jsonl.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process stuck holding the lock
    try:
        with pytest.raises(CaracalError) as denied, impatient.budget_check("my-agent", estimated_cost="0.10"):
            pytest.fail("must not run while the budget cannot be proven")
        assert "lock" in str(denied.value)
    finally:
        os.close(lock)
    impatient.close()
