"""Money for LLM calls: the hold before forwarding and the charges after (pure: takes a Pricebook).

Prices are looked up as ``<provider>.<model>.<kind>`` (see :mod:`caracal.core.pricebook`); an unknown price
raises :class:`~caracal.exceptions.UnknownPriceError` (fail closed: a call that cannot be priced is not
forwarded, and nothing is ever priced at zero for lack of a price). Amounts are exact Decimals
(``quantity * unit_price`` with :func:`~caracal.core.pricebook.multiply_exactly`, never rounded), and every
component of one hold or one settlement must be in one currency (else
:class:`~caracal.exceptions.PricingError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from caracal.core.money import add
from caracal.core.pricebook import Price, Pricebook, multiply_exactly
from caracal.exceptions import PricingError, UnknownPriceError
from caracal.server.gateway.estimate import Bound
from caracal.server.gateway.usage import Usage

__all__ = ["hold_amount", "resource_name", "usage_charges"]

_KINDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")


def resource_name(provider: str, model: str, kind: str) -> str:
    """The pricebook resource of one token kind of a model: ``<provider>.<model>.<kind>``."""
    return f"{provider}.{model}.{kind}"


def _same_currency(prices: list[Price], expected: str | None) -> str:
    currency = expected if expected is not None else prices[0].currency
    for price in prices:
        if price.currency != currency:
            raise PricingError(
                f"{price.resource_type} is priced in {price.currency} but this call is in {currency}: "
                f"all prices of one model must share one currency"
            )
    return currency


def hold_amount(
    pricebook: Pricebook, provider: str, model: str, bound: Bound, at: datetime
) -> tuple[Decimal, str]:
    """The worst-case cost of a call whose tokens are within ``bound``, and its currency.

    ``input_tokens x max(input price, cache-write price)`` (a prompt may be billed as a cache write, the
    dearest way to read it; a cache read is never dearer than uncached input) ``+ output_tokens x output
    price``. An unknown input or output price raises :class:`UnknownPriceError`; a model without a
    cache-write price is held at its input price. A zero output bound (embeddings) needs no output price.
    """
    input_price = pricebook.price_of(resource_name(provider, model, "input_tokens"), at)
    prices = [input_price]
    try:
        write_price: Price | None = pricebook.price_of(
            resource_name(provider, model, "cache_write_tokens"), at
        )
    except UnknownPriceError:
        write_price = None
    if write_price is not None:
        prices.append(write_price)
    output_price: Price | None = None
    if bound.output_tokens:
        output_price = pricebook.price_of(resource_name(provider, model, "output_tokens"), at)
        prices.append(output_price)
    currency = _same_currency(prices, None)
    unit = input_price.unit_price
    if write_price is not None and write_price.unit_price > unit:
        unit = write_price.unit_price
    amount = multiply_exactly(Decimal(bound.input_tokens), unit)
    if output_price is not None:
        amount = add(amount, multiply_exactly(Decimal(bound.output_tokens), output_price.unit_price))
    return amount, currency


def usage_charges(
    pricebook: Pricebook,
    provider: str,
    model: str,
    usage: Usage,
    at: datetime,
    metadata: Mapping[str, Any] | None = None,
    *,
    currency: str | None = None,
) -> list[dict[str, Any]]:
    """The charges of a call that consumed ``usage``: one item per token kind with a nonzero count, in the
    order input, cache read, cache write, output, each ``{"resource_type", "quantity", "cost", "metadata"}``
    (the shape :meth:`~caracal.core.enforcement.Enforcer.settle` takes).

    - A call that consumed nothing still yields one zero-quantity, zero-cost ``input_tokens`` charge, so
      every forwarded call stays on record in the ledger (and its hold is settled, not silently released).
    - Each item's metadata is ``metadata`` plus ``"estimated": True`` when ``usage`` is a bound billed in
      place of a missing report (see :func:`~caracal.server.gateway.usage.billable`), and
      ``"response_model"`` when the provider answered with a model name other than ``model``.
    - Prices are those of ``model`` (the one the hold was priced with) at ``at``. An unknown price raises
      :class:`UnknownPriceError`; a price in another currency than ``currency`` (when given: the hold's) or
      than the other items raises :class:`PricingError`.
    """
    counts = {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
    }
    for kind, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PricingError(f"usage {kind} must be a non-negative integer, got {count!r}")
    kinds = [kind for kind in _KINDS if counts[kind]] or ["input_tokens"]
    extra: dict[str, Any] = dict(metadata or {})
    if usage.estimated:
        extra["estimated"] = True
    if usage.model is not None and usage.model != model:
        extra["response_model"] = usage.model
    prices = [pricebook.price_of(resource_name(provider, model, kind), at) for kind in kinds]
    _same_currency(prices, currency)
    charges: list[dict[str, Any]] = []
    for kind, price in zip(kinds, prices, strict=True):
        quantity = Decimal(counts[kind])
        charges.append(
            {
                "resource_type": price.resource_type,
                "quantity": quantity,
                "cost": multiply_exactly(quantity, price.unit_price),
                "metadata": dict(extra) if extra else None,
            }
        )
    return charges
