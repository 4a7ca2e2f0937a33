"""The ledger page's filters and paging (caracal.server.ui.figures.ledger_page), over a file ledger."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from caracal.core.ledger import LedgerWriter
from caracal.server.ui import figures

START = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def service(tmp_path: Path) -> Any:
    """A stand-in service whose home's ledger holds 300 charges: agents a/b/c in turn, resources x/y, one
    minute apart from START, then a hold and a release."""
    path = tmp_path / "ledger" / "ledger.jsonl"
    with LedgerWriter(path, signing_key_path=tmp_path / "key") as writer:
        for index in range(300):
            writer.append_event(
                "abc"[index % 3], "xy"[index % 2], "1", "0.01", timestamp=START + timedelta(minutes=index)
            )
        writer.append_events(
            [
                {"agent_id": "a", "resource_type": "caracal.hold", "quantity": "0", "cost": "0.5",
                 "kind": "hold", "hold_id": "h1", "expires_at": "2026-03-02T00:00:00Z"},
            ]
        )  # fmt: skip
    return SimpleNamespace(home=SimpleNamespace(ledger=path))


def ids(page: figures.LedgerPage) -> list[int]:
    return [event.event_id for event in page.events]


def test_filters_by_agent_resource_kind_and_time(service: Any) -> None:
    page = figures.ledger_page(service, {"b"}, "y", None, None, None, None, size=5)
    assert ids(page) == [296, 290, 284, 278, 272]  # b: index % 3 == 1; y: odd indexes; ids are index + 1
    assert all(e.agent_id == "b" and e.resource_type == "y" for e in page.events)
    holds = figures.ledger_page(service, None, None, "hold", None, None, None)
    assert ids(holds) == [301] and holds.next_before is None
    charges = figures.ledger_page(service, None, None, "charge", None, None, None, size=2)
    assert ids(charges) == [300, 299]
    since, until = START + timedelta(minutes=10), START + timedelta(minutes=14)
    window = figures.ledger_page(service, None, None, None, since, until, None)
    assert ids(window) == [15, 14, 13, 12, 11]
    assert window.next_before is None  # entries before `since` cannot match: the scan stopped


def test_pages_continue_from_the_cursor_without_gaps_or_repeats(service: Any) -> None:
    seen: list[int] = []
    before = None
    while True:
        page = figures.ledger_page(service, {"a"}, None, "charge", None, None, before, size=7)
        seen.extend(ids(page))
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == list(range(298, 0, -3))


def test_a_sparse_filter_scans_a_bounded_number_of_entries(service: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(figures, "SCAN_LIMIT", 50)
    page = figures.ledger_page(service, {"nobody"}, None, None, None, None, None)
    assert ids(page) == [] and page.scanned == 50 and page.next_before is not None
    more = figures.ledger_page(service, {"nobody"}, None, None, None, None, page.next_before)
    assert more.scanned == 50
