"""What the ledger must say after an agent loop: one hold per model call, every hold closed, and the charges
of each call exactly the fake upstream's usage at the user prices."""

from __future__ import annotations

from decimal import Decimal

from caracal.core.events import LedgerEvent
from caracal.core.pricebook import multiply_exactly
from tests.server.fake_upstream import FakeRequest, prompt_tokens

INPUT_PRICE = Decimal("0.001")
OUTPUT_PRICE = Decimal("0.002")


def expected_usage(request: FakeRequest, completion_tokens: int) -> tuple[int, int]:
    """``(prompt, completion)`` tokens the fake reported for ``request`` (see tests.server.fake_upstream)."""
    body = request.body
    cap = body.get("max_tokens") or body.get("max_completion_tokens") or completion_tokens
    return prompt_tokens(body), max(1, min(int(cap), completion_tokens))


def assert_calls_billed(
    events: list[LedgerEvent], requests: list[FakeRequest], model: str, completion_tokens: int = 20
) -> list[LedgerEvent]:
    """``events`` (one agent's) are exactly one settled hold per upstream request, in order, each with one
    input and one output charge at the exact price. Returns the holds."""
    holds = [e for e in events if e.kind == "hold"]
    releases = {e.hold_id: e for e in events if e.kind == "release"}
    assert len(holds) == len(requests), (len(holds), len(requests))
    for hold, request in zip(holds, requests, strict=True):
        release = releases.get(hold.hold_id)
        assert release is not None, f"hold {hold.hold_id} is still open"
        assert release.metadata is not None and release.metadata["reason"] == "settled"
        charges = [e for e in events if e.is_charge and e.hold_id == hold.hold_id]
        prompt, completion = expected_usage(request, completion_tokens)
        assert [(c.resource_type, c.quantity, c.cost) for c in charges] == [
            (f"openai.{model}.input_tokens", Decimal(prompt), multiply_exactly(Decimal(prompt), INPUT_PRICE)),
            (
                f"openai.{model}.output_tokens",
                Decimal(completion),
                multiply_exactly(Decimal(completion), OUTPUT_PRICE),
            ),
        ]
        assert sum((c.cost for c in charges), Decimal(0)) <= hold.cost
    return holds
