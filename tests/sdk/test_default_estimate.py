"""``[sdk] default_estimate``: ``budget_check`` without an ``estimated_cost`` reserves that amount (embedded
client), so concurrent blocks cannot overspend together. (Unset, it only checks: test_client.py.)"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from caracal.exceptions import BudgetExceededError, ConfigurationError
from caracal.sdk.client import CaracalClient


def client_with(caracal_home: Path, config: str) -> CaracalClient:
    (caracal_home / "config.toml").write_text(config)
    client = CaracalClient(home=caracal_home)
    client.register_agent("worker", "ops@example.com")
    client.create_policy("worker", "1.00", "daily")
    client.set_price("tool.calls", "0.30")
    return client


def test_a_default_estimate_makes_budget_check_reserve(caracal_home: Path) -> None:
    with client_with(caracal_home, '[sdk]\ndefault_estimate = "0.60"\n') as client:
        with client.budget_check("worker") as first:
            assert first.hold is not None and first.hold.amount == Decimal("0.60")
            # A concurrent block (another worker) sees the 0.60 held: only 0.40 is left for it.
            with pytest.raises(BudgetExceededError), client.budget_check("worker"):
                pytest.fail("the second block must not run: together they could overspend")
            client.emit_event("worker", "tool.calls", 1)
        assert first.settlement is not None and first.settlement.total == Decimal("0.30")
        assert client.check("worker").held == 0
        with client.budget_check("worker", estimated_cost="0.10") as explicit:  # an estimate still wins
            assert explicit.hold is not None and explicit.hold.amount == Decimal("0.10")


@pytest.mark.parametrize("value", ["0.1", '"-1"', '"0"', '"lots"', '"NaN"'])
def test_a_bad_default_estimate_fails_closed(caracal_home: Path, value: str) -> None:
    (caracal_home / "config.toml").write_text(f"[sdk]\ndefault_estimate = {value}\n")
    with pytest.raises(ConfigurationError, match="default_estimate"):
        CaracalClient(home=caracal_home)
