"""The denial log's pure rules: one record per hour, agent and policy; counts add up; old records go; a
malformed document is refused, never read as empty."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from caracal.core.denials import (
    MAX_RECORDS,
    DenialRecord,
    denial,
    empty_denials,
    fold,
    parse_denials,
    recent,
)
from caracal.exceptions import RegistryError

T0 = datetime(2026, 12, 4, 10, 15, tzinfo=timezone.utc)


def _denied(agent: str, policy: str | None, at: datetime, reason: str = "over the limit") -> DenialRecord:
    return denial(agent, policy, reason, Decimal("0.50"), "USD", at)


def test_denials_in_one_hour_fold_into_one_record_with_the_latest_reason() -> None:
    document = empty_denials()
    fold(
        document, [_denied("a", "p", T0, "first"), _denied("a", "p", T0 + timedelta(minutes=30), "later")], T0
    )
    fold(document, [_denied("a", "p", T0 + timedelta(minutes=10), "middle")], T0)
    (record,) = parse_denials(document, "test").values()
    assert record.count == 3
    assert record.first == T0 and record.last == T0 + timedelta(minutes=30)
    assert record.reason == "later"
    assert record.amount == Decimal("0.50")


def test_other_hours_agents_and_policies_are_separate_records() -> None:
    document = empty_denials()
    fold(
        document,
        [
            _denied("a", "p", T0),
            _denied("a", "p", T0 + timedelta(hours=1)),
            _denied("a", "q", T0),
            _denied("b", "p", T0),
            _denied("b", None, T0, "agent b is suspended"),
        ],
        T0,
    )
    records = parse_denials(document, "test")
    assert len(records) == 5
    assert sum(r.count for r in records.values()) == 5


def test_records_past_the_retention_are_pruned_and_the_count_is_bounded() -> None:
    document = empty_denials()
    fold(document, [_denied("old", "p", T0 - timedelta(days=8)), _denied("new", "p", T0)], T0)
    assert [r.agent_id for r in parse_denials(document, "test").values()] == ["new"]
    many = [_denied(f"agent-{i}", "p", T0 - timedelta(seconds=i)) for i in range(MAX_RECORDS + 5)]
    fold(document, many, T0)
    kept = parse_denials(document, "test")
    assert len(kept) == MAX_RECORDS
    assert "agent-0" in {r.agent_id for r in kept.values()}  # the latest are kept
    assert f"agent-{MAX_RECORDS + 4}" not in {r.agent_id for r in kept.values()}


def test_recent_filters_by_time_and_agents_latest_first() -> None:
    document = empty_denials()
    fold(
        document,
        [
            _denied("a", "p", T0 - timedelta(hours=30)),
            _denied("a", "p", T0),
            _denied("b", "p", T0 + timedelta(minutes=1)),
        ],
        T0,
    )
    records = parse_denials(document, "test").values()
    assert [r.agent_id for r in recent(records, T0 - timedelta(hours=24))] == ["b", "a"]
    assert [r.agent_id for r in recent(records, T0 - timedelta(hours=24), {"a"})] == ["a"]


@pytest.mark.parametrize(
    "document",
    [
        {"version": 2, "records": {}},
        {"version": 1, "records": []},
        {"version": 1, "records": {"x": "not an object"}},
        {"version": 1, "records": {"x": {"agent_id": "a"}}},
    ],
)
def test_a_malformed_document_is_refused(document: dict[str, object]) -> None:
    with pytest.raises(RegistryError, match="denial"):
        parse_denials(document, "denials.json")


def test_a_record_filed_under_another_key_or_with_a_bad_count_is_refused() -> None:
    document = empty_denials()
    fold(document, [_denied("a", "p", T0)], T0)
    (key,) = document["records"]
    record = dict(document["records"][key])
    with pytest.raises(RegistryError, match="wrong key"):
        parse_denials({"version": 1, "records": {key.replace("|a|", "|b|"): record}}, "t")
    with pytest.raises(RegistryError, match="count"):
        parse_denials({"version": 1, "records": {key: {**record, "count": 0}}}, "t")
