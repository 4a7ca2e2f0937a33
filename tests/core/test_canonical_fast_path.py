"""verify's fast path (a pattern for plain writer lines) must never accept what full validation refuses."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from caracal.core.events import (
    LedgerEvent,
    canonical_line_fields,
    line_body,
    parse_line,
    validate_event_dict,
)
from caracal.core.ledger import LedgerWriter
from caracal.exceptions import InvalidLedgerEventError

HASH = "ab" * 32

identifiers = st.one_of(
    st.text(min_size=1, max_size=40), st.from_regex(r"[a-z][a-z0-9. _-]{0,20}", fullmatch=True)
)
amounts = st.decimals(min_value=0, max_value=10**12, allow_nan=False, allow_infinity=False, places=6)
currencies = st.sampled_from(["USD", "EUR", "JPY", "ABC", "usd", "US"])
timestamps = st.sampled_from(
    [
        "2026-11-25T19:24:52.123456Z",
        "2026-02-30T00:00:00.000000Z",
        "2026-01-01T00:00:00Z",
        "1999-12-31T23:59:59.999999Z",
    ]
)


def full_path(line: bytes) -> tuple[int, str | None] | None:
    try:
        fields = validate_event_dict(orjson.loads(line))
    except (InvalidLedgerEventError, orjson.JSONDecodeError):
        return None
    assert_parsed_alike(line)
    return fields[0], fields[8]  # event_id, prev_hash


def assert_parsed_alike(line: bytes) -> None:
    """``parse_line`` (which builds a plain line straight from the pattern's match) gives exactly the event
    full validation gives, down to each amount's digits."""
    fast = parse_line(line, 1)
    full = LedgerEvent.from_dict(orjson.loads(line))
    assert fast == full and fast.to_bytes() == full.to_bytes() == line


@settings(max_examples=400)
@given(
    event_id=st.integers(min_value=0, max_value=2**63 - 1),
    agent=identifiers,
    resource=identifiers,
    quantity=amounts,
    cost=amounts,
    currency=currencies,
    timestamp=timestamps,
)
def test_fast_path_agrees_with_full_validation(
    event_id, agent, resource, quantity, cost, currency, timestamp
):
    line = LedgerEvent(event_id, agent, timestamp, resource, quantity, cost, currency, None, HASH).to_bytes()
    fast = canonical_line_fields(line)
    if fast is not None:
        assert full_path(line) == fast


@settings(max_examples=400)
@given(position=st.integers(min_value=0, max_value=300), byte=st.integers(min_value=0, max_value=255))
def test_a_corrupted_byte_never_slips_through_the_fast_path(position, byte):
    event = LedgerEvent(7, "agent-1", "2026-11-25T19:24:52.123456Z", "openai.gpt-4o.input_tokens",
                        Decimal("1000"), Decimal("0.030"), "USD", None, HASH)  # fmt: skip
    line = bytearray(event.to_bytes())
    line[position % len(line)] = byte
    fast = canonical_line_fields(bytes(line))
    if fast is not None:
        assert full_path(bytes(line)) == fast


def test_plain_lines_from_the_writer_take_the_fast_path(ledger_path: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        writer.append_event("agent-1", "openai.gpt-4o.input_tokens", Decimal("1000"), Decimal("0.030"))
        writer.append_event("agent 2", "tool.search.calls", 3, "0.005", currency="EUR")
        writer.append_event("agent-3", "x", Decimal("0"), Decimal("0"), metadata={"k": "v"})
    lines = ledger_path.read_bytes().splitlines()
    assert canonical_line_fields(lines[0]) == (1, full_path(lines[0])[1])  # type: ignore[index]
    assert canonical_line_fields(lines[1]) is not None
    assert canonical_line_fields(lines[2]) is None  # metadata always takes the full path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=300)
@given(
    event_id=st.integers(min_value=1, max_value=2**63 - 1),
    agent=st.text(min_size=1, max_size=20),
    resource=st.text(min_size=1, max_size=20),
    quantity=amounts,
    cost=amounts,
    metadata=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_the_writers_direct_line_bytes_equal_the_event_encoding(
    event_id, agent, resource, quantity, cost, metadata
):
    """The writer builds lines with line_body (fast); readers and to_bytes use the dict encoding. Equal bytes
    mean the Merkle leaf the writer hashed is the leaf anyone re-encoding the event would hash."""
    fields = (agent, "2026-11-25T19:24:52.123456Z", resource, quantity, cost, "EUR", metadata)
    spliced = b'{"event_id":%d,%b,"prev_hash":"%b"}' % (event_id, line_body(*fields), HASH.encode())
    assert spliced == LedgerEvent(event_id, *fields, HASH).to_bytes()
