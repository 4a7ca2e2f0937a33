"""``reserve(..., on_expiry="charge")`` through both transports: the hold keeps counting after its TTL and the
next write bills what is left of it, marked estimated; a bad value is refused before anything is held."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from caracal.core.enforcement import ESTIMATED_RESOURCE
from caracal.core.ledger import LedgerQuery
from caracal.exceptions import InvalidAmountError
from caracal.sdk.client import CaracalClient
from tests.sdk.conftest import Transport


def test_a_charge_on_expiry_hold_is_billed_at_its_bound(sdk: Transport, client: CaracalClient) -> None:
    hold = client.reserve("my-agent", "0.40", ttl=1, on_expiry="charge")
    assert hold.on_expiry == "charge"
    time.sleep(1.2)  # past the TTL (what is asserted is the ledger, not the time)
    assert client.check("my-agent").remaining == Decimal("0.60")  # still counting: never freed
    client.reserve("my-agent", "0.10", ttl=60)  # the next write bills it first
    charges = LedgerQuery(sdk.ledger).get_events(charges_only=True)
    assert [(e.resource_type, e.cost, e.hold_id) for e in charges] == [
        (ESTIMATED_RESOURCE, Decimal("0.40"), hold.hold_id)
    ]
    assert charges[0].metadata is not None and charges[0].metadata["estimated"] is True


def test_a_bad_on_expiry_is_refused(sdk: Transport, client: CaracalClient) -> None:
    with pytest.raises(InvalidAmountError, match="on_expiry"):
        client.reserve("my-agent", "0.10", on_expiry="refund")
    assert LedgerQuery(sdk.ledger).get_events() == []
