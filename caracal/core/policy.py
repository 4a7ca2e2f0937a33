"""Budget policies: a limit, a currency and a window for one agent (pure: no I/O).

An agent may have several active policies (say $10 a day and $200 a month); an agent's spend also counts
against every ancestor's policies. A policy is never edited in place: an update or deactivation produces
a new revision and the registry keeps every revision, which is the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from caracal.core.validation import check_currency, check_identifier, parse_amount, parse_timestamp
from caracal.core.windows import WindowSpec
from caracal.exceptions import InvalidPolicyError


@dataclass(frozen=True)
class Policy:
    """One revision of a budget policy. ``limit`` is the most the window may hold (spend plus live holds)."""

    policy_id: str
    agent_id: str
    limit: Decimal
    currency: str
    window: WindowSpec
    active: bool = True
    revision: int = 1
    updated_at: str = ""
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "policy_id": self.policy_id,
            "agent_id": self.agent_id,
            "limit": str(self.limit),
            "currency": self.currency,
            "window": self.window.to_dict(),
            "active": self.active,
            "revision": self.revision,
            "updated_at": self.updated_at,
        }
        if self.reason is not None:
            data["reason"] = self.reason
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        error = InvalidPolicyError
        if not isinstance(data, dict):
            raise error(f"a policy must be a JSON object, got {type(data).__name__}")
        try:
            policy = cls(
                policy_id=check_identifier(data["policy_id"], "policy_id", error),
                agent_id=check_identifier(data["agent_id"], "agent_id", error),
                limit=parse_amount(data["limit"], "limit", error),
                currency=check_currency(data["currency"], error),
                window=WindowSpec.from_dict(data["window"]),
                active=data.get("active", True),
                revision=data.get("revision", 1),
                updated_at=data.get("updated_at", ""),
                reason=data.get("reason"),
            )
        except KeyError as exc:
            raise error(f"policy is missing the field {exc.args[0]!r}") from None
        if type(policy.active) is not bool or type(policy.revision) is not int or policy.revision < 1:
            raise error("policy 'active' must be a boolean and 'revision' a positive integer")
        if policy.updated_at:
            parse_timestamp(policy.updated_at, "updated_at", error)
        return policy

    def revised(self, updated_at: str, reason: str | None = None, **changes: Any) -> Policy:
        """The next revision with ``changes`` applied (validated like a new policy)."""
        if "limit" in changes:
            changes["limit"] = check_limit(changes["limit"])
        if "currency" in changes:
            changes["currency"] = check_currency(changes["currency"], InvalidPolicyError)
        if reason is not None:  # kept in the audit trail: one printable line, like every identifier
            check_identifier(reason, "reason", InvalidPolicyError)
        return replace(self, revision=self.revision + 1, updated_at=updated_at, reason=reason, **changes)


def check_limit(value: object) -> Decimal:
    """A policy limit: a finite, non-negative exact amount (zero allows nothing)."""
    return parse_amount(value, "limit", InvalidPolicyError)


def __getattr__(name: str) -> object:
    """Caracal Core v0.1's names for this module, loaded from :mod:`caracal.v01` on first use (they are
    adapters over the storage layer, which this module never imports)."""
    from caracal.v01 import load

    return load(__name__, name)
