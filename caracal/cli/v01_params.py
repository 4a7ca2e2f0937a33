"""Caracal Core v0.1's click parameter callbacks (``caracal.cli.main.validate_*``), for v0.1 scripts and
plugins that import them. Each returns the checked value (None stays None) or raises
:class:`click.BadParameter` with v0.1's wording. Money is parsed exactly: a float is refused, never
converted (``"100.50"``, not ``100.50``); any currency code and any calendar window Caracal enforces is
accepted (v0.1 knew only USD and daily).
"""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from caracal.core.windows import WINDOW_KINDS

WINDOWS = tuple(kind for kind in WINDOW_KINDS if kind != "rolling")


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise click.BadParameter(f"must be a valid number written exactly (e.g. '100.50'), got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise click.BadParameter(f"must be a valid number, got {value!r}") from None
    if not amount.is_finite():
        raise click.BadParameter(f"must be a valid number, got {value!r}")
    return amount


def validate_positive_decimal(ctx: Any, param: Any, value: object) -> Decimal | None:
    if value is None:
        return None
    amount = _decimal(value)
    if amount <= 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return amount


def validate_non_negative_decimal(ctx: Any, param: Any, value: object) -> Decimal | None:
    if value is None:
        return None
    amount = _decimal(value)
    if amount < 0:
        raise click.BadParameter(f"must be non-negative, got {value}")
    return amount


def validate_uuid(ctx: Any, param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise click.BadParameter(f"must be a valid UUID, got {value!r}") from None


def validate_time_window(ctx: Any, param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    if value not in WINDOWS:
        raise click.BadParameter(f"must be one of {', '.join(WINDOWS)}, got {value!r}")
    return value


def validate_currency(ctx: Any, param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    code = str(value).strip().upper()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        raise click.BadParameter(f"must be a 3-letter currency code such as USD, got {value!r}")
    return code


def validate_resource_type(ctx: Any, param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        raise click.BadParameter("resource type cannot be empty")
    return text


__all__ = [
    "validate_currency",
    "validate_non_negative_decimal",
    "validate_positive_decimal",
    "validate_resource_type",
    "validate_time_window",
    "validate_uuid",
]
