"""The pricebook: Price checks and serialization, history lookup, exact cost, LLM prices (genai-prices)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caracal.core import pricebook as pricebook_module
from caracal.core.money import MAX_INTEGER_DIGITS
from caracal.core.pricebook import (
    EPOCH,
    LEGACY_MODEL_ALIASES,
    LlmResource,
    Price,
    Pricebook,
    decimal_text,
    llm_price,
    multiply_exactly,
    parse_llm_resource,
)
from caracal.exceptions import ConfigurationError, InvalidPriceError, PricingError, UnknownPriceError

genai_prices = pytest.importorskip("genai_prices")

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)
T2 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def forget_remembered_llm_prices() -> Iterator[None]:
    """LLM prices are remembered per minute in the process; tests that break genai-prices must not see
    (or leave behind) prices remembered by other tests."""
    pricebook_module._minute_llm_price.cache_clear()
    yield
    pricebook_module._minute_llm_price.cache_clear()


def user_price(
    resource: str = "tool.search.calls", unit: str = "0.010", at: datetime = T0, **kw: Any
) -> Price:
    return Price(resource, Decimal(unit), kw.pop("currency", "USD"), at, **kw)


def genai_per_token(model: str, provider: str, when: datetime | None = None, **usage: int) -> Decimal:
    """What genai-prices itself charges for one million tokens of ``usage``, divided down to one token."""
    result = genai_prices.calc_price(
        genai_prices.Usage(**usage), model, provider_id=provider, genai_request_timestamp=when
    )
    return Decimal(result.total_price) / 1_000_000


# --- Price ----------------------------------------------------------------------------------------------


def test_price_keeps_exact_digits_and_normalizes_time() -> None:
    price = Price("tool.search.calls", "0.030", "EUR", "2026-01-01T01:00:00+01:00", note="per search")  # type: ignore[arg-type]
    assert price.unit_price == Decimal("0.030") and str(price.unit_price) == "0.030"
    assert price.effective_from == T0 and price.effective_from.tzinfo is UTC
    assert price.source == "user" and price.note == "per search" and price.metadata is None
    assert Price("r", 5).unit_price == Decimal(5)  # type: ignore[arg-type]
    naive = Price("r", Decimal(1), effective_from=datetime(2026, 1, 1))
    assert naive.effective_from == T0
    zoned = Price("r", Decimal(1), effective_from=datetime(2026, 1, 1, 9, tzinfo=ZoneInfo("Asia/Tokyo")))
    assert zoned.effective_from == T0
    assert Price("r", Decimal(1), note="").note is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unit_price": 0.1}, "float"),
        ({"unit_price": Decimal("-1")}, "negative"),
        ({"unit_price": Decimal("-0")}, "negative"),
        ({"unit_price": Decimal("NaN")}, "finite"),
        ({"unit_price": "Infinity"}, "finite"),
        ({"unit_price": "abc"}, "number"),
        ({"unit_price": True}, "Decimal"),
        ({"unit_price": None}, "Decimal"),
        ({"currency": "usd"}, "ISO 4217"),
        ({"currency": "ABC"}, "unknown currency"),
        ({"resource_type": ""}, "empty"),
        ({"resource_type": "a\nb"}, "control"),
        ({"resource_type": 7}, "string"),
        ({"resource_type": " tool.search.calls"}, "whitespace"),
        ({"resource_type": "tool.search.calls "}, "whitespace"),
        ({"effective_from": "yesterday"}, "ISO 8601"),
        ({"effective_from": 1700000000}, "datetime"),
        ({"source": "guess"}, "source"),
        ({"note": "two\nlines"}, "printable"),
        ({"note": "x" * 1001}, "limit"),
        ({"note": 3}, "string"),
        ({"metadata": {"a": object()}}, "JSON"),
        ({"metadata": [1]}, "JSON object"),
    ],
)
def test_price_refuses_bad_input(kwargs: dict[str, Any], match: str) -> None:
    fields: dict[str, Any] = {"resource_type": "tool.search.calls", "unit_price": Decimal("0.01")}
    fields.update(kwargs)
    with pytest.raises(InvalidPriceError, match=match) as info:
        Price(**fields)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PricingError)


def test_price_to_dict_round_trip_and_exact_strings() -> None:
    price = user_price(unit="0.030", note="n", metadata={"k": "v"})
    data = price.to_dict()
    assert data == {
        "resource_type": "tool.search.calls",
        "unit_price": "0.030",
        "currency": "USD",
        "effective_from": "2026-01-01T00:00:00.000000Z",
        "source": "user",
        "note": "n",
        "metadata": {"k": "v"},
    }
    assert Price.from_dict(data) == price
    assert "note" not in user_price().to_dict() and "metadata" not in user_price().to_dict()
    # small prices are written in plain notation, with the same digits
    assert user_price(unit="3E-7").to_dict()["unit_price"] == "0.0000003"
    assert Price.from_dict({**data, "unknown_field": 1}) == price  # readers ignore unknown fields


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "JSON object"),
        ({"resource_type": "r", "unit_price": "1"}, "missing effective_from"),
        ({"resource_type": "r", "unit_price": 0.5, "effective_from": "2026-01-01T00:00:00Z"}, "float"),
        (
            {
                "resource_type": "r",
                "unit_price": "1",
                "effective_from": "2026-01-01T00:00:00Z",
                "currency": 1,
            },
            "ISO",
        ),
    ],
)
def test_price_from_dict_refuses_bad_records(data: object, match: str) -> None:
    with pytest.raises(InvalidPriceError, match=match):
        Price.from_dict(data)


def test_decimal_text_keeps_digits_and_exponent() -> None:
    for text in ["0.030", "3E-7", "1E+3", "1000", "0", "0E-10", "1.35E-7", "1E-200"]:
        value = Decimal(text)
        assert Decimal(decimal_text(value)).as_tuple() == value.as_tuple()
    assert decimal_text(Decimal("1.35E-7")) == "0.000000135"


def _in_bounds(amount: Decimal) -> bool:
    """At most 18 digits before and 18 after the decimal point: what Caracal accepts as input."""
    exponent = amount.as_tuple().exponent
    return amount.adjusted() < MAX_INTEGER_DIGITS and isinstance(exponent, int) and exponent >= -18


amounts = st.decimals(
    min_value=0, max_value=Decimal("1E+12"), allow_nan=False, allow_infinity=False, places=None
).filter(_in_bounds)
small_amounts = st.builds(
    lambda digits, exponent: Decimal(digits).scaleb(exponent),
    st.integers(min_value=0, max_value=10**30),
    st.integers(min_value=-40, max_value=10),
).filter(_in_bounds)
moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(
    unit=st.one_of(amounts, small_amounts),
    at=moments,
    currency=st.sampled_from(["USD", "EUR", "JPY"]),
    note=st.one_of(
        st.none(),
        st.text(
            alphabet=st.characters(categories=["L", "N", "P", "Zs"]).filter(str.isprintable), max_size=30
        ),
    ),
)
def test_price_serialization_round_trip(unit: Decimal, at: datetime, currency: str, note: str | None) -> None:
    price = Price("r.x", unit, currency, at, note=note)
    back = Price.from_dict(price.to_dict())
    assert back == price
    assert back.unit_price.as_tuple() == price.unit_price.as_tuple()  # same digits, not just equal value
    assert back.to_dict() == price.to_dict()


# --- history lookup ---------------------------------------------------------------------------------------


def history_book(**kwargs: Any) -> Pricebook:
    return Pricebook(
        [user_price(unit="0.03", at=T1), user_price(unit="0.01", at=T0), user_price(unit="0.05", at=T2)],
        **kwargs,
    )


def test_price_of_picks_latest_effective_at_or_before() -> None:
    book = history_book()
    assert book.price_of("tool.search.calls", T0).unit_price == Decimal("0.01")  # exactly at
    assert book.price_of("tool.search.calls", T0 + timedelta(days=3)).unit_price == Decimal("0.01")  # between
    assert book.price_of("tool.search.calls", T1 - timedelta(microseconds=1)).unit_price == Decimal("0.01")
    assert book.price_of("tool.search.calls", T1).unit_price == Decimal("0.03")
    assert book.price_of("tool.search.calls", T2 + timedelta(days=999)).unit_price == Decimal("0.05")  # after
    assert book.price_of("tool.search.calls", "2026-02-15T00:00:00Z").unit_price == Decimal("0.03")
    assert book.price_of("tool.search.calls", datetime(2026, 2, 15)).unit_price == Decimal(
        "0.03"
    )  # naive: UTC


def test_price_before_first_effective_time_is_refused() -> None:
    with pytest.raises(UnknownPriceError, match="first user price takes effect at 2026-01-01") as info:
        history_book().price_of("tool.search.calls", T0 - timedelta(microseconds=1))
    assert "caracal pricebook set tool.search.calls" in str(info.value)


def test_unknown_resource_is_refused_never_zero() -> None:
    with pytest.raises(UnknownPriceError) as info:
        Pricebook().price_of("tool.other.calls", T0)
    message = str(info.value)
    assert "no price for 'tool.other.calls'" in message
    assert "caracal pricebook set tool.other.calls" in message and "$0" in message
    with pytest.raises(UnknownPriceError):
        Pricebook().cost("tool.other.calls", 0, T0)  # even a zero quantity is not "free"


def test_history_in_effect_and_resource_types() -> None:
    book = Pricebook([*history_book().history(), user_price("a.b", "1", T2)])
    assert book.resource_types() == ["a.b", "tool.search.calls"]
    assert [p.unit_price for p in book.history("tool.search.calls")] == [
        Decimal(x) for x in ("0.01", "0.03", "0.05")
    ]
    assert [p.resource_type for p in book.history()] == ["a.b"] + ["tool.search.calls"] * 3
    assert book.history("none") == []
    assert [(p.resource_type, p.unit_price) for p in book.in_effect(T1)] == [
        ("tool.search.calls", Decimal("0.03"))
    ]
    assert len(book.in_effect(T2)) == 2
    assert "4 user prices" in repr(book)


def test_pricebook_refuses_duplicates_and_bad_options() -> None:
    with pytest.raises(InvalidPriceError, match="same time"):
        Pricebook([user_price(unit="1"), user_price(unit="2")])
    with pytest.raises(InvalidPriceError, match="Price objects"):
        Pricebook([{"resource_type": "x"}])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="never priced at zero"):
        Pricebook(unknown="zero-with-warning")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="tiered_llm_prices"):
        Pricebook(tiered_llm_prices="highest")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("resource", "at"), [("", T0), ("a\x00b", T0), (None, T0), ("tool.search.calls", "soon"), ("x", 12)]
)
def test_price_of_refuses_bad_arguments(resource: Any, at: Any) -> None:
    with pytest.raises(InvalidPriceError):
        history_book().price_of(resource, at)


# --- cost -------------------------------------------------------------------------------------------------


def test_cost_is_exact() -> None:
    book = Pricebook([user_price(unit="0.030")])
    cost, price = book.cost("tool.search.calls", 3, T0)
    assert cost == Decimal("0.090") and str(cost) == "0.090" and price.unit_price == Decimal("0.030")
    assert book.cost("tool.search.calls", "0.1", T0)[0] == Decimal("0.0030")
    assert book.cost("tool.search.calls", Decimal(0), T0)[0] == 0
    # beyond the default 28-digit context (36 digits): still exact
    wide = Pricebook([user_price(unit="0.123456789012345678")])
    quantity = Decimal("987654321098765432")
    cost, _ = wide.cost("tool.search.calls", quantity, T0)
    assert Fraction(cost) == Fraction(quantity) * Fraction(Decimal("0.123456789012345678"))
    assert str(cost) == "121932631137021794.322511812221002896"


def test_a_cost_must_fit_the_bounds_exactly() -> None:
    """quantity x price is recorded only if it is an exact amount within the bounds: trailing zeros past 18
    decimals are dropped (same value); a 19th decimal or 10^18 and more is refused, never rounded."""
    book = Pricebook([user_price(unit="0.000000000000000025")])  # 18 decimals
    assert format(book.cost("tool.search.calls", "2.00", T0)[0], "f") == "0.000000000000000050"
    with pytest.raises(InvalidPriceError, match="more than 18 digits after the decimal point"):
        book.cost("tool.search.calls", "1.5", T0)  # 0.0000000000000000375
    dear = Pricebook([user_price(unit="1000000000")])
    assert dear.cost("tool.search.calls", "999999999", T0)[0] == Decimal("999999999000000000")
    with pytest.raises(InvalidPriceError, match="10\\^18 or more"):
        dear.cost("tool.search.calls", "1000000000", T0)
    with pytest.raises(InvalidPriceError, match="less than 10\\^18"):
        Price("r.x", "1e400")


@pytest.mark.parametrize(
    ("quantity", "match"),
    [(1.5, "float"), (-1, "negative"), ("NaN", "finite"), ("1e", "number"), (True, "Decimal")],
)
def test_cost_refuses_bad_quantities(quantity: object, match: str) -> None:
    with pytest.raises(InvalidPriceError, match=match):
        Pricebook([user_price()]).cost("tool.search.calls", quantity, T0)


@settings(max_examples=300, deadline=None)
@given(quantity=st.one_of(amounts, small_amounts), unit=st.one_of(amounts, small_amounts))
def test_cost_equals_quantity_times_unit_price_exactly(quantity: Decimal, unit: Decimal) -> None:
    book = Pricebook([user_price(unit=str(unit))])
    exact = Fraction(quantity) * Fraction(unit)
    if exact >= 10**18 or (exact * 10**18).denominator != 1:
        with pytest.raises(InvalidPriceError):  # not an amount Caracal can record without rounding
            book.cost("tool.search.calls", quantity, T0)
        return
    cost, price = book.cost("tool.search.calls", quantity, T0)
    assert Fraction(cost) == exact
    assert cost == multiply_exactly(quantity, price.unit_price)


# --- LLM resource names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("openai.gpt4.input_tokens", LlmResource("openai", "gpt4", "input_tokens")),
        ("openai.gpt-3.5-turbo.output_tokens", LlmResource("openai", "gpt-3.5-turbo", "output_tokens")),
        (
            "anthropic.claude-3.5-haiku.cache_read_tokens",
            LlmResource("anthropic", "claude-3.5-haiku", "cache_read_tokens"),
        ),
        ("x-ai.grok-3.cache_write_tokens", LlmResource("x-ai", "grok-3", "cache_write_tokens")),
        ("openai.gpt-4o.reasoning_tokens", None),
        ("openai.input_tokens", None),
        ("tool.search.calls", None),
        (".gpt.input_tokens", None),
        ("openai.gpt 4.input_tokens", None),
    ],
)
def test_parse_llm_resource(name: str, parts: LlmResource | None) -> None:
    assert parse_llm_resource(name) == parts


# --- genai-prices -----------------------------------------------------------------------------------------


def test_quick_start_gpt4_resolves_to_gpt4_input_price() -> None:
    price = Pricebook().price_of("openai.gpt4.input_tokens", T0)
    reported = genai_per_token("gpt-4", "openai", input_tokens=1_000_000)
    assert price.unit_price == reported
    assert price.unit_price == Decimal("0.00003")  # genai-prices 0.2.x: $30 per million input tokens
    assert price.source == "genai-prices" and price.currency == "USD"
    assert price.metadata is not None
    assert price.metadata["model"] == "gpt-4" and price.metadata["provider"] == "openai"
    assert price.metadata["alias_of"] == "gpt4" and price.metadata["published_price"] == "30"
    assert price.metadata["genai_prices_version"] == genai_prices.__version__
    assert price.effective_from <= T0
    assert Price.from_dict(price.to_dict()) == price  # an LLM price serializes like any other


def test_gpt4_output_price_and_cost() -> None:
    book = Pricebook()
    price = book.price_of("openai.gpt-4.output_tokens", T0)
    assert (
        price.unit_price == genai_per_token("gpt-4", "openai", output_tokens=1_000_000) == Decimal("0.00006")
    )
    cost, _ = book.cost("openai.gpt4.input_tokens", 1000, T0)
    assert cost == Decimal("0.03")


@pytest.mark.parametrize(
    ("kind", "usage"),
    [
        ("input_tokens", {"input_tokens": 1_000_000}),
        ("output_tokens", {"output_tokens": 1_000_000}),
        ("cache_read_tokens", {"input_tokens": 1_000_000, "cache_read_tokens": 1_000_000}),
        ("cache_write_tokens", {"input_tokens": 1_000_000, "cache_write_tokens": 1_000_000}),
    ],
)
@pytest.mark.parametrize("model", ["claude-3-5-sonnet", "claude-3-opus"])
def test_claude_kinds_match_genai_prices(model: str, kind: str, usage: dict[str, int]) -> None:
    price = Pricebook().price_of(f"anthropic.{model}.{kind}", T0)
    assert price.unit_price == genai_per_token(model, "anthropic", T0, **usage)
    assert price.unit_price > 0


def test_claude_figures() -> None:
    book = Pricebook()
    assert book.price_of("anthropic.claude-3-5-sonnet.input_tokens", T0).unit_price == Decimal("0.000003")
    assert book.price_of("anthropic.claude-3-5-sonnet.cache_read_tokens", T0).unit_price == Decimal(
        "0.0000003"
    )
    assert book.price_of("anthropic.claude-3-5-sonnet.cache_write_tokens", T0).unit_price == Decimal(
        "0.00000375"
    )


@pytest.mark.parametrize(("alias", "target"), sorted(LEGACY_MODEL_ALIASES.items()))
def test_every_legacy_alias_resolves_like_its_target(alias: tuple[str, str], target: str) -> None:
    provider, model = alias
    book = Pricebook()
    assert (
        book.price_of(f"{provider}.{model}.input_tokens", T0).unit_price
        == book.price_of(f"{provider}.{target}.input_tokens", T0).unit_price
        == genai_per_token(target, provider, T0, input_tokens=1_000_000)
    )


@pytest.mark.parametrize(
    ("resource", "match"),
    [
        ("nosuchprovider.gpt-4.input_tokens", "no provider 'nosuchprovider'"),
        ("openai.no-such-model-xyz.input_tokens", "no model 'no-such-model-xyz'"),
        ("openai.gpt-4.cache_read_tokens", "no cache_read_tokens price for 'gpt-4'"),
        ("openai.gpt-4.cache_write_tokens", "no cache_write_tokens price"),
        ("openai.gpt-4.reasoning_tokens", "no price for 'openai.gpt-4.reasoning_tokens'"),
    ],
)
def test_unknown_llm_provider_model_or_kind_is_refused(resource: str, match: str) -> None:
    with pytest.raises(UnknownPriceError, match=match) as info:
        Pricebook().price_of(resource, T0)
    assert f"caracal pricebook set {resource}" in str(info.value)


def test_user_price_overrides_llm_price_from_its_effective_time() -> None:
    book = Pricebook(
        [Price("openai.gpt4.input_tokens", Decimal("0.00002"), effective_from=T1, note="negotiated")]
    )
    assert book.price_of("openai.gpt4.input_tokens", T1).unit_price == Decimal("0.00002")
    assert book.price_of("openai.gpt4.input_tokens", T1).source == "user"
    before = book.price_of("openai.gpt4.input_tokens", T0)  # before the user price: the LLM price
    assert before.source == "genai-prices" and before.unit_price == Decimal("0.00003")


def test_llm_prices_can_be_switched_off() -> None:
    with pytest.raises(UnknownPriceError, match="switched off"):
        Pricebook(use_llm_prices=False).price_of("openai.gpt4.input_tokens", T0)
    book = Pricebook(
        [Price("openai.gpt4.input_tokens", Decimal("1"), effective_from=T1)], use_llm_prices=False
    )
    assert book.price_of("openai.gpt4.input_tokens", T1).unit_price == 1
    with pytest.raises(UnknownPriceError, match="first user price"):
        book.price_of("openai.gpt4.input_tokens", T0)


def test_llm_price_changing_over_time_is_taken_at_the_charge_time() -> None:
    # o3's price fell on 2025-06-10 in genai-prices' data
    before, after = datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 20, tzinfo=UTC)
    book = Pricebook()
    old, new = book.price_of("openai.o3.input_tokens", before), book.price_of("openai.o3.input_tokens", after)
    assert old.unit_price == genai_per_token("o3", "openai", before, input_tokens=1_000_000)
    assert new.unit_price == genai_per_token("o3", "openai", after, input_tokens=1_000_000)
    assert old.unit_price != new.unit_price
    assert old.effective_from <= before and new.effective_from == datetime(2025, 6, 10, tzinfo=UTC)


def _tiered_model() -> tuple[str, str]:
    from genai_prices.data import providers
    from genai_prices.types import ModelPrice, TieredPrices

    for provider in providers:
        for model in provider.models:
            prices = model.prices
            if (
                isinstance(prices, ModelPrice)
                and isinstance(getattr(prices, "input_mtok", None), TieredPrices)
                and provider.find_model(model.id) is model
            ):
                return provider.id, model.id
    pytest.skip("genai-prices has no tiered model")


def test_tiered_llm_price_is_refused_by_default_or_base_tier_on_request() -> None:
    provider, model = _tiered_model()
    resource = f"{provider}.{model}.input_tokens"
    with pytest.raises(UnknownPriceError, match="tiered by prompt size") as info:
        Pricebook().price_of(resource, T0)
    assert "tiered_llm_prices='base'" in str(info.value)
    price = Pricebook(tiered_llm_prices="base").price_of(resource, T0)
    # the base tier: what genai-prices charges for a small prompt (below any threshold)
    assert price.unit_price == genai_per_token(model, provider, T0, input_tokens=1000) * 1000
    assert price.metadata is not None and "base tier" in price.metadata["tiered"]


def test_llm_prices_never_touch_the_network_nor_a_custom_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    from genai_prices import data_snapshot

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(pricebook_module, "_model_cache", {})
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
    try:
        assert Pricebook().price_of("openai.gpt-4.input_tokens", T0).unit_price == Decimal("0.00003")
    finally:
        data_snapshot.set_custom_snapshot(None)


def test_genai_prices_unavailable_is_an_unknown_price(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricebook_module, "_genai", None)
    monkeypatch.setitem(sys.modules, "genai_prices.data", None)  # makes the import fail
    with pytest.raises(UnknownPriceError, match="genai-prices cannot be loaded"):
        Pricebook().price_of("openai.gpt-4.input_tokens", T0)
    assert Pricebook([user_price()]).price_of("tool.search.calls", T0).unit_price  # user prices still work


def test_genai_prices_internal_error_is_an_unknown_price(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        id = "broken"
        prices: ClassVar[list[object]] = []

        def get_prices(self, at: datetime) -> object:
            raise RuntimeError("unexpected shape")

    monkeypatch.setattr(pricebook_module, "_find_model", lambda *args: (Broken(), Broken()))
    with pytest.raises(UnknownPriceError, match="RuntimeError: unexpected shape"):
        Pricebook().price_of("openai.gpt-4.input_tokens", T0)


def test_llm_price_function_directly() -> None:
    assert llm_price("openai.gpt4.output_tokens", "2026-01-01T00:00:00Z").unit_price == Decimal("0.00006")
    with pytest.raises(UnknownPriceError, match="not an LLM resource"):
        llm_price("tool.search.calls", T0)
    assert EPOCH.tzinfo is UTC
