"""``CaracalClient.reserve(..., metadata=...)``: recorded on the hold entry, the same on both transports;
bad metadata is refused and nothing is held."""

from __future__ import annotations

import pytest

from caracal.core.ledger import LedgerReader
from caracal.exceptions import CaracalError
from caracal.sdk.client import CaracalClient
from tests.sdk.conftest import Transport


def test_a_holds_metadata_is_recorded_on_its_entry(sdk: Transport, client: CaracalClient) -> None:
    hold = client.reserve("my-agent", "0.20", 60, metadata={"tool": "search", "units_bound": 50})
    plain = client.reserve("my-agent", "0.10", 60)
    entries = {e.hold_id: e for e in LedgerReader(sdk.ledger) if e.kind == "hold"}
    assert entries[hold.hold_id].metadata == {"tool": "search", "units_bound": 50}
    assert entries[plain.hold_id].metadata is None
    client.release(hold)
    client.release(plain)


def test_metadata_that_is_not_an_object_is_refused_and_nothing_is_held(
    sdk: Transport, client: CaracalClient
) -> None:
    with pytest.raises(CaracalError):
        client.reserve("my-agent", "0.20", 60, metadata=["not", "an", "object"])  # type: ignore[arg-type]
    assert [e for e in LedgerReader(sdk.ledger) if e.kind == "hold"] == []
