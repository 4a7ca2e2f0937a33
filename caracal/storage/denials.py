"""The denial log of a home: denials recorded by every process, read by the dashboard, the API and alerts.

Recording must never slow down or break a denial (a runaway loop is denied as fast as it asks): a denial
is added to this process's pending records in memory, and the pending records are folded into the shared
document (:mod:`caracal.core.denials`) at most once per :data:`FLUSH_INTERVAL`, by a timer, in one
serialized transaction (so several processes and hosts add up, and none overwrites another). A failed
write is logged and the records stay pending for the next try (bounded by :data:`MAX_PENDING`). What
this process recorded is flushed before it reads the log (its own denials are seen at once), when it
closes, and when the interpreter exits (a script that never closes its client, as v0.1's never did); a
process killed with records pending loses at most its last second of denials (the ledger is not affected:
a denial records no money).
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from caracal.core.decisions import Decision
from caracal.core.denials import (
    DEFAULT_RETENTION,
    DenialRecord,
    denial,
    fold,
    parse_denials,
    recent,
)
from caracal.exceptions import CaracalError
from caracal.storage.interface import Document

logger = logging.getLogger("caracal.denials")

FLUSH_INTERVAL = 1.0
"""Seconds between a first pending denial and the write that folds it into the shared log."""

MAX_PENDING = 10_000
"""Pending records kept while the log cannot be written; past it, new denials are dropped with a warning
(pending records are already aggregated per hour, agent and policy, so this is rarely reached)."""


_UNFLUSHED: weakref.WeakSet[DenialLog] = weakref.WeakSet()
"""The logs of this process that may hold pending records (flushed at exit)."""


@atexit.register
def _flush_at_exit() -> None:
    for log in list(_UNFLUSHED):
        log.close()


class DenialLog:
    """Record denials (cheap, from any thread) and read the home's recent ones."""

    def __init__(
        self,
        document: Document,
        clock: Callable[[], datetime],
        *,
        retention: timedelta = DEFAULT_RETENTION,
        flush_interval: float = FLUSH_INTERVAL,
    ):
        self.document = document
        self.clock = clock
        self.retention = retention
        self.flush_interval = flush_interval
        self._pending: dict[str, DenialRecord] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def record(self, decision: Decision, now: datetime | None = None) -> None:
        """Note one denial (``decision.allowed`` is False); never raises."""
        try:
            entry = denial(
                decision.agent_id,
                decision.policy_id,
                decision.reason,
                decision.amount,
                decision.currency,
                now or self.clock(),
            )
        except Exception:  # a denial must be answered even when it cannot be logged
            logger.exception("could not log a denial of agent %s", decision.agent_id)
            return
        with self._lock:
            existing = self._pending.get(entry.key)
            if existing is None and len(self._pending) >= MAX_PENDING:
                logger.warning(
                    "denial log: %d records pending, dropped a denial of %s", MAX_PENDING, entry.agent_id
                )
                return
            self._pending[entry.key] = entry if existing is None else existing.merged(entry)
            if self._timer is None and not self._closed:
                _UNFLUSHED.add(self)
                self._timer = threading.Timer(self.flush_interval, self._flush_from_timer)
                self._timer.daemon = True
                self._timer.start()

    def _flush_from_timer(self) -> None:
        with self._lock:
            self._timer = None
        try:
            self.flush()
        except CaracalError as exc:
            logger.warning("could not write the denial log %s: %s (will retry)", self.document.label, exc)
            with self._lock:
                if self._timer is None and self._pending and not self._closed:
                    self._timer = threading.Timer(self.flush_interval, self._flush_from_timer)
                    self._timer.daemon = True
                    self._timer.start()

    def flush(self) -> None:
        """Fold the pending records into the shared log now; on failure they stay pending and the error
        (a :class:`CaracalError`) is raised."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                with self.document.transaction() as document:
                    fold(document, pending.values(), self.clock(), self.retention, self.document.label)
            except BaseException:
                with self._lock:
                    for key, record in pending.items():
                        later = self._pending.get(key)
                        self._pending[key] = record if later is None else record.merged(later)
                raise

    def recent(self, since: datetime, agent_ids: Collection[str] | None = None) -> list[DenialRecord]:
        """The records with a denial at or after ``since`` (of ``agent_ids``, when given), latest first,
        including this process's pending ones. Raises :class:`RegistryError` for a malformed log."""
        try:
            self.flush()
        except CaracalError as exc:
            logger.warning("could not write the denial log %s: %s", self.document.label, exc)
        records = self.document.read_cached(lambda doc: parse_denials(doc, self.document.label))
        with self._lock:
            pending = dict(self._pending)
        merged = dict(records)
        for key, record in pending.items():
            merged[key] = record if key not in merged else merged[key].merged(record)
        return recent(merged.values(), since, agent_ids)

    def close(self) -> None:
        """Write what is pending (errors logged) and stop the timer."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        try:
            self.flush()
        except CaracalError as exc:
            with self._lock:
                lost = sum(record.count for record in self._pending.values())
            logger.warning(
                "%d %s of this process %s not in the denial log %s, which could not be written at close: "
                "%s (the denials were answered; only their record is lost: fix or delete the file)",
                lost, "denial" if lost == 1 else "denials", "is" if lost == 1 else "are",
                self.document.label, exc,
            )  # fmt: skip


__all__ = ["FLUSH_INTERVAL", "DenialLog"]
