"""Alert rules and the alert outbox of a home: two registry documents, on every backend.

- ``alerts``: ``{"rules": {rule_id: rule}}`` (each rule with its signing secret).
- ``alert_outbox``: ``{"version": 1, "entries": {event_id: entry}, "fired": {key: value}}``.

Invariants:

- **Enqueued once.** An event is inserted only if no entry has its id, inside the outbox's transaction
  (serialized across threads, processes and hosts). Threshold, denial, suspension and verification events
  are evaluated *inside* that transaction against the stored ``fired`` state and written with it, so two
  servers that see the same crossing enqueue one event (see :mod:`caracal.core.alert_events`).
- **Never dropped silently.** An entry is ``pending`` until a 2xx answer makes it ``delivered``; after
  ``max_attempts`` failures it becomes ``failed`` and stays visible with its last error. Only delivered
  entries are pruned (the oldest beyond ``keep_delivered``); failed ones past :data:`MAX_FAILED` are pruned
  oldest first with a WARNING naming them.
- **One sender at a time.** A sender claims due entries with a lease (owner and expiry) written in the
  document; another sender skips leased entries until the lease lapses (a crashed sender's entries are
  retried after it). A result is recorded whoever holds the lease then: a delivery is never lost.
"""

from __future__ import annotations

import builtins
import logging
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from caracal.core.alert_events import AlertEvent, make_test_event, over_hold_events
from caracal.core.alerts import AlertRule, new_rule
from caracal.core.validation import format_timestamp
from caracal.core.webhooks import backoff
from caracal.exceptions import AlertNotFoundError, InvalidAlertError, RegistryError
from caracal.storage.interface import Document

if TYPE_CHECKING:
    from caracal.core.enforcement import OverHold

logger = logging.getLogger("caracal.alerts")

VERSION = 1
MAX_RULES = 1000
MAX_FAILED = 5000
"""Failed entries kept (the oldest pruned first, each logged): a bound on the outbox's size."""
LEASE_MARGIN = 5.0
"""Seconds a lease lasts beyond the attempts it covers."""
MAX_PENDING = 10_000
"""Pending entries kept; past it, new events are refused with a WARNING (never silently dropped)."""

Evaluation = Callable[[dict[str, str]], tuple[list[AlertEvent], dict[str, str]]]


def empty_alerts() -> dict[str, Any]:
    return {"rules": {}}


def empty_outbox() -> dict[str, Any]:
    return {"version": VERSION, "entries": {}, "fired": {}}


def _rules(document: dict[str, Any]) -> builtins.list[AlertRule]:
    rules = document.get("rules", {})
    if not isinstance(rules, dict):
        raise RegistryError("the alerts registry must hold an object 'rules'")
    return sorted((AlertRule.from_dict(record) for record in rules.values()), key=lambda r: r.created_at)


_STATES = frozenset(("pending", "delivered", "failed"))
_FORMATS = frozenset(("json", "slack"))
_TEXT_FIELDS = ("rule_id", "type", "url", "created_at")
_OPTIONAL_TEXT_FIELDS = (
    "next_attempt_at", "last_attempt_at", "delivered_at", "lease_until", "lease_owner", "last_error",
)  # fmt: skip


def checked_outbox(document: dict[str, Any], label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The outbox's ``entries`` and ``fired`` maps, each entry checked for the shape this module writes.

    The outbox is input like any file beside the ledger: an entry someone edited into a shape Caracal
    never writes raises :class:`RegistryError` naming the document and the entry (the detector and the
    sender stop on it, as on any unreadable registry) rather than a ``KeyError`` deep in a sender, or a
    guess. Shape-valid entries are used: the sender takes the URL, format and secret from the entry's
    *rule*, never from the entry (see :class:`caracal.server.alerting.Sender`)."""

    def bad(what: str) -> RegistryError:
        return RegistryError(f"{label}: {what}; fix or remove it (the alert outbox is written by Caracal)")

    entries = document.setdefault("entries", {})
    fired = document.setdefault("fired", {})
    if not isinstance(entries, dict) or not isinstance(fired, dict):
        raise bad("'entries' and 'fired' must be objects")
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in fired.items()):
        raise bad("'fired' must map text to text")
    for key, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("id") != key:
            raise bad(f"entry {key!r} is not an object whose 'id' is its key")
        if entry.get("state") not in _STATES or entry.get("format", "json") not in _FORMATS:
            raise bad(f"entry {key!r} has an unknown state or format")
        attempts = entry.get("attempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise bad(f"entry {key!r} has no valid 'attempts'")
        if not all(isinstance(entry.get(field), str) for field in _TEXT_FIELDS) or not all(
            isinstance(entry.get(field), (str, type(None))) for field in _OPTIONAL_TEXT_FIELDS
        ):
            raise bad(f"entry {key!r} has a missing or non-text field")
        if not isinstance(entry.get("body"), dict):
            raise bad(f"entry {key!r} has no object 'body'")
    return entries, fired


def _outbox_view(label: str) -> Callable[[dict[str, Any]], tuple[dict[str, str], list[tuple[str, str, str]]]]:
    """What the detector and the sender look at every interval (one parse per document object, cached):
    the fired state, and ``(id, next attempt, lease end)`` of each pending entry."""

    def view(document: dict[str, Any]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
        entries, fired = checked_outbox(dict(document), label)
        pending = [
            (entry["id"], entry.get("next_attempt_at") or "", entry.get("lease_until") or "")
            for entry in entries.values()
            if entry["state"] == "pending"
        ]
        return dict(fired), pending

    return view


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An outbox entry as listings show it (without the lease's owner)."""
    return {
        "id": entry["id"],
        "rule_id": entry["rule_id"],
        "type": entry["type"],
        "url": entry["url"],
        "state": entry["state"],
        "attempts": entry["attempts"],
        "created_at": entry["created_at"],
        "next_attempt_at": entry.get("next_attempt_at"),
        "last_attempt_at": entry.get("last_attempt_at"),
        "delivered_at": entry.get("delivered_at"),
        "last_status": entry.get("last_status"),
        "last_error": entry.get("last_error"),
        "body": entry["body"],
    }


class AlertStore:
    """Rules (create, list, get, delete) and the outbox (enqueue, claim, finish, list) of one home."""

    def __init__(self, rules: Document, outbox: Document, clock: Callable[[], datetime]):
        self.rules_document = rules
        self.outbox = outbox
        self.clock = clock
        self._view = _outbox_view(outbox.label)

    # ------------------------------------------------------------------------------------------- rules

    def create(self, **fields: Any) -> AlertRule:
        """A new rule (validated by :func:`caracal.core.alerts.new_rule`), with a fresh id and secret."""
        rule = new_rule(now=self.clock(), **fields)
        with self.rules_document.transaction() as document:
            rules = document.setdefault("rules", {})
            if len(rules) >= MAX_RULES:
                raise InvalidAlertError(f"a home keeps at most {MAX_RULES} alert rules; delete some first")
            if rule.rule_id in rules:
                raise InvalidAlertError(f"an alert rule with id {rule.rule_id!r} already exists")
            rules[rule.rule_id] = rule.to_dict()
        return rule

    def list(self) -> builtins.list[AlertRule]:
        """Every rule, oldest first (cheap when nothing changed: the detector calls it every interval)."""
        return self.rules_document.read_cached(_rules)

    def get(self, rule_id: str) -> AlertRule:
        for rule in self.list():
            if rule.rule_id == rule_id:
                return rule
        raise AlertNotFoundError(f"no alert rule {rule_id!r}; list them with 'caracal alert list'")

    def delete(self, rule_id: str) -> AlertRule:
        """Delete the rule; its fired state goes with it. Its undelivered events stay in the outbox and
        become ``failed`` ("rule deleted") when next tried: visible, not silently dropped."""
        with self.rules_document.transaction() as document:
            record = document.setdefault("rules", {}).pop(rule_id, None)
            if record is None:
                raise AlertNotFoundError(f"no alert rule {rule_id!r}; list them with 'caracal alert list'")
        with self.outbox.transaction() as outbox:
            fired = self._checked(outbox)[1]
            for key in [key for key in fired if key.split("|", 1)[0] == rule_id]:
                del fired[key]
        return AlertRule.from_dict(record)

    # ------------------------------------------------------------------------------------------ outbox

    def fired(self) -> dict[str, str]:
        """The stored fired state (cached read)."""
        return dict(self.outbox.read_cached(self._view)[0])

    def record(self, evaluate: Evaluation) -> builtins.list[AlertEvent]:
        """Run ``evaluate(fired)`` inside the outbox's transaction and store its events (each id once) with
        the new fired state; returns the events that were new. Call it only when an evaluation against
        :meth:`fired` found something (a transaction takes the document's lock)."""
        with self.outbox.transaction() as document:
            events, fired = evaluate(dict(self._checked(document)[1]))
            added = self._insert(document, events)
            document["fired"] = fired
        return added

    def enqueue(self, events: Iterable[AlertEvent]) -> builtins.list[AlertEvent]:
        """Insert events whose id is not in the outbox yet; returns those inserted."""
        events = list(events)
        if not events:
            return []
        with self.outbox.transaction() as document:
            return self._insert(document, events)

    def _checked(self, document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return checked_outbox(document, self.outbox.label)

    def _insert(self, document: dict[str, Any], events: Iterable[AlertEvent]) -> builtins.list[AlertEvent]:
        entries = self._checked(document)[0]
        rules = {rule.rule_id: rule for rule in self.list()}
        now = format_timestamp(self.clock())
        added = []
        pending = sum(1 for entry in entries.values() if entry["state"] == "pending")
        for event in events:
            if event.event_id in entries:
                continue
            rule = rules.get(event.rule_id)
            if rule is None:
                continue
            if pending >= MAX_PENDING:
                logger.warning(
                    "alert outbox: %d events pending; refused event %s of rule %s (deliver or delete first)",
                    pending, event.event_id, event.rule_id,
                )  # fmt: skip
                continue
            entries[event.event_id] = {
                "id": event.event_id,
                "rule_id": event.rule_id,
                "type": event.type,
                "url": rule.url,
                "format": rule.format,
                "body": event.body,
                "created_at": format_timestamp(event.created_at),
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
            }
            pending += 1
            added.append(event)
        return added

    def over_hold(self, over: OverHold, agent_name: str | None) -> builtins.list[AlertEvent]:
        """Enqueue the over-hold events of the rules that watch it (none: no write)."""
        rules = [rule for rule in self.list() if rule.on == "over-hold"]
        if not rules:
            return []
        events = over_hold_events(
            rules,
            agent_id=over.agent_id,
            agent_name=agent_name,
            hold_id=over.hold_id,
            held=over.held,
            charged=over.charged,
            currency=over.currency,
            now=self.clock(),
        )
        return self.enqueue(events)

    def test(self, rule_id: str) -> AlertEvent:
        """Enqueue a ``test`` event for the rule; returns it (deliver it with the sender)."""
        rule = self.get(rule_id)
        event = make_test_event(rule, self.clock())
        self.enqueue([event])
        return event

    def claim(
        self,
        owner: str,
        *,
        lease: float,
        limit: int = 20,
        only: str | None = None,
        margin: float = LEASE_MARGIN,
    ) -> builtins.list[tuple[dict[str, Any], AlertRule | None]]:
        """Lease up to ``limit`` due entries (pending, next attempt reached, no live lease) to ``owner``;
        returns copies with their rule (None when it was deleted). ``only``: just that entry, due or not.

        ``lease`` is the most one attempt may take: the k-th entry claimed (sent after k - 1 others) is
        leased for ``k x lease`` plus ``margin`` seconds, so that a crashed sender's entries
        are tried again soon after, while a slow one's are not sent twice."""
        now = self.clock()
        stamp = format_timestamp(now)
        claimed: builtins.list[tuple[dict[str, Any], AlertRule | None]] = []
        if not self._any_due(stamp, only):
            return claimed
        rules = {rule.rule_id: rule for rule in self.list()}
        with self.outbox.transaction() as document:
            entries = self._checked(document)[0]
            candidates = [entries[only]] if only is not None and only in entries else list(entries.values())
            for entry in sorted(candidates, key=lambda e: (e.get("next_attempt_at") or "", e["created_at"])):
                if len(claimed) >= limit:
                    break
                if entry["state"] != "pending" or (entry.get("lease_until") or "") > stamp:
                    continue
                if only is None and (entry.get("next_attempt_at") or "") > stamp:
                    continue
                entry["lease_owner"] = owner
                until = now + timedelta(seconds=(len(claimed) + 1) * lease + margin)
                entry["lease_until"] = format_timestamp(until)
                claimed.append((dict(entry), rules.get(entry["rule_id"])))
        return claimed

    def _any_due(self, stamp: str, only: str | None) -> bool:
        """Whether a claim could find something (a cached read: no lock when the outbox is idle)."""

        for identifier, next_at, lease_until in self.outbox.read_cached(self._view)[1]:
            if only is not None:
                if identifier == only:
                    return True
                continue
            if next_at <= stamp and lease_until <= stamp:
                return True
        return False

    def finish(
        self,
        entry_id: str,
        *,
        delivered: bool,
        status: int | None,
        error: str | None,
        retry_base: float,
        retry_max: float,
        max_attempts: int,
        keep_delivered: int,
        final: bool = False,
    ) -> dict[str, Any] | None:
        """Record one attempt's outcome: delivered, or the next attempt with backoff (``failed`` after
        ``max_attempts``, or at once with ``final``). Returns the entry as stored (None if it is gone)."""
        now = self.clock()
        with self.outbox.transaction() as document:
            entries = self._checked(document)[0]
            entry = entries.get(entry_id)
            if entry is None:
                return None
            entry["attempts"] = int(entry["attempts"]) + 1
            entry["last_attempt_at"] = format_timestamp(now)
            entry["last_status"] = status
            entry.pop("lease_owner", None)
            entry.pop("lease_until", None)
            if delivered:
                entry["state"] = "delivered"
                entry["delivered_at"] = format_timestamp(now)
                entry["last_error"] = None
                entry["next_attempt_at"] = None
            elif entry["state"] == "pending":
                entry["last_error"] = error
                if final or entry["attempts"] >= max_attempts:
                    entry["state"] = "failed"
                    entry["next_attempt_at"] = None
                    logger.warning(
                        "alert %s (rule %s) failed after %d attempts: %s; it stays in the outbox "
                        "('caracal alert deliveries')",
                        entry_id, entry["rule_id"], entry["attempts"], error,
                    )  # fmt: skip
                else:
                    delay = backoff(entry["attempts"], retry_base, retry_max)
                    entry["next_attempt_at"] = format_timestamp(now + timedelta(seconds=delay))
            _prune(entries, keep_delivered)
            return dict(entry)

    def retry(self, entry_id: str) -> dict[str, Any]:
        """Make a ``failed`` entry ``pending`` again, due now, its attempts counted afresh (an operator
        fixed the receiver). A pending one is made due now; a delivered one is refused."""
        now = format_timestamp(self.clock())
        with self.outbox.transaction() as document:
            entry = self._checked(document)[0].get(entry_id)
            if entry is None:
                raise AlertNotFoundError(f"no alert delivery {entry_id!r} in the outbox")
            if entry["state"] == "delivered":
                raise InvalidAlertError(f"alert {entry_id} was delivered at {entry.get('delivered_at')}")
            if entry["state"] == "failed":
                entry["state"] = "pending"
                entry["attempts"] = 0
            entry["next_attempt_at"] = now
            return public_entry(entry)

    def deliveries(self, limit: int = 100, state: str | None = None) -> builtins.list[dict[str, Any]]:
        """Outbox entries, newest first (of ``state`` when given)."""
        entries = self._checked(self.outbox.read())[0].values()
        chosen = [entry for entry in entries if state is None or entry["state"] == state]
        chosen.sort(key=lambda e: e["created_at"], reverse=True)
        return [public_entry(entry) for entry in chosen[:limit]]

    def delivery(self, entry_id: str) -> dict[str, Any]:
        entry = self._checked(self.outbox.read())[0].get(entry_id)
        if entry is None:
            raise AlertNotFoundError(f"no alert delivery {entry_id!r} in the outbox")
        return public_entry(entry)


def _prune(entries: dict[str, Any], keep_delivered: int) -> None:
    delivered = sorted(
        (entry for entry in entries.values() if entry["state"] == "delivered"),
        key=lambda e: e.get("delivered_at") or "",
    )
    for entry in delivered[: max(len(delivered) - keep_delivered, 0)]:
        del entries[entry["id"]]
    failed = sorted(
        (entry for entry in entries.values() if entry["state"] == "failed"),
        key=lambda e: e.get("last_attempt_at") or "",
    )
    for entry in failed[: max(len(failed) - MAX_FAILED, 0)]:
        logger.warning("alert outbox: pruned failed alert %s (over %d failed)", entry["id"], MAX_FAILED)
        del entries[entry["id"]]


def lease_owner() -> str:
    """A sender's lease owner name (unique per sender)."""
    return secrets.token_hex(8)


__all__ = ["AlertStore", "checked_outbox", "empty_alerts", "empty_outbox", "lease_owner", "public_entry"]
