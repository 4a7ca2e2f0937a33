"""Alerts at work: the detector that fires them and the sender that delivers their webhooks.

:class:`Alerting` runs in ``caracal serve`` (every worker process of every host may run one: the outbox's
transactions and leases make that safe) as two daemon threads, every ``[alerts] interval`` seconds:

- **detect**: catch the enforcer up (so charges written by any process count), compute each active
  policy's figures, the suspended agents and the recent denials, evaluate the rules against the stored
  fired state, and enqueue what fires (see :meth:`caracal.storage.alerts.AlertStore.record`). A ledger
  that fails verification fires ``ledger.verification_failed``.
- **deliver**: claim due outbox entries, POST each to its rule's URL, signed, and record the outcome
  (delivered on 2xx; otherwise the next try with exponential backoff).

:class:`Sender` is also what ``caracal alert test`` uses to deliver a test event without a server. This
module imports httpx, never the web framework.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from caracal import __version__
from caracal.core.alert_events import (
    Suspension,
    evaluate_denials,
    evaluate_suspensions,
    evaluate_thresholds,
    verification_events,
)
from caracal.core.alerts import AlertRule
from caracal.core.decisions import PolicyStatus
from caracal.core.validation import format_timestamp
from caracal.core.webhooks import payload, signed_headers
from caracal.exceptions import CaracalError, LedgerVerificationError
from caracal.storage.alerts import lease_owner

if TYPE_CHECKING:
    from caracal.core.enforcement import Enforcer
    from caracal.server.metrics import Metrics
    from caracal.storage.home import EmbeddedHome

logger = logging.getLogger("caracal.alerts")

MAX_ERROR_LENGTH = 500
SEND_BATCH = 10
"""Entries a sender claims at once (each leased for the attempts before it, see AlertStore.claim)."""
DENIAL_LOOKBACK = timedelta(hours=2)
"""How far back the detector reads the denial log (its records are per hour)."""


class Sender:
    """Deliver due outbox entries of a home: claim, POST, record."""

    def __init__(
        self, home: EmbeddedHome, client: httpx.Client | None = None, metrics: Metrics | None = None
    ):
        self.home = home
        self.metrics = metrics
        self.settings = home.settings
        self.owner = lease_owner()
        self.client = client or httpx.Client(
            timeout=self.settings.alerts_timeout,
            follow_redirects=False,
            headers={"User-Agent": f"caracal/{__version__}"},
        )

    def deliver_due(self, *, only: str | None = None, limit: int = SEND_BATCH) -> list[dict[str, Any]]:
        """Claim and send up to ``limit`` due entries (``only``: that entry, due or not); returns the
        entries as recorded after their attempt."""
        lease = self.settings.alerts_timeout  # per attempt; see AlertStore.claim
        results = []
        for entry, rule in self.home.alerts.claim(self.owner, lease=lease, limit=limit, only=only):
            results.append(self._attempt(entry, rule))
        return [result for result in results if result is not None]

    def _attempt(self, entry: dict[str, Any], rule: AlertRule | None) -> dict[str, Any] | None:
        status: int | None = None
        error: str | None = None
        final = False
        if rule is None:
            error, final = "the alert rule was deleted before delivery", True
        elif (entry["url"], entry.get("format", "json")) != (rule.url, rule.format):
            # Rules are never edited, so an entry naming another URL was written by someone else: never
            # sign and send it there (the rule's secret would vouch for it).
            error, final = f"the entry's URL is not its rule's ({rule.url}): the outbox was edited", True
            logger.warning("alert %s not sent: %s", entry["id"], error)
        else:
            body = payload(entry["body"], rule.format)
            headers = signed_headers(rule.secret, entry["id"], int(time.time()), body)
            try:
                response = self.client.post(rule.url, content=body, headers=headers)
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            logger.info("alert %s to %s not delivered: %s", entry["id"], entry["url"], error)
        recorded = self.home.alerts.finish(
            entry["id"],
            delivered=error is None,
            status=status,
            error=None if error is None else error[:MAX_ERROR_LENGTH],
            retry_base=self.settings.alerts_retry_base,
            retry_max=self.settings.alerts_retry_max,
            max_attempts=self.settings.alerts_max_attempts,
            keep_delivered=self.settings.alerts_keep_delivered,
            final=final,
        )
        if self.metrics is not None and recorded is not None:
            outcome = "retry" if recorded["state"] == "pending" else recorded["state"]
            self.metrics.alert_deliveries.labels(outcome).inc()
        return recorded

    def close(self) -> None:
        self.client.close()


def policy_statuses(enforcer: Enforcer, home: EmbeddedHome) -> list[PolicyStatus]:
    """Every active policy's figures now (from the enforcer's live state, caught up first)."""
    enforcer.catch_up()
    return enforcer.own_statuses(sorted({policy.agent_id for policy in home.policies.list()}))


class Detector:
    """Evaluate the home's rules once (:meth:`run_once`); enqueue what fires."""

    def __init__(self, home: EmbeddedHome, enforcer: Enforcer, metrics: Metrics | None = None):
        self.home = home
        self.enforcer = enforcer
        self.metrics = metrics

    def run_once(self) -> int:
        """One look; returns how many events were enqueued."""
        rules = self.home.alerts.list()
        if not rules:
            return 0
        kinds = {rule.on for rule in rules}
        now = self.enforcer.now()
        added = 0
        statuses: list[PolicyStatus] = []
        try:
            if "threshold" in kinds:
                statuses = policy_statuses(self.enforcer, self.home)
            elif "verification-failed" in kinds:
                self.enforcer.catch_up()  # raises once the ledger failed a check
        except LedgerVerificationError as exc:
            added += self.verification_failed(exc)
        if statuses:
            names = {agent.agent_id: agent.name for agent in self.home.agents.list()}
            added += self._fire(lambda fired: evaluate_thresholds(rules, statuses, fired, now, names))
        if "suspended" in kinds:
            suspended = [
                Suspension(agent.agent_id, agent.name, agent.updated_at)
                for agent in self.home.agents.list()
                if agent.is_suspended
            ]
            added += self._fire(lambda fired: evaluate_suspensions(rules, suspended, fired, now))
        if "denied" in kinds:
            added += self._denials(rules, now)
        return added

    def _denials(self, rules: list[AlertRule], now: datetime) -> int:
        since = now - DENIAL_LOOKBACK
        records = self.home.denials.recent(since)
        names = {agent.agent_id: agent.name for agent in self.home.agents.list()}
        horizon = format_timestamp(since.replace(minute=0, second=0, microsecond=0))

        def evaluate(fired: dict[str, str]) -> tuple[list[Any], dict[str, str]]:
            events, state = evaluate_denials(rules, records, fired, now, names)
            # forget denial keys of hours the log is no longer read for (the key ends with the hour)
            return events, {
                key: value
                for key, value in state.items()
                if "|denied|" not in key or key.rsplit("|", 1)[1] >= horizon
            }

        return self._fire(evaluate)

    def _fire(self, evaluate: Callable[[dict[str, str]], tuple[list[Any], dict[str, str]]]) -> int:
        """Evaluate against the cached fired state; only when that finds a change, evaluate again inside the
        outbox's transaction (the stored state may have moved: another process fired first) and store."""
        fired = self.home.alerts.fired()
        events, state = evaluate(fired)
        if not events and state == fired:
            return 0
        added = self.home.alerts.record(evaluate)
        if self.metrics is not None:
            for event in added:
                self.metrics.alerts_fired.labels(event.type).inc()
        return len(added)

    def verification_failed(self, exc: BaseException) -> int:
        """Fire ``ledger.verification_failed`` for a failure (once per rule and location)."""
        rules = self.home.alerts.list()
        if not any(rule.on == "verification-failed" for rule in rules):
            return 0
        bad = getattr(exc, "first_bad_event_id", None)
        location = f"event {bad}" if bad is not None else str(exc)[:200]
        now = self.home.now()
        return self._fire(lambda fired: verification_events(rules, location, str(exc), now, fired))


class Alerting:
    """The detector and the sender of a server, as two daemon threads (:meth:`start`, :meth:`close`)."""

    def __init__(self, home: EmbeddedHome, enforcer: Enforcer, metrics: Metrics | None = None):
        self.home = home
        self.detector = Detector(home, enforcer, metrics)
        self.sender = Sender(home, metrics=metrics)
        self.interval = home.settings.alerts_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        steps = (("caracal-alerts-detect", self.detector.run_once), ("caracal-alerts-send", self._send))
        for name, step in steps:
            thread = threading.Thread(target=self._loop, args=(name, step), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _send(self) -> int:
        """Send what is due, batch after batch while full batches keep coming (a backlog drains at once,
        not ten entries an interval)."""
        sent = 0
        while not self._stop.is_set():
            batch = self.sender.deliver_due(limit=SEND_BATCH)
            sent += len(batch)
            if len(batch) < SEND_BATCH:
                break
        return sent

    def _loop(self, name: str, step: Callable[[], int]) -> None:
        while not self._stop.wait(self.interval):
            try:
                step()
            except LedgerVerificationError as exc:
                try:
                    self.detector.verification_failed(exc)
                except Exception:  # a background thread must not die
                    logger.exception("%s: could not record a verification failure", name)
            except CaracalError as exc:
                logger.warning("%s: %s", name, exc)
            except Exception:  # a background thread must not die
                logger.exception("%s failed; trying again in %s s", name, self.interval)

    def test(self, rule_id: str) -> dict[str, Any]:
        """Enqueue a ``test`` event for the rule and try it once now; returns the delivery as recorded
        (``delivered``, or ``pending`` with the error and the next try, which the sender thread makes)."""
        event = self.home.alerts.test(rule_id)
        self.sender.deliver_due(only=event.event_id)
        return self.home.alerts.delivery(event.event_id)

    def ledger_verification_failed(self, exc: BaseException) -> None:
        """Called by the server when a verification (``POST /ledger/verify``) found a problem."""
        try:
            self.detector.verification_failed(exc)
        except CaracalError as error:
            logger.warning("could not enqueue a verification alert: %s", error)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.home.settings.alerts_timeout + 5)
        self.sender.close()


__all__ = ["Alerting", "Detector", "Sender", "policy_statuses"]
