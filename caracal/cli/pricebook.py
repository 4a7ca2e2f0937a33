"""``caracal pricebook ...``: the user's prices (versioned by effective time) and what a resource costs.

Prices are only ever added: ``set`` and ``import`` record new entries (a new price for a resource takes
over from its effective time), never edit or remove old ones, so past charges can be recomputed as of their
own time. A resource without a price is refused, never charged at zero. LLM resources named
``<provider>.<model>.<kind>`` are priced from the bundled ``genai-prices`` data when you have set no price
of your own (``pricebook price`` shows which applies).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from caracal.cli.options import json_option
from caracal.cli.render import emit_json, handle_errors, table
from caracal.core.fileio import write_atomically
from caracal.core.pricebook import Price, decimal_text, multiply_exactly
from caracal.core.validation import format_timestamp, parse_amount, parse_timestamp
from caracal.exceptions import InvalidPriceError
from caracal.sdk.client import CaracalClient


def price_rows(prices: list[Price], current: set[tuple[str, datetime]]) -> list[list[object]]:
    return [
        [
            p.resource_type,
            decimal_text(p.unit_price),
            p.currency,
            format_timestamp(p.effective_from),
            "*" if (p.resource_type, p.effective_from) in current else "",
            p.note or "",
        ]
        for p in prices
    ]


PRICE_HEADERS = ["RESOURCE", "UNIT PRICE", "CUR", "EFFECTIVE FROM", "NOW", "NOTE"]


@click.group("pricebook")
def pricebook_group() -> None:
    """Prices per unit of each resource, versioned by effective time."""


@pricebook_group.command("list")
@json_option
@click.option("--resource-type", default=None, help="Only this resource's prices.")
@handle_errors
def list_command(as_json: bool, resource_type: str | None) -> None:
    """Your prices, every version; '*' marks the one in effect now."""
    now = datetime.now(timezone.utc)
    with CaracalClient() as client:
        prices = client.home.prices.history(resource_type)
        current = {(p.resource_type, p.effective_from) for p in client.home.prices.pricebook().in_effect(now)}
    if as_json:
        emit_json(
            [{**p.to_dict(), "in_effect": (p.resource_type, p.effective_from) in current} for p in prices]
        )
        return
    if prices:
        table(PRICE_HEADERS, price_rows(prices, current), right=(1,))
    else:
        click.echo(f"no prices for {resource_type!r}" if resource_type else "no prices")
    click.echo(
        "\nLLM resources (<provider>.<model>.<kind>, e.g. openai.gpt-4o.input_tokens) without a price here "
        "are priced from genai-prices; see `caracal pricebook price RESOURCE_TYPE`."
    )


@pricebook_group.command("set")
@json_option
@click.argument("resource_type")
@click.argument("unit_price")
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 code.")
@click.option(
    "--effective-from",
    default=None,
    help="When the price takes effect (ISO 8601; naive means UTC; default: now).",
)
@click.option("--note", default=None, help="A note kept with the price (e.g. its source).")
@handle_errors
def set_command(
    as_json: bool,
    resource_type: str,
    unit_price: str,
    currency: str,
    effective_from: str | None,
    note: str | None,
) -> None:
    """Record the price of one unit of RESOURCE_TYPE (an exact decimal such as 0.0025)."""
    with CaracalClient() as client:
        price = client.home.prices.set(resource_type, unit_price, currency, effective_from, note)
    if as_json:
        emit_json(price.to_dict())
        return
    click.echo(
        f"{price.resource_type}: {decimal_text(price.unit_price)} {price.currency} per unit from "
        f"{format_timestamp(price.effective_from)}"
    )


@pricebook_group.command("import")
@json_option
@click.argument("file", metavar="FILE.csv", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def import_command(as_json: bool, file: Path) -> None:
    """Import prices from a CSV file, all or nothing.

    Columns: resource_type, unit_price (required), currency (default USD), effective_from (default: now),
    note; the header of `pricebook export`.
    """
    with CaracalClient() as client:
        prices = client.home.prices.import_csv(file)
    if as_json:
        emit_json([p.to_dict() for p in prices])
        return
    if not prices:
        click.echo(f"{file} holds no prices; nothing was imported")
        return
    table(
        PRICE_HEADERS[:4] + PRICE_HEADERS[5:], [r[:4] + r[5:] for r in price_rows(prices, set())], right=(1,)
    )
    click.echo(f"imported {len(prices)} price{'s' * (len(prices) != 1)} from {file}")


@pricebook_group.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@handle_errors
def export_command(file: Path | None, force: bool) -> None:
    """Write every price as CSV to FILE (default: stdout); `pricebook import` reads it back."""
    with CaracalClient() as client:
        text = client.home.prices.export_csv()
    if file is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    if file.exists() and not force:
        raise InvalidPriceError(f"{file} exists; choose another file or pass --force to replace it")
    try:
        write_atomically(file, text.encode())
    except OSError as exc:
        raise InvalidPriceError(f"cannot write {file}: {exc.strerror or exc}") from None
    click.echo(f"exported {text.count(chr(10)) - 1} prices to {file}", err=True)


@pricebook_group.command("price")
@json_option
@click.argument("resource_type")
@click.option("--quantity", default="1", show_default=True, help="How many units (exact decimal).")
@click.option("--at", "at", default=None, help="Price as of this time (ISO 8601; default: now).")
@handle_errors
def price_command(as_json: bool, resource_type: str, quantity: str, at: str | None) -> None:
    """What RESOURCE_TYPE costs now (your price first, then genai-prices for LLM resources)."""
    amount = parse_amount(quantity, "--quantity", InvalidPriceError)
    moment = parse_timestamp(at, "--at", InvalidPriceError) if at else datetime.now(timezone.utc)
    with CaracalClient() as client:
        price = client.home.prices.pricebook().price_of(resource_type, moment)
    cost = multiply_exactly(amount, price.unit_price)
    if as_json:
        emit_json(
            {
                "resource_type": resource_type,
                "at": format_timestamp(moment),
                "quantity": decimal_text(amount),
                "cost": decimal_text(cost),
                "price": price.to_dict(),
            }
        )
        return
    source = (
        "your pricebook" if price.source == "user" else f"genai-prices {_meta(price, 'genai_prices_version')}"
    )
    rows: list[tuple[str, object]] = [
        ("resource", resource_type),
        ("unit price", f"{decimal_text(price.unit_price)} {price.currency}"),
        ("source", source),
        ("effective", format_timestamp(price.effective_from)),
    ]
    if price.source != "user":
        rows.append(("model", f"{_meta(price, 'provider')}/{_meta(price, 'model')}"))
        rows.append(
            (
                "published",
                f"{_meta(price, 'published_price')} {price.currency} per "
                f"{_meta(price, 'published_per')} units",
            )
        )
    if price.note:
        rows.append(("note", price.note))
    rows.append(("quantity", decimal_text(amount)))
    rows.append(("cost", f"{decimal_text(cost)} {price.currency}"))
    for key, value in rows:
        click.echo(f"{key + ':':<12}{value}")


def _meta(price: Price, key: str) -> object:
    return (price.metadata or {}).get(key, "?")
