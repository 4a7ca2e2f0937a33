"""``caracal --config FILE pricebook list|get|set|import``: v0.1's price commands on our price registry,
kept in the configuration's pricebook CSV (``resource_type,price_per_unit,currency,updated_at``).

Every price is a new version in effect from the moment it is set; charges already recorded keep the price
of their time. v0.1's input rules hold for its commands (non-negative, at most 6 decimal places, never a
float). Where v0.1 said a resource without a price costs 0, ours refuses to charge it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from caracal.cli.render import emit_json
from caracal.cli.v01.common import columns, fail, format_option, plain_time, session, v01_errors
from caracal.cli.v01_params import validate_currency
from caracal.exceptions import InvalidPriceError, PricebookError
from caracal.v01.pricebook import check_v01_price


@click.group("pricebook")
def pricebook_group() -> None:
    """Manage resource prices: the price per unit of each resource type."""


@pricebook_group.command("list")
@format_option
@v01_errors
def list_command(as_json: bool) -> None:
    """List all resource prices in the pricebook (those in effect now)."""
    prices = session().home().pricebook.get_all_prices()
    if not prices:
        click.echo("No prices in pricebook.")
        return
    if as_json:
        emit_json({resource: entry.to_dict() for resource, entry in sorted(prices.items())})
        return
    entries = [prices[resource].to_dict() for resource in sorted(prices)]
    click.echo(f"Total resources: {len(entries)}\n")
    columns(
        ("Resource Type", "Price/Unit", "Currency", "Last Updated"),
        [
            (e["resource_type"], e["price_per_unit"], e["currency"], plain_time(e["updated_at"]))
            for e in entries
        ],
        right=(1,),
    )


@pricebook_group.command("get")
@click.option("--resource", "-r", required=True, help="Resource type to show the price of.")
@format_option
@v01_errors
def get_command(resource: str, as_json: bool) -> None:
    """Get the price of a specific resource type."""
    entry = session().home().pricebook.get_all_prices().get(resource)
    if entry is None:
        fail(
            f"Resource '{resource}' not found in pricebook. Charges for it are refused until it has a "
            f"price: caracal --config FILE pricebook set --resource {resource} --price <price>"
        )
        return
    data = entry.to_dict()
    if as_json:
        emit_json(data)
        return
    click.echo("Resource Price Details")
    click.echo("=" * 50)
    click.echo(f"Resource:      {data['resource_type']}")
    click.echo(f"Price:         {data['price_per_unit']} {data['currency']} per unit")
    click.echo(f"Last Updated:  {data['updated_at']}")


def _currency(value: str) -> str:
    try:
        return validate_currency(None, None, value) or "USD"
    except click.BadParameter as exc:
        raise InvalidPriceError(f"currency {exc.message}") from None


@pricebook_group.command("set")
@click.option("--resource", "-r", required=True, help="Resource type to price.")
@click.option("--price", "-p", required=True, help="Price per unit, written exactly (e.g. 0.000030).")
@click.option("--currency", "-c", default="USD", show_default=True, help="ISO 4217 currency code.")
@v01_errors
def set_command(resource: str, price: str, currency: str) -> None:
    """Set or update the price of a resource type (a new version, in effect from now)."""
    resource = resource.strip()
    if not resource:
        raise InvalidPriceError("Resource type cannot be empty")
    amount = check_v01_price(price, resource)
    code = _currency(currency)
    pricebook = session().home().pricebook
    updated = resource in pricebook.get_all_prices()
    entry = pricebook.set_price(resource, amount, code).to_dict()
    click.echo(f"✓ Price {'updated' if updated else 'set'} successfully!\n")
    click.echo(f"Resource:  {entry['resource_type']}")
    click.echo(f"Price:     {entry['price_per_unit']} {entry['currency']} per unit")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a price")


def _read_import(file: Path) -> dict[str, Any]:
    try:
        # A JSON number is read from its text as an exact Decimal, never through a binary float.
        data = json.loads(file.read_bytes(), parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PricebookError(f"Invalid JSON file {file}: {exc}") from None
    except OSError as exc:
        raise PricebookError(f"Failed to read file '{file}': {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise PricebookError("JSON file must contain an object with resource types as keys")
    if not data:
        raise PricebookError(f"JSON file {file} is empty: no prices to import")
    return data


@pricebook_group.command("import")
@click.option(
    "--file",
    "-f",
    "file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON file: {"resource": {"price": "0.000030", "currency": "USD"}} or {"resource": "0.000030"}.',
)
@v01_errors
def import_command(file: Path) -> None:
    """Import prices from a JSON file, all or nothing (every price is checked before any is recorded)."""
    entries = session().home().pricebook.import_from_json(_read_import(file))
    click.echo(f"✓ Successfully imported {len(entries)} prices!\n")
    click.echo("Imported resources:")
    for entry in sorted((e.to_dict() for e in entries), key=lambda e: e["resource_type"]):
        click.echo(f"  {entry['resource_type']}: {entry['price_per_unit']} {entry['currency']}")


__all__ = ["pricebook_group"]
