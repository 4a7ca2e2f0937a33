"""The Caracal Core v0.1 SDK methods ``check_budget`` and ``get_remaining_budget``, on both transports.

v0.1's semantics: ``check_budget`` is True only when the agent may spend, False on a denial *and on any
error* (fail closed, never raises); ``get_remaining_budget`` is what remains (a ``Decimal``) when the agent
may spend, None otherwise (denied, or any error)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from caracal.sdk.client import CaracalClient
from tests.sdk.conftest import Transport


def assert_may_not_spend(client: CaracalClient, agent: str) -> None:
    assert client.check_budget(agent) is False
    assert client.get_remaining_budget(agent) is None


def test_an_agent_within_budget_may_spend_and_sees_what_remains(client: CaracalClient) -> None:
    agent_id = client.get_agent("my-agent").agent_id
    for reference in ("my-agent", agent_id):  # a name or an id, as everywhere
        assert client.check_budget(reference) is True
        remaining = client.get_remaining_budget(reference)
        assert isinstance(remaining, Decimal) and remaining == Decimal("1.00")
    client.emit_event("my-agent", "tool.search.calls", 3)
    remaining = client.get_remaining_budget("my-agent")
    assert isinstance(remaining, Decimal) and remaining == Decimal("0.70")
    assert str(remaining) == "0.70"  # exact, never a float


def test_what_is_held_no_longer_remains(client: CaracalClient) -> None:
    hold = client.reserve("my-agent", "0.25")
    assert client.get_remaining_budget("my-agent") == Decimal("0.75")
    client.release(hold)
    assert client.get_remaining_budget("my-agent") == Decimal("1.00")


def test_the_tightest_policy_of_the_agent_and_its_ancestors_counts(client: CaracalClient) -> None:
    client.register_agent("team", "user@example.com")
    client.create_policy("team", "0.40", "daily")
    client.register_agent("worker", "user@example.com", parent="team")
    client.create_policy("worker", "5.00", "daily")
    assert client.get_remaining_budget("worker") == Decimal("0.40")
    client.emit_event("worker", "tool.search.calls", 4)
    assert_may_not_spend(client, "worker")
    assert_may_not_spend(client, "team")


def test_an_exhausted_budget_denies(client: CaracalClient) -> None:
    client.emit_event("my-agent", "tool.search.calls", 9)
    assert client.check_budget("my-agent") is True
    assert client.get_remaining_budget("my-agent") == Decimal("0.10")
    client.emit_event("my-agent", "tool.search.calls", 1)  # spent == limit: nothing left (as in v0.1)
    assert_may_not_spend(client, "my-agent")
    client.emit_event("my-agent", "tool.search.calls", 1)  # over the limit: still None, never negative
    assert_may_not_spend(client, "my-agent")


def test_an_unknown_agent_may_not_spend(client: CaracalClient) -> None:
    assert_may_not_spend(client, "no-such-agent")
    assert_may_not_spend(client, "")  # bad input: False/None too, never an exception


def test_an_agent_without_a_policy_may_not_spend(client: CaracalClient) -> None:
    client.register_agent("unbounded", "user@example.com")
    assert_may_not_spend(client, "unbounded")


def test_the_policies_currency(client: CaracalClient) -> None:
    client.register_agent("euro-agent", "user@example.com")
    client.create_policy("euro-agent", "2.00", "daily", currency="EUR")
    assert_may_not_spend(client, "euro-agent")  # a USD question cannot be proven against a EUR budget
    assert client.check_budget("euro-agent", currency="EUR") is True
    assert client.get_remaining_budget("euro-agent", currency="EUR") == Decimal("2.00")


def test_any_error_fails_closed(client: CaracalClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(client.transport, "check", broken)
    assert_may_not_spend(client, "my-agent")


def test_a_stopped_server_fails_closed(sdk: Transport, client: CaracalClient) -> None:
    if not sdk.remote:
        pytest.skip("remote only: an embedded client has no server")
    assert client.check_budget("my-agent") is True
    sdk.stop()
    assert_may_not_spend(client, "my-agent")
    sdk.start()  # back on the same address: the same client answers again
    assert client.get_remaining_budget("my-agent") == Decimal("1.00")


@pytest.mark.embedded_only(
    "a server refuses to start on a corrupt ledger; a client of a stopped server: test_a_stopped_server..."
)
@pytest.mark.files_only("corrupts the ledger file")
def test_a_corrupt_ledger_fails_closed(sdk: Transport, caracal_home: Path, client: CaracalClient) -> None:
    client.emit_event("my-agent", "tool.search.calls", 1)
    client.close()
    with (caracal_home / "data" / "ledger.jsonl").open("ab") as handle:
        handle.write(b'{"event_id": "garbage"}\n')
    assert_may_not_spend(sdk.client(), "my-agent")
