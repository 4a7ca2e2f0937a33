"""The user's price history on disk (embedded backend): ``prices.json``, a :class:`JsonDocument`.

The document is ``{"version": 1, "prices": [<Price.to_dict()>, ...]}``. Entries are only ever added, never
edited or removed, in the order they were recorded; :meth:`PriceRegistry.history` and the CSV export sort
them by resource, then effective time. A new price for a resource may take effect at any time (earlier
than existing ones too: a correction of the past is a new entry, and recomputation as of a timestamp picks
it up), but two prices for one resource with the same ``effective_from`` are refused.

Every change validates first and writes second, in one locked transaction: bad input raises
:class:`InvalidPriceError` and leaves the file as it was. A file that does not parse, or holds an invalid
price, raises :class:`RegistryError` (fail closed: it is never treated as empty).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from caracal.config import caracal_home
from caracal.core.pricebook import EPOCH, Price, Pricebook, TieredPolicy, decimal_text
from caracal.core.validation import format_timestamp, parse_timestamp
from caracal.exceptions import InvalidPriceError, RegistryError
from caracal.storage.interface import Document
from caracal.storage.jsonfile import JsonDocument, restore_hint

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_PRICES",
    "PriceRegistry",
    "default_prices_path",
]

FORMAT_VERSION = 1

CSV_COLUMNS = ("resource_type", "unit_price", "currency", "effective_from", "note")
"""The CSV header :meth:`PriceRegistry.export_csv` writes. On import only ``resource_type`` and
``unit_price`` are required; an empty or missing ``currency`` means USD, an empty or missing
``effective_from`` means the time of the import, an empty ``note`` means none."""

_MAX_REPORTED_ERRORS = 10

DEFAULT_PRICES: tuple[tuple[str, str, str], ...] = (
    (
        "tool.web_search.calls",
        "0.01",
        "illustrative default ($10 per 1,000 searches, a common web-search API rate); set your own",
    ),
    (
        "tool.http_request.calls",
        "0.0001",
        "illustrative default (a plain outbound HTTP call); set your own",
    ),
    (
        "tool.code_execution.seconds",
        "0.00005",
        "illustrative default (about $0.18 per sandbox hour); set your own",
    ),
)
"""``(resource_type, unit_price in USD, note)`` written by :meth:`PriceRegistry.seed_defaults` at
``caracal init``, effective from 1970-01-01T00:00:00Z so they price any charge until the user sets a real
price (a later ``pricebook set`` takes over from its effective time). They are illustrations, not quotes."""


def default_prices_path(home: Path | None = None) -> Path:
    """``<home>/data/prices.json``, beside the default ledger."""
    return (home or caracal_home()) / "data" / "prices.json"


def empty_prices() -> dict[str, Any]:
    """The prices document before the first price."""
    return {"version": FORMAT_VERSION, "prices": []}


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PriceRegistry:
    """The user's price history in ``path`` (default :func:`default_prices_path`).

    ``use_llm_prices`` and ``tiered_llm_prices`` are passed to every :class:`Pricebook` it builds; ``clock``
    gives "now" for prices set without an effective time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Document | None = None,
        *,
        use_llm_prices: bool = True,
        tiered_llm_prices: TieredPolicy = "refuse",
        clock: Callable[[], datetime] = _utc_now,
    ):
        if path is None or isinstance(path, (str, os.PathLike)):
            self.document: Document = JsonDocument(path or default_prices_path(), default=empty_prices)
        else:
            self.document = path
        self.path: Path | str = (
            self.document.path if isinstance(self.document, JsonDocument) else self.document.label
        )
        self.use_llm_prices = use_llm_prices
        self.tiered_llm_prices = tiered_llm_prices
        self.clock = clock
        Pricebook(use_llm_prices=use_llm_prices, tiered_llm_prices=tiered_llm_prices)  # check the options now
        self._book: tuple[tuple[Price, ...], Pricebook] | None = None  # built for this parsed history

    # --- reading ---------------------------------------------------------------------------------------

    def _parse(self, document: dict[str, Any]) -> list[Price]:
        version = document.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise RegistryError(f"{self.path} has format version {version!r}; this Caracal reads version 1")
        records = document.get("prices", [])
        if not isinstance(records, list):
            raise RegistryError(f"{self.path}: 'prices' must be a list, found {type(records).__name__}")
        prices = []
        for index, record in enumerate(records):
            try:
                prices.append(Price.from_dict(record))
            except InvalidPriceError as exc:
                raise RegistryError(
                    f"{self.path}: price #{index + 1} is invalid ({exc}); restore it from "
                    f"{restore_hint(self.document)}"
                ) from None
        return prices

    def _load(self) -> tuple[Price, ...]:
        """The history sorted by resource and time, re-parsed only when the file changed."""
        return self.document.read_cached(lambda document: tuple(sorted(self._parse(document), key=_sort_key)))

    def history(self, resource_type: str | None = None) -> list[Price]:
        """User prices sorted by resource, then effective time; only ``resource_type``'s when given."""
        prices = self._load()
        if resource_type is None:
            return list(prices)
        return [price for price in prices if price.resource_type == resource_type]

    def pricebook(self) -> Pricebook:
        """A :class:`Pricebook` of the current history, rebuilt only when the file has changed."""
        prices = self._load()
        cached = self._book
        if cached is not None and cached[0] is prices:
            return cached[1]
        try:
            book = Pricebook(
                prices, use_llm_prices=self.use_llm_prices, tiered_llm_prices=self.tiered_llm_prices
            )
        except InvalidPriceError as exc:
            raise RegistryError(f"{self.path} holds conflicting prices: {exc}") from None
        self._book = (prices, book)
        return book

    # --- changing --------------------------------------------------------------------------------------

    def _append(self, new: list[Price], where: list[str] | None = None) -> None:
        """Append ``new`` in one transaction, refusing any (resource, effective_from) already taken."""
        with self.document.transaction() as document:
            existing = self._parse(document)
            taken = {(price.resource_type, price.effective_from) for price in existing}
            errors = []
            for position, price in enumerate(new):
                key = (price.resource_type, price.effective_from)
                if key in taken:
                    prefix = f"{where[position]}: " if where else ""
                    errors.append(
                        f"{prefix}{price.resource_type!r} already has a price taking effect at "
                        f"{format_timestamp(price.effective_from)}; prices are never overwritten: choose "
                        f"another effective time"
                    )
                taken.add(key)
            if errors:
                raise InvalidPriceError(_join_errors(errors) + (". Nothing was imported." if where else ""))
            records = document.setdefault("prices", [])
            document["version"] = FORMAT_VERSION
            records.extend(price.to_dict() for price in new)

    def add(self, prices: list[Price]) -> list[Price]:
        """Record several validated prices in one transaction: all of them, or none (InvalidPriceError if
        any resource already has a price at the same effective time)."""
        if not all(isinstance(price, Price) for price in prices):
            raise InvalidPriceError("add takes Price objects")
        if prices:
            self._append(list(prices))
        return list(prices)

    def set(
        self,
        resource_type: str,
        unit_price: object,
        currency: str = "USD",
        effective_from: datetime | str | None = None,
        note: str | None = None,
    ) -> Price:
        """Record a user price (``effective_from`` defaults to now) and return it.

        ``unit_price`` is a non-negative Decimal, int or numeric string (floats are refused). Bad input, or a
        price for the same resource and ``effective_from`` as an existing one, raises
        :class:`InvalidPriceError` and changes nothing.
        """
        price = Price(
            resource_type=resource_type,
            unit_price=unit_price,  # type: ignore[arg-type]  # validated and converted by Price
            currency=currency,
            effective_from=self.clock() if effective_from is None else effective_from,  # type: ignore[arg-type]
            source="user",
            note=note,
        )
        self._append([price])
        return price

    def import_csv(self, source: str | os.PathLike[str]) -> list[Price]:
        """Import prices from CSV: a path (``Path`` or a string naming a file) or the CSV text itself (a
        string of several lines, or a lone header line).

        All or nothing: if any row is bad (or clashes with an existing price or another row), raises
        :class:`InvalidPriceError` naming the line(s) and imports nothing. Returns the imported prices.
        """
        text = _read_csv_source(source)
        now = self.clock()
        prices, lines = _parse_csv(text, now)
        if prices:
            self._append(prices, [f"line {line}" for line in lines])
        return prices

    def export_csv(self) -> str:
        """The whole history as CSV (header :data:`CSV_COLUMNS`, sorted by resource then effective time);
        importing it into an empty registry gives the same history."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for price in self.history():
            writer.writerow(
                (
                    price.resource_type,
                    decimal_text(price.unit_price),
                    price.currency,
                    format_timestamp(price.effective_from),
                    price.note or "",
                )
            )
        return buffer.getvalue()

    def seed_defaults(self) -> list[Price]:
        """Write :data:`DEFAULT_PRICES` for the resources that have no price yet; returns what was added.

        Idempotent: running it again (or after the user priced those resources) adds nothing.
        """
        added: list[Price] = []
        with self.document.transaction() as document:
            priced = {price.resource_type for price in self._parse(document)}
            for resource_type, unit_price, note in DEFAULT_PRICES:
                if resource_type not in priced:
                    added.append(Price(resource_type, unit_price, "USD", EPOCH, "user", note))  # type: ignore[arg-type]
            if added:
                document["version"] = FORMAT_VERSION
                document.setdefault("prices", []).extend(price.to_dict() for price in added)
        return added


def _sort_key(price: Price) -> tuple[str, datetime]:
    return price.resource_type, price.effective_from


def _join_errors(errors: list[str]) -> str:
    text = "; ".join(errors[:_MAX_REPORTED_ERRORS])
    if len(errors) > _MAX_REPORTED_ERRORS:
        text += f"; and {len(errors) - _MAX_REPORTED_ERRORS} more"
    return text


def _read_csv_source(source: str | os.PathLike[str]) -> str:
    if isinstance(source, str):
        if "\n" in source or "\r" in source:
            return source
        if source.lstrip("\ufeff").startswith(f"{CSV_COLUMNS[0]},") and not os.path.exists(source):
            return source  # a header without rows
    elif not isinstance(source, os.PathLike):
        raise InvalidPriceError(f"import_csv takes a path or CSV text, got {type(source).__name__}")
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPriceError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise InvalidPriceError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse_csv(text: str, now: datetime) -> tuple[list[Price], list[int]]:
    """Every row of ``text`` as a Price (and its line number), or InvalidPriceError listing the bad rows."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InvalidPriceError(f"line 1: the CSV header does not parse ({exc})") from None
    if header is None or not any(header):
        raise InvalidPriceError(f"the CSV is empty; it needs the header {','.join(CSV_COLUMNS)}")
    columns = [name.strip() for name in header]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    missing = [name for name in ("resource_type", "unit_price") if name not in columns]
    if unknown or duplicated or missing:
        problems = []
        if unknown:
            problems.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
        if duplicated:
            problems.append(f"repeated column(s) {', '.join(map(repr, duplicated))}")
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        raise InvalidPriceError(
            f"line 1: bad CSV header ({'; '.join(problems)}); expected {','.join(CSV_COLUMNS)}"
        )

    prices: list[Price] = []
    lines: list[int] = []
    errors: list[str] = []
    seen: dict[tuple[str, datetime], int] = {}
    while True:
        line = reader.line_num + 1  # where the next record starts
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(f"line {line}: the row does not parse ({exc})")
            break
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(columns):
            errors.append(
                f"line {line}: expected {len(columns)} fields ({','.join(columns)}), found {len(row)}"
            )
            continue
        fields = dict(zip(columns, row, strict=True))
        currency = fields.get("currency", "").strip() or "USD"
        moment = fields.get("effective_from", "").strip()
        try:
            price = Price(
                resource_type=fields["resource_type"],
                unit_price=fields["unit_price"].strip(),  # type: ignore[arg-type]
                currency=currency,
                effective_from=parse_timestamp(moment, "effective_from", InvalidPriceError)
                if moment
                else now,
                source="user",
                note=fields.get("note") or None,
            )
        except InvalidPriceError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        key = (price.resource_type, price.effective_from)
        if key in seen:
            errors.append(
                f"line {line}: {price.resource_type!r} already has a price taking effect at "
                f"{format_timestamp(price.effective_from)} on line {seen[key]}"
            )
            continue
        seen[key] = line
        prices.append(price)
        lines.append(line)
    if errors:
        raise InvalidPriceError(_join_errors(errors) + ". Nothing was imported.")
    return prices, lines
