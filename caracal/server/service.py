"""The objects every request shares: one embedded home, one enforcer, one group committer, the API keys.

All ledger-writing operations (holds, settlements, releases, charges) go through the
:class:`~caracal.core.group_commit.GroupCommitter`, so concurrent requests share fsyncs; reads (checks,
budget status) use the enforcer's live state directly and never wait for the disk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from caracal.core.enforcement import Operation, OverHold
from caracal.core.group_commit import GroupCommitter
from caracal.core.metering import Meter
from caracal.exceptions import CaracalError
from caracal.server.alerting import Alerting
from caracal.server.metrics import Metrics
from caracal.server.verification import ScheduledVerification
from caracal.storage.home import EmbeddedHome

T = TypeVar("T")
logger = logging.getLogger("caracal.server")

EXPIRE_EVERY = 30.0
"""Seconds between two sweeps that close expired holds in the record: releases, and for charge-on-expiry
holds (the gateway's) a charge at their bound. The server also sweeps once at start, so the holds a killed
server left behind are billed as soon as it is back."""


class Service:
    """One home served over HTTP. Create it, use it from any thread or the event loop, then :meth:`close`."""

    def __init__(self, home: Path | None = None, *, clock: Callable[[], datetime] | None = None):
        """Open the home and read its ledger up to date, checking every line read (a replay when there is no
        usable snapshot). A ledger that fails verification raises :class:`LedgerVerificationError` here, so
        a server never starts on a ledger it cannot trust."""
        self.home = EmbeddedHome(home)
        self.metrics = Metrics()
        self.enforcer = self.home.enforcer(clock, self._over_hold)
        try:
            self.enforcer.catch_up()
        except BaseException:
            self.home.close()
            raise
        self.meter = Meter(self.enforcer, self.home.prices.pricebook)
        self.committer = GroupCommitter(self.enforcer, observer=self.metrics.observe_group)
        self.metrics.holds_open.set_function(self._holds_open)
        self.metrics.ledger_trusted.set_function(lambda: float(self.enforcer.distrusted is None))
        self.keys = self.home.keys
        self._stop = threading.Event()
        self._expire()
        self._sweeper = threading.Thread(target=self._sweep, name="caracal-expire-holds", daemon=True)
        self._sweeper.start()
        self.alerting = Alerting(self.home, self.enforcer, self.metrics)
        """Fires alert rules and delivers their webhooks (:mod:`caracal.server.alerting`)."""
        self.alerting.start()
        self.verification: ScheduledVerification | None = None
        """Verifies the whole ledger every ``[ledger] verify_interval`` (see :mod:`.verification`)."""
        if self.home.settings.verify_interval > 0:
            self.verification = ScheduledVerification(self, self.home.settings.verify_interval)
            self.verification.start()

    async def run(self, operation: Operation[T]) -> T:
        """Record ``operation`` through the group committer; returns once its entries are fsynced."""
        return await asyncio.wrap_future(self.committer.submit(operation))

    def _holds_open(self) -> float:
        """Open holds for ``/metrics``; NaN once the ledger fails verification (the scrape still answers,
        with ``caracal_ledger_trusted`` 0)."""
        try:
            return float(self.enforcer.catch_up().open_hold_count)
        except CaracalError:
            return math.nan

    def _sweep(self) -> None:
        while not self._stop.wait(EXPIRE_EVERY):
            self._expire()

    def _expire(self) -> None:
        try:
            closed = self.enforcer.expire()
        except CaracalError as exc:
            logger.warning("could not close expired holds: %s", exc)
            return
        if closed:
            self.metrics.holds.labels("expired").inc(len(closed))

    def _over_hold(self, over: OverHold) -> None:
        """A charge beyond its hold was recorded: count it, and let the home's policy act on it (it may
        suspend the agent: ``[enforcement] suspend_over_hold_factor``)."""
        self.metrics.over_hold.inc()
        self.home.over_hold(over)

    def close(self) -> None:
        """Finish queued operations, save the budget snapshot, checkpoint and close the ledger. A ledger
        that cannot be read or fails verification by now keeps its last good snapshot: that is logged (every
        decision already said so) and the rest still closes, so a shutdown never ends in a traceback."""
        self._stop.set()
        if self.verification is not None:
            self.verification.close()
        self.alerting.close()
        self.committer.close()
        try:
            self.enforcer.close()
        finally:
            self.home.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Service"]
