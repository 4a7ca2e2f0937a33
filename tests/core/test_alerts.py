"""The pure alert logic: rule validation, threshold evaluation (once per window crossing), stable ids,
signatures (against a vector computed by ``openssl dgst -hmac``), backoff."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from caracal.core.alert_events import (
    Suspension,
    evaluate_denials,
    evaluate_suspensions,
    evaluate_thresholds,
    event_id,
    over_hold_events,
    verification_events,
)
from caracal.core.alerts import AlertRule, new_rule
from caracal.core.decisions import PolicyStatus
from caracal.core.denials import DenialRecord as Denial
from caracal.core.policy import Policy
from caracal.core.webhooks import (
    backoff,
    payload,
    sign,
    signed_headers,
    verify_signature,
)
from caracal.core.windows import parse_window, window_bounds
from caracal.exceptions import CaracalError, InvalidAlertError

NOW = datetime(2026, 12, 4, 15, 30, tzinfo=timezone.utc)
URL = "https://hooks.example.com/caracal"


def rule(**fields: object) -> AlertRule:
    defaults: dict[str, object] = {"name": "r", "url": URL, "on": "threshold", "threshold": "0.8", "now": NOW}
    defaults.update(fields)
    return new_rule(**defaults)  # type: ignore[arg-type]


def status(
    spent: str,
    held: str = "0",
    *,
    limit: str = "10",
    window: str = "daily",
    now: datetime = NOW,
    **policy: object,
) -> PolicyStatus:
    spec = parse_window(window) if window != "rolling" else parse_window("rolling", "24h")
    fields: dict[str, object] = {"policy_id": "pol-1", "agent_id": "agent-1", **policy}
    p = Policy(limit=Decimal(limit), currency="USD", window=spec, **fields)  # type: ignore[arg-type]
    start, end = window_bounds(spec, now)
    remaining = Decimal(limit) - Decimal(spent) - Decimal(held)
    return PolicyStatus(
        p, Decimal(spent), Decimal(held), remaining, start, end if window != "rolling" else None
    )


# ------------------------------------------------------------------------------------------------ rules


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threshold": 0.8}, "decimal string"),
        ({"threshold": "0"}, "more than 0"),
        ({"threshold": "-0.5"}, "more than 0"),
        ({"threshold": "101"}, "at most 100"),
        ({"threshold": "NaN"}, "more than 0"),
        ({"threshold": True}, "decimal string"),
        ({"threshold": None}, "needs a threshold"),
        ({"url": "ftp://x"}, "http"),
        ({"url": "http://"}, "http"),
        ({"url": "http://a b"}, "http"),
        ({"name": ""}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"on": "exploded"}, "on must be one of"),
        ({"format": "xml"}, "format"),
        ({"policy_id": "pol-1", "agent_id": "a"}, "not both"),
        ({"on": "suspended", "threshold": "0.5"}, "threshold rules only"),
        ({"on": "suspended", "threshold": None, "count_holds": True}, "threshold rules only"),
        ({"on": "denied", "threshold": None, "policy_id": "pol-1"}, "not a policy"),
        ({"on": "verification-failed", "threshold": None, "agent_id": "a"}, "takes no agent"),
    ],
)
def test_bad_rules_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidAlertError, match=message) as caught:
        rule(**fields)
    assert isinstance(caught.value, (CaracalError, ValueError))


def test_a_rule_round_trips_and_hides_its_secret_when_public() -> None:
    made = rule(threshold="0.80", count_holds=True, agent_id="agent-1", format="slack")
    assert made.threshold == Decimal("0.80") and made.secret.startswith("whsec_") and len(made.secret) == 70
    assert AlertRule.from_dict(orjson.loads(orjson.dumps(made.to_dict()))) == made
    assert "secret" not in made.public_dict() and made.public_dict()["threshold"] == "0.80"
    assert rule().secret != rule().secret and rule().rule_id != rule().rule_id


# --------------------------------------------------------------------------------------------- evaluate


def test_threshold_fires_at_or_above_the_fraction_once_per_window() -> None:
    r = rule()
    assert evaluate_thresholds([r], [status("7.99")], {}, NOW) == ([], {})
    events, fired = evaluate_thresholds([r], [status("8")], {}, NOW)  # exactly 80%
    [event] = events
    assert event.type == "policy.threshold_crossed" and event.rule_id == r.rule_id
    assert event.body["figures"]["fraction"] == "0.8" and event.body["figures"]["spent"] == "8"
    assert event.body["figures"]["window_start"] == "2026-12-04T00:00:00.000000Z"
    assert event.body["figures"]["window_end"] == "2026-12-05T00:00:00.000000Z"
    assert evaluate_thresholds([r], [status("9.5")], fired, NOW) == ([], fired)  # same window: quiet
    assert evaluate_thresholds([r], [status("12")], fired, NOW)[0] == []  # over the limit: still quiet

    tomorrow = NOW + timedelta(days=1)
    [again], _ = evaluate_thresholds([r], [status("9", now=tomorrow)], fired, tomorrow)
    assert again.event_id != event.event_id


def test_event_ids_are_stable_and_name_what_fired() -> None:
    r = rule()
    first = evaluate_thresholds([r], [status("9")], {}, NOW)[0][0]
    later = NOW + timedelta(hours=3)
    same = evaluate_thresholds([r], [status("9.9", now=later)], {}, later)[0][0]
    assert first.event_id == same.event_id  # another process, later in the same window: the same event
    assert first.event_id == event_id(
        "threshold", r.rule_id, "pol-1", "2026-12-04T00:00:00.000000Z", Decimal("0.8")
    )
    other_policy = evaluate_thresholds([r], [status("9", policy_id="pol-2")], {}, NOW)[0][0]
    assert other_policy.event_id != first.event_id


def test_count_holds() -> None:
    spent_only, with_holds = rule(), rule(count_holds=True)
    events, _ = evaluate_thresholds([spent_only, with_holds], [status("5", "3.5")], {}, NOW)
    assert [e.rule_id for e in events] == [with_holds.rule_id]
    assert events[0].body["figures"]["used"] == "8.5"


def test_scope_by_policy_agent_or_all() -> None:
    statuses = [status("9"), status("9", policy_id="pol-2", agent_id="agent-2")]
    for scoped, expected in (
        (rule(policy_id="pol-2"), {"pol-2"}),
        (rule(agent_id="agent-1"), {"pol-1"}),
        (rule(), {"pol-1", "pol-2"}),
    ):
        events, _ = evaluate_thresholds([scoped], statuses, {}, NOW)
        assert {e.body["policy"]["id"] for e in events} == expected
    inactive = status("9", active=False)
    assert evaluate_thresholds([rule()], [inactive], {}, NOW)[0] == []


def test_a_zero_limit_fires_on_any_use() -> None:
    assert evaluate_thresholds([rule()], [status("0", limit="0")], {}, NOW)[0] == []
    [event], _ = evaluate_thresholds([rule()], [status("0.01", limit="0")], {}, NOW)
    assert event.body["figures"]["fraction"] is None


def test_a_total_window_fires_once_ever() -> None:
    r = rule()
    events, fired = evaluate_thresholds([r], [status("9", window="total")], {}, NOW)
    assert len(events) == 1
    later = NOW + timedelta(days=400)
    assert evaluate_thresholds([r], [status("9", window="total", now=later)], fired, later)[0] == []


def test_a_rolling_window_re_arms_below_the_threshold() -> None:
    r = rule()
    [first], fired = evaluate_thresholds([r], [status("9", window="rolling")], {}, NOW)
    assert evaluate_thresholds([r], [status("9.5", window="rolling")], fired, NOW)[0] == []
    quiet, fired = evaluate_thresholds([r], [status("3", window="rolling")], fired, NOW)
    assert quiet == []
    [second], fired = evaluate_thresholds([r], [status("8", window="rolling")], fired, NOW)
    assert second.event_id != first.event_id
    assert evaluate_thresholds([r], [status("8", window="rolling")], fired, NOW)[0] == []


def test_suspensions_fire_once_per_suspension_and_not_before_the_rule() -> None:
    r = rule(on="suspended", threshold=None)
    old = Suspension("agent-1", "bot", "2026-12-01T00:00:00.000000Z")
    assert evaluate_suspensions([r], [old], {}, NOW) == ([], {})
    new = Suspension("agent-1", "bot", "2026-12-04T16:00:00.000000Z")
    [event], fired = evaluate_suspensions([r], [new], {}, NOW)
    assert event.type == "agent.suspended" and event.body["agent"] == {"id": "agent-1", "name": "bot"}
    assert evaluate_suspensions([r], [new], fired, NOW)[0] == []
    again = Suspension("agent-1", "bot", "2026-12-04T17:00:00.000000Z")
    [second], _ = evaluate_suspensions([r], [again], fired, NOW)
    assert second.event_id != event.event_id
    scoped = rule(on="suspended", threshold=None, agent_id="agent-2")
    assert evaluate_suspensions([scoped], [new], {}, NOW)[0] == []


def test_denials_fire_once_per_agent_policy_and_hour() -> None:
    r = rule(on="denied", threshold=None)
    record = Denial(
        "agent-1", "pol-1", "over budget", 3, NOW, NOW + timedelta(minutes=5), Decimal("0.5"), "USD"
    )
    [event], fired = evaluate_denials([r], [record], {}, NOW, {"agent-1": "bot"})
    assert event.type == "agent.denied" and event.body["figures"]["denials"] == 3
    assert event.body["figures"]["amount"] == "0.5" and "over budget" in event.body["summary"]
    grown = Denial("agent-1", "pol-1", "over budget", 9, NOW, NOW + timedelta(minutes=9), None, "USD")
    assert evaluate_denials([r], [grown], fired, NOW)[0] == []  # the same hour: already told
    next_hour = Denial(
        "agent-1", "pol-1", "x", 1, NOW + timedelta(hours=1), NOW + timedelta(hours=1), None, "USD"
    )
    assert len(evaluate_denials([r], [next_hour], fired, NOW)[0]) == 1
    before = Denial(
        "agent-1", "pol-1", "x", 1, NOW - timedelta(hours=2), NOW - timedelta(hours=2), None, "USD"
    )
    assert evaluate_denials([r], [before], {}, NOW)[0] == []  # before the rule existed


def test_over_hold_and_verification_events() -> None:
    r = rule(on="over-hold", threshold=None)
    [event] = over_hold_events(
        [r, rule()],
        agent_id="agent-1",
        agent_name="bot",
        hold_id="hold-1",
        held=Decimal("1.00"),
        charged=Decimal("2.50"),
        currency="USD",
        now=NOW,
    )
    assert event.type == "hold.over_worst_case" and event.body["figures"]["over"] == "1.50"
    assert event.event_id == event_id("over-hold", r.rule_id, "hold-1")
    v = rule(on="verification-failed", threshold=None)
    [failed], fired = verification_events([v], "event 7", "prev_hash mismatch", NOW, {})
    assert failed.type == "ledger.verification_failed" and failed.body["figures"] == {"location": "event 7"}
    assert verification_events([v], "event 7", "again", NOW, fired)[0] == []


# ------------------------------------------------------------------------------------ signing, backoff

SECRET = "whsec_0123456789abcdef"
VECTOR = "dea1657bd5053cb0f8a75ebf0bd3d22e0cdeb79563b44db6b88864e522fb8bc4"
"""printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac 'whsec_0123456789abcdef'"""


def test_signature_matches_an_independent_hmac() -> None:
    body = b'{"id":"evt_1"}'
    assert sign(SECRET, 1700000000, body) == f"v1={VECTOR}"
    headers = signed_headers(SECRET, "evt_1", 1700000000, body)
    assert headers["Caracal-Signature"] == f"v1={VECTOR}" and headers["Caracal-Timestamp"] == "1700000000"
    assert verify_signature(SECRET, headers, body, now=1700000000 + 299)
    assert not verify_signature(SECRET, headers, body, now=1700000000 + 301)  # replayed too late
    assert not verify_signature(SECRET, headers, body + b" ", now=1700000000)
    assert not verify_signature(SECRET + "x", headers, body, now=1700000000)
    assert not verify_signature(SECRET, {"Caracal-Timestamp": "1700000000"}, body, now=1700000000)
    lowered = {key.lower(): value for key, value in headers.items()}
    assert verify_signature(SECRET, lowered, body, now=1700000000)


def test_payloads_keep_money_as_strings() -> None:
    [event], _ = evaluate_thresholds([rule()], [status("8.50")], {}, NOW)
    body = orjson.loads(payload(event.body, "json"))
    assert body["figures"]["spent"] == "8.50" and body["figures"]["limit"] == "10"
    assert body == orjson.loads(orjson.dumps(event.body)) and body["id"] == event.event_id
    slack = orjson.loads(payload(event.body, "slack"))
    assert set(slack) == {"text"} and "85%" in slack["text"]


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 1.0, 300.0) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff(10_000, 0.5, 60.0) == 60.0
    assert backoff(0, 1.0, 300.0) == 0.0
