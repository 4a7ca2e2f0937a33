"""Alert events (pure): what the rules detect in the figures, and the events they fire.

Invariants:

- **Stable event ids.** An event's id is a hash of what fired it: (rule, policy, window, threshold) for a
  threshold, (rule, hold) for an over-hold, (rule, agent, suspension time) for a suspension, and so on.
  Every process and host that detects the same fact computes the same id, so the outbox (which inserts an
  id once) holds one event per fact, and a receiver can de-duplicate deliveries (at least once) by it.
- **Once per window crossing.** Threshold evaluation keeps, per (rule, policy), the window it last fired
  in (``fired``); it fires again only in a later window (a rolling window, which has no start, re-arms
  when usage drops below the threshold). Evaluation is a pure function of the rules, the figures, the
  fired state and the time; the caller stores the new state in the same transaction as the events.
- **Money is exact.** Amounts are Decimals, and strings in every body; fractions are exact quotients.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from caracal.core.alerts import TEST_EVENT, AlertRule
from caracal.core.decisions import PolicyStatus, describe_window
from caracal.core.denials import DenialRecord
from caracal.core.validation import format_timestamp, parse_timestamp
from caracal.exceptions import InvalidAlertError

CLOCK_SKEW = timedelta(minutes=1)
"""Facts (a suspension, a denial) from before a rule was created do not fire it; "before" allows this much
for the clocks that stamped them (a registry's host, the database) to disagree with the rule's."""


# ----------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class AlertEvent:
    """One alert: what a webhook carries (``body``), for which rule. ``event_id`` is stable (see module)."""

    event_id: str
    rule_id: str
    type: str
    created_at: datetime
    body: dict[str, Any] = field(default_factory=dict)


def event_id(*parts: object) -> str:
    """A stable id from what fired the event: ``evt_`` and 32 hex digits of SHA-256 over the parts."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()
    return f"evt_{digest[:32]}"


def _body(
    rule: AlertRule,
    event_type: str,
    identifier: str,
    now: datetime,
    *,
    agent: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    figures: Mapping[str, Any] | None = None,
    summary: str,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": identifier,
        "type": event_type,
        "created_at": format_timestamp(now),
        "rule": {"id": rule.rule_id, "name": rule.name},
        "agent": None if agent is None else dict(agent),
        "policy": None if policy is None else dict(policy),
        "figures": None if figures is None else dict(figures),
        "summary": summary,
        **({"details": dict(details)} if details else {}),
    }


def _event(rule: AlertRule, identifier: str, now: datetime, **body: Any) -> AlertEvent:
    event_type = body.pop("event_type", rule.event_type)
    body_dict = _body(rule, event_type, identifier, now, **body)
    return AlertEvent(identifier, rule.rule_id, event_type, now, body_dict)


def make_test_event(rule: AlertRule, now: datetime) -> AlertEvent:
    """A ``test`` event for ``rule`` (a fresh id each time: every test is delivered)."""
    identifier = f"evt_test_{uuid.uuid4().hex}"
    return _event(
        rule, identifier, now, event_type=TEST_EVENT, summary=f"Caracal test alert for rule {rule.name!r}"
    )


def window_key(status: PolicyStatus) -> str | None:
    """What identifies the policy's current window: its start (calendar windows), ``total``, or None for a
    rolling window (it has no fixed start: a rolling rule re-arms when usage drops below the threshold)."""
    kind = status.policy.window.kind
    if kind == "total":
        return "total"
    if kind == "rolling" or status.window_start is None:
        return None
    return format_timestamp(status.window_start)


def _agent_ref(agent_id: str, names: Mapping[str, str]) -> dict[str, Any]:
    return {"id": agent_id, "name": names.get(agent_id)}


def _reached(rule: AlertRule, status: PolicyStatus) -> tuple[bool, Decimal, Decimal | None]:
    assert rule.threshold is not None
    used = status.used(rule.count_holds)
    share = status.used_share(rule.count_holds)
    if share is None:
        return used > 0, used, None
    return share >= rule.threshold, used, share


def threshold_applies(rule: AlertRule, status: PolicyStatus) -> bool:
    policy = status.policy
    if rule.policy_id is not None:
        return policy.policy_id == rule.policy_id
    if rule.agent_id is not None:
        return policy.agent_id == rule.agent_id
    return True


def evaluate_thresholds(
    rules: Iterable[AlertRule],
    statuses: Sequence[PolicyStatus],
    fired: Mapping[str, str],
    now: datetime,
    names: Mapping[str, str] | None = None,
) -> tuple[list[AlertEvent], dict[str, str]]:
    """The threshold events due now and the new fired state.

    ``fired`` maps ``"<rule id>|<policy id>"`` to the window key the rule last fired in for that policy
    (``rolling:<n>`` / ``rolling:<n>:below`` for rolling windows). A rule fires for a policy when usage
    (spent, plus held with ``count_holds``) is at or above ``threshold`` x limit and it has not fired in
    this window yet. Keys of other rules are left as they are (the caller prunes deleted rules).
    """
    names = names or {}
    state = dict(fired)
    events: list[AlertEvent] = []
    for rule in rules:
        if rule.on != "threshold":
            continue
        for status in statuses:
            if not status.policy.active or not threshold_applies(rule, status):
                continue
            key = f"{rule.rule_id}|{status.policy.policy_id}"
            reached, used, share = _reached(rule, status)
            window = window_key(status)
            previous = state.get(key)
            if window is None:  # rolling: episodes
                episode, below = _rolling(previous)
                if not reached:
                    if previous is not None and not below:
                        state[key] = f"rolling:{episode}:below"
                    continue
                if previous is not None and not below:
                    continue
                window = f"rolling:{episode + 1}"
            elif not reached or previous == window:
                continue
            state[key] = window
            events.append(_threshold_event(rule, status, window, used, share, now, names))
    return events, state


def _rolling(previous: str | None) -> tuple[int, bool]:
    """``(episode, re-armed)`` from a rolling window's fired state."""
    if previous is None or not previous.startswith("rolling:"):
        return 0, True
    parts = previous.split(":")
    try:
        return int(parts[1]), len(parts) > 2
    except (IndexError, ValueError):
        return 0, True


def _threshold_event(
    rule: AlertRule,
    status: PolicyStatus,
    window: str,
    used: Decimal,
    share: Decimal | None,
    now: datetime,
    names: Mapping[str, str],
) -> AlertEvent:
    policy = status.policy
    assert rule.threshold is not None
    identifier = event_id("threshold", rule.rule_id, policy.policy_id, window, rule.threshold)
    percent = "over a limit of 0" if share is None else f"{_percent(share)}% of"
    who = names.get(policy.agent_id, policy.agent_id)
    counted = "spent and held" if rule.count_holds else "spent"
    figures = {
        "spent": str(status.spent),
        "held": str(status.held),
        "used": str(used),
        "limit": str(policy.limit),
        "remaining": str(status.remaining),
        "fraction": None if share is None else f"{share.normalize():f}",
        "threshold": str(rule.threshold),
        "count_holds": rule.count_holds,
        "currency": policy.currency,
        "window_start": None if status.window_start is None else format_timestamp(status.window_start),
        "window_end": None if status.resets_at is None else format_timestamp(status.resets_at),
    }
    return _event(
        rule,
        identifier,
        now,
        agent=_agent_ref(policy.agent_id, names),
        policy=_policy_ref(status),
        figures=figures,
        summary=(
            f"Agent {who} has used {percent} its {describe_window(policy)} limit of {policy.limit} "
            f"{policy.currency} ({used} {policy.currency} {counted}; "
            f"threshold {_percent(rule.threshold)}%)"
        ),
    )


def _policy_ref(status: PolicyStatus) -> dict[str, Any]:
    policy = status.policy
    return {
        "id": policy.policy_id,
        "agent_id": policy.agent_id,
        "limit": str(policy.limit),
        "currency": policy.currency,
        "window": describe_window(policy),
    }


def _percent(share: Decimal) -> str:
    with localcontext() as context:
        context.prec = 28
        value = (share * 100).quantize(Decimal("0.1")) if share < 10**6 else share * 100
    text = f"{value:f}"
    return text[:-2] if text.endswith(".0") else text


def evaluate_denials(
    rules: Iterable[AlertRule],
    records: Iterable[DenialRecord],
    fired: Mapping[str, str],
    now: datetime,
    names: Mapping[str, str] | None = None,
) -> tuple[list[AlertEvent], dict[str, str]]:
    """One ``agent.denied`` event per rule, agent, policy and hour with denials (the denial log's records
    are per hour). ``fired`` maps ``"<rule id>|denied|<agent>|<policy>|<hour>"`` to ``"1"``; records of
    denials before the rule existed do not fire."""
    names = names or {}
    state = dict(fired)
    events: list[AlertEvent] = []
    for rule in rules:
        if rule.on != "denied":
            continue
        created = parse_timestamp(rule.created_at, "created_at", InvalidAlertError) - CLOCK_SKEW
        for record in records:
            if rule.agent_id is not None and record.agent_id != rule.agent_id:
                continue
            if record.last < created:
                continue
            hour = format_timestamp(record.first.replace(minute=0, second=0, microsecond=0))
            key = f"{rule.rule_id}|denied|{record.agent_id}|{record.policy_id or '-'}|{hour}"
            if key in state:
                continue
            state[key] = "1"
            identifier = event_id("denied", rule.rule_id, record.agent_id, record.policy_id or "-", hour)
            who = names.get(record.agent_id, record.agent_id)
            events.append(
                _event(
                    rule,
                    identifier,
                    now,
                    agent=_agent_ref(record.agent_id, names),
                    policy=None if record.policy_id is None else {"id": record.policy_id},
                    figures={
                        "denials": record.count,
                        "first": format_timestamp(record.first),
                        "last": format_timestamp(record.last),
                        "amount": None if record.amount is None else str(record.amount),
                        "currency": record.currency,
                        "hour": hour,
                    },
                    summary=f"Agent {who} was denied: {record.reason}",
                    details={"reason": record.reason},
                )
            )
    return events, state


@dataclass(frozen=True)
class Suspension:
    """An agent found suspended: its id, name and when its status last changed (the suspension's time)."""

    agent_id: str
    name: str
    since: str


def evaluate_suspensions(
    rules: Iterable[AlertRule],
    suspended: Iterable[Suspension],
    fired: Mapping[str, str],
    now: datetime,
) -> tuple[list[AlertEvent], dict[str, str]]:
    """One ``agent.suspended`` event per rule and suspension (an agent suspended, activated and suspended
    again fires twice: the suspensions have different times). Suspensions older than the rule do not fire.
    ``fired`` maps ``"<rule id>|suspended|<agent>"`` to the suspension time last fired for."""
    state = dict(fired)
    events: list[AlertEvent] = []
    for rule in rules:
        if rule.on != "suspended":
            continue
        made = parse_timestamp(rule.created_at, "created_at", InvalidAlertError)
        created = format_timestamp(made - CLOCK_SKEW)
        for agent in suspended:
            if rule.agent_id is not None and agent.agent_id != rule.agent_id:
                continue
            key = f"{rule.rule_id}|suspended|{agent.agent_id}"
            if state.get(key) == agent.since or agent.since < created:
                continue
            state[key] = agent.since
            identifier = event_id("suspended", rule.rule_id, agent.agent_id, agent.since)
            events.append(
                _event(
                    rule,
                    identifier,
                    now,
                    agent={"id": agent.agent_id, "name": agent.name},
                    figures={"suspended_at": agent.since},
                    summary=f"Agent {agent.name} was suspended; its actions are denied until "
                    f"'caracal agent activate {agent.name}'",
                )
            )
    return events, state


def over_hold_events(
    rules: Iterable[AlertRule],
    *,
    agent_id: str,
    agent_name: str | None,
    hold_id: str,
    held: Decimal,
    charged: Decimal,
    currency: str,
    now: datetime,
) -> list[AlertEvent]:
    """``hold.over_worst_case`` events for a settle that charged more than its hold (one per rule and
    hold)."""
    events = []
    for rule in rules:
        if rule.on != "over-hold" or (rule.agent_id is not None and rule.agent_id != agent_id):
            continue
        identifier = event_id("over-hold", rule.rule_id, hold_id)
        who = agent_name or agent_id
        events.append(
            _event(
                rule,
                identifier,
                now,
                agent={"id": agent_id, "name": agent_name},
                figures={
                    "hold_id": hold_id,
                    "held": str(held),
                    "charged": str(charged),
                    "over": str(charged - held),
                    "currency": currency,
                },
                summary=f"Agent {who} was charged {charged} {currency} against a hold of {held} {currency} "
                f"(hold {hold_id}): usage above the call's worst case",
            )
        )
    return events


def verification_events(
    rules: Iterable[AlertRule], location: str, message: str, now: datetime, fired: Mapping[str, str]
) -> tuple[list[AlertEvent], dict[str, str]]:
    """``ledger.verification_failed`` events: one per rule and failure location (``location`` names where
    the ledger went bad, e.g. the first bad event). ``fired`` maps ``"<rule id>|verify"`` to the location."""
    state = dict(fired)
    events = []
    for rule in rules:
        if rule.on != "verification-failed":
            continue
        key = f"{rule.rule_id}|verify"
        if state.get(key) == location:
            continue
        state[key] = location
        identifier = event_id("verification-failed", rule.rule_id, location)
        events.append(
            _event(
                rule,
                identifier,
                now,
                figures={"location": location},
                summary=f"The ledger failed verification ({location}): {message}",
                details={"message": message},
            )
        )
    return events, state


__all__ = [
    "AlertEvent",
    "Suspension",
    "evaluate_denials",
    "evaluate_suspensions",
    "evaluate_thresholds",
    "event_id",
    "make_test_event",
    "over_hold_events",
    "verification_events",
]
