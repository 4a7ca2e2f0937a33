"""The ledger page over a large ledger (paged newest first, without reading it all), verification on demand
with its result recorded, and an event's inclusion proof as a download equal to the API's."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from caracal.core.ledger import LedgerWriter
from caracal.storage.home import EmbeddedHome
from tests.cli.test_cli_serve import serving
from tests.ui.conftest import Dashboard, populate

EVENTS = 200_000
BATCH = 1_000
RARE_EVERY = 50_000
"""One batch in this many events is ``other``'s; the rest are ``worker``'s."""


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A home whose ledger holds 200,000 charges, appended in batches, served by ``caracal serve``."""
    home = tmp_path_factory.mktemp("large-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CARACAL_HOME", str(home))
        patch.delenv("CARACAL_DATABASE_URL", raising=False)
        made = populate(home)
        embedded = EmbeddedHome(home)
        try:
            store = embedded.backend.ledger_store(lock_timeout=30, backup_count=0, backup_min_interval=0)
            ids = made["agent_ids"]

            def batch(agent: str) -> list[dict[str, str]]:
                line = {
                    "agent_id": ids[agent],
                    "resource_type": "tool.calls",
                    "quantity": "1",
                    "cost": "0.005",
                }
                return [line] * BATCH

            with LedgerWriter(store, signing_key_path=embedded.key_path, checkpoint_interval=0) as writer:
                for index in range(EVENTS // BATCH):
                    rare = (index * BATCH) % RARE_EVERY == 0
                    writer.append_events(batch("other" if rare else "worker"))
                writer.checkpoint()
        finally:
            embedded.close()
        with serving(home) as (base_url, _process):
            yield Dashboard(
                base_url, home, made["admin"], made["tokens"], made["agent_ids"], made["policy_ids"],
                made["key_ids"],
            )  # fmt: skip


def follow(page: Any, selector: str) -> None:
    """Click a link and wait for the page it leads to."""
    with page.expect_navigation():
        page.click(selector)


def shown_ids(page: Any) -> list[int]:
    cells = page.locator("table.events tbody tr[data-event] td:first-child")
    return [int(text) for text in cells.all_inner_texts()]


def test_the_ledger_pages_newest_first_over_a_large_ledger(large: Dashboard, page: Any) -> None:
    large.sign_in(page)
    page.goto(f"{large.base_url}/ui/ledger")
    assert shown_ids(page) == list(range(EVENTS, EVENTS - 50, -1))
    follow(page, "a[rel=next]")
    assert shown_ids(page) == list(range(EVENTS - 50, EVENTS - 100, -1))
    assert "scanned" in page.content()
    follow(page, "nav.pager a:text-is('Newest')")
    assert shown_ids(page)[0] == EVENTS

    # A sparse filter: other's entries are 1,000 in every 50,000 (ids 1..1000, 50001..51000, ...); a page
    # scans a bounded number of entries and offers to continue.
    page.goto(f"{large.base_url}/ui/ledger?agent=other")
    assert shown_ids(page) == []
    text = page.locator("a[rel=next]").inner_text()
    assert re.search(r"Scanned \d+ entries without filling the page: continue", text)
    for _ in range(10):
        if shown_ids(page):
            break
        follow(page, "a[rel=next]")
    ids = shown_ids(page)
    assert ids and all(150_001 <= i <= 151_000 for i in ids)
    assert ids == sorted(ids, reverse=True)


def test_verify_on_demand_and_an_inclusion_proof_to_download(large: Dashboard, page: Any) -> None:
    large.sign_in(page)
    page.goto(f"{large.base_url}/ui/ledger")
    page.click("#verify button[type=submit]")
    page.wait_for_function(
        "() => /Last verification: OK, 200000 entries checked/.test("
        "document.querySelector('[data-figure=last-verify]')?.textContent || '')",
        timeout=240_000,
    )
    page.goto(f"{large.base_url}/ui/overview")
    assert "OK" in page.locator("text=last verify").inner_text()

    page.goto(f"{large.base_url}/ui/ledger")
    with page.expect_download() as info:
        page.click(f"a[href='/ui/ledger/proof/{EVENTS - 1}']")
    downloaded = json.loads(Path(info.value.path()).read_text())
    from_api = large.api("GET", "/ledger/proofs/inclusion", params={"event_id": EVENTS - 1}).json()
    checkpoint = downloaded.pop("checkpoint")
    assert downloaded == from_api
    assert checkpoint == large.api("GET", "/ledger/checkpoint").json()
    assert from_api["tree_size"] == EVENTS and from_api["matches_signed_checkpoint"] is True
