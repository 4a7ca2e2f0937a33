"""Alert rules (pure): what a rule watches, where it sends, and how its input is checked.

A rule says *what* to watch and *where* to send it:

- ``threshold``: a policy's usage reached ``threshold`` x its limit (``0.8`` is 80%), counting live holds
  or not (``count_holds``), for one policy, the policies of one agent, or every policy;
- ``denied``: an agent was denied (from the home's denial log, one event per agent, policy and hour);
- ``over-hold``: a settle charged more than its hold (usage above the call's worst case);
- ``suspended``: an agent was suspended (by an operator or by ``[holds] suspend_over_hold_factor``);
- ``verification-failed``: the ledger failed verification.

What fires, and when, is :mod:`caracal.core.alert_events`; how an event travels (signed webhook requests,
retries) is :mod:`caracal.core.webhooks`. Each rule has its own signing secret, made here and shown once.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from caracal.core.validation import format_timestamp, parse_timestamp
from caracal.exceptions import InvalidAlertError

KINDS = ("threshold", "denied", "over-hold", "suspended", "verification-failed")
"""What a rule can watch (``--threshold`` is ``threshold``; the others are ``--on`` values)."""

EVENT_TYPES = {
    "threshold": "policy.threshold_crossed",
    "denied": "agent.denied",
    "over-hold": "hold.over_worst_case",
    "suspended": "agent.suspended",
    "verification-failed": "ledger.verification_failed",
}
TEST_EVENT = "test"
FORMATS = ("json", "slack")
MAX_THRESHOLD = Decimal(100)
"""A threshold is a fraction of the limit: more than 0, at most 100 (10000%)."""
MAX_NAME_LENGTH = 256
MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"


# ------------------------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class AlertRule:
    """One alert rule. ``secret`` signs its webhooks (shown once, when the rule is created)."""

    rule_id: str
    name: str
    url: str
    on: str
    secret: str
    created_at: str
    threshold: Decimal | None = None
    count_holds: bool = False
    policy_id: str | None = None
    agent_id: str | None = None
    format: str = "json"

    @property
    def event_type(self) -> str:
        return EVENT_TYPES[self.on]

    def public_dict(self) -> dict[str, Any]:
        """The rule without its secret (lists, API answers)."""
        return {
            "id": self.rule_id,
            "name": self.name,
            "url": self.url,
            "on": self.on,
            "event_type": self.event_type,
            "threshold": None if self.threshold is None else str(self.threshold),
            "count_holds": self.count_holds,
            "policy_id": self.policy_id,
            "agent_id": self.agent_id,
            "format": self.format,
            "created_at": self.created_at,
        }

    def to_dict(self) -> dict[str, Any]:
        """The stored record (with the secret)."""
        return {**self.public_dict(), "secret": self.secret}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertRule:
        try:
            return new_rule(
                name=data["name"],
                url=data["url"],
                on=data["on"],
                threshold=data.get("threshold"),
                count_holds=bool(data.get("count_holds", False)),
                policy_id=data.get("policy_id"),
                agent_id=data.get("agent_id"),
                format=data.get("format", "json"),
                rule_id=data["id"],
                secret=data["secret"],
                created_at=data["created_at"],
            )
        except KeyError as exc:
            raise InvalidAlertError(f"an alert rule record lacks {exc.args[0]!r}") from None


def _text(value: object, name: str, limit: int) -> str:
    if type(value) is not str or not value.strip() or len(value) > limit or not value.isprintable():
        raise InvalidAlertError(f"{name} must be 1 to {limit} printable characters, got {value!r}")
    return value


def check_url(value: object) -> str:
    """An http(s) URL without spaces or control characters."""
    url = _text(value, "url", MAX_URL_LENGTH)
    if not url.startswith(("http://", "https://")) or " " in url or len(url.split("://", 1)[1]) == 0:
        raise InvalidAlertError(f"url must be an http:// or https:// URL, got {url!r}")
    return url


def check_threshold(value: object) -> Decimal:
    """A fraction of the limit as an exact decimal (``"0.8"``: 80%), more than 0 and at most 100. Floats
    are refused like every amount: ``0.1`` as a float is not one tenth."""
    if isinstance(value, (bool, float)) or not isinstance(value, (str, int, Decimal)):
        raise InvalidAlertError(f'threshold must be a decimal string such as "0.8", got {value!r}')
    try:
        threshold = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise InvalidAlertError(f'threshold must be a decimal such as "0.8", got {value!r}') from None
    if not threshold.is_finite() or not 0 < threshold <= MAX_THRESHOLD:
        raise InvalidAlertError(
            f"threshold is a fraction of the limit (0.8 is 80%): more than 0 and at most {MAX_THRESHOLD}, "
            f"got {value!r}"
        )
    return threshold


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 64 hex digits (256 bits)."""
    return SECRET_PREFIX + secrets.token_hex(32)


def new_rule(
    *,
    name: object,
    url: object,
    on: object,
    now: datetime | None = None,
    threshold: object = None,
    count_holds: bool = False,
    policy_id: object = None,
    agent_id: object = None,
    format: object = "json",
    rule_id: str | None = None,
    secret: str | None = None,
    created_at: str | None = None,
) -> AlertRule:
    """A validated rule (a new id and secret unless given). ``agent_id`` must already be resolved (an id);
    a threshold rule may name a policy or an agent, not both; other kinds may name an agent."""
    if on not in KINDS:
        raise InvalidAlertError(f"on must be one of {', '.join(KINDS)}, got {on!r}")
    assert isinstance(on, str)
    if format not in FORMATS:
        raise InvalidAlertError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    assert isinstance(format, str)
    limit = None
    if on == "threshold":
        if threshold is None:
            raise InvalidAlertError("a threshold rule needs a threshold (a fraction of the limit, e.g. 0.8)")
        limit = check_threshold(threshold)
        if policy_id is not None and agent_id is not None:
            raise InvalidAlertError("a threshold rule watches one policy or one agent's policies, not both")
    else:
        if threshold is not None:
            raise InvalidAlertError(f"a threshold applies to threshold rules only, not to {on!r}")
        if count_holds:
            raise InvalidAlertError(f"count_holds applies to threshold rules only, not to {on!r}")
        if policy_id is not None:
            raise InvalidAlertError(f"a {on!r} rule may name an agent, not a policy")
    if on == "verification-failed" and agent_id is not None:
        raise InvalidAlertError("a verification-failed rule watches the whole ledger: it takes no agent")
    for value, label in ((policy_id, "policy_id"), (agent_id, "agent_id")):
        if value is not None:
            _text(value, label, 256)
    if created_at is None:
        if now is None:
            raise InvalidAlertError("a new rule needs the time it is created")
        created_at = format_timestamp(now)
    else:
        created_at = format_timestamp(parse_timestamp(created_at, "created_at", InvalidAlertError))
    secret = secret if secret is not None else new_secret()
    if type(secret) is not str or len(secret) < 16:
        raise InvalidAlertError("an alert rule's secret must be a string of at least 16 characters")
    return AlertRule(
        rule_id=rule_id or f"alr-{uuid.uuid4().hex[:12]}",
        name=_text(name, "name", MAX_NAME_LENGTH),
        url=check_url(url),
        on=on,
        secret=secret,
        created_at=created_at,
        threshold=limit,
        count_holds=bool(count_holds),
        policy_id=policy_id,  # type: ignore[arg-type]
        agent_id=agent_id,  # type: ignore[arg-type]
        format=format,
    )


__all__ = [
    "EVENT_TYPES",
    "FORMATS",
    "KINDS",
    "TEST_EVENT",
    "AlertRule",
    "new_rule",
]
