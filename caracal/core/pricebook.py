"""Unit prices per resource type, versioned by effective time (pure: no files, no clock, no network).

A :class:`Price` says what one unit of a resource costs from a moment on. A :class:`Pricebook` holds the
user's prices as a history and answers "what did one unit of R cost at time T?" so a charge can be
recomputed as of its own timestamp.

Lookup order for :meth:`Pricebook.price_of` ``(resource_type, at)``:

1. the user price for ``resource_type`` with the latest ``effective_from <= at``;
2. else, when ``use_llm_prices`` is on and the name reads ``<provider>.<model>.<kind>`` with ``kind`` one of
   :data:`LLM_KINDS`, the price that the bundled ``genai-prices`` data gives for that model at ``at``;
3. else :class:`~caracal.exceptions.UnknownPriceError`, with the command that fixes it. A resource is never
   priced at zero because no price was found (the only unknown-price policy is ``"refuse"``).

LLM prices (``genai-prices``):

- Only the data bundled with the installed ``genai-prices`` package is used; Caracal never starts its
  auto-update, never reads a snapshot another library installed process-wide, and never touches the
  network, so a price is reproducible for a given ``genai-prices`` version (recorded in the price's
  metadata together with the provider, model and the published figure).
- ``genai-prices`` publishes token prices per million tokens; the per-token price is the published figure
  shifted six decimal places (exact: ``$30`` per million becomes ``Decimal("0.000030")``).
- Kinds map to ``genai-prices`` units: ``input_tokens`` → ``input_mtok``, ``output_tokens`` →
  ``output_mtok``, ``cache_read_tokens`` → ``cache_read_mtok``, ``cache_write_tokens`` → ``cache_write_mtok``
  (Anthropic's default five-minute cache write). A model without a price for the kind is refused. The
  quantities are disjoint, as in ``genai-prices``: meter uncached input as ``input_tokens`` and cached input
  as ``cache_read_tokens``, not the same tokens twice.
- Prices that change over time (a new price from a date, DeepSeek's off-peak hours) are looked up at
  ``at``, so a recomputation as of a charge's timestamp gives the price of that moment.
- Tiered prices (the rate for *all* tokens of a request rises once its prompt passes a threshold, as for
  long-context Gemini and Claude models) cannot be one number per token without knowing the request's
  prompt size. By default they are refused (``tiered_llm_prices="refuse"``); with
  ``tiered_llm_prices="base"`` the base tier (the rate below the first threshold) is used and the price's
  metadata says so. Request-specific variants (service tiers, batch) are not applied: the standard price is.
- Legacy model names from the original quick start resolve through :data:`LEGACY_MODEL_ALIASES`
  (``openai.gpt4.input_tokens`` is GPT-4's input price).
- Whatever goes wrong inside ``genai-prices`` (not installed, an unexpected data shape) becomes an
  :class:`~caracal.exceptions.UnknownPriceError`; no other exception escapes.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Context, Decimal
from typing import Any, Literal, NamedTuple

from caracal.core.money import MAX_FRACTION_DIGITS, exact_cost
from caracal.core.validation import (
    MAX_AMOUNT_CHARS,
    check_currency,
    check_identifier,
    check_metadata,
    format_timestamp,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import ConfigurationError, InvalidPriceError, UnknownPriceError

__all__ = [
    "EPOCH",
    "LEGACY_MODEL_ALIASES",
    "LLM_KINDS",
    "MAX_NOTE_LENGTH",
    "LlmResource",
    "Price",
    "Pricebook",
    "PriceSource",
    "decimal_text",
    "llm_price",
    "multiply_exactly",
    "parse_llm_resource",
]

PriceSource = Literal["user", "genai-prices"]
_SOURCES: frozenset[str] = frozenset(("user", "genai-prices"))

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""``effective_from`` of an LLM price that has no start date in ``genai-prices`` (and of seeded defaults)."""

MAX_NOTE_LENGTH = 1000
"""Longest note on a price, in characters."""

LLM_KINDS: Mapping[str, str] = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_tokens": "cache_read_tokens",
    "cache_write_tokens": "cache_write_tokens",
}
"""The ``<kind>`` part of an LLM resource name → the ``genai-prices`` usage unit that prices it."""

LEGACY_MODEL_ALIASES: Mapping[tuple[str, str], str] = {
    ("openai", "gpt4"): "gpt-4",
    ("openai", "gpt4-turbo"): "gpt-4-turbo",
    ("openai", "gpt4o"): "gpt-4o",
    ("openai", "gpt4o-mini"): "gpt-4o-mini",
    ("openai", "gpt35-turbo"): "gpt-3.5-turbo",
}
"""Model names without hyphens that the original Caracal quick start used (``openai.gpt4.input_tokens``),
keyed by ``(provider, model)`` in lower case → the model name ``genai-prices`` knows. Only applied when the
user has no price of their own for the resource."""

_LLM_RESOURCE = re.compile(
    r"(?P<provider>[A-Za-z0-9][A-Za-z0-9_-]*)\.(?P<model>[^\s]+?)\."
    r"(?P<kind>input_tokens|output_tokens|cache_read_tokens|cache_write_tokens)"
)

TieredPolicy = Literal["refuse", "base"]


def _fail(message: str) -> InvalidPriceError:
    return InvalidPriceError(message)


def _check_note(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(f"note must be a string, got {type(value).__name__}")
    if not value:
        return None
    if len(value) > MAX_NOTE_LENGTH:
        raise _fail(f"note is {len(value)} characters long; the limit is {MAX_NOTE_LENGTH}")
    if not value.isprintable():
        bad = next(char for char in value if not char.isprintable())
        raise _fail(f"note must be one line of printable text (found {bad!r})")
    return value


@dataclass(frozen=True)
class Price:
    """The price of one unit of ``resource_type`` in ``currency`` from ``effective_from`` on.

    Validated on construction (bad input raises :class:`InvalidPriceError`): ``unit_price`` is a finite,
    non-negative Decimal kept with its exact digits (ints and numeric strings are converted, floats refused);
    ``effective_from`` becomes an aware UTC datetime (naive means UTC); an empty note becomes ``None``.
    """

    resource_type: str
    unit_price: Decimal
    currency: str = "USD"
    effective_from: datetime = EPOCH
    source: PriceSource = "user"
    note: str | None = None
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        check_identifier(self.resource_type, "resource_type", InvalidPriceError)
        if self.resource_type != self.resource_type.strip():
            raise _fail(f"resource_type must not start or end with whitespace, got {self.resource_type!r}")
        setattr_ = object.__setattr__
        setattr_(self, "unit_price", parse_amount(self.unit_price, "unit_price", InvalidPriceError))
        check_currency(self.currency, InvalidPriceError)
        moment = self.effective_from
        if not (isinstance(moment, datetime) and moment.tzinfo is timezone.utc):
            setattr_(self, "effective_from", parse_timestamp(moment, "effective_from", InvalidPriceError))
        if self.source not in _SOURCES:
            raise _fail(f"source must be 'user' or 'genai-prices', got {self.source!r}")
        setattr_(self, "note", _check_note(self.note))
        setattr_(self, "metadata", check_metadata(self.metadata, InvalidPriceError))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``unit_price`` as its exact string, ``effective_from`` in the stored form."""
        data: dict[str, Any] = {
            "resource_type": self.resource_type,
            "unit_price": decimal_text(self.unit_price),
            "currency": self.currency,
            "effective_from": format_timestamp(self.effective_from),
            "source": self.source,
        }
        if self.note is not None:
            data["note"] = self.note
        if self.metadata is not None:
            data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_dict(cls, data: object) -> Price:
        """The inverse of :meth:`to_dict`; unknown keys are ignored, bad values raise InvalidPriceError."""
        if not isinstance(data, Mapping):
            raise _fail(f"a price must be a JSON object, got {type(data).__name__}")
        missing = [key for key in ("resource_type", "unit_price", "effective_from") if key not in data]
        if missing:
            raise _fail(f"a price is missing {', '.join(missing)}")
        return cls(
            resource_type=data["resource_type"],
            unit_price=data["unit_price"],
            currency=data.get("currency", "USD"),
            effective_from=data["effective_from"],
            source=data.get("source", "user"),
            note=data.get("note"),
            metadata=data.get("metadata"),
        )


class LlmResource(NamedTuple):
    """The parts of an LLM resource name ``<provider>.<model>.<kind>``."""

    provider: str
    model: str
    kind: str


def parse_llm_resource(resource_type: str) -> LlmResource | None:
    """Split ``openai.gpt-4o.input_tokens`` into its parts; ``None`` if the name is not an LLM resource.

    The model may itself contain dots (``openai.gpt-3.5-turbo.output_tokens``): the provider is the first
    part and the kind the last.
    """
    match = _LLM_RESOURCE.fullmatch(resource_type)
    if match is None:
        return None
    return LlmResource(match["provider"], match["model"], match["kind"])


def decimal_text(value: Decimal) -> str:
    """The exact string of ``value`` in plain notation where Python would switch to an exponent for small
    numbers (``3E-7`` → ``"0.0000003"``, same digits and exponent); ``"1E+3"`` and very long forms stay as
    ``str`` gives them. ``Decimal(decimal_text(d))`` has the same digits and exponent as ``d``."""
    if value.as_tuple().exponent < 0:  # type: ignore[operator]
        plain = format(value, "f")
        if len(plain) <= MAX_AMOUNT_CHARS:
            return plain
    return str(value)


def multiply_exactly(quantity: Decimal, unit_price: Decimal) -> Decimal:
    """``quantity * unit_price``, never rounded, as an amount within Caracal's bounds
    (:func:`caracal.core.money.exact_cost`); :class:`InvalidPriceError` if it cannot be one."""
    return exact_cost(quantity, unit_price, InvalidPriceError)


def _set_command(resource_type: str) -> str:
    return f"caracal pricebook set {resource_type} <unit_price> --currency USD"


class Pricebook:
    """The user's price history plus, optionally, LLM prices from ``genai-prices``. Immutable.

    ``prices`` are user prices (any order); two prices for the same resource and the same
    ``effective_from`` are refused with :class:`InvalidPriceError`.
    """

    def __new__(cls, prices: Any = (), *args: Any, **kwargs: Any) -> Any:
        """``Pricebook(path_to_csv)`` is Caracal Core v0.1's CSV-backed pricebook
        (:class:`caracal.v01.pricebook.CsvPricebook`); anything else builds this class."""
        if cls is Pricebook and isinstance(prices, (str, os.PathLike)):
            from caracal.v01.pricebook import CsvPricebook

            return CsvPricebook(prices, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        prices: Iterable[Price] = (),
        *,
        use_llm_prices: bool = True,
        tiered_llm_prices: TieredPolicy = "refuse",
        unknown: Literal["refuse"] = "refuse",
    ):
        if unknown != "refuse":
            raise ConfigurationError(
                f"unknown={unknown!r} is not supported: a resource without a price is always refused "
                f"(never priced at zero); the only policy is 'refuse'"
            )
        if tiered_llm_prices not in ("refuse", "base"):
            raise ConfigurationError(
                f"tiered_llm_prices must be 'refuse' or 'base', got {tiered_llm_prices!r}"
            )
        self.use_llm_prices = bool(use_llm_prices)
        self.tiered_llm_prices: TieredPolicy = tiered_llm_prices
        self.unknown = unknown
        by_resource: dict[str, list[Price]] = {}
        for price in prices:
            if not isinstance(price, Price):
                raise _fail(f"a pricebook holds Price objects, got {type(price).__name__}")
            by_resource.setdefault(price.resource_type, []).append(price)
        self._history: dict[str, tuple[Price, ...]] = {}
        self._times: dict[str, list[datetime]] = {}
        for resource, items in sorted(by_resource.items()):
            items.sort(key=lambda price: price.effective_from)
            for before, after in itertools.pairwise(items):
                if before.effective_from == after.effective_from:
                    raise _fail(
                        f"two prices for {resource!r} take effect at the same time "
                        f"{format_timestamp(after.effective_from)}"
                    )
            self._history[resource] = tuple(items)
            self._times[resource] = [price.effective_from for price in items]

    def __repr__(self) -> str:
        return (
            f"Pricebook({sum(len(items) for items in self._history.values())} user prices for "
            f"{len(self._history)} resources, use_llm_prices={self.use_llm_prices})"
        )

    def resource_types(self) -> list[str]:
        """The resources with at least one user price, sorted."""
        return list(self._history)

    def history(self, resource_type: str | None = None) -> list[Price]:
        """User prices sorted by resource, then effective time; only ``resource_type``'s when given."""
        if resource_type is not None:
            return list(self._history.get(resource_type, ()))
        return [price for items in self._history.values() for price in items]

    def in_effect(self, at: datetime | str) -> list[Price]:
        """For each resource with a user price, the one in effect at ``at`` (resources not yet priced are left
        out)."""
        moment = parse_timestamp(at, "at", InvalidPriceError)
        found = []
        for resource, times in self._times.items():
            index = bisect.bisect_right(times, moment)
            if index:
                found.append(self._history[resource][index - 1])
        return found

    def price_of(self, resource_type: str, at: datetime | str) -> Price:
        """The price of one unit of ``resource_type`` at ``at`` (see the module docstring for the order).

        Raises :class:`UnknownPriceError` when there is none and :class:`InvalidPriceError` for a bad
        ``resource_type`` or ``at``.
        """
        check_identifier(resource_type, "resource_type", InvalidPriceError)
        moment = (
            at
            if isinstance(at, datetime) and at.tzinfo is timezone.utc
            else parse_timestamp(at, "at", InvalidPriceError)
        )
        times = self._times.get(resource_type)
        if times is not None:
            index = bisect.bisect_right(times, moment)
            if index:
                return self._history[resource_type][index - 1]
        llm = parse_llm_resource(resource_type)
        first = f"its first user price takes effect at {format_timestamp(times[0])}" if times else ""
        if llm is not None and self.use_llm_prices:
            try:
                return llm_price(resource_type, moment, tiered=self.tiered_llm_prices)
            except UnknownPriceError as exc:
                if not first:
                    raise
                raise UnknownPriceError(f"{exc} ({first})") from exc
        message = f"no price for {resource_type!r}"
        if first:
            message += f" at {format_timestamp(moment)}: {first}"
        elif llm is not None:
            message += " (LLM prices from genai-prices are switched off)"
        raise UnknownPriceError(
            f"{message}; Caracal refuses unpriced resources rather than charge $0. "
            f"Set a price with `{_set_command(resource_type)}`"
            + (" and an effective time no later than the charge" if times is not None else "")
        )

    def cost(self, resource_type: str, quantity: object, at: datetime | str) -> tuple[Decimal, Price]:
        """The exact cost of ``quantity`` units at ``at`` (``quantity * unit_price``, never rounded) and the
        price used. ``quantity`` is a non-negative Decimal, int or numeric string (floats are refused)."""
        amount = parse_amount(quantity, "quantity", InvalidPriceError)
        price = self.price_of(resource_type, at)
        return multiply_exactly(amount, price.unit_price), price


# --- genai-prices -------------------------------------------------------------------------------------------


def llm_price(resource_type: str, at: datetime | str, *, tiered: TieredPolicy = "refuse") -> Price:
    """The per-unit price of an LLM resource ``<provider>.<model>.<kind>`` at ``at`` from the bundled
    ``genai-prices`` data; :class:`UnknownPriceError` when there is none (never another exception)."""
    check_identifier(resource_type, "resource_type", InvalidPriceError)
    moment = parse_timestamp(at, "at", InvalidPriceError)
    parts = parse_llm_resource(resource_type)
    if parts is None:
        raise UnknownPriceError(
            f"{resource_type!r} is not an LLM resource name (<provider>.<model>.<kind>, kind one of "
            f"{', '.join(LLM_KINDS)}); set a price with `{_set_command(resource_type)}`"
        )
    try:
        found = _minute_llm_price(resource_type, parts, moment.replace(second=0, microsecond=0), tiered)
    except UnknownPriceError:
        raise
    except Exception as exc:  # genai-prices internals: fail closed with a Caracal error
        raise UnknownPriceError(
            f"genai-prices could not price {resource_type!r} ({type(exc).__name__}: {exc}); "
            f"set a price with `{_set_command(resource_type)}`"
        ) from exc
    if isinstance(found, UnknownPriceError):
        raise UnknownPriceError(str(found))  # a fresh exception each time: no shared traceback
    return found


@functools.lru_cache(maxsize=4096)
def _minute_llm_price(
    resource_type: str, parts: LlmResource, minute: datetime, tiered: TieredPolicy
) -> Price | UnknownPriceError:
    """:func:`_llm_price` at the start of ``minute``, remembered: the gateway prices every call twice (its
    hold and its settlement), and reading the price out of the genai-prices data costs far more than the
    rest of that. Exact, because genai-prices' price changes fall on whole minutes (start dates at
    midnight, time-of-day windows such as DeepSeek's off-peak hours on the minute), so every moment of a
    minute has the price of its first instant. "No such price" is remembered too (the gateway asks for a
    model's cache-write price on every call, and most models have none); other failures are not."""
    try:
        return _llm_price(resource_type, parts, minute, tiered)
    except UnknownPriceError as exc:
        return exc


class _GenaiData(NamedTuple):
    version: str
    providers: list[Any]
    find_provider: Any
    units: Mapping[str, Any]
    model_price_type: Any
    tiered_type: Any
    start_date_type: Any


_genai: _GenaiData | None = None
_model_cache: dict[tuple[str, str], tuple[Any, Any]] = {}
_MODEL_CACHE_LIMIT = 4096


def _genai_data() -> _GenaiData:
    """The bundled ``genai-prices`` data, imported on first use (the import takes tenths of a second)."""
    global _genai
    if _genai is None:
        try:
            from importlib.metadata import version

            from genai_prices.data import providers
            from genai_prices.data_snapshot import find_provider_by_id
            from genai_prices.data_units import unit_data
            from genai_prices.types import ModelPrice, StartDateConstraint, TieredPrices

            _genai = _GenaiData(
                version("genai-prices"),
                providers,
                find_provider_by_id,
                unit_data,
                ModelPrice,
                TieredPrices,
                StartDateConstraint,
            )
        except Exception as exc:
            raise UnknownPriceError(
                f"LLM prices are unavailable: genai-prices cannot be loaded ({type(exc).__name__}: {exc}); "
                f"install genai-prices (Python 3.11+) or set prices yourself with `caracal pricebook set`"
            ) from exc
    return _genai


def _find_model(data: _GenaiData, provider_id: str, model_ref: str, resource_type: str) -> tuple[Any, Any]:
    key = (provider_id, model_ref)
    found = _model_cache.get(key)
    if found is not None:
        return found
    provider = data.find_provider(data.providers, provider_id)
    if provider is None:
        raise UnknownPriceError(
            f"no price for {resource_type!r}: genai-prices {data.version} knows no provider {provider_id!r}; "
            f"set a price with `{_set_command(resource_type)}`"
        )
    model = provider.find_model(model_ref, all_providers=data.providers)
    if model is None:
        raise UnknownPriceError(
            f"no price for {resource_type!r}: genai-prices {data.version} knows no model {model_ref!r} for "
            f"provider {provider.id!r}; check the model name or set a price with "
            f"`{_set_command(resource_type)}`"
        )
    if len(_model_cache) >= _MODEL_CACHE_LIMIT:
        _model_cache.clear()
    _model_cache[key] = (provider, model)
    return provider, model


def _llm_price(resource_type: str, parts: LlmResource, at: datetime, tiered: TieredPolicy) -> Price:
    data = _genai_data()
    provider_id = parts.provider.lower()
    model_ref = parts.model.lower()
    alias = LEGACY_MODEL_ALIASES.get((provider_id, model_ref))
    provider, model = _find_model(data, provider_id, alias or model_ref, resource_type)
    unit = data.units[LLM_KINDS[parts.kind]]
    price_key: str = unit["price_key"]
    per = int(unit["per"])

    model_price = model.get_prices(at)
    effective_from = EPOCH
    condition = None
    if not isinstance(model.prices, data.model_price_type):
        chosen = next((item for item in model.prices if item.prices is model_price), None)
        constraint = chosen.constraint if chosen is not None else None
        if isinstance(constraint, data.start_date_type):
            start = datetime(
                constraint.start_date.year,
                constraint.start_date.month,
                constraint.start_date.day,
                tzinfo=timezone.utc,
            )
            if start <= at:
                effective_from = start
        if constraint is not None:
            condition = repr(constraint)

    published = getattr(model_price, price_key, None)
    what = f"{model.id!r} ({provider.id})"
    if published is None:
        raise UnknownPriceError(
            f"no price for {resource_type!r}: genai-prices {data.version} has no {parts.kind} price for "
            f"{what}; set a price with `{_set_command(resource_type)}`"
        )
    tier_note = None
    if isinstance(published, data.tiered_type):
        tiers = ", ".join(f"${tier.price} above {tier.start} tokens" for tier in published.tiers)
        if tiered != "base":
            raise UnknownPriceError(
                f"the genai-prices price of {parts.kind} for {what} is tiered by prompt size "
                f"(${published.base} per {per} tokens, {tiers}); Caracal cannot know a request's prompt "
                f"size from one resource, so it refuses rather than guess. Set a price with "
                f"`{_set_command(resource_type)}`, or build the pricebook with tiered_llm_prices='base' to "
                f"use the base tier"
            )
        tier_note = f"base tier of a tiered price ({tiers})"
        published = published.base
    if not isinstance(published, Decimal) or not published.is_finite() or published.is_signed():
        raise UnknownPriceError(
            f"genai-prices gives an unusable {parts.kind} price for {what}: {published!r}; "
            f"set a price with `{_set_command(resource_type)}`"
        )
    exponent = len(str(per)) - 1
    if per <= 0 or per != 10**exponent:
        raise UnknownPriceError(
            f"genai-prices prices {parts.kind} per {per} units, which Caracal cannot convert exactly; "
            f"set a price with `{_set_command(resource_type)}`"
        )
    unit_price = published.scaleb(-exponent, Context(prec=len(published.as_tuple().digits) + 1))
    if unit_price.as_tuple().exponent < -MAX_FRACTION_DIGITS:  # type: ignore[operator]  # finite: checked
        raise UnknownPriceError(
            f"genai-prices gives {parts.kind} for {what} as {published} per {per}, which is more than "
            f"{MAX_FRACTION_DIGITS} decimals per unit (Caracal never rounds money); set a price with "
            f"`{_set_command(resource_type)}`"
        )
    metadata: dict[str, Any] = {
        "genai_prices_version": data.version,
        "provider": provider.id,
        "model": model.id,
        "price_key": price_key,
        "published_price": str(published),
        "published_per": per,
    }
    if alias is not None:
        metadata["alias_of"] = parts.model
    if condition is not None:
        metadata["condition"] = condition
    if tier_note is not None:
        metadata["tiered"] = tier_note
    return Price(
        resource_type=resource_type,
        unit_price=unit_price,
        currency="USD",
        effective_from=effective_from,
        source="genai-prices",
        metadata=metadata,
    )


def __getattr__(name: str) -> object:
    """Caracal Core v0.1's names for this module, loaded from :mod:`caracal.v01` on first use (they are
    adapters over the storage layer, which this module never imports)."""
    from caracal.v01 import load

    return load(__name__, name)
