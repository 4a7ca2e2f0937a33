"""Money is never rounded: amounts are bounded at the edges, and every sum, difference and product of money
runs in a context that refuses (InexactMoneyError) what it cannot represent exactly, where Python's default
context silently rounds to 28 digits."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from caracal.core import money
from caracal.core.budget import BudgetState
from caracal.core.ledger import LedgerQuery, LedgerReader, LedgerWriter
from caracal.exceptions import InexactMoneyError, InvalidLedgerEventError

LARGEST = Decimal("999999999999999999.999999999999999999")
"""The largest amount Caracal accepts: 18 digits before and 18 after the decimal point (36 in all)."""


def test_sums_of_the_largest_amounts_are_exact(ledger_path: Path) -> None:
    """Three of the largest amounts add up to 37 digits. Under Python's default context even one of them
    added to zero came back rounded to 28 (1.000...E+18); the ledger's sums and the live budget state
    must give the exact figure."""
    with LedgerWriter(ledger_path) as writer:
        events = writer.append_events(
            [{"agent_id": "a", "resource_type": "r", "quantity": 1, "cost": LARGEST}] * 3
        )
    exact = Decimal("2999999999999999999.999999999999999997")
    query = LedgerQuery(ledger_path)
    assert query.sum_spending("a") == exact and str(query.sum_spending("a")) == str(exact)
    assert query.aggregate_by_agent() == {"a": exact}
    (day,) = query.summary_by_day().values()
    assert day.cost == exact and day.quantity == 3
    state = BudgetState(lambda agent: (agent, "parent"))
    state.apply_all(events)
    assert state.spent("a", "USD", None, inclusive_minute=False) == exact
    assert state.spent("parent", "USD", None, inclusive_minute=False) == exact


def write_old_ledger(path: Path, costs: list[str]) -> None:
    """Lines as a version without the bounds could write them (no chain: as the oldest lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        orjson.dumps(
            {
                "event_id": n,
                "agent_id": "a",
                "timestamp": f"2026-01-0{n}T00:00:00.000000Z",
                "resource_type": "r",
                "quantity": "1",
                "cost": cost,
                "currency": "USD",
            }
        )
        for n, cost in enumerate(costs, start=1)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_a_sum_that_cannot_be_exact_is_refused_not_rounded(ledger_path: Path) -> None:
    """A ledger holding 1e400 (accepted before the bounds) still reads line by line, but its sums are
    refused with a typed error instead of printing 1.000...E+400 rounded at 28 digits."""
    write_old_ledger(ledger_path, ["1E+400", "0.5"])
    assert [str(e.cost) for e in LedgerReader(ledger_path)] == ["1E+400", "0.5"]
    query = LedgerQuery(ledger_path)
    with pytest.raises(InexactMoneyError, match="never rounds money"):
        query.sum_spending("a")
    with pytest.raises(InexactMoneyError):
        query.summary_by_resource()
    state = BudgetState(lambda agent: (agent,))
    with pytest.raises(InexactMoneyError):  # fails closed: no budget decision on a rounded figure
        state.apply_all(LedgerReader(ledger_path))


@pytest.mark.parametrize(
    ("operation", "a", "b"),
    [
        (money.add, "1E+400", "0.5"),
        (money.subtract, "1E+400", "0.5"),
        (money.multiply, "1" * 60, "1" * 60),
        (money.add, "1" + "0" * 120, "0"),  # representable only by dropping digits (Rounded)
    ],
)
def test_the_money_context_raises_instead_of_rounding(operation: object, a: str, b: str) -> None:
    assert callable(operation)
    with pytest.raises(InexactMoneyError):
        operation(Decimal(a), Decimal(b))


def test_the_callers_decimal_context_is_left_alone() -> None:
    from decimal import getcontext

    before = getcontext().copy()
    assert money.add(LARGEST, LARGEST) == Decimal("1999999999999999999.999999999999999998")
    assert getcontext().prec == before.prec and getcontext().traps == before.traps


def test_ledger_append_refuses_1e400_on_the_command_line(ledger_path: Path) -> None:
    base = [sys.executable, "-m", "caracal", "ledger", "append", "--ledger", str(ledger_path)]
    result = subprocess.run(
        [*base, "--agent-id", "a", "--resource-type", "r", "--quantity", "1e400", "--cost", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "quantity must be less than 10^18" in result.stderr
    assert not ledger_path.exists() or ledger_path.read_bytes() == b""


def test_a_writer_refuses_amounts_beyond_the_bounds(ledger_path: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        for quantity, cost in (("1e400", "1"), ("1", "0.0000000000000000001"), (10**18, "1")):
            with pytest.raises(InvalidLedgerEventError):
                writer.append_event("a", "r", quantity, cost)
        assert writer.last_event_id == 0
