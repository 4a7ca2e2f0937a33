"""v0.1's denial words are true: "spent S >= limit L" only when the spend reached the limit; a denial
because an estimate would cross it says so."""

from __future__ import annotations

from decimal import Decimal

from caracal.core.decisions import Decision
from caracal.v01.policy import v01_decision


def _denied(spent: str, amount: str) -> Decision:
    return Decision(
        allowed=False,
        reason="policy p: spent ... over the limit",
        agent_id="a",
        amount=Decimal(amount),
        currency="USD",
        policy_id="p",
        limit=Decimal("1.00"),
        spent=Decimal(spent),
        held=Decimal("0"),
        remaining=Decimal("1.00") - Decimal(spent),
    )


def test_a_spend_that_reached_the_limit_reads_as_v01_did() -> None:
    assert v01_decision(_denied("1.05", "0")).reason.startswith("Budget exceeded: spent 1.05 >= limit 1.00")


def test_an_estimate_that_would_cross_the_limit_is_named() -> None:
    reason = v01_decision(_denied("0.85", "0.20")).reason
    assert reason.startswith("Budget exceeded: spent 0.85 + estimated 0.20 > limit 1.00"), reason
    assert ">=" not in reason
