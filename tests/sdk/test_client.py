"""CaracalClient as agent code uses it: budget_check, guard, emit_event, idempotency, restarts.

Every test runs on both transports (``sdk``: embedded, and remote against a server on the same home), except
the few marked ``embedded_only`` that are about the embedded client's own files and config."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.ledger import LedgerEvent, LedgerQuery
from caracal.exceptions import (
    AgentNotFoundError,
    BudgetExceededError,
    CaracalError,
    ConfigurationError,
    DuplicateAgentError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InvalidAgentError,
    InvalidMeteringEventError,
    UnknownPriceError,
)
from caracal.sdk.client import CaracalClient
from tests.pg import ledger_end
from tests.sdk.conftest import Transport


@pytest.fixture
def charges(sdk: Transport) -> Callable[[], list[LedgerEvent]]:
    """The charges in the home's ledger, read from the file (what was acknowledged is on disk)."""

    def read() -> list[LedgerEvent]:
        return LedgerQuery(sdk.ledger).get_events(charges_only=True)

    return read


def ledger_size(sdk: Transport) -> int:
    return ledger_end(sdk.ledger)


def test_the_original_quick_start(client: CaracalClient, charges: Callable[[], list[LedgerEvent]]) -> None:
    pytest.importorskip("genai_prices", reason="the quick start's LLM price comes from genai-prices (3.11+)")
    with client.budget_check(agent_id="my-agent"):
        pass
    event = client.emit_event(agent_id="my-agent", resource_type="openai.gpt4.input_tokens", quantity=1000)
    assert event.cost == Decimal("0.030000")  # GPT-4 input: $30 per million tokens, exactly
    assert [e.event_id for e in charges()] == [event.event_id]


def test_budget_check_reserves_then_settles_what_the_block_charged(
    client: CaracalClient, charges: Callable[[], list[LedgerEvent]]
) -> None:
    with client.budget_check("my-agent", estimated_cost="0.50") as scope:
        assert client.check("my-agent").held == Decimal("0.50")
        client.emit_event("my-agent", "tool.search.calls", 2)
    assert scope.spent == Decimal("0.20")
    assert scope.settlement is not None and not scope.settlement.over_hold
    status = client.check("my-agent")
    assert (status.spent, status.held, status.remaining) == (Decimal("0.20"), 0, Decimal("0.80"))
    assert scope.hold is not None and len(charges()) == 1
    assert all(e.hold_id == scope.hold.hold_id for e in charges())


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


def test_idempotency_keys_record_one_charge(
    client: CaracalClient, charges: Callable[[], list[LedgerEvent]]
) -> None:
    first = client.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-1")
    again = client.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-1")
    assert again.event_id == first.event_id
    assert len(charges()) == 1
    with pytest.raises(IdempotencyConflictError):
        client.emit_event("my-agent", "tool.search.calls", 2, idempotency_key="req-1")
    assert len(charges()) == 1


def test_idempotency_survives_a_restart(sdk: Transport, client: CaracalClient) -> None:
    first = client.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-9")
    client.close()
    sdk.restart()
    other = sdk.client()
    assert (
        other.emit_event("my-agent", "tool.search.calls", 1, idempotency_key="req-9").event_id
        == first.event_id
    )


def test_a_backdated_timestamp_cannot_leave_the_current_window(client: CaracalClient) -> None:
    long_ago = datetime.now(timezone.utc) - timedelta(days=30)
    event = client.emit_event("my-agent", "tool.search.calls", 5, timestamp=long_ago)
    assert event.metadata is not None and event.metadata["occurred_at"].startswith(
        long_ago.date().isoformat()
    )
    assert client.check("my-agent").spent == Decimal("0.50")


def test_unknown_prices_and_agents_are_refused_and_record_nothing(
    client: CaracalClient, charges: Callable[[], list[LedgerEvent]]
) -> None:
    with pytest.raises(UnknownPriceError):
        client.emit_event("my-agent", "tool.never_priced.calls", 1)
    with pytest.raises(AgentNotFoundError):
        client.emit_event("nobody", "tool.search.calls", 1)
    with pytest.raises(InvalidMeteringEventError):
        client.emit_event("my-agent", "tool.search.calls", 0.5)  # a float
    assert charges() == []


def test_budgets_hold_across_clients_and_restarts(sdk: Transport, client: CaracalClient) -> None:
    hold = client.reserve("my-agent", "0.70", ttl=60)
    other = sdk.client()
    with pytest.raises(BudgetExceededError):
        other.reserve("my-agent", "0.40")
    client.close()
    sdk.restart()
    resumed = sdk.client()  # resumes from the budget snapshot
    assert resumed.check("my-agent").held == Decimal("0.70")
    resumed.settle(hold, [{"resource_type": "tool.search.calls", "quantity": "7", "cost": "0.70"}])
    assert other.check("my-agent").remaining == Decimal("0.30")


def test_budget_status_lists_the_policies_over_the_agent(client: CaracalClient) -> None:
    child = client.register_agent("child", "user@example.com", parent="my-agent")
    client.create_policy(child.agent_id, "0.50", "total")
    assert client.get_agent("child") == child
    with client.budget_check("child", estimated_cost="0.30"):
        client.emit_event(child.agent_id, "tool.search.calls", 2)
    statuses = client.budget_status("child")
    assert [(s.policy.agent_id, s.policy.limit, s.spent, s.held, s.remaining) for s in statuses] == [
        (child.agent_id, Decimal("0.50"), Decimal("0.20"), Decimal(0), Decimal("0.30")),
        (
            client.get_agent("my-agent").agent_id,
            Decimal("1.00"),
            Decimal("0.20"),
            Decimal(0),
            Decimal("0.80"),
        ),
    ]
    with pytest.raises(AgentNotFoundError):
        client.budget_status("nobody")


def test_emit_for_another_agent_inside_a_block_is_not_charged_to_its_hold(client: CaracalClient) -> None:
    other = client.register_agent("other-agent", "user@example.com")
    client.create_policy("other-agent", "1.00")
    with client.budget_check("my-agent", estimated_cost="0.50") as scope:
        mine = client.emit_event(client.get_agent("my-agent").agent_id, "tool.search.calls", 1)
        theirs = client.emit_event("other-agent", "tool.search.calls", 1)
    assert scope.hold is not None and mine.hold_id == scope.hold.hold_id
    assert theirs.hold_id is None and theirs.agent_id == other.agent_id
    assert scope.charges == [mine]


def test_settle_and_release_by_hand(client: CaracalClient) -> None:
    hold = client.reserve("my-agent", Decimal("0.40"), ttl=timedelta(minutes=5))
    assert (hold.amount, hold.decision.allowed) == (Decimal("0.40"), True)
    assert client.check("my-agent").held == Decimal("0.40")
    settlement = client.settle(
        hold.hold_id,
        [
            {
                "resource_type": "tool.search.calls",
                "quantity": 5,
                "cost": Decimal("0.50"),
                "metadata": {"n": 1},
            }
        ],
    )
    assert (settlement.total, settlement.held, settlement.over_hold) == (
        Decimal("0.50"),
        Decimal("0.40"),
        True,
    )
    assert settlement.charges[0].cost == Decimal("0.50") and settlement.charges[0].metadata is not None
    with pytest.raises(HoldNotFoundError):
        client.settle(hold)
    second = client.reserve("my-agent", "0.10")
    assert client.release(second) is True
    assert client.release(second) is False
    assert client.check("my-agent", "0.50").allowed is True
    assert client.check("my-agent", "0.51").allowed is False


def test_constructor_arguments_are_checked(caracal_home: Path) -> None:
    with pytest.raises(ConfigurationError):
        CaracalClient(base_url="http://127.0.0.1:1")  # no api_key
    with pytest.raises(ConfigurationError):
        CaracalClient(api_key="ck_x")  # no base_url
    with pytest.raises(ConfigurationError):
        CaracalClient(caracal_home, base_url="http://127.0.0.1:1", api_key="ck_x")
    with pytest.raises(ConfigurationError):
        CaracalClient(timeout=3)  # a remote setting
    embedded = CaracalClient(caracal_home)
    assert isinstance(embedded, CaracalClient) and embedded.home.home == caracal_home
    embedded.close()


def test_bad_calls_raise_caracal_errors_and_change_nothing(sdk: Transport, client: CaracalClient) -> None:
    size = ledger_size(sdk)
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
    assert ledger_size(sdk) == size


def test_config_toml_is_read(sdk: Transport, caracal_home: Path) -> None:
    (caracal_home / "config.toml").write_text(
        "[holds]\ndefault_ttl = 42\n[pricing]\nuse_llm_prices = false\n"
    )
    client = sdk.client()  # remote: the server reads the home's config.toml
    client.register_agent("a", "o@example.com")
    client.create_policy("a", "5")
    before = datetime.now(timezone.utc)
    hold = client.reserve("a", "1")
    after = datetime.now(timezone.utc)
    assert before + timedelta(seconds=42) <= hold.expires_at <= after + timedelta(seconds=42)
    with pytest.raises(UnknownPriceError):  # LLM prices switched off by the file
        client.emit_event("a", "openai.gpt4.input_tokens", 10)


@pytest.mark.embedded_only(
    "the embedded client reads config.toml itself; a remote client reads no local file"
)
@pytest.mark.parametrize(
    "text",
    ["[holds]\ndefault_ttl = 'soon'\n", "[holds]\ndefault_tll = 5\n", "[nope]\n", "not toml at all ["],
)
def test_a_bad_config_toml_fails_closed_with_a_clear_error(
    sdk: Transport, caracal_home: Path, text: str
) -> None:
    (caracal_home / "config.toml").write_text(text)
    with pytest.raises(ConfigurationError) as error:
        CaracalClient()
    assert "config.toml" in str(error.value)


@pytest.mark.embedded_only(
    "a server refuses to start on a corrupt ledger (server tests); a client of a server that is not there "
    "is denied (test_remote.py)"
)
@pytest.mark.files_only("corrupts the ledger file (tampering on PostgreSQL: tests/storage/postgres)")
def test_a_corrupt_ledger_denies_every_reservation(
    sdk: Transport, caracal_home: Path, client: CaracalClient
) -> None:
    client.emit_event("my-agent", "tool.search.calls", 1)
    client.close()
    sdk.stop()
    ledger = caracal_home / "data" / "ledger.jsonl"
    with ledger.open("ab") as handle:
        handle.write(b'{"event_id": "garbage"}\n')
    fresh = sdk.client()
    ran = []
    with pytest.raises(CaracalError), fresh.budget_check("my-agent", estimated_cost="0.10"):
        ran.append(True)
    assert ran == []


@pytest.mark.files_only(
    "holds the ledger file's flock (the database's lock timeout: "
    "tests/storage/postgres/test_ledger_store.py)"
)
def test_a_held_lock_times_out_and_denies(sdk: Transport, caracal_home: Path, client: CaracalClient) -> None:
    import fcntl
    import os

    client.check("my-agent")
    (caracal_home / "config.toml").write_text("[ledger]\nlock_timeout = 0.2\n")
    sdk.restart()
    impatient = sdk.client()
    lock = os.open(caracal_home / "data" / "ledger.jsonl.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process stuck holding the lock
    try:
        with pytest.raises(CaracalError) as denied, impatient.budget_check("my-agent", estimated_cost="0.10"):
            pytest.fail("must not run while the budget cannot be proven")
        assert "lock" in str(denied.value)
    finally:
        os.close(lock)


def test_agent_names_with_odd_characters(client: CaracalClient) -> None:
    for name in ("a b?c#d%2F", "..x", "50% off"):
        agent = client.register_agent(name, "user@example.com")
        client.create_policy(name, "1.00")
        assert client.get_agent(name) == agent
        assert [status.policy.agent_id for status in client.budget_status(name)] == [agent.agent_id]
        with client.budget_check(name, estimated_cost="0.20") as scope:
            client.emit_event(name, "tool.search.calls", 1)
        assert scope.spent == Decimal("0.10") and scope.settlement is not None
    with pytest.raises(AgentNotFoundError):
        client.get_agent("team/nobody")


@pytest.mark.parametrize("name", ["team/bot", "../x", "a\\b", "..", ".", "team\uff0fbot", "bell\x07"])
def test_path_like_agent_names_are_refused(client: CaracalClient, name: str) -> None:
    with pytest.raises(InvalidAgentError, match="agent name"):
        client.register_agent(name, "user@example.com")
    client.register_agent("someone", "user@example.com")  # nothing was registered under the bad name
    with pytest.raises(AgentNotFoundError):
        client.get_agent(name)


def test_agent_names_are_one_name_whatever_the_case_or_width(client: CaracalClient) -> None:
    agent = client.register_agent("C1", "user@example.com")
    for other in ("c1", "\uff43\uff11", "\uff23\uff11"):  # full-width c1 and C1
        with pytest.raises(DuplicateAgentError, match="'C1' already exists"):
            client.register_agent(other, "user@example.com")
        assert client.get_agent(other) == agent
    client.create_policy("c1", "1.00")
    with client.budget_check("\uff43\uff11", estimated_cost="0.20"):
        client.emit_event("c1", "tool.search.calls", 1)
    assert client.check("C1").spent == Decimal("0.10")
    assert client.register_agent("\uff44\uff12", "user@example.com").name == "d2"  # stored NFKC-normalized
