"""Validation of the values that cross Caracal's boundaries: amounts, identifiers, timestamps, metadata.

Every function here is pure and raises the error class its caller passes in (``error``), so each part of
Caracal reports bad input with its own exception type while the rules stay in one place.

Invariants the rest of Caracal relies on:

- An amount is a finite, non-negative :class:`~decimal.Decimal` whose string form is kept exactly as given
  ("0.030" stays "0.030"). Floats are refused even when they look harmless: ``0.1`` is not one tenth. An
  amount given as input has at most 18 digits before and 18 after the decimal point (see
  :mod:`caracal.core.money`); ledger lines are read with wider limits (``parse_amount(...,
  stored=True)``), so a ledger written before those bounds still reads and verifies.
- An identifier is a non-empty string of at most :data:`MAX_IDENTIFIER_LENGTH` printable characters (no
  control characters, line separators or invisible format characters), so it can never break a JSON line,
  a log line or a table, nor hide one agent behind a look-alike name.
- A timestamp is timezone-aware UTC; naive datetimes and strings without an offset are taken as UTC.
  :func:`format_timestamp` gives the one stored form, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, which sorts
  lexicographically in time order.
- Metadata is a JSON object with string keys whose compact encoding is at most :data:`MAX_METADATA_BYTES`
  bytes; non-finite floats inside it are refused (JSON cannot carry them; they would turn into ``null``).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import orjson

from caracal.core.money import MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS

MAX_IDENTIFIER_LENGTH = 256
"""Longest agent id, resource type or similar identifier, in characters."""

MAX_METADATA_BYTES = 16 * 1024
"""Largest metadata object, measured as its compact UTF-8 JSON encoding."""

MAX_AMOUNT_CHARS = 100
"""Longest amount read from a ledger line, in characters of its string form (input is bounded tighter: at
most 18 digits before and 18 after the decimal point, :mod:`caracal.core.money`)."""

MAX_AMOUNT_EXPONENT = 1000
"""Largest power of ten (either way) an amount read from a ledger line may reach; stops ``1E+999999`` from
slowing arithmetic."""

_CURRENCY = re.compile(r"[A-Z]{3}")

# ISO 4217 active codes plus the commonly used precious-metal/testing codes.
ISO_4217_CODES = frozenset(
    [
        "AED",
        "AFN",
        "ALL",
        "AMD",
        "ANG",
        "AOA",
        "ARS",
        "AUD",
        "AWG",
        "AZN",
        "BAM",
        "BBD",
        "BDT",
        "BGN",
        "BHD",
        "BIF",
        "BMD",
        "BND",
        "BOB",
        "BOV",
        "BRL",
        "BSD",
        "BTN",
        "BWP",
        "BYN",
        "BZD",
        "CAD",
        "CDF",
        "CHE",
        "CHF",
        "CHW",
        "CLF",
        "CLP",
        "CNY",
        "COP",
        "COU",
        "CRC",
        "CUC",
        "CUP",
        "CVE",
        "CZK",
        "DJF",
        "DKK",
        "DOP",
        "DZD",
        "EGP",
        "ERN",
        "ETB",
        "EUR",
        "FJD",
        "FKP",
        "GBP",
        "GEL",
        "GHS",
        "GIP",
        "GMD",
        "GNF",
        "GTQ",
        "GYD",
        "HKD",
        "HNL",
        "HTG",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "IQD",
        "IRR",
        "ISK",
        "JMD",
        "JOD",
        "JPY",
        "KES",
        "KGS",
        "KHR",
        "KMF",
        "KPW",
        "KRW",
        "KWD",
        "KYD",
        "KZT",
        "LAK",
        "LBP",
        "LKR",
        "LRD",
        "LSL",
        "LYD",
        "MAD",
        "MDL",
        "MGA",
        "MKD",
        "MMK",
        "MNT",
        "MOP",
        "MRU",
        "MUR",
        "MVR",
        "MWK",
        "MXN",
        "MXV",
        "MYR",
        "MZN",
        "NAD",
        "NGN",
        "NIO",
        "NOK",
        "NPR",
        "NZD",
        "OMR",
        "PAB",
        "PEN",
        "PGK",
        "PHP",
        "PKR",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RSD",
        "RUB",
        "RWF",
        "SAR",
        "SBD",
        "SCR",
        "SDG",
        "SEK",
        "SGD",
        "SHP",
        "SLE",
        "SLL",
        "SOS",
        "SRD",
        "SSP",
        "STN",
        "SVC",
        "SYP",
        "SZL",
        "THB",
        "TJS",
        "TMT",
        "TND",
        "TOP",
        "TRY",
        "TTD",
        "TWD",
        "TZS",
        "UAH",
        "UGX",
        "USD",
        "USN",
        "UYI",
        "UYU",
        "UYW",
        "UZS",
        "VED",
        "VES",
        "VND",
        "VUV",
        "WST",
        "XAF",
        "XAG",
        "XAU",
        "XBA",
        "XBB",
        "XBC",
        "XBD",
        "XCD",
        "XCG",
        "XDR",
        "XOF",
        "XPD",
        "XPF",
        "XPT",
        "XSU",
        "XTS",
        "XUA",
        "XXX",
        "YER",
        "ZAR",
        "ZMW",
        "ZWG",
        "ZWL",
    ]
)


def _fail(error: type[Exception], message: str) -> NoReturn:
    raise error(message)


def parse_amount(value: object, name: str, error: type[Exception], *, stored: bool = False) -> Decimal:
    """Return ``value`` as a finite, non-negative Decimal within Caracal's bounds, keeping its exact digits.

    Accepts ``Decimal``, ``int`` and numeric strings. Refuses floats, booleans, NaN, infinities, negative
    numbers (including ``-0``) and amounts with more than :data:`~caracal.core.money.MAX_INTEGER_DIGITS`
    digits before or :data:`~caracal.core.money.MAX_FRACTION_DIGITS` after the decimal point (as written:
    ``"1.50"`` has two), so that sums and products of amounts are always exact. Every amount given as input
    goes through it (appends, prices, limits, holds, quantities).

    ``stored=True`` applies the wider limits of what a ledger line may hold instead (at most
    :data:`MAX_AMOUNT_CHARS` characters, magnitude within ``10**±MAX_AMOUNT_EXPONENT``), so lines written
    before the bounds existed stay readable and verifiable. Runs on every append and every line read: keep
    it lean.
    """
    kind = type(value)
    if kind is str:
        text: str = value  # type: ignore[assignment]
        if len(text) > MAX_AMOUNT_CHARS:
            _fail(error, f"{name} is longer than {MAX_AMOUNT_CHARS} characters")
        if "_" in text or text != text.strip():
            _fail(error, f"{name} must be a plain decimal number such as '1000' or '0.030', got {value!r}")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            _fail(error, f"{name} must be a number, got {value!r}")
    elif (
        kind is Decimal or kind is int or (isinstance(value, (Decimal, int)) and not isinstance(value, bool))
    ):
        amount = value if kind is Decimal else Decimal(value)  # type: ignore[assignment,arg-type]
        text = str(amount)
        if len(text) > MAX_AMOUNT_CHARS:
            _fail(error, f"{name} has more than {MAX_AMOUNT_CHARS} characters of digits")
    elif isinstance(value, float):
        _fail(
            error,
            f"{name} must not be a float ({value!r}): floats cannot hold money exactly; "
            f"pass a Decimal or a string such as '{value!r}'",
        )
    else:
        _fail(error, f"{name} must be a Decimal, int or numeric string, got {type(value).__name__}")
    if not amount.is_finite():
        _fail(error, f"{name} must be a finite number, got {amount}")
    if amount.is_signed():
        _fail(error, f"{name} must not be negative, got {amount}")
    if stored:
        if not -MAX_AMOUNT_EXPONENT <= amount.adjusted() <= MAX_AMOUNT_EXPONENT:
            _fail(error, f"{name} is out of the range Caracal accepts: {amount}")
        return amount
    if amount.adjusted() >= MAX_INTEGER_DIGITS and amount:
        _fail(
            error,
            f"{name} must be less than 10^{MAX_INTEGER_DIGITS} (at most {MAX_INTEGER_DIGITS} digits before "
            f"the decimal point), got {value!r}",
        )
    if len(text) > MAX_FRACTION_DIGITS + 1 or "E" in text or "e" in text:  # a shorter plain form cannot
        exponent = amount.as_tuple().exponent  # have 19 decimals; as_tuple is the slow way to read them
        if isinstance(exponent, int) and exponent < -MAX_FRACTION_DIGITS:
            _fail(
                error,
                f"{name} has {-exponent} digits after the decimal point; the limit is "
                f"{MAX_FRACTION_DIGITS} (Caracal keeps money exact and never rounds it), got {value!r}",
            )
    return amount


def check_identifier(value: object, name: str, error: type[Exception]) -> str:
    """Return ``value`` if it is a usable identifier (see the module invariants), else raise ``error``."""
    if (
        type(value) is str
        and 0 < len(value) <= MAX_IDENTIFIER_LENGTH
        and value.isprintable()
        and not value.isspace()
    ):
        return value
    if not isinstance(value, str):
        _fail(error, f"{name} must be a string, got {type(value).__name__}")
    if not value or value.isspace():
        _fail(error, f"{name} must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        _fail(error, f"{name} is {len(value)} characters long; the limit is {MAX_IDENTIFIER_LENGTH}")
    bad = next(char for char in value if not char.isprintable())
    _fail(
        error,
        f"{name} must not contain control or other non-printable characters (found {bad!r} in {value!r})",
    )


def check_currency(value: object, error: type[Exception]) -> str:
    """Return ``value`` if it is an ISO 4217 currency code such as ``USD``, else raise ``error``."""
    if type(value) is str and value in ISO_4217_CODES:  # type first: lists and dicts are unhashable
        return value
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        _fail(error, f"currency must be a three-letter upper-case ISO 4217 code such as 'USD', got {value!r}")
    if value not in ISO_4217_CODES:
        _fail(error, f"unknown currency {value!r}: not an ISO 4217 code")
    return value


def parse_timestamp(value: object, name: str, error: type[Exception]) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values and strings without an offset are UTC."""
    if type(value) is str and len(value) == 27 and value[26] == "Z":  # the stored form: fast path
        try:
            return datetime.fromisoformat(value[:26]).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(_six_digit_fraction(text))
        except ValueError:
            _fail(error, f"{name} must be an ISO 8601 timestamp such as 2026-01-31T12:00:00Z, got {value!r}")
    else:
        _fail(error, f"{name} must be a datetime or an ISO 8601 string, got {type(value).__name__}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        _fail(error, f"{name} is out of range: {value!r}")


_FRACTION = re.compile(r"(?<=\d\d:\d\d:\d\d\.)(\d{1,5})(?!\d)")


def _six_digit_fraction(text: str) -> str:
    """Python 3.10's ``fromisoformat`` reads only 3- or 6-digit fractions of a second (3.11 reads any):
    pad a shorter one with zeros so both versions accept the same timestamps."""
    if sys.version_info >= (3, 11):
        return text
    return _FRACTION.sub(lambda match: match.group(1).ljust(6, "0"), text, count=1)


def format_timestamp(moment: datetime) -> str:
    """The stored form of a datetime (naive means UTC): ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, which sorts in time
    order. On the append path, so it avoids ``strftime`` (several times slower)."""
    if moment.tzinfo is not timezone.utc:
        moment = (
            moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
        )
    text = moment.isoformat()  # '...SS.ffffff+00:00', or '...SS+00:00' when microsecond is 0
    return text[:-6] + "Z" if moment.microsecond else text[:-6] + ".000000Z"


def check_metadata(value: object, error: type[Exception]) -> dict[str, Any] | None:
    """Return ``value`` if it is None or a bounded JSON object (see the module invariants)."""
    if value is None:
        return None
    if type(value) is dict and _flat_scalars(value):  # the common case (a release's reason, a call's usage):
        try:  # the checks below would all pass but the size, checked the same way
            encoded = orjson.dumps(value)
        except TypeError:  # an int beyond 64 bits: the checks below say so
            encoded = None
        if encoded is not None and len(encoded) <= MAX_METADATA_BYTES:
            return dict(value)
    if not isinstance(value, Mapping):
        _fail(error, f"metadata must be a JSON object (a dict), got {type(value).__name__}")
    _check_json_value(value, error, depth=0)
    try:
        encoded = orjson.dumps(value, default=_encode_extra)
    except TypeError as exc:
        _fail(error, f"metadata is not JSON-serializable: {exc}")
    if len(encoded) > MAX_METADATA_BYTES:
        _fail(error, f"metadata is {len(encoded)} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return dict(value)


_SCALARS = frozenset({str, int, bool, type(None)})
"""Metadata values that pass every check but the size by their type alone (floats may be non-finite)."""
_STRINGS = frozenset({str})


def _flat_scalars(value: dict[Any, Any]) -> bool:
    """Whether every key of ``value`` is a ``str`` and every value a string, an integer, a boolean or null
    (nothing nested, no floats)."""
    return _SCALARS.issuperset(map(type, value.values())) and _STRINGS.issuperset(map(type, value))


def _check_json_value(value: object, error: type[Exception], depth: int) -> None:
    if depth > 32:
        _fail(error, "metadata is nested more than 32 levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(error, f"metadata keys must be strings, got {key!r}")
            _check_json_value(item, error, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json_value(item, error, depth + 1)
    elif (isinstance(value, float) and not math.isfinite(value)) or (
        isinstance(value, Decimal) and not value.is_finite()
    ):
        _fail(error, f"metadata must not contain non-finite numbers ({value!r})")


def _encode_extra(value: object) -> str:
    """orjson hook: Decimals in metadata are written as their exact strings."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def dumps(value: object) -> bytes:
    """Compact JSON bytes, Decimals as exact strings (the one encoder the ledger and sidecars use)."""
    return orjson.dumps(value, default=_encode_extra)
