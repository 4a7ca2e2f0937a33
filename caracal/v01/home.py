"""A Caracal Core v0.1 configuration's files, wired together: what ``CaracalClient(config_path=...)`` and
``caracal --config FILE ...`` open.

:class:`V01Home` holds v0.1's objects (``agent_registry``, ``policy_store``, ``pricebook``, ``ledger_writer``,
``ledger_query``, ``policy_evaluator``, ``metering_collector``) and exposes our registries, settings and
enforcer under the names an :class:`~caracal.storage.home.EmbeddedHome` has, so the SDK's embedded
transport and the CLI's commands run on it unchanged: one set of objects per file, shared by both APIs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from caracal.config import Settings
from caracal.config.settings import CaracalConfig
from caracal.core.ledger import LedgerQuery, LedgerWriter
from caracal.exceptions import CaracalError, ServerUnreachableError
from caracal.v01.identity import AgentRegistry
from caracal.v01.keys import v01_signing_key_path
from caracal.v01.metering import MeteringCollector
from caracal.v01.policy import PolicyEvaluator, PolicyStore, StoreDirectory
from caracal.v01.pricebook import CsvPricebook

if TYPE_CHECKING:
    from caracal.core.enforcement import Enforcer


class V01Home:
    """The files a v0.1 configuration names (created on first write; the ledger when first queried)."""

    def __init__(self, config: CaracalConfig):
        """Open every file of ``config``; any failure is a :class:`ServerUnreachableError` (v0.1's
        ``ConnectionError``: "Failed to initialize Caracal Core ...") naming the cause."""
        try:
            self._open(config)
        except CaracalError as exc:
            raise ServerUnreachableError(f"Failed to initialize Caracal Core: {exc}") from exc

    def _open(self, config: CaracalConfig) -> None:
        self.config = config
        storage = config.storage
        count = storage.backup_count
        self.settings = Settings(backup_count=count)
        self.agent_registry = AgentRegistry(storage.agent_registry, backup_count=count)
        self.policy_store = PolicyStore(storage.policy_store, self.agent_registry, backup_count=count)
        self.pricebook = CsvPricebook(storage.pricebook, backup_count=count)
        self.ledger_path = Path(storage.ledger)
        self.ledger_query = LedgerQuery(self.ledger_path)  # first: it refuses a folder that does not exist
        self.key_path = v01_signing_key_path(self.ledger_path)
        self.ledger_writer = LedgerWriter(self.ledger_path, count, signing_key_path=self.key_path)
        self.policy_evaluator = PolicyEvaluator(self.policy_store, self.ledger_query)
        self.metering_collector = MeteringCollector(self.pricebook, self.ledger_writer)
        self.backup_dir = Path(storage.backup_dir)
        # What the embedded transport and the CLI use (the names of an EmbeddedHome):
        self.agents = self.agent_registry.registry
        self.policies = self.policy_store.registry
        self.prices = self.pricebook.registry
        self.directory = StoreDirectory(self.policies, self.agents)
        self.ledger = self.ledger_path
        self.location = str(self.ledger_path)
        self.on_files = True
        self._lock = threading.Lock()

    @property
    def idempotency_window(self) -> timedelta:
        return timedelta(seconds=self.settings.idempotency_window)

    def writer(self) -> LedgerWriter:
        return self.ledger_writer

    def enforcer(self, clock: Callable[[], datetime] | None = None, on_over_hold: object = None) -> Enforcer:
        """An enforcer on this configuration's ledger and registries (agents, their ancestors, policies)."""
        from caracal.core.enforcement import Enforcer

        return Enforcer(
            self.ledger_writer, self.directory, clock=clock, idempotency_window=self.idempotency_window
        )

    def close(self) -> None:
        self.ledger_writer.close()


__all__ = ["V01Home"]
