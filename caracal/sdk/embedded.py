"""The embedded transport: a :class:`CaracalClient` working directly on a local Caracal home.

Construct it as ``CaracalClient()`` or ``CaracalClient(home=...)``. Each method is one call into the
library (registries, :class:`Enforcer`, :class:`Meter`), with no extra layer on the hot path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from caracal.core.enforcement import (
    Decision,
    Enforcer,
    Hold,
    PolicyStatus,
    Settlement,
)
from caracal.core.identity import Agent
from caracal.core.ledger import LedgerEvent
from caracal.core.metering import Meter
from caracal.core.policy import Policy
from caracal.core.pricebook import Price
from caracal.core.windows import policy_window
from caracal.exceptions import ConfigurationError
from caracal.sdk.client import CaracalClient
from caracal.storage.home import EmbeddedHome


class EmbeddedClient(CaracalClient):
    """:class:`CaracalClient` on a local home. ``clock`` (the current time) is for tests and tools."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        clock: Callable[[], datetime] | None = None,
        timeout: float | None = None,
    ):
        if base_url is not None or api_key is not None:
            raise ConfigurationError(
                "base_url and api_key are for the remote client: use CaracalClient(base_url=..., api_key=...)"
            )
        if timeout is not None:
            raise ConfigurationError(
                "timeout is for the remote client; the embedded client's lock timeout is [ledger] "
                "lock_timeout in the home's config.toml"
            )
        self._home = EmbeddedHome(Path(home) if home is not None else None)
        self._clock = clock
        self._enforcer: Enforcer | None = None
        self._meter: Meter | None = None

    # ------------------------------------------------------------------ wiring

    @property
    def home(self) -> EmbeddedHome:
        return self._home

    @property
    def enforcer(self) -> Enforcer:
        enforcer = self._enforcer
        if enforcer is None:
            enforcer = self._enforcer = Enforcer(
                self._home.writer(),
                self._home.directory,
                clock=self._clock,
                on_over_hold=self._home.over_hold,
                idempotency_window=self._home.idempotency_window,
            )
        return enforcer

    @property
    def meter(self) -> Meter:
        if self._meter is None:
            self._meter = Meter(self.enforcer, self._home.prices.pricebook)
        return self._meter

    def close(self) -> None:
        if self._enforcer is not None:
            self._enforcer.close()
        self._home.close()
        self._enforcer = None
        self._meter = None

    # ------------------------------------------------------------------ identity, policies, prices

    def register_agent(
        self, name: str, owner: str, parent: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Agent:
        return self._home.agents.register(name, owner, parent, metadata)

    def get_agent(self, agent: str) -> Agent:
        return self._home.agents.get(agent)

    def create_policy(
        self,
        agent_id: str,
        limit: object,
        window: str | None = None,
        *,
        currency: str = "USD",
        timezone: str = "UTC",
        rolling: str | None = None,
    ) -> Policy:
        agent = self._home.agents.get(agent_id)
        return self._home.policies.create(
            agent.agent_id, limit, policy_window(window, rolling, timezone), currency
        )

    def set_price(self, resource_type: str, unit_price: object, currency: str = "USD") -> Price:
        return self._home.prices.set(resource_type, unit_price, currency)

    # ------------------------------------------------------------------ enforcement

    def check(self, agent_id: str, amount: object | None = None, currency: str = "USD") -> Decision:
        return (self._enforcer or self.enforcer).check(agent_id, amount, currency)

    def reserve(
        self,
        agent_id: str,
        amount: object,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
        *,
        on_expiry: str = "release",
    ) -> Hold:
        ttl = self._home.settings.default_ttl if ttl is None else ttl
        return (self._enforcer or self.enforcer).reserve(agent_id, amount, currency, ttl, on_expiry=on_expiry)

    def settle(self, hold: Hold | str, charges: list[Mapping[str, Any]] | None = None) -> Settlement:
        return self.enforcer.settle(hold.hold_id if isinstance(hold, Hold) else hold, charges or [])

    def release(self, hold: Hold | str) -> bool:
        return self.enforcer.release(hold.hold_id if isinstance(hold, Hold) else hold)

    def budget_status(self, agent_id: str) -> list[PolicyStatus]:
        return self.enforcer.status(agent_id)

    # ------------------------------------------------------------------ metering

    def _emit(
        self,
        agent_id: str,
        resource_type: str,
        quantity: object,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
        timestamp: datetime | str | None,
        hold_id: str | None,
    ) -> LedgerEvent:
        return self.meter.emit(
            agent_id, resource_type, quantity, metadata, idempotency_key, timestamp, hold_id
        )

    def _default_estimate(self) -> Decimal | None:
        """The home's ``[sdk] default_estimate`` (config.toml), or None."""
        return self._home.settings.default_estimate

    def _agent_id_of(self, agent: str) -> str | None:
        return self._home.agents.get(agent).agent_id


__all__ = ["EmbeddedClient"]
