"""The embedded transport: :class:`CaracalClient` working directly on a local Caracal home.

Used by ``CaracalClient()`` or ``CaracalClient(home=...)``. Each method is one call into the library
(registries, :class:`Enforcer`, :class:`Meter`), with no extra layer on the hot path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from caracal.core.enforcement import Decision, Enforcer, Hold, PolicyStatus, Settlement
from caracal.core.identity import Agent
from caracal.core.ledger import LedgerEvent
from caracal.core.metering import Meter
from caracal.core.policy import Policy
from caracal.core.pricebook import Price
from caracal.core.windows import policy_window
from caracal.sdk.transport import Usage
from caracal.storage.home import EmbeddedHome


class EmbeddedTransport:
    """The :class:`~caracal.sdk.transport.Transport` on a local home. ``clock`` (the current time) is for
    tests and tools. The enforcer and meter are opened on first use."""

    def __init__(
        self, home: str | os.PathLike[str] | None = None, clock: Callable[[], datetime] | None = None
    ):
        self.home = EmbeddedHome(Path(home) if home is not None else None)
        self._clock = clock
        self._enforcer: Enforcer | None = None
        self._meter: Meter | None = None

    @classmethod
    def on(cls, home: Any, clock: Callable[[], datetime] | None = None) -> EmbeddedTransport:
        """The transport on an opened home-like object (a :class:`caracal.v01.home.V01Home`: the files a
        Caracal Core v0.1 configuration names) instead of a home folder."""
        transport = cls.__new__(cls)
        transport.home = home
        transport._clock = clock
        transport._enforcer = None
        transport._meter = None
        return transport

    @property
    def enforcer(self) -> Enforcer:
        enforcer = self._enforcer
        if enforcer is None:
            enforcer = self._enforcer = self.home.enforcer(self._clock)
        return enforcer

    @property
    def meter(self) -> Meter:
        if self._meter is None:
            self._meter = Meter(self.enforcer, self.home.prices.pricebook)
        return self._meter

    def close(self) -> None:
        """Save the budget snapshot (see :meth:`Enforcer.close`: it does not raise for the ledger) and close
        the home."""
        try:
            if self._enforcer is not None:
                self._enforcer.close()
        finally:
            self.home.close()
            self._enforcer = None
            self._meter = None

    # ------------------------------------------------------------------ identity, policies, prices

    def register_agent(
        self, name: str, owner: str, parent: str | None, metadata: dict[str, Any] | None
    ) -> Agent:
        return self.home.agents.register(name, owner, parent, metadata)

    def get_agent(self, agent: str) -> Agent:
        return self.home.agents.get(agent)

    def create_policy(
        self, agent: str, limit: object, window: str | None, rolling: str | None, currency: str, timezone: str
    ) -> Policy:
        agent_id = self.home.agents.get(agent).agent_id
        return self.home.policies.create(agent_id, limit, policy_window(window, rolling, timezone), currency)

    def set_price(self, resource_type: str, unit_price: object, currency: str) -> Price:
        return self.home.prices.set(resource_type, unit_price, currency)

    def price_of(self, resource_type: str) -> Price:
        return self.home.prices.pricebook().price_of(resource_type, self.enforcer.now())

    # ------------------------------------------------------------------ enforcement

    def check(self, agent: str, amount: object | None, currency: str) -> Decision:
        return (self._enforcer or self.enforcer).check(agent, amount, currency)

    def reserve(
        self,
        agent: str,
        amount: object,
        ttl: timedelta | float | None,
        currency: str,
        on_expiry: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> Hold:
        ttl = self.home.settings.default_ttl if ttl is None else ttl
        return (self._enforcer or self.enforcer).reserve(
            agent, amount, currency, ttl, on_expiry=on_expiry, metadata=metadata
        )

    def settle(self, hold_id: str, charges: list[Mapping[str, Any]]) -> Settlement:
        return self.enforcer.settle(hold_id, charges)

    def release(self, hold_id: str) -> bool:
        return self.enforcer.release(hold_id)

    def budget_status(self, agent: str) -> list[PolicyStatus]:
        return self.enforcer.status(agent)

    # ------------------------------------------------------------------ metering

    def emit(self, usage: Usage) -> LedgerEvent:
        return self.meter.emit(
            usage.agent,
            usage.resource_type,
            usage.quantity,
            usage.metadata,
            usage.idempotency_key,
            usage.timestamp,
            usage.hold_id,
        )

    def agent_id_of(self, agent: str) -> str | None:
        return self.home.agents.get(agent).agent_id

    def default_estimate(self) -> Decimal | None:
        """The home's ``[sdk] default_estimate`` (config.toml), or None."""
        return self.home.settings.default_estimate


__all__ = ["EmbeddedTransport"]
