"""PriceRegistry: the user's price history on disk, CSV import/export, defaults, caching, failing closed."""

from __future__ import annotations

import tempfile
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caracal.core.pricebook import EPOCH, Price
from caracal.exceptions import ConfigurationError, InvalidPriceError, RegistryError, UnknownPriceError
from caracal.storage.prices import CSV_COLUMNS, DEFAULT_PRICES, PriceRegistry, default_prices_path

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)
NOW = datetime(2026, 5, 5, 12, 0, tzinfo=UTC)
HEADER = ",".join(CSV_COLUMNS)


@pytest.fixture
def registry(tmp_path: Path) -> PriceRegistry:
    return PriceRegistry(tmp_path / "prices.json", clock=lambda: NOW)


def snapshot(registry: PriceRegistry) -> bytes | None:
    return registry.path.read_bytes() if registry.path.exists() else None


# --- set and history -------------------------------------------------------------------------------------


def test_set_records_exact_price_and_defaults(registry: PriceRegistry) -> None:
    price = registry.set("tool.search.calls", "0.030")
    assert price == Price("tool.search.calls", Decimal("0.030"), "USD", NOW)
    assert registry.history() == [price]
    stored = orjson.loads(registry.path.read_bytes())
    assert stored == {
        "version": 1,
        "prices": [
            {
                "resource_type": "tool.search.calls",
                "unit_price": "0.030",
                "currency": "USD",
                "effective_from": "2026-05-05T12:00:00.000000Z",
                "source": "user",
            }
        ],
    }
    other = registry.set("tool.fetch.calls", Decimal("2"), "EUR", "2026-01-01T00:00:00Z", note="flat fee")
    assert other.currency == "EUR" and other.effective_from == T0 and other.note == "flat fee"
    assert [p.resource_type for p in registry.history()] == ["tool.fetch.calls", "tool.search.calls"]
    assert registry.history("tool.fetch.calls") == [other]


def test_history_is_sorted_and_earlier_prices_may_be_added(registry: PriceRegistry) -> None:
    registry.set("r", "3", effective_from=T1)
    registry.set("r", "1", effective_from=T0)  # a correction of the past is a new entry
    registry.set("r", "2", effective_from=T0 + timedelta(days=1))
    assert [p.unit_price for p in registry.history("r")] == [Decimal(1), Decimal(2), Decimal(3)]
    stored = orjson.loads(registry.path.read_bytes())["prices"]
    assert [p["unit_price"] for p in stored] == ["3", "1", "2"]  # the file keeps the order of recording
    book = registry.pricebook()
    assert book.price_of("r", T0 + timedelta(hours=1)).unit_price == 1
    assert book.price_of("r", T1 + timedelta(hours=1)).unit_price == 3


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("r", 0.01), {}, "float"),
        (("r", "-1"), {}, "negative"),
        (("r", "NaN"), {}, "finite"),
        (("r", "inf"), {}, "finite"),
        (("r", Decimal("sNaN")), {}, "finite"),
        (("r", "1"), {"currency": "XYZ"}, "unknown currency"),
        (("r", "1"), {"currency": "usd"}, "ISO 4217"),
        (("", "1"), {}, "empty"),
        (("r\tx", "1"), {}, "control"),
        (("r", "1"), {"effective_from": "not a time"}, "ISO 8601"),
        (("r", "1"), {"note": "a\nb"}, "printable"),
    ],
)
def test_set_refuses_bad_input_and_changes_nothing(
    registry: PriceRegistry, args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    registry.set("existing", "1", effective_from=T0)
    before = snapshot(registry)
    with pytest.raises(InvalidPriceError, match=match):
        registry.set(*args, **kwargs)
    assert snapshot(registry) == before


def test_set_refuses_exact_duplicate_time(registry: PriceRegistry) -> None:
    registry.set("r", "1", effective_from=T0)
    before = snapshot(registry)
    with pytest.raises(InvalidPriceError, match="already has a price taking effect at 2026-01-01"):
        registry.set("r", "2", effective_from="2026-01-01T01:00:00+01:00")  # the same instant
    assert snapshot(registry) == before
    registry.set("other", "2", effective_from=T0)  # another resource at the same time is fine


def test_concurrent_sets_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"

    def work(worker: int) -> None:
        registry = PriceRegistry(path)
        for index in range(10):
            registry.set(f"r{worker}", str(index), effective_from=T0 + timedelta(seconds=index))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(PriceRegistry(path).history()) == 40


# --- pricebook ------------------------------------------------------------------------------------------


def test_pricebook_is_cached_until_the_file_changes(registry: PriceRegistry) -> None:
    registry.set("r", "1", effective_from=T0)
    book = registry.pricebook()
    assert registry.pricebook() is book
    PriceRegistry(registry.path).set("r", "2", effective_from=T1)  # another writer (process or instance)
    fresh = registry.pricebook()
    assert fresh is not book and fresh.price_of("r", T1).unit_price == 2


def test_empty_registry_refuses_unknown_and_uses_llm_prices(registry: PriceRegistry) -> None:
    pytest.importorskip("genai_prices", reason="LLM prices come from genai-prices (Python 3.11+)")
    assert registry.history() == [] and not registry.path.exists()
    book = registry.pricebook()
    with pytest.raises(UnknownPriceError):
        book.price_of("tool.search.calls", NOW)
    assert book.price_of("openai.gpt4.input_tokens", NOW).unit_price == Decimal("0.00003")
    registry.set("openai.gpt4.input_tokens", "0.00001", effective_from=T0)
    price = registry.pricebook().price_of("openai.gpt4.input_tokens", NOW)
    assert price.source == "user" and price.unit_price == Decimal("0.00001")


def test_registry_options_reach_the_pricebook(tmp_path: Path) -> None:
    registry = PriceRegistry(tmp_path / "p.json", use_llm_prices=False)
    with pytest.raises(UnknownPriceError, match="switched off"):
        registry.pricebook().price_of("openai.gpt4.input_tokens", NOW)
    with pytest.raises(ConfigurationError):
        PriceRegistry(tmp_path / "p.json", tiered_llm_prices="max")  # type: ignore[arg-type]


def test_default_path_is_in_caracal_home(caracal_home: Path) -> None:
    assert default_prices_path() == caracal_home / "data" / "prices.json"
    assert PriceRegistry().path == caracal_home / "data" / "prices.json"


# --- fail closed on a bad file ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"version": 2, "prices": []}', "version"),
        (b'{"version": 1, "prices": {}}', "must be a list"),
        (
            b'{"version": 1, "prices": [{"resource_type": "r", "unit_price": 0.5, '
            b'"effective_from": "2026-01-01T00:00:00Z"}]}',
            "price #1 is invalid",
        ),
    ],
)
def test_corrupt_file_is_refused_not_emptied(registry: PriceRegistry, content: bytes, match: str) -> None:
    registry.path.write_bytes(content)
    with pytest.raises(RegistryError, match=match):
        registry.pricebook()
    with pytest.raises(RegistryError):
        registry.set("r", "1")
    assert registry.path.read_bytes() == content


def test_conflicting_records_in_file_are_refused(registry: PriceRegistry) -> None:
    record = Price("r", Decimal(1), effective_from=T0).to_dict()
    registry.path.write_bytes(orjson.dumps({"version": 1, "prices": [record, {**record, "unit_price": "2"}]}))
    with pytest.raises(RegistryError, match="conflicting"):
        registry.pricebook()


# --- CSV ----------------------------------------------------------------------------------------------


def test_import_csv_text_with_defaults_quoting_and_blank_lines(registry: PriceRegistry) -> None:
    text = (
        f"{HEADER}\n"
        'tool.search.calls,0.010,USD,2026-01-01T00:00:00Z,"search, per call"\n'
        "\n"
        "tool.search.calls,0.020,,2026-02-01T00:00:00Z,\n"
        "tool.fetch.calls,1,EUR,,\n"
    )
    imported = registry.import_csv(text)
    assert [(p.resource_type, p.unit_price, p.currency, p.effective_from, p.note) for p in imported] == [
        ("tool.search.calls", Decimal("0.010"), "USD", T0, "search, per call"),
        ("tool.search.calls", Decimal("0.020"), "USD", T1, None),
        ("tool.fetch.calls", Decimal("1"), "EUR", NOW, None),  # no effective time: the import time
    ]
    assert len(registry.history()) == 3


def test_import_csv_from_path_and_with_fewer_columns(registry: PriceRegistry, tmp_path: Path) -> None:
    file = tmp_path / "in.csv"
    file.write_text("\ufeffunit_price,resource_type\n5,tool.a\n", encoding="utf-8")  # BOM, other order
    assert [p.unit_price for p in registry.import_csv(file)] == [Decimal(5)]
    file.write_text(f"{HEADER}\r\ntool.b,6,USD,2026-01-01T00:00:00Z,\r\n", encoding="utf-8")
    assert [p.resource_type for p in registry.import_csv(str(file))] == ["tool.b"]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "r,0.1,USD,2026-01-01T00:00:00Z,\nr,1.5.5,USD,2026-01-01T00:00:01Z,\n",
            "line 4: unit_price must be a number",
        ),
        ("r,-1,USD,,\n", "line 3: unit_price must not be negative"),
        ("r,NaN,USD,,\n", "line 3: unit_price must be a finite"),
        ("r,1,usd,,\n", "line 3: currency"),
        ("r,1,XYZ,,\n", "line 3: unknown currency"),
        ("r,1,USD,tomorrow,\n", "line 3: effective_from must be an ISO 8601"),
        (",1,USD,,\n", "line 3: resource_type must not be empty"),
        (" r,1,USD,,\n", "line 3: resource_type must not start or end with whitespace"),
        ("r,1,USD\n", "line 3: expected 5 fields"),
        ("r,1,USD,,,extra\n", "line 3: expected 5 fields"),
        ("r,1,USD,2026-01-01T00:00:00Z,\nr,2,USD,2026-01-01T00:00:00Z,\n", "line 4: .* on line 3"),
        ('r,1,USD,,"unterminated\n', "does not parse"),
    ],
)
def test_bad_csv_row_imports_nothing(registry: PriceRegistry, body: str, match: str) -> None:
    registry.set("existing", "1", effective_from=T0)
    before = snapshot(registry)
    with pytest.raises(InvalidPriceError, match=match) as info:
        registry.import_csv(f"{HEADER}\ntool.good,1,USD,2026-01-01T00:00:00Z,\n{body}")
    assert "Nothing was imported" in str(info.value)
    assert snapshot(registry) == before


def test_csv_reports_every_bad_line(registry: PriceRegistry) -> None:
    with pytest.raises(InvalidPriceError) as info:
        registry.import_csv(f"{HEADER}\nr,-1,USD,,\nok,1,USD,,\nr,0.5x,USD,,\n")
    assert "line 2" in str(info.value) and "line 4" in str(info.value)
    many = "".join(f"r{n},-1,USD,,\n" for n in range(25))
    with pytest.raises(InvalidPriceError, match="and 15 more"):
        registry.import_csv(f"{HEADER}\n{many}")
    assert registry.history() == []


def test_csv_clash_with_existing_price_imports_nothing(registry: PriceRegistry) -> None:
    registry.set("r", "1", effective_from=T0)
    before = snapshot(registry)
    with pytest.raises(InvalidPriceError, match="line 3: 'r' already has a price"):
        registry.import_csv(f"{HEADER}\nq,1,USD,2026-01-01T00:00:00Z,\nr,2,USD,2026-01-01T00:00:00Z,\n")
    assert snapshot(registry) == before


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("resource_type,price\n", "unknown column"),
        ("resource_type,unit_price,unit_price\n", "repeated column"),
        ("resource_type,currency\nr,USD\n", "missing column"),
        ("\n\nr,1\n", "empty|header"),
    ],
)
def test_bad_csv_header(registry: PriceRegistry, text: str, match: str) -> None:
    with pytest.raises(InvalidPriceError, match=match):
        registry.import_csv(text)


def test_csv_source_errors(registry: PriceRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidPriceError, match="cannot read"):
        registry.import_csv(tmp_path / "missing.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidPriceError, match="UTF-8"):
        registry.import_csv(binary)
    with pytest.raises(InvalidPriceError, match="path or CSV text"):
        registry.import_csv(42)  # type: ignore[arg-type]
    assert registry.import_csv(f"{HEADER}\n") == []
    assert registry.import_csv(HEADER) == []  # a lone header line is text, not a path
    assert not registry.path.exists()
    named = tmp_path / "resource_type_prices.csv"  # a path that looks like the header is still a path
    named.write_text(f"{HEADER}\ntool.x,1,USD,,\n", encoding="utf-8")
    assert [p.resource_type for p in registry.import_csv(str(named))] == ["tool.x"]


def test_export_csv_round_trips(registry: PriceRegistry, tmp_path: Path) -> None:
    registry.set("tool.search.calls", "0.030", effective_from=T0, note='quoted "note", with comma')
    registry.set("tool.search.calls", "3E-7", "EUR", effective_from=T1)
    registry.set("a", "1E+3", effective_from=T1)
    text = registry.export_csv()
    assert text.splitlines()[0] == HEADER
    assert text.splitlines()[1] == "a,1E+3,USD,2026-02-01T00:00:00.000000Z,"
    assert "0.0000003" in text
    other = PriceRegistry(tmp_path / "other.json")
    other.import_csv(text)
    assert other.history() == registry.history()
    assert [p.unit_price.as_tuple() for p in other.history()] == [
        p.unit_price.as_tuple() for p in registry.history()
    ]
    assert other.export_csv() == text


def test_empty_export(registry: PriceRegistry) -> None:
    assert registry.export_csv() == HEADER + "\n"


prices_strategy = st.lists(
    st.tuples(
        st.sampled_from(["tool.a", "tool.b,comma", 'q"uote', "openai.gpt-4o.input_tokens", "ünï.cödé"]),
        st.decimals(min_value=0, max_value=Decimal("1E+9"), allow_nan=False, allow_infinity=False).filter(
            lambda amount: amount.as_tuple().exponent >= -18  # type: ignore[operator]  # the input bounds
        ),
        st.sampled_from(["USD", "EUR"]),
        st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
        st.one_of(
            st.none(),
            st.text(
                alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"]).filter(str.isprintable),
                max_size=20,
            ),
        ),
    ),
    max_size=8,
    unique_by=lambda item: (item[0], item[3]),
)


@settings(max_examples=40, deadline=None)
@given(rows=prices_strategy)
def test_csv_round_trip_property(rows: list[tuple[str, Decimal, str, datetime, str | None]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = PriceRegistry(Path(folder) / "a.json")
        with source.document.transaction() as document:  # one write, not one per price
            document["prices"] = [Price(*row[:4], note=row[4]).to_dict() for row in rows]
        text = source.export_csv()
        target = PriceRegistry(Path(folder) / "b.json")
        target.import_csv(text)
        assert target.history() == source.history()
        assert [p.unit_price.as_tuple() for p in target.history()] == [
            p.unit_price.as_tuple() for p in source.history()
        ]
        assert target.export_csv() == text


# --- defaults -------------------------------------------------------------------------------------------


def test_seed_defaults_is_idempotent_and_prices_the_defaults(registry: PriceRegistry) -> None:
    added = registry.seed_defaults()
    assert [p.resource_type for p in added] == [resource for resource, _, _ in DEFAULT_PRICES]
    assert all(p.effective_from == EPOCH and p.currency == "USD" and p.note for p in added)
    before = snapshot(registry)
    assert registry.seed_defaults() == []
    assert snapshot(registry) == before
    book = registry.pricebook()
    for resource, unit, _ in DEFAULT_PRICES:
        assert book.cost(resource, 10, NOW)[0] == Decimal(unit) * 10


def test_seed_defaults_keeps_user_prices(registry: PriceRegistry) -> None:
    resource = DEFAULT_PRICES[0][0]
    registry.set(resource, "0.5", effective_from=T0)
    added = registry.seed_defaults()
    assert resource not in [p.resource_type for p in added]
    assert registry.history(resource) == [Price(resource, Decimal("0.5"), "USD", T0)]
