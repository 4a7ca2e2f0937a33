"""Holds and charges of LLM calls: exact Decimals, worst-case input price, fail closed on unknown prices."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from caracal.core.pricebook import Price, Pricebook
from caracal.exceptions import PricingError, UnknownPriceError
from caracal.server.gateway.estimate import Bound
from caracal.server.gateway.pricing import hold_amount, usage_charges
from caracal.server.gateway.usage import Usage

AT = datetime(2025, 6, 1, tzinfo=timezone.utc)


def book(**prices: str) -> Pricebook:
    return Pricebook(
        [Price(f"acme.m.{kind}", Decimal(value)) for kind, value in prices.items()], use_llm_prices=False
    )


def test_hold_is_exact_and_uses_the_dearer_of_input_and_cache_write():
    pricebook = book(input_tokens="0.000003", output_tokens="0.000015", cache_write_tokens="0.00000375")
    amount, currency = hold_amount(pricebook, "acme", "m", Bound(1000, 200), AT)
    assert amount == Decimal("1000") * Decimal("0.00000375") + Decimal("200") * Decimal("0.000015")
    assert amount == Decimal("0.00675")
    assert currency == "USD"


def test_hold_without_cache_write_price_uses_input_price():
    pricebook = book(input_tokens="0.1", output_tokens="0.3")
    assert hold_amount(pricebook, "acme", "m", Bound(3, 1), AT) == (Decimal("0.6"), "USD")


def test_hold_with_cheaper_cache_write_still_uses_input_price():
    pricebook = book(input_tokens="0.2", output_tokens="0.3", cache_write_tokens="0.1")
    assert hold_amount(pricebook, "acme", "m", Bound(1, 0), AT)[0] == Decimal("0.2")


def test_embeddings_need_no_output_price():
    assert hold_amount(book(input_tokens="0.01"), "acme", "m", Bound(10, 0), AT) == (Decimal("0.10"), "USD")


@pytest.mark.parametrize("missing", ["input_tokens", "output_tokens"])
def test_unknown_price_fails_closed(missing: str):
    prices = {"input_tokens": "1", "output_tokens": "1"}
    del prices[missing]
    with pytest.raises(UnknownPriceError):
        hold_amount(book(**prices), "acme", "m", Bound(1, 1), AT)


def test_mixed_currencies_are_refused():
    pricebook = Pricebook(
        [
            Price("acme.m.input_tokens", Decimal("1"), "USD"),
            Price("acme.m.output_tokens", Decimal("1"), "EUR"),
        ],
        use_llm_prices=False,
    )
    with pytest.raises(PricingError, match="currency"):
        hold_amount(pricebook, "acme", "m", Bound(1, 1), AT)


def test_genai_prices_model():
    pytest.importorskip("genai_prices", reason="LLM prices come from genai-prices (Python 3.11+)")
    amount, currency = hold_amount(
        Pricebook(), "anthropic", "claude-3-5-sonnet-20241022", Bound(1000, 100), AT
    )
    assert (amount, currency) == (Decimal("0.00375") + Decimal("0.0015"), "USD")


def test_charges_per_kind_exact_with_metadata():
    pricebook = book(
        input_tokens="0.000003",
        output_tokens="0.000015",
        cache_read_tokens="0.0000003",
        cache_write_tokens="0.00000375",
    )
    usage = Usage(input_tokens=10, output_tokens=5, cache_read_tokens=7, cache_write_tokens=3, model="m-2025")
    charges = usage_charges(pricebook, "acme", "m", usage, AT, {"request_id": "r1"})
    assert [c["resource_type"] for c in charges] == [
        "acme.m.input_tokens",
        "acme.m.cache_read_tokens",
        "acme.m.cache_write_tokens",
        "acme.m.output_tokens",
    ]
    assert [c["quantity"] for c in charges] == [Decimal(10), Decimal(7), Decimal(3), Decimal(5)]
    assert [c["cost"] for c in charges] == [
        Decimal("0.000030"),
        Decimal("0.0000021"),
        Decimal("0.00001125"),
        Decimal("0.000075"),
    ]
    assert all(c["metadata"] == {"request_id": "r1", "response_model": "m-2025"} for c in charges)


def test_zero_usage_leaves_one_zero_charge_on_record():
    charges = usage_charges(book(input_tokens="0.5"), "acme", "m", Usage(model="m"), AT)
    assert charges == [
        {"resource_type": "acme.m.input_tokens", "quantity": Decimal(0), "cost": Decimal(0), "metadata": None}
    ]


def test_estimated_usage_is_flagged():
    charges = usage_charges(
        book(input_tokens="1", output_tokens="2"), "acme", "m", Usage(4, 5, estimated=True), AT
    )
    assert [c["cost"] for c in charges] == [Decimal(4), Decimal(10)]
    assert all(c["metadata"] == {"estimated": True} for c in charges)


def test_charges_fail_closed_and_check_the_hold_currency():
    with pytest.raises(UnknownPriceError):
        usage_charges(book(input_tokens="1"), "acme", "m", Usage(1, 1), AT)
    with pytest.raises(PricingError, match="EUR"):
        usage_charges(book(input_tokens="1"), "acme", "m", Usage(1), AT, currency="EUR")
    with pytest.raises(PricingError, match="non-negative"):
        usage_charges(book(input_tokens="1"), "acme", "m", Usage(-1), AT)
