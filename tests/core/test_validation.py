"""Unit tests for the ledger's boundary: caracal.core.validation and the line format of caracal.core.events.

Two promises are at stake (DESIGN.md, "Promises"): money is exact (Decimal strings kept as given, floats,
NaN and infinities refused) and bad input gets a clear error and changes nothing. The writer tests here check
both on a real ledger file: every refused append leaves the file byte-for-byte as it was.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from caracal.core.events import LedgerEvent, parse_line
from caracal.core.ledger import LedgerReader, LedgerWriter
from caracal.core.money import MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS
from caracal.core.validation import (
    ISO_4217_CODES,
    MAX_AMOUNT_CHARS,
    MAX_AMOUNT_EXPONENT,
    MAX_IDENTIFIER_LENGTH,
    MAX_METADATA_BYTES,
    check_currency,
    check_identifier,
    check_metadata,
    dumps,
    format_timestamp,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import InvalidLedgerEventError, LedgerCorruptError

STORED_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


class Refused(Exception):
    """The error class passed to the validators, so a test can tell 'refused' from 'crashed'."""


# ----------------------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------------------

identifiers = st.text(min_size=1, max_size=40).filter(lambda s: s.isprintable() and not s.isspace())

amounts = st.builds(
    lambda digits, exponent: Decimal((0, tuple(digits), exponent)),
    st.lists(st.integers(0, 9), min_size=1, max_size=30),
    st.integers(-30, 30),
)
"""Finite, non-negative Decimals with their exact digits (trailing zeros and exponents included): what a
ledger line may hold."""

input_amounts = amounts.filter(
    lambda amount: (
        amount.adjusted() < MAX_INTEGER_DIGITS and amount.as_tuple().exponent >= -MAX_FRACTION_DIGITS
    )
)
"""The amounts Caracal accepts as input: at most 18 digits before and 18 after the decimal point."""

timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc)
).map(format_timestamp)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
metadata_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)

events = st.builds(
    LedgerEvent,
    event_id=st.integers(min_value=1, max_value=2**53),
    agent_id=identifiers,
    timestamp=timestamps,
    resource_type=identifiers,
    quantity=amounts,
    cost=amounts,
    currency=st.sampled_from(sorted(ISO_4217_CODES)),
    metadata=st.none() | metadata_objects,
    prev_hash=st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex),
)

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.decimals()
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.dates(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
        | st.tuples(children)
    ),
    max_leaves=6,
)
"""Arbitrary Python values, valid or not, hashable or not."""

non_printable = st.characters(categories=["Cc", "Cf", "Zl", "Zp"])


# ----------------------------------------------------------------------------------------------------------
# LedgerEvent: the line format
# ----------------------------------------------------------------------------------------------------------


def make_event(**changes: Any) -> LedgerEvent:
    fields: dict[str, Any] = {
        "event_id": 7,
        "agent_id": "agent-1",
        "timestamp": "2026-01-31T12:00:00.000000Z",
        "resource_type": "openai.gpt-4o.input_tokens",
        "quantity": Decimal("1000"),
        "cost": Decimal("0.030"),
        "currency": "USD",
    }
    fields.update(changes)
    return LedgerEvent(**fields)


def test_to_dict_omits_metadata_and_prev_hash_when_none() -> None:
    data = make_event().to_dict()
    assert "metadata" not in data
    assert "prev_hash" not in data
    assert list(data) == [
        "event_id",
        "agent_id",
        "timestamp",
        "resource_type",
        "quantity",
        "cost",
        "currency",
    ]


def test_to_dict_keeps_metadata_and_prev_hash_in_line_order() -> None:
    event = make_event(metadata={"model": "gpt-4o", "n": 2}, prev_hash="ab" * 32)
    data = event.to_dict()
    assert list(data)[-2:] == ["metadata", "prev_hash"]
    assert data["metadata"] == {"model": "gpt-4o", "n": 2}
    # An empty metadata object is not "no metadata": it is kept.
    assert make_event(metadata={}).to_dict()["metadata"] == {}


def test_to_json_line_is_compact_one_line_json() -> None:
    line = make_event(metadata={"note": "line\nbreak"}).to_json_line()
    assert "\n" not in line
    assert line == (
        '{"event_id":7,"agent_id":"agent-1","timestamp":"2026-01-31T12:00:00.000000Z",'
        '"resource_type":"openai.gpt-4o.input_tokens","quantity":"1000","cost":"0.030","currency":"USD",'
        '"metadata":{"note":"line\\nbreak"}}'
    )
    assert make_event().to_bytes() == make_event().to_json_line().encode()


@pytest.mark.parametrize("text", ["0.030", "1E+3", "0E-8", "1000", "0.10", "123456789.123456789012345678901"])
def test_decimal_strings_are_kept_exactly(text: str) -> None:
    event = make_event(quantity=Decimal(text), cost=Decimal(text))
    data = orjson.loads(event.to_json_line())
    assert data["quantity"] == text
    assert data["cost"] == text
    back = LedgerEvent.from_dict(data)
    assert str(back.quantity) == text
    assert str(back.cost) == text


def test_from_dict_round_trip_and_unknown_fields_are_ignored() -> None:
    event = make_event(metadata={"a": [1, 2, {"b": None}]}, prev_hash="0f" * 32)
    data = event.to_dict()
    data["a_field_from_a_later_version"] = "ignored"
    assert LedgerEvent.from_dict(data) == event


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"event_id": 0}, "event_id"),
        ({"event_id": True}, "event_id"),
        ({"event_id": "1"}, "event_id"),
        ({"event_id": 1.0}, "event_id"),
        ({"agent_id": ""}, "agent_id"),
        ({"quantity": 1.5}, "quantity"),
        ({"cost": "-1"}, "cost"),
        ({"currency": "usd"}, "currency"),
        ({"currency": ["USD"]}, "currency"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1700000000}, "timestamp"),
        ({"metadata": [1]}, "metadata"),
        ({"prev_hash": "abc"}, "prev_hash"),
        ({"prev_hash": 5}, "prev_hash"),
    ],
)
def test_from_dict_refuses_invalid_fields_naming_them(changes: dict[str, Any], fragment: str) -> None:
    data = make_event().to_dict()
    data.update(changes)
    with pytest.raises(InvalidLedgerEventError, match=fragment):
        LedgerEvent.from_dict(data)


@pytest.mark.parametrize("field", ["event_id", "agent_id", "timestamp", "resource_type", "quantity", "cost"])
def test_from_dict_names_a_missing_field(field: str) -> None:
    data = make_event().to_dict()
    del data[field]
    with pytest.raises(InvalidLedgerEventError, match=field):
        LedgerEvent.from_dict(data)


@pytest.mark.parametrize("data", [None, [], "event", 3])
def test_from_dict_refuses_non_objects(data: Any) -> None:
    with pytest.raises(InvalidLedgerEventError, match="JSON object"):
        LedgerEvent.from_dict(data)


def test_time_property_is_aware_utc() -> None:
    assert make_event().time == datetime(2026, 1, 31, 12, tzinfo=timezone.utc)


@settings(max_examples=150)
@given(events)
def test_event_line_event_round_trip(event: LedgerEvent) -> None:
    line = event.to_json_line()
    assert "\n" not in line
    back = parse_line(line.encode(), 1)
    assert back == event
    # Equality of Decimals is numeric; the stored strings must be identical too.
    assert str(back.quantity) == str(event.quantity)
    assert str(back.cost) == str(event.cost)
    assert back.to_json_line() == line


LINE_FIELDS = ["event_id", "agent_id", "timestamp", "resource_type", "quantity", "cost", "currency"]
LINE_FIELDS += ["metadata", "prev_hash"]


def mutated_line(replaced: dict[str, Any], removed: set[str]) -> bytes:
    data = make_event(metadata={"a": 1}, prev_hash="ab" * 32).to_dict()
    data.update(replaced)
    for name in removed:
        data.pop(name, None)
    return orjson.dumps(data)


damaged_lines = st.binary(max_size=120) | st.builds(
    mutated_line,
    st.dictionaries(st.sampled_from(LINE_FIELDS), json_values, max_size=3),
    st.sets(st.sampled_from(LINE_FIELDS), max_size=2),
)


@settings(max_examples=200)
@given(damaged_lines)
def test_parse_line_either_returns_an_event_or_reports_corruption(line: bytes) -> None:
    assume(b"\n" not in line)
    try:
        event = parse_line(line, 42)
    except LedgerCorruptError as exc:
        assert exc.line_number == 42
        assert "line 42" in str(exc)
    else:
        assert isinstance(event, LedgerEvent)


def test_parse_line_names_the_line_number() -> None:
    with pytest.raises(LedgerCorruptError, match="line 9") as info:
        parse_line(b"{not json", 9)
    assert info.value.line_number == 9
    data = make_event(event_id=9).to_dict()
    data["cost"] = "NaN"
    with pytest.raises(LedgerCorruptError, match="line 9") as info:
        parse_line(orjson.dumps(data), 9)
    assert info.value.event_id == 9


# ----------------------------------------------------------------------------------------------------------
# The validators, one by one
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.030", "0.030"),
        ("1E+3", "1E+3"),
        ("0", "0"),
        (Decimal("2.50"), "2.50"),
        (0, "0"),
        (12, "12"),
        ("1e-18", "1E-18"),
        ("999999999999999999.999999999999999999", "999999999999999999.999999999999999999"),
        ("1.000000000000000000", "1.000000000000000000"),
        ("1E+17", "1E+17"),
        (10**18 - 1, "999999999999999999"),
    ],
)
def test_parse_amount_keeps_exact_digits(value: object, expected: str) -> None:
    assert str(parse_amount(value, "cost", Refused)) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1e400", "less than 10\\^18"),
        ("1E+18", "less than 10\\^18"),
        ("1000000000000000000", "less than 10\\^18"),
        (10**18, "less than 10\\^18"),
        (Decimal("1000000000000000000.5"), "less than 10\\^18"),
        ("0.0000000000000000001", "19 digits after the decimal point"),
        ("1e-19", "19 digits after the decimal point"),
        ("1.0000000000000000000", "19 digits after the decimal point"),
        (Decimal("2.5E-30"), "31 digits after the decimal point"),
    ],
)
def test_parse_amount_refuses_amounts_beyond_the_bounds(value: object, fragment: str) -> None:
    """Bounded input keeps every sum and product exact; ``1e400`` was accepted and summed as
    ``1.000...E+400``, rounded at 28 digits."""
    with pytest.raises(Refused, match=fragment) as info:
        parse_amount(value, "cost", Refused)
    assert "cost" in str(info.value)


@pytest.mark.parametrize("text", ["1e400", "1E-1000", "0.0000000000000000000001", "1" * 40])
def test_ledger_lines_are_read_with_the_wider_stored_limits(text: str) -> None:
    """A ledger written before the bounds still reads (and verifies): stored amounts keep the old limits."""
    assert str(parse_amount(text, "cost", Refused, stored=True)) == str(Decimal(text))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("-1", "negative"),
        ("-0", "negative"),
        (Decimal("-0.00"), "negative"),
        (-3, "negative"),
        ("NaN", "finite"),
        ("sNaN", "finite"),
        (Decimal("NaN"), "finite"),
        ("Infinity", "finite"),
        ("-Infinity", "finite"),
        (Decimal("Infinity"), "finite"),
        (0.5, "float"),
        (float("nan"), "float"),
        (float("inf"), "float"),
        (True, "Decimal, int or numeric string"),
        (None, "Decimal, int or numeric string"),
        ([1], "Decimal, int or numeric string"),
        ("", "must be a number"),
        ("ten", "must be a number"),
        ("1,5", "must be a number"),
        ("1" * (MAX_AMOUNT_CHARS + 1), "longer than"),
        (10 ** (MAX_AMOUNT_CHARS + 1), "more than"),
        (f"1E+{MAX_AMOUNT_EXPONENT + 1}", "range"),
        (f"1E-{MAX_AMOUNT_EXPONENT + 1}", "range"),
    ],
)
def test_parse_amount_refuses(value: object, fragment: str) -> None:
    with pytest.raises(Refused, match=fragment) as info:
        parse_amount(value, "cost", Refused, stored=True)
    assert "cost" in str(info.value)
    with pytest.raises(Refused) as info:  # input is bounded tighter still
        parse_amount(value, "cost", Refused)
    assert "cost" in str(info.value)


def test_parse_amount_float_error_suggests_a_string() -> None:
    with pytest.raises(Refused, match=r"'0\.1'"):
        parse_amount(0.1, "cost", Refused)


@settings(max_examples=150)
@given(anything)
def test_parse_amount_accepts_or_refuses_but_never_crashes(value: object) -> None:
    try:
        amount = parse_amount(value, "quantity", Refused)
    except Refused:
        return
    assert isinstance(amount, Decimal)
    assert amount.is_finite()
    assert not amount.is_signed()
    assert not isinstance(value, (float, bool))


@settings(max_examples=300)
@given(st.text(max_size=30))
def test_parse_amount_of_text_matches_decimal_semantics(text: str) -> None:
    try:
        # Decimal() also takes surrounding white space and digit-group underscores; amounts are refused
        # with either (an amount is written plainly, as the ledger stores it).
        expected: Decimal | None = None if "_" in text or text != text.strip() else Decimal(text)
    except InvalidOperation:
        expected = None
    try:
        amount = parse_amount(text, "quantity", Refused)
    except Refused:
        assert (
            expected is None
            or not expected.is_finite()
            or expected.is_signed()
            or (expected.adjusted() >= MAX_INTEGER_DIGITS and expected)
            or expected.as_tuple().exponent < -MAX_FRACTION_DIGITS  # type: ignore[operator]
        )
    else:
        assert expected is not None
        assert str(amount) == str(expected)


@given(st.decimals(allow_nan=False, allow_infinity=False, max_value=-1))
def test_parse_amount_refuses_every_negative_decimal(value: Decimal) -> None:
    with pytest.raises(Refused, match="negative"):
        parse_amount(value, "cost", Refused)
    with pytest.raises(Refused, match="negative"):
        parse_amount(str(value), "cost", Refused)


@pytest.mark.parametrize(
    "value",
    ["agent-1", "a", "my agent", "agent/ü/🤖", "x" * MAX_IDENTIFIER_LENGTH, "openai.gpt-4o.input_tokens"],
)
def test_check_identifier_accepts(value: str) -> None:
    assert check_identifier(value, "agent_id", Refused) == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\t", "empty"),
        (None, "string"),
        (7, "string"),
        (b"agent", "string"),
        ("a\nb", "control"),
        ("a\rb", "control"),
        ("a\x00b", "control"),
        ("a\tb", "control"),
        ("a\u2028b", "control"),
        ("a\u2029b", "control"),
        ("a\u200bb", "control"),  # zero-width space: an invisible look-alike
        ("a\u00a0b", "control"),  # no-break space
        ("a\x1b[31mb", "control"),  # terminal escape
        ("x" * (MAX_IDENTIFIER_LENGTH + 1), "limit"),
    ],
)
def test_check_identifier_refuses(value: object, fragment: str) -> None:
    with pytest.raises(Refused, match=fragment) as info:
        check_identifier(value, "agent_id", Refused)
    assert "agent_id" in str(info.value)


@given(st.text(max_size=20), non_printable, st.text(max_size=20))
def test_check_identifier_refuses_any_non_printable_character(before: str, bad: str, after: str) -> None:
    with pytest.raises(Refused):
        check_identifier(before + bad + after, "resource_type", Refused)


@settings(max_examples=150)
@given(anything)
def test_check_identifier_accepts_or_refuses_but_never_crashes(value: object) -> None:
    with contextlib.suppress(Refused):
        assert check_identifier(value, "agent_id", Refused) == value


@pytest.mark.parametrize("code", ["USD", "EUR", "JPY", "GBP", "XAU"])
def test_check_currency_accepts_iso_codes(code: str) -> None:
    assert check_currency(code, Refused) == code


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("usd", "upper-case"),
        ("Usd", "upper-case"),
        ("US", "upper-case"),
        ("USDT", "upper-case"),
        ("", "upper-case"),
        (" USD", "upper-case"),
        (None, "upper-case"),
        (840, "upper-case"),
        (["USD"], "upper-case"),
        ({"USD": 1}, "upper-case"),
        ("ABC", "unknown currency"),
        ("BTC", "unknown currency"),
    ],
)
def test_check_currency_refuses(value: object, fragment: str) -> None:
    with pytest.raises(Refused, match=fragment):
        check_currency(value, Refused)


@settings(max_examples=150)
@given(anything)
def test_check_currency_accepts_or_refuses_but_never_crashes(value: object) -> None:
    with contextlib.suppress(Refused):
        assert check_currency(value, Refused) in ISO_4217_CODES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, tzinfo=timezone.utc)),
        ("2026-01-31T12:00:00z", datetime(2026, 1, 31, 12, tzinfo=timezone.utc)),
        ("2026-01-31T12:00:00.000000Z", datetime(2026, 1, 31, 12, tzinfo=timezone.utc)),
        ("2026-01-31T12:00:00", datetime(2026, 1, 31, 12, tzinfo=timezone.utc)),
        ("2026-01-31T14:00:00+02:00", datetime(2026, 1, 31, 12, tzinfo=timezone.utc)),
        (" 2026-01-31T12:00:00Z ", datetime(2026, 1, 31, 12, tzinfo=timezone.utc)),
        (datetime(2026, 1, 31, 12), datetime(2026, 1, 31, 12, tzinfo=timezone.utc)),
        (
            datetime(2026, 1, 31, 7, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2026, 1, 31, 12, tzinfo=timezone.utc),
        ),
    ],
)
def test_parse_timestamp_gives_aware_utc(value: object, expected: datetime) -> None:
    moment = parse_timestamp(value, "timestamp", Refused)
    assert moment == expected
    assert moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-01-31 25:00",
        "9999-12-31T23:00:00-02:00",  # valid text, but beyond datetime's range once converted to UTC
        1700000000,
        1.5,
        None,
        date(2026, 1, 31),
        ["2026-01-31"],
    ],
)
def test_parse_timestamp_refuses(value: object) -> None:
    with pytest.raises(Refused, match="timestamp"):
        parse_timestamp(value, "timestamp", Refused)


@settings(max_examples=150)
@given(anything)
def test_parse_timestamp_accepts_or_refuses_but_never_crashes(value: object) -> None:
    try:
        moment = parse_timestamp(value, "timestamp", Refused)
    except Refused:
        return
    assert moment.utcoffset() == timedelta(0)


def test_format_timestamp_is_the_one_stored_form() -> None:
    assert format_timestamp(datetime(2026, 1, 31, 12)) == "2026-01-31T12:00:00.000000Z"
    assert format_timestamp(datetime(2026, 1, 31, 12, 0, 0, 5, tzinfo=timezone.utc)) == (
        "2026-01-31T12:00:00.000005Z"
    )
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 1, 1, 1, tzinfo=plus_two)) == "2025-12-31T23:00:00.000000Z"


@given(st.datetimes(timezones=st.none() | st.timezones()), st.datetimes(timezones=st.none() | st.timezones()))
def test_format_timestamp_sorts_in_time_order(a: datetime, b: datetime) -> None:
    try:
        text_a, text_b = format_timestamp(a), format_timestamp(b)
    except (OverflowError, ValueError):
        assume(False)  # the instant itself is outside datetime's range in UTC
        raise
    assert STORED_TIMESTAMP.fullmatch(text_a)
    moment_a = parse_timestamp(text_a, "t", Refused)
    moment_b = parse_timestamp(text_b, "t", Refused)
    assert (text_a < text_b) == (moment_a < moment_b)
    assert (text_a == text_b) == (moment_a == moment_b)


def test_check_metadata_accepts_json_objects() -> None:
    assert check_metadata(None, Refused) is None
    value = {"model": "gpt-4o", "tokens": [1, 2], "nested": {"ok": True, "x": None}, "f": 0.5}
    assert check_metadata(value, Refused) == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "JSON object"),
        ("text", "JSON object"),
        (1, "JSON object"),
        ({1: "a"}, "keys must be strings"),
        ({"a": {2: "b"}}, "keys must be strings"),
        ({"a": float("nan")}, "non-finite"),
        ({"a": [1, float("inf")]}, "non-finite"),
        ({"a": {"b": float("-inf")}}, "non-finite"),
        ({"a": Decimal("NaN")}, "non-finite"),
        ({"a": {1, 2}}, "not JSON-serializable"),
        ({"a": object()}, "not JSON-serializable"),
        ({"a": 2**70}, "not JSON-serializable"),
        ({"n": 1, "a": -(2**64)}, "not JSON-serializable"),
        ({"k": "x" * MAX_METADATA_BYTES}, "limit"),
        ({"n": 1, "ok": True, "none": None, "k": "x" * MAX_METADATA_BYTES}, "limit"),
    ],
)
def test_check_metadata_refuses(value: object, fragment: str) -> None:
    with pytest.raises(Refused, match=fragment):
        check_metadata(value, Refused)


def test_flat_metadata_of_strings_numbers_and_flags_is_accepted_as_a_copy() -> None:
    """A call's usage or a release's reason: one level of strings, integers, booleans and nulls."""
    value = {"model": "gpt-4o", "input_tokens": 1000, "cached": False, "request_id": None, "big": 2**63 - 1}
    checked = check_metadata(value, Refused)
    assert checked == value and checked is not value


def test_check_metadata_size_limit_is_exact() -> None:
    overhead = len(b'{"k":""}')
    at_limit = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert len(dumps(at_limit)) == MAX_METADATA_BYTES
    assert check_metadata(at_limit, Refused) == at_limit
    with pytest.raises(Refused, match="limit"):
        check_metadata({"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}, Refused)


def test_check_metadata_refuses_deep_nesting() -> None:
    value: dict[str, Any] = {}
    for _ in range(40):
        value = {"a": value}
    with pytest.raises(Refused, match="nested"):
        check_metadata(value, Refused)


@settings(max_examples=150)
@given(anything)
def test_check_metadata_accepts_or_refuses_but_never_crashes(value: object) -> None:
    try:
        result = check_metadata(value, Refused)
    except Refused:
        return
    assert result is None or len(dumps(result)) <= MAX_METADATA_BYTES


def test_decimals_in_metadata_are_written_as_exact_strings() -> None:
    assert dumps({"price": Decimal("0.030")}) == b'{"price":"0.030"}'


# ----------------------------------------------------------------------------------------------------------
# Bad input at the writer: a clear error, and the file is not touched
# ----------------------------------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "agent_id": "agent-1",
    "resource_type": "tokens",
    "quantity": "1000",
    "cost": "0.030",
}


@pytest.fixture
def writer(ledger_path: Path) -> Iterator[LedgerWriter]:
    with LedgerWriter(ledger_path, backup_count=0) as writer:
        writer.append_event(**GOOD)  # a non-empty ledger, so "unchanged" means something
        yield writer


BAD_INPUT = [
    ({"agent_id": ""}, "agent_id"),
    ({"agent_id": "  \t "}, "agent_id"),
    ({"agent_id": None}, "agent_id"),
    ({"agent_id": 42}, "agent_id"),
    ({"agent_id": b"agent"}, "agent_id"),
    ({"agent_id": "evil\nagent"}, "agent_id"),
    ({"agent_id": "evil\x00agent"}, "agent_id"),
    ({"agent_id": "evil\u2028agent"}, "agent_id"),
    ({"agent_id": "a" * (MAX_IDENTIFIER_LENGTH + 1)}, "agent_id"),
    ({"resource_type": ""}, "resource_type"),
    ({"resource_type": " "}, "resource_type"),
    ({"resource_type": ["tokens"]}, "resource_type"),
    ({"resource_type": "tok\nens"}, "resource_type"),
    ({"resource_type": "tok\x00ens"}, "resource_type"),
    ({"resource_type": "tok\u2028ens"}, "resource_type"),
    ({"resource_type": "r" * (MAX_IDENTIFIER_LENGTH + 1)}, "resource_type"),
    ({"quantity": "-1"}, "quantity"),
    ({"quantity": "-0"}, "quantity"),
    ({"quantity": Decimal("-0")}, "quantity"),
    ({"quantity": "NaN"}, "quantity"),
    ({"quantity": Decimal("Infinity")}, "quantity"),
    ({"quantity": 1.0}, "quantity"),
    ({"quantity": True}, "quantity"),
    ({"quantity": "lots"}, "quantity"),
    ({"quantity": None}, "quantity"),
    ({"cost": "-0.01"}, "cost"),
    ({"cost": "-0"}, "cost"),
    ({"cost": Decimal("-0.000")}, "cost"),
    ({"cost": float("nan")}, "cost"),
    ({"cost": float("inf")}, "cost"),
    ({"cost": "inf"}, "cost"),
    ({"cost": Decimal("sNaN")}, "cost"),
    ({"cost": 0.03}, "cost"),
    ({"cost": False}, "cost"),
    ({"cost": "0.03 USD"}, "cost"),
    ({"cost": ""}, "cost"),
    ({"currency": "usd"}, "currency"),
    ({"currency": "XYZ"}, "currency"),
    ({"currency": "DOLLARS"}, "currency"),
    ({"currency": None}, "currency"),
    ({"currency": ["USD"]}, "currency"),
    ({"timestamp": "not a time"}, "timestamp"),
    ({"timestamp": "2026-02-30T00:00:00Z"}, "timestamp"),
    ({"timestamp": 1700000000}, "timestamp"),
    ({"timestamp": date(2026, 1, 1)}, "timestamp"),
    ({"timestamp": "9999-12-31T23:00:00-02:00"}, "timestamp"),
    ({"timestamp": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2)))}, "timestamp"),
    ({"timestamp": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}, "timestamp"),
    ({"metadata": ["not", "a", "dict"]}, "metadata"),
    ({"metadata": "text"}, "metadata"),
    ({"metadata": {1: "x"}}, "metadata"),
    ({"metadata": {"ok": {2: "x"}}}, "metadata"),
    ({"metadata": {"score": float("nan")}}, "metadata"),
    ({"metadata": {"scores": [1.0, float("inf")]}}, "metadata"),
    ({"metadata": {"blob": "x" * MAX_METADATA_BYTES}}, "metadata"),
    ({"metadata": {"tags": {"a"}}}, "metadata"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_INPUT, ids=[repr(c)[:60] for c, _ in BAD_INPUT])
def test_bad_input_is_refused_and_writes_nothing(
    writer: LedgerWriter, ledger_path: Path, changes: dict[str, Any], field: str
) -> None:
    before = ledger_path.read_bytes()
    with pytest.raises(InvalidLedgerEventError, match=field):
        writer.append_event(**{**GOOD, **changes})
    assert ledger_path.read_bytes() == before
    # The refusal is not sticky: the writer keeps working, and the ids stay contiguous.
    assert writer.append_event(**GOOD).event_id == 2


def test_invalid_ledger_event_error_is_a_value_error(writer: LedgerWriter) -> None:
    with pytest.raises(ValueError):
        writer.append_event(**{**GOOD, "cost": "-1"})


def test_fuzzed_bad_input_never_touches_the_file(writer: LedgerWriter, ledger_path: Path) -> None:
    before = ledger_path.read_bytes()

    bad_identifier = st.builds(
        lambda a, bad, b: a + bad + b, st.text(max_size=8), non_printable, st.text(max_size=8)
    )
    bad_amount = (
        st.floats()
        | st.decimals(max_value=-1, allow_nan=False)
        | st.sampled_from(["NaN", "-NaN", "Infinity", "-0", "-0.0", "1e99999", "", " ", "0x10", "1/2"])
        | st.text(alphabet="-abcdefxyz,", min_size=1, max_size=6)
    )
    bad_field = st.sampled_from(["agent_id", "resource_type", "quantity", "cost"])

    @settings(max_examples=200, deadline=None)
    @given(bad_field, bad_identifier, bad_amount)
    def check(field: str, identifier: str, amount: object) -> None:
        value = identifier if field in ("agent_id", "resource_type") else amount
        with pytest.raises(InvalidLedgerEventError, match=field):
            writer.append_event(**{**GOOD, field: value})
        with pytest.raises(InvalidLedgerEventError, match="item 1"):
            writer.append_events([GOOD, {**GOOD, field: value}])

    check()
    assert ledger_path.read_bytes() == before


def test_fuzzed_input_is_either_appended_exactly_or_refused_cleanly(
    writer: LedgerWriter, ledger_path: Path
) -> None:
    """Any mix of valid and junk values: an append either lands as one readable line, or nothing changes."""

    def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(valid, valid, valid, valid, valid, valid, anything)

    fields = st.fixed_dictionaries(
        {
            "agent_id": mostly(identifiers),
            "resource_type": mostly(identifiers),
            "quantity": mostly(input_amounts | input_amounts.map(str)),
            "cost": mostly(input_amounts | input_amounts.map(str)),
            "currency": mostly(st.sampled_from(["USD", "EUR"])),
            "metadata": mostly(st.none() | metadata_objects),
            "timestamp": mostly(timestamps),
        }
    )
    outcomes = {"appended": 0, "refused": 0}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields)
    def check(kwargs: dict[str, Any]) -> None:
        before = ledger_path.read_bytes()
        try:
            event = writer.append_event(**kwargs)
        except InvalidLedgerEventError:
            assert ledger_path.read_bytes() == before
            outcomes["refused"] += 1
            return
        outcomes["appended"] += 1
        after = ledger_path.read_bytes()
        assert after.startswith(before)
        assert after[len(before) :] == event.to_bytes() + b"\n"
        assert LedgerReader(ledger_path).last_events(1) == [event]

    check()
    assert outcomes["appended"] > 0  # both outcomes were exercised (how often is up to Hypothesis)
    assert outcomes["refused"] > 0


def test_appended_events_read_back_identically(writer: LedgerWriter, ledger_path: Path) -> None:
    @settings(max_examples=60, deadline=None)
    @given(
        identifiers,
        identifiers,
        input_amounts,
        input_amounts,
        st.sampled_from(["USD", "EUR", "JPY"]),
        metadata_objects,
    )
    def check(
        agent: str, resource: str, quantity: Decimal, cost: Decimal, currency: str, metadata: dict[str, Any]
    ) -> None:
        event = writer.append_event(agent, resource, quantity, cost, currency, metadata)
        [back] = LedgerReader(ledger_path).last_events(1)
        assert back == event
        assert (str(back.quantity), str(back.cost)) == (str(quantity), str(cost))
        assert back.metadata == metadata
        assert STORED_TIMESTAMP.fullmatch(back.timestamp)

    check()
