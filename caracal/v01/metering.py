"""Caracal Core v0.1's metering API (``caracal.core.metering.MeteringEvent`` and ``MeteringCollector``),
as a thin layer over our :class:`~caracal.core.metering.Meter`.

:meth:`MeteringCollector.collect_event` is :meth:`Meter.emit`: the cost is ``quantity x unit price`` exactly,
from the pricebook as of now; a resource without a price is refused (:class:`UnknownPriceError`), never
recorded at zero as in v0.1; the charge goes through our enforcer's atomic append. A timestamp on the
event is kept as ``metadata.occurred_at``: a charge is recorded and counted when it arrives, so backdating
cannot move spend out of the current budget window.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from caracal.core.ledger import LedgerEvent, LedgerWriter
from caracal.core.pricebook import Pricebook
from caracal.exceptions import InvalidMeteringEventError

if TYPE_CHECKING:
    from caracal.core.metering import Meter
    from caracal.v01.pricebook import CsvPricebook


@dataclass(frozen=True)
class MeteringEvent:
    """One usage report: ``quantity`` of ``resource_type`` used by ``agent_id`` (checked when collected)."""

    agent_id: str
    resource_type: str
    quantity: Decimal | int | str
    timestamp: datetime | str | None = None
    metadata: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "resource_type": self.resource_type,
            "quantity": str(self.quantity),
            "timestamp": self.timestamp.isoformat()
            if isinstance(self.timestamp, datetime)
            else self.timestamp,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
        }


class MeteringCollector:
    """v0.1's ``MeteringCollector(pricebook, ledger_writer)``: prices events with ``pricebook`` (v0.1's CSV
    pricebook or ours) and records them on ``ledger_writer``'s ledger."""

    def __init__(self, pricebook: CsvPricebook | Pricebook, ledger_writer: LedgerWriter):
        self.pricebook = pricebook
        self.ledger_writer = ledger_writer
        self._meter: Meter | None = None
        self._lock = threading.Lock()

    def _book(self) -> Pricebook:
        book = self.pricebook
        return book if isinstance(book, Pricebook) else book.book()

    @property
    def meter(self) -> Meter:
        with self._lock:
            if self._meter is None:
                from caracal.core.enforcement import Enforcer
                from caracal.core.metering import Meter
                from caracal.v01.policy import StoreDirectory

                directory = StoreDirectory(_NO_POLICIES(), None)
                self._meter = Meter(Enforcer(self.ledger_writer, directory), self._book)
            return self._meter

    def collect_event(self, event: MeteringEvent) -> LedgerEvent:
        """Price and record one event; returns the ledger event (v0.1 returned nothing)."""
        if not isinstance(event, MeteringEvent):
            raise InvalidMeteringEventError(
                f"collect_event takes a MeteringEvent, got {type(event).__name__}"
            )
        return self.meter.emit(
            event.agent_id,
            event.resource_type,
            event.quantity,
            dict(event.metadata) if event.metadata else None,
            timestamp=event.timestamp,
        )


def _NO_POLICIES() -> Any:
    """A policy registry with no policy: metering records charges, it does not decide budgets."""
    from caracal.storage.policies import PolicyRegistry, empty_policies

    return PolicyRegistry(_Empty(empty_policies()))


class _Empty:
    """An in-memory, never-written document (see :func:`_NO_POLICIES`)."""

    label = "<no policies>"

    def __init__(self, document: dict[str, Any]):
        self._document = document

    def read(self) -> dict[str, Any]:
        return dict(self._document)

    def read_cached(self, parse: Any) -> Any:
        return parse(self._document)

    def transaction(self) -> Any:
        raise InvalidMeteringEventError("metering does not change policies")


__all__ = ["MeteringCollector", "MeteringEvent"]
