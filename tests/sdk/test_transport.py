"""``CaracalClient`` on a test's own transport: the client holds the methods; the transport does the work."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from caracal.core.enforcement import Decision, Hold, Settlement
from caracal.core.ledger import LedgerEvent
from caracal.exceptions import ConfigurationError
from caracal.sdk.client import CaracalClient
from caracal.sdk.embedded import EmbeddedTransport
from caracal.sdk.transport import Transport, Usage


class Recording(EmbeddedTransport):
    """The embedded transport, noting what the client asked of it."""

    def __init__(self, home: Path):
        super().__init__(home)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def check(self, agent: str, amount: object | None, currency: str) -> Decision:
        self.calls.append(("check", (agent, amount, currency)))
        return super().check(agent, amount, currency)

    def reserve(
        self, agent: str, amount: object, ttl: timedelta | float | None, currency: str, on_expiry: str
    ) -> Hold:
        self.calls.append(("reserve", (agent, amount, ttl, currency, on_expiry)))
        return super().reserve(agent, amount, ttl, currency, on_expiry)

    def settle(self, hold_id: str, charges: list[Mapping[str, Any]]) -> Settlement:
        self.calls.append(("settle", (hold_id, charges)))
        return super().settle(hold_id, charges)

    def emit(self, usage: Usage) -> LedgerEvent:
        self.calls.append(("emit", (usage,)))
        return super().emit(usage)

    def close(self) -> None:
        self.calls.append(("close", ()))
        super().close()


def test_a_client_runs_on_the_transport_it_is_given(caracal_home: Path) -> None:
    transport = Recording(caracal_home)
    typed: Transport = transport  # a Protocol: mypy checks that the transport fits it
    with CaracalClient(transport=typed) as client:
        assert client.transport is transport
        client.register_agent("a", "ops@example.com")
        client.create_policy("a", "1.00", "daily")
        client.set_price("tool.calls", "0.25")
        assert client.check("a").allowed
        with client.budget_check("a", estimated_cost="0.50") as scope:
            client.emit_event("a", "tool.calls", 1)
        assert scope.hold is not None and scope.spent == Decimal("0.25")
        assert client.home is transport.home  # an embedded transport keeps its local home
    names = [name for name, _ in transport.calls]
    assert names == ["check", "reserve", "emit", "settle", "close"]
    assert transport.calls[1][1] == ("a", "0.50", None, "USD", "release")  # defaults filled in by the client
    usage = transport.calls[2][1][0]
    assert usage.hold_id == scope.hold.hold_id and usage.agent == "a"
    assert transport.calls[3][1] == (scope.hold.hold_id, [])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"home": "somewhere"},
        {"base_url": "http://127.0.0.1:8787", "api_key": "ck_x"},
        {"clock": lambda: None},
        {"timeout": 1.0},
    ],
)
def test_a_transport_takes_no_other_configuration(caracal_home: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        CaracalClient(transport=EmbeddedTransport(caracal_home), **kwargs)
