"""``CaracalClient.price_of``: the price in effect now, the same on both transports (embedded: the home's
pricebook; remote: ``GET /api/v1/prices/{resource}``). Unknown prices are refused, never zero."""

from __future__ import annotations

from decimal import Decimal

import pytest

from caracal.exceptions import InvalidPriceError, UnknownPriceError
from caracal.sdk.client import CaracalClient
from tests.sdk.conftest import Transport


def test_price_of_is_the_latest_price_with_its_exact_digits(client: CaracalClient) -> None:
    price = client.price_of("tool.search.calls")
    assert price.unit_price == Decimal("0.10") and str(price.unit_price) == "0.10"
    assert price.currency == "USD"
    client.set_price("tool.search.calls", "0.1250", "EUR")
    price = client.price_of("tool.search.calls")
    assert str(price.unit_price) == "0.1250" and price.currency == "EUR"


def test_price_of_refuses_what_has_no_price(client: CaracalClient) -> None:
    with pytest.raises(UnknownPriceError, match=r"mcp\.files\.search\.calls"):
        client.price_of("mcp.files.search.calls")
    with pytest.raises(InvalidPriceError):
        client.price_of("bad\nname")


def test_an_agent_key_may_read_prices(sdk: Transport, client: CaracalClient) -> None:
    if not sdk.remote:
        pytest.skip("agent keys are for the remote client")
    service = sdk.service
    assert service is not None
    agent_id = client.get_agent("my-agent").agent_id
    _key, token = service.keys.create("agent", agent_id, "reader")
    agent_client = sdk.client(api_key=token)
    assert agent_client.price_of("tool.search.calls").unit_price == Decimal("0.10")
