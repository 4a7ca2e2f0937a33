"""The transport interface of :class:`~caracal.sdk.client.CaracalClient`: where its calls are carried out.

:class:`~caracal.sdk.client.CaracalClient` holds every public method once (signature, defaults, docstring,
budget blocks); a transport only does the work, one method per operation, with every argument given:

- :class:`caracal.sdk.embedded.EmbeddedTransport`: one call into the library on a local home (registries,
  :class:`~caracal.core.enforcement.Enforcer`, :class:`~caracal.core.metering.Meter`).
- :class:`caracal.sdk.remote.HttpTransport`: one request to the HTTP API of ``caracal serve`` (httpx).

A transport returns the same types and raises the same :class:`~caracal.exceptions.CaracalError`\\ s
whichever it is; a test can hand ``CaracalClient(transport=...)`` its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from caracal.core.enforcement import Decision, Hold, PolicyStatus, Settlement
from caracal.core.identity import Agent
from caracal.core.ledger import LedgerEvent
from caracal.core.policy import Policy
from caracal.core.pricebook import Price


@dataclass(frozen=True, slots=True)
class Usage:
    """One ``emit_event`` as the transport receives it: unchecked (the transport checks it) and, inside a
    ``budget_check`` block of the same agent, with the block's ``hold_id``."""

    agent: str
    resource_type: str
    quantity: object
    metadata: Mapping[str, Any] | None
    idempotency_key: str | None
    timestamp: datetime | str | None
    hold_id: str | None


class Transport(Protocol):
    """What a :class:`~caracal.sdk.client.CaracalClient` needs from where it runs. Agents are given as a
    name or an id; a hold as its id."""

    def register_agent(
        self, name: str, owner: str, parent: str | None, metadata: dict[str, Any] | None
    ) -> Agent: ...

    def get_agent(self, agent: str) -> Agent: ...

    def create_policy(
        self, agent: str, limit: object, window: str | None, rolling: str | None, currency: str, timezone: str
    ) -> Policy: ...

    def set_price(self, resource_type: str, unit_price: object, currency: str) -> Price: ...

    def price_of(self, resource_type: str) -> Price:
        """The price of one unit of ``resource_type`` in effect now (:class:`UnknownPriceError` if none)."""
        ...

    def check(self, agent: str, amount: object | None, currency: str) -> Decision: ...

    def reserve(
        self,
        agent: str,
        amount: object,
        ttl: timedelta | float | None,
        currency: str,
        on_expiry: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> Hold:
        """``ttl`` None: the home's ``[holds] default_ttl`` (the server's, for the HTTP transport).
        ``metadata`` is recorded on the hold entry (the client passes it only when given)."""
        ...

    def settle(self, hold_id: str, charges: list[Mapping[str, Any]]) -> Settlement: ...

    def release(self, hold_id: str) -> bool: ...

    def budget_status(self, agent: str) -> list[PolicyStatus]: ...

    def emit(self, usage: Usage) -> LedgerEvent:
        """Price and record ``usage`` (against its hold, if it names one)."""
        ...

    def agent_id_of(self, agent: str) -> str | None:
        """The id of ``agent`` (a name or an id), for matching it with an open block; None if unknown."""
        ...

    def default_estimate(self) -> Decimal | None:
        """What ``budget_check`` reserves when given no estimate (None: it only checks)."""
        ...

    def close(self) -> None:
        """Free what the transport holds (files, connections); it opens them again if used again."""
        ...


__all__ = ["Transport", "Usage"]
