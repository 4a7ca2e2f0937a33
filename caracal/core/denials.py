"""The denial log (pure): who was refused, by which policy, why, how often, per hour.

A denial writes nothing to the ledger (nothing was spent or held), yet operators need to see them: an
agent stuck against its limit, a runaway loop being refused a thousand times a minute. The log keeps them
aggregated, one :class:`DenialRecord` per (hour, agent, denying policy): a loop denied ten thousand times
takes one record, not ten thousand, so the log's size is bounded by agents x policies x retained hours,
never by traffic.

The stored document (``{"version": 1, "records": {key: record}}``) lives beside the registries; this
module only folds denials into it and reads it back. Every function takes the time as an argument.

Invariants:

- A record's ``count`` is the number of denials folded into it; ``first`` <= ``last``, both within the
  record's hour; ``reason``, ``amount`` and ``currency`` are those of the latest denial (``last``).
- Records older than the retention are pruned on every write; past :data:`MAX_RECORDS`, the oldest go
  first. The log is a view for people, not a proof: the ledger remains the record of money.
- A document that does not have this shape is refused (:class:`RegistryError`) when read, never
  silently taken as empty.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from caracal.core.validation import format_timestamp, parse_timestamp
from caracal.exceptions import RegistryError

DEFAULT_RETENTION = timedelta(days=7)
"""How long denial records are kept (``[alerts]``-independent: the dashboard shows the last 24 hours)."""

MAX_RECORDS = 20_000
"""At most this many records are kept (the oldest pruned first): a bound on the document's size even when
many agents are denied under many policies for a whole retention period."""

VERSION = 1
NO_POLICY = "-"
"""The key part for a denial no policy made (a suspended agent, an agent without a policy)."""


@dataclass(frozen=True)
class DenialRecord:
    """The denials of one agent by one policy (or for one reason without a policy) in one hour."""

    agent_id: str
    policy_id: str | None
    reason: str
    count: int
    first: datetime
    last: datetime
    amount: Decimal | None
    currency: str

    @property
    def hour(self) -> datetime:
        return self.first.replace(minute=0, second=0, microsecond=0)

    @property
    def key(self) -> str:
        return record_key(self.hour, self.agent_id, self.policy_id)

    def merged(self, other: DenialRecord) -> DenialRecord:
        """This record and ``other`` (same key) as one: counts added, the latest reason kept."""
        latest = other if other.last >= self.last else self
        return replace(
            latest,
            count=self.count + other.count,
            first=min(self.first, other.first),
            last=max(self.last, other.last),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "policy_id": self.policy_id,
            "reason": self.reason,
            "count": self.count,
            "first": format_timestamp(self.first),
            "last": format_timestamp(self.last),
            "amount": None if self.amount is None else str(self.amount),
            "currency": self.currency,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DenialRecord:
        """Raises ``ValueError``/``KeyError``/``TypeError`` for a record of the wrong shape."""
        count = data["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        amount = data.get("amount")
        policy_id = data.get("policy_id")
        record = cls(
            agent_id=_text(data["agent_id"], "agent_id"),
            policy_id=None if policy_id is None else _text(policy_id, "policy_id"),
            reason=_text(data["reason"], "reason"),
            count=count,
            first=parse_timestamp(data["first"], "first", ValueError),
            last=parse_timestamp(data["last"], "last", ValueError),
            amount=None if amount is None else Decimal(_text(amount, "amount")),
            currency=_text(data["currency"], "currency"),
        )
        if record.first > record.last or record.last - record.hour >= timedelta(hours=1):
            raise ValueError("first and last must lie in one hour, first not after last")
        return record


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value


def record_key(hour: datetime, agent_id: str, policy_id: str | None) -> str:
    return f"{format_timestamp(hour)}|{agent_id}|{policy_id or NO_POLICY}"


def denial(
    agent_id: str, policy_id: str | None, reason: str, amount: Decimal | None, currency: str, now: datetime
) -> DenialRecord:
    """One denial at ``now`` as a record of count 1."""
    return DenialRecord(agent_id, policy_id, reason, 1, now, now, amount, currency)


def empty_denials() -> dict[str, Any]:
    return {"version": VERSION, "records": {}}


def parse_denials(document: Mapping[str, Any], label: str) -> dict[str, DenialRecord]:
    """The document's records by key; :class:`RegistryError` naming ``label`` for any malformed part."""
    version = document.get("version", VERSION)
    records = document.get("records", {})
    if version != VERSION or not isinstance(records, dict):
        raise RegistryError(
            f"{label} is not a Caracal denial log (version {VERSION} with a 'records' object)"
        )
    parsed: dict[str, DenialRecord] = {}
    for key, data in records.items():
        try:
            if not isinstance(data, dict):
                raise TypeError("a record must be an object")
            record = DenialRecord.from_dict(data)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise RegistryError(f"{label}: denial record {key!r} is malformed ({exc})") from None
        if record.key != key:
            raise RegistryError(f"{label}: denial record {key!r} is filed under the wrong key")
        parsed[key] = record
    return parsed


def fold(
    document: dict[str, Any],
    pending: Iterable[DenialRecord],
    now: datetime,
    retention: timedelta = DEFAULT_RETENTION,
    label: str = "the denial log",
) -> None:
    """Fold ``pending`` records into ``document`` in place, then prune what is older than ``retention``
    (by ``last``) and keep at most :data:`MAX_RECORDS` (the latest)."""
    records = parse_denials(document, label)
    for record in pending:
        existing = records.get(record.key)
        records[record.key] = record if existing is None else existing.merged(record)
    cutoff = now - retention
    kept = sorted((r for r in records.values() if r.last >= cutoff), key=lambda r: r.last, reverse=True)
    document["version"] = VERSION
    document["records"] = {record.key: record.to_dict() for record in kept[:MAX_RECORDS]}


def recent(
    records: Iterable[DenialRecord], since: datetime, agent_ids: Collection[str] | None = None
) -> list[DenialRecord]:
    """Records with a denial at or after ``since`` (of ``agent_ids`` only, when given), latest first."""
    chosen = [
        record
        for record in records
        if record.last >= since and (agent_ids is None or record.agent_id in agent_ids)
    ]
    return sorted(chosen, key=lambda r: (r.last, r.key), reverse=True)


__all__ = [
    "DEFAULT_RETENTION",
    "MAX_RECORDS",
    "DenialRecord",
    "denial",
    "empty_denials",
    "fold",
    "parse_denials",
    "recent",
    "record_key",
]
