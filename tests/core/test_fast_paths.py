"""The read path's inlined fast paths must agree exactly with the plain validators and folds they stand for:
``validate_event_dict`` (inlined checks, remembered amounts and timestamp) with the validators of
:mod:`caracal.core.validation`, ``BudgetState.apply_all`` (plain charges folded in directly) with
``apply`` one entry at a time, and ``MerkleFrontier.extend`` (a level at a time) with ``append``."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caracal.core.budget import BudgetState
from caracal.core.events import LedgerEvent, check_extensions, validate_event_dict
from caracal.core.merkle import MerkleFrontier
from caracal.core.validation import (
    check_currency,
    check_identifier,
    check_metadata,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import InvalidLedgerEventError, ProofError


def reference(data: Any) -> tuple[Any, ...]:
    """validate_event_dict as it was written before it was inlined: the validators, called in order."""
    error = InvalidLedgerEventError
    if type(data) is not dict:
        raise error(f"an event must be a JSON object, got {type(data).__name__}")
    try:
        event_id = data["event_id"]
        timestamp = data["timestamp"]
        fields = (
            check_identifier(data["agent_id"], "agent_id", error),
            check_identifier(data["resource_type"], "resource_type", error),
            parse_amount(data["quantity"], "quantity", error, stored=True),
            parse_amount(data["cost"], "cost", error, stored=True),
            check_currency(data["currency"], error),
        )
    except KeyError as exc:
        raise error(f"event is missing the field {exc.args[0]!r}") from None
    if type(event_id) is not int or event_id < 1:
        raise error(f"event_id must be a positive integer, got {event_id!r}")
    if type(timestamp) is not str:
        raise error(f"timestamp must be an ISO 8601 string, got {timestamp!r}")
    parse_timestamp(timestamp, "timestamp", error)
    metadata = data.get("metadata")
    if metadata is not None:
        check_metadata(metadata, error)
    prev_hash = data.get("prev_hash")
    if prev_hash is not None and (type(prev_hash) is not str or len(prev_hash) != 64):
        raise error(f"prev_hash must be 64 hex digits, got {prev_hash!r}")
    agent_id, resource_type, quantity, cost, currency = fields
    extensions = check_extensions(data.get("kind"), data.get("hold_id"), data.get("idempotency_key"),
                                  data.get("expires_at"), data.get("on_expiry"))  # fmt: skip
    return (event_id, agent_id, timestamp, resource_type, quantity, cost, currency, metadata, prev_hash,
            *extensions)  # fmt: skip


def outcome(validate: Any, data: Any) -> tuple[str, Any]:
    try:
        fields = validate(data)
    except InvalidLedgerEventError as exc:
        return "error", str(exc)
    # Amounts compare by their exact digits, not only by value ("0.030" is not "0.03").
    return "ok", tuple((type(f), str(f)) if isinstance(f, Decimal) else f for f in fields)


HASH = "ab" * 32
values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**64), st.floats(allow_nan=True),
    st.text(max_size=6), st.sampled_from(["0.030", "1000", "-1", "1E+5", "1_0", " 1", "NaN", "1e-2000"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)  # fmt: skip
good = {
    "event_id": st.integers(1, 2**63),
    "agent_id": st.sampled_from(["agent-1", "a b", " ", "", "x" * 257, "tab\there", "é"]),
    "timestamp": st.sampled_from(
        ["2026-11-25T19:24:52.123456Z", "2026-02-30T00:00:00.000000Z", "2026-01-01T00:00:00Z", "yesterday"]
    ),
    "resource_type": st.sampled_from(["tool.calls", "caracal.hold", "", "\u2028"]),
    "quantity": st.sampled_from(["1", "0", "0.030", "1000", "-0", "1E+3", "x", "0" * 101]),
    "cost": st.sampled_from(["0.005", "0", "1e-3", "0.0000000000000000001", "inf"]),
    "currency": st.sampled_from(["USD", "EUR", "usd", "ABC"]),
    "prev_hash": st.sampled_from([HASH, "ab", None]),
    "metadata": st.sampled_from(
        [None, {"reason": "settled"}, {"n": 1.5}, {"d": {"e": "f"}}, {"k": "v" * 20000}, {1: "x"}]
    ),
    "kind": st.sampled_from([None, "charge", "hold", "release", "other"]),
    "hold_id": st.sampled_from([None, "hold-1", ""]),
    "idempotency_key": st.sampled_from([None, "key-1"]),
    "expires_at": st.sampled_from([None, "2026-11-25T19:29:52.123456Z", "soon"]),
    "on_expiry": st.sampled_from([None, "charge", "release", "never"]),
    "unknown": st.sampled_from([None, 1]),
}  # fmt: skip


@settings(max_examples=1500)
@given(
    data=st.fixed_dictionaries(
        {}, optional={name: st.one_of(strategy, values) for name, strategy in good.items()}
    )
)
def test_inlined_validation_agrees_with_the_validators(data: dict[str, Any]) -> None:
    assert outcome(validate_event_dict, data) == outcome(reference, data)
    assert outcome(validate_event_dict, data) == outcome(reference, data)  # again: remembered amounts, stamp


@settings(max_examples=300)
@given(data=st.fixed_dictionaries({name: strategy for name, strategy in good.items() if name != "unknown"}))
def test_inlined_validation_agrees_on_mostly_valid_events(data: dict[str, Any]) -> None:
    data = {key: value for key, value in data.items() if value is not None}
    assert outcome(validate_event_dict, data) == outcome(reference, data)


def test_a_valid_plain_line_gives_the_same_event_both_ways() -> None:
    data = {"event_id": 3, "agent_id": "a", "timestamp": "2026-11-25T19:24:52.123456Z", "resource_type": "r",
            "quantity": "1.50", "cost": "0.030", "currency": "USD", "prev_hash": HASH}  # fmt: skip
    assert LedgerEvent(*validate_event_dict(data)) == LedgerEvent(*reference(data))
    assert str(LedgerEvent(*validate_event_dict(data)).cost) == "0.030"


NOW = datetime(2026, 11, 25, 19, 24, tzinfo=timezone.utc)


def stamp(seconds: int) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


entry_kinds = st.sampled_from(
    ["plain", "plain", "plain", "charge-kind", "keyed", "hold", "release", "against"]
)


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(
            entry_kinds, st.integers(0, 3), st.integers(-120, 777600), st.sampled_from(["0.5", "1", "0.030"])
        ),
        max_size=40,
    ),
    currency=st.sampled_from(["USD", "EUR"]),
)  # fmt: skip
def test_apply_all_folds_in_exactly_as_apply_does(
    steps: list[tuple[str, int, int, str]], currency: str
) -> None:
    chains = {"a0": ("a0",), "a1": ("a1", "a0"), "a2": ("a2", "a1", "a0"), "a3": ("a3",)}
    events = []
    for number, (kind, agent, seconds, cost) in enumerate(steps, start=1):
        agent_id = f"a{agent}"
        hold = f"hold-{agent}"
        ext: tuple[str | None, ...] = {
            "plain": (None, None, None, None, None),
            "charge-kind": ("charge", None, None, None, None),
            "keyed": (None, None, f"key-{number % 3}", None, None),
            "hold": ("hold", hold, None, stamp(seconds + 300), "charge" if agent == 2 else None),
            "release": ("release", hold, None, None, None),
            "against": (None, hold, None, None, None),
        }[kind]
        events.append(LedgerEvent(number, agent_id, stamp(seconds), "r", Decimal(1), Decimal(cost), currency,
                                  None, None, *ext))  # fmt: skip
    one_by_one = BudgetState(chains.__getitem__, timedelta(days=7))
    for event in events:
        one_by_one.apply(event, NOW)
    together = BudgetState(chains.__getitem__, timedelta(days=7))
    together.apply_all(events[: len(events) // 2], NOW)
    together.apply_all(events[len(events) // 2 :], NOW)
    assert together.to_snapshot() == one_by_one.to_snapshot()


@settings(max_examples=300)
@given(sizes=st.lists(st.integers(0, 300), max_size=6), as_iterator=st.booleans())
def test_merkle_extend_equals_appending_one_by_one(sizes: list[int], as_iterator: bool) -> None:
    one, many = MerkleFrontier(), MerkleFrontier()
    counter = 0
    for size in sizes:
        leaves = [hashlib.sha256(b"%d" % (counter + i)).digest() for i in range(size)]
        counter += size
        for leaf in leaves:
            one.append(leaf)
        many.extend(iter(leaves) if as_iterator else leaves)
        assert many == one and many.root() == one.root()


def test_merkle_extend_keeps_the_leaves_before_a_bad_one() -> None:
    tree = MerkleFrontier()
    leaves = [hashlib.sha256(b"%d" % i).digest() for i in range(20)]
    with pytest.raises(ProofError):
        tree.extend([*leaves, b"short"])
    reference_tree = MerkleFrontier()
    for leaf in leaves:
        reference_tree.append(leaf)
    assert tree == reference_tree
