"""Webhook requests (pure): an alert event's body, its signature, and the retry schedule.

``Caracal-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` with the unix time in
``Caracal-Timestamp`` and the event's stable id in ``Caracal-Event-Id``: a receiver recomputes the
signature over the raw body with the rule's secret, refuses a timestamp older than :data:`REPLAY_WINDOW`
(a replayed request), and de-duplicates by the id (delivery is at least once).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from caracal.core.validation import dumps

SIGNATURE_VERSION = "v1"
HEADER_ID = "Caracal-Event-Id"
HEADER_TIMESTAMP = "Caracal-Timestamp"
HEADER_SIGNATURE = "Caracal-Signature"
REPLAY_WINDOW = timedelta(minutes=5)
"""How old a timestamp a receiver should accept (documented; :func:`verify_signature` enforces it)."""


# ------------------------------------------------------------------------------------- webhook requests


def payload(body: Mapping[str, Any], format: str) -> bytes:
    """The request body: the event as compact JSON, or Slack's ``{"text": ...}`` (the event's id is in the
    ``Caracal-Event-Id`` header either way)."""
    if format == "slack":
        rule = body.get("rule") or {}
        text = f"*Caracal alert* ({body.get('type')}, rule {rule.get('name')}): {body.get('summary')}"
        return dumps({"text": text})
    return dumps(body)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def signed_headers(secret: str, identifier: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        HEADER_ID: identifier,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secret, timestamp, body),
    }


def verify_signature(
    secret: str, headers: Mapping[str, str], body: bytes, now: int, tolerance: timedelta = REPLAY_WINDOW
) -> bool:
    """What a receiver does: the signature matches (constant-time) and the timestamp is recent."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        timestamp = int(lowered[HEADER_TIMESTAMP.lower()])
        given = lowered[HEADER_SIGNATURE.lower()]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance.total_seconds():
        return False
    return hmac.compare_digest(given, sign(secret, timestamp, body))


# ---------------------------------------------------------------------------------------------- backoff


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``base``, ``2 base``, ``4 base``, ...,
    at most ``cap``."""
    if attempts < 1:
        return 0.0
    exponent = min(attempts - 1, 62)
    return float(min(base * (2**exponent), cap))


__all__ = [
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "REPLAY_WINDOW",
    "backoff",
    "payload",
    "sign",
    "signed_headers",
    "verify_signature",
]
