"""Metering: "agent X used Q of resource R" becomes an exact cost and one ledger charge.

- The cost is ``quantity x unit price`` from the pricebook as of the charge's time, exactly (no rounding).
  A resource without a price is refused (:class:`UnknownPriceError`), never recorded at zero.
- **Idempotency.** A charge may carry an idempotency key. The check and the append happen in one
  :meth:`LedgerWriter.transact`, so two processes retrying the same key at once record one charge: the same
  key with the same payload returns the charge already recorded; with a different payload it is an
  :class:`IdempotencyConflictError`. Keys are remembered for the enforcer's idempotency window (7 days by
  default, ``[metering] idempotency_window``), measured on the ledger's time: **a retry after the window
  is recorded as a new charge.** Memory and the budget snapshot then hold one window's keys, not history.
- **Time.** A charge is recorded, priced and counted at the moment Caracal receives it. A timestamp the
  client supplies is kept as ``metadata.occurred_at`` only: backdating can neither move spend out of the
  current window nor pick an older, cheaper price.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from caracal.core.enforcement import Enforcer, Operation
from caracal.core.ledger import LedgerEvent
from caracal.core.pricebook import Pricebook
from caracal.core.validation import (
    check_identifier,
    check_metadata,
    format_timestamp,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import IdempotencyConflictError, InvalidMeteringEventError


class Meter:
    """Prices usage and records it, through the enforcer's ledger writer and live state."""

    def __init__(self, enforcer: Enforcer, pricebook: Callable[[], Pricebook]):
        self.enforcer = enforcer
        self._pricebook = pricebook

    def emit(
        self,
        agent: str,
        resource_type: str,
        quantity: object,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timestamp: datetime | str | None = None,
        hold_id: str | None = None,
    ) -> LedgerEvent:
        """Record one charge (against ``hold_id`` when given) and return it; see the module docstring."""
        return self.enforcer.run(
            self.emit_op(agent, resource_type, quantity, metadata, idempotency_key, timestamp, hold_id)
        )

    def emit_op(
        self,
        agent: str,
        resource_type: str,
        quantity: object,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timestamp: datetime | str | None = None,
        hold_id: str | None = None,
    ) -> Operation[LedgerEvent]:
        """:meth:`emit` as an :class:`Operation` (input validated and priced now, recorded when it runs)."""
        error = InvalidMeteringEventError
        check_identifier(resource_type, "resource_type", error)
        amount = parse_amount(quantity, "quantity", error)
        meta = dict(check_metadata(metadata, error) or {})
        if idempotency_key is not None:
            check_identifier(idempotency_key, "idempotency_key", error)
        now = self.enforcer.now()
        occurred = now if timestamp is None else parse_timestamp(timestamp, "timestamp", error)
        if timestamp is not None:
            meta["occurred_at"] = format_timestamp(occurred)
        agent_id = self.enforcer.directory.agent_id(agent)
        cost, price = self._pricebook().cost(resource_type, amount, now)
        item: dict[str, Any] = {
            "agent_id": agent_id,
            "resource_type": resource_type,
            "quantity": amount,
            "cost": cost,
            "currency": price.currency,
            "metadata": meta or None,
            "idempotency_key": idempotency_key,
        }
        payload = (agent_id, resource_type, amount, hold_id)
        found: list[LedgerEvent] = []

        def duplicate() -> LedgerEvent | None:
            if idempotency_key is None:
                return None
            earlier = self.enforcer.decided_state.charge_with_key(idempotency_key, self.enforcer.now())
            if earlier is None:
                return None
            if (earlier.agent_id, earlier.resource_type, earlier.quantity, earlier.hold_id) != payload:
                raise IdempotencyConflictError(
                    f"idempotency key {idempotency_key!r} was already used for a different charge (event "
                    f"{earlier.event_id}: {earlier.quantity} of {earlier.resource_type} by agent "
                    f"{earlier.agent_id})"
                )
            return earlier

        def finish(events: list[LedgerEvent]) -> LedgerEvent:
            return found[0] if found else events[0]

        if hold_id is not None:
            held = self.enforcer.charge_op(hold_id, item, before=duplicate, found=found)
            return Operation(held.decide, finish)

        def decide() -> list[Mapping[str, Any]] | None:
            earlier = duplicate()
            if earlier is not None:
                found.append(earlier)
                return None
            return [{**item, "timestamp": self.enforcer.now()}]

        return Operation(decide, finish)


__all__ = ["Meter"]


def __getattr__(name: str) -> object:
    """Caracal Core v0.1's names for this module, loaded from :mod:`caracal.v01` on first use (they are
    adapters over the storage layer, which this module never imports)."""
    from caracal.v01 import load

    return load(__name__, name)
