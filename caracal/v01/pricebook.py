"""Caracal Core v0.1's pricebook API (``caracal.core.pricebook.Pricebook(csv_path)`` and ``PriceEntry``),
as a thin layer over our price registry (:class:`caracal.storage.prices.PriceRegistry`).

The file is v0.1's CSV (:class:`~caracal.v01.documents.PriceCsvCodec`); versions, validation, locking and
backups are the registry's, and a price is looked up by our :class:`~caracal.core.pricebook.Pricebook`.
A new price takes effect when it is set: charges already recorded keep the price of their time.

Where v0.1 differs, ours holds: **a resource without a price is refused** (:class:`UnknownPriceError`, v0.1's
``ResourceNotFoundError``), never priced at zero, and LLM resources without a price of yours get the
bundled ``genai-prices`` figure, as everywhere in Caracal. v0.1's own input rules are kept for its API:
a price is non-negative with at most 6 decimal places.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from caracal.core.pricebook import Price, decimal_text
from caracal.core.pricebook import Pricebook as Book
from caracal.core.validation import format_timestamp, parse_amount
from caracal.exceptions import InvalidPriceError, PricebookError
from caracal.storage.jsonfile import JsonDocument
from caracal.storage.prices import PriceRegistry, empty_prices
from caracal.v01.documents import PriceCsvCodec

MAX_DECIMALS = 6


@dataclass(frozen=True)
class PriceEntry:
    """One resource's price as v0.1 showed it; ``price_per_unit`` is an exact Decimal."""

    resource_type: str
    price_per_unit: Decimal
    currency: str
    updated_at: str

    def to_dict(self) -> dict[str, str]:
        return {
            "resource_type": self.resource_type,
            "price_per_unit": decimal_text(self.price_per_unit),
            "currency": self.currency,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceEntry:
        try:
            return cls(
                resource_type=str(data["resource_type"]),
                price_per_unit=parse_amount(data["price_per_unit"], "price_per_unit", InvalidPriceError),
                currency=str(data.get("currency", "USD")),
                updated_at=str(data.get("updated_at", "")),
            )
        except KeyError as exc:
            raise InvalidPriceError(f"a price entry is missing {exc.args[0]!r}") from None

    @classmethod
    def of(cls, price: Price) -> PriceEntry:
        return cls(
            price.resource_type, price.unit_price, price.currency, format_timestamp(price.effective_from)
        )


def check_v01_price(value: object, resource_type: str = "") -> Decimal:
    """v0.1's price rules: a number (never a float), non-negative, at most 6 decimal places."""
    where = f" for {resource_type}" if resource_type else ""
    if isinstance(value, (str, int, Decimal)) and not isinstance(value, bool):
        try:
            price = Decimal(str(value).strip())
        except ArithmeticError:
            raise InvalidPriceError(f"Invalid price{where}: {value!r} is not a number") from None
    else:
        raise InvalidPriceError(f"Invalid price{where}: give a Decimal or a numeric string, got {value!r}")
    if not price.is_finite():
        raise InvalidPriceError(f"Invalid price{where}: {value!r} is not a finite number")
    if price < 0:
        raise InvalidPriceError(f"Price{where} must be non-negative, got {value}")
    if -price.as_tuple().exponent > MAX_DECIMALS:  # type: ignore[operator]
        raise InvalidPriceError(f"Price{where} must have at most {MAX_DECIMALS} decimal places, got {value}")
    return price


class CsvPricebook:
    """v0.1's ``Pricebook(csv_path, backup_count=3)`` over our registry (:attr:`registry`). A file that
    does not load raises :class:`PricebookLoadError` here, as in v0.1."""

    def __init__(
        self, csv_path: str | os.PathLike[str], backup_count: int = 3, *, use_llm_prices: bool = True
    ):
        self.csv_path = Path(csv_path)
        self.backup_count = backup_count
        document = JsonDocument(
            self.csv_path, default=empty_prices, backup_count=backup_count, codec=PriceCsvCodec()
        )
        self.registry = PriceRegistry(document, use_llm_prices=use_llm_prices)
        self.registry.pricebook()  # load and check the file now

    def book(self) -> Book:
        """Our pricebook of this file's prices (what metering prices with)."""
        return self.registry.pricebook()

    def get_price(self, resource_type: str) -> Decimal:
        """One unit's price now; :class:`UnknownPriceError` when there is none (v0.1 said 0)."""
        return self.book().price_of(resource_type, datetime.now(timezone.utc)).unit_price

    def set_price(
        self, resource_type: str, price_per_unit: Decimal | str | int, currency: str = "USD"
    ) -> PriceEntry:
        """A new price for ``resource_type``, in effect from now."""
        price = check_v01_price(price_per_unit, resource_type)
        return PriceEntry.of(self.registry.set(resource_type, price, currency))

    def get_all_prices(self) -> dict[str, PriceEntry]:
        """Each resource's price in effect now (a new dict each call)."""
        now = datetime.now(timezone.utc)
        latest: dict[str, PriceEntry] = {}
        for price in self.registry.history():
            if price.effective_from <= now:
                latest[price.resource_type] = PriceEntry.of(price)
        return latest

    def import_from_json(self, data: Mapping[str, Any]) -> list[PriceEntry]:
        """``{resource: {"price": "0.01", "currency": "USD"}}`` (or just ``{resource: "0.01"}``, in USD): all
        prices or none."""
        if not isinstance(data, Mapping):
            raise PricebookError(
                f"import_from_json takes a mapping of resource -> price, got {type(data).__name__}"
            )
        now = datetime.now(timezone.utc)
        prices = []
        for resource_type, item in data.items():
            if isinstance(item, (str, int, Decimal)) and not isinstance(item, bool):
                item = {"price": item}
            if not isinstance(item, Mapping) or "price" not in item:
                raise PricebookError(f'{resource_type}: missing \'price\' (give {{"price": "0.01"}})')
            amount = check_v01_price(item["price"], str(resource_type))
            prices.append(Price(str(resource_type), amount, str(item.get("currency", "USD")), now))
        return [PriceEntry.of(price) for price in self.registry.add(prices)]


__all__ = ["CsvPricebook", "PriceEntry", "check_v01_price"]
