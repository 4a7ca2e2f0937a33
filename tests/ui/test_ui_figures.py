"""The figures the dashboard shows equal the REST API's answers and a sum over the ledger, after a scripted
run of spend from another process; on both backends. A charge made by another process shows up live."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from caracal.core.ledger_read import LedgerQuery
from caracal.storage.home import EmbeddedHome
from tests.ui.conftest import UNIT_PRICE, Dashboard, figure, run_sdk

TODAY_USD = '[data-figure="spend-today"][data-currency="USD"]'
AGENT_TODAY = '[data-figure="agent-today"]'
DENIED = """
try:
    client.reserve(%r, '1000')
except Exception:
    pass
else:
    raise SystemExit('not denied')
"""


def ledger_today(dashboard: Dashboard) -> dict[str, Decimal]:
    """Today's charges per agent id, summed over the ledger itself (not through the server)."""
    home = EmbeddedHome(dashboard.home)
    try:
        today = datetime.now(timezone.utc).date()
        totals = LedgerQuery(home.ledger).summarize("agent", start_time=today)
    finally:
        home.close()
    return {agent: t.cost for (agent, currency), t in totals.items() if currency == "USD"}


def test_the_figures_shown_equal_the_api_and_the_ledger(
    dashboard: Dashboard, page: Any, storage: str
) -> None:
    dashboard.spend(("worker", "3"), ("worker", "1.5"), ("other", "2"), ("team", "0.1"))
    run_sdk(dashboard.home, "client.reserve('worker', '1.25', ttl=3600)")
    run_sdk(dashboard.home, DENIED % "worker")
    expected = {name: Decimal(q) * Decimal(UNIT_PRICE) for name, q in (("worker", "4.5"), ("other", "2"))}
    expected["team"] = Decimal("0.1") * Decimal(UNIT_PRICE)
    ledger = ledger_today(dashboard)
    assert {name: ledger[dashboard.agent_ids[name]] for name in expected} == expected

    dashboard.sign_in(page)
    page.goto(f"{dashboard.base_url}/ui/overview")
    shown_today = figure(page, TODAY_USD)
    assert shown_today == sum(ledger.values()) == sum(expected.values())
    assert figure(page, '[data-figure="spend-month"][data-currency="USD"]') >= shown_today
    since = datetime.now(timezone.utc).date().isoformat()
    summary = dashboard.api("GET", "/ledger/summary", params={"by": "agent", "since": since}).json()
    api_totals = {row["agent"]: Decimal(row["cost"]) for row in summary if row["currency"] == "USD"}
    for name, agent_id in dashboard.agent_ids.items():
        row = page.locator(f'#agents tr[data-agent="{name}"][data-currency="USD"] {AGENT_TODAY}')
        assert Decimal(row.inner_text()) == api_totals[agent_id] == ledger[agent_id]
    newest = dashboard.api("GET", "/ledger/events", params={"limit": 1, "include_holds": "true"}).json()
    assert figure(page, '[data-figure="ledger-size"]') == newest[0]["event_id"]

    denials = dashboard.api("GET", "/denials").json()
    assert [(d["agent_id"], d["count"]) for d in denials] == [(dashboard.agent_ids["worker"], 1)]
    assert page.locator('#denials tr[data-agent="worker"] [data-figure="denial-count"]').inner_text() == "1"
    assert page.locator("#denials tr[data-agent]").count() == 1

    page.goto(f"{dashboard.base_url}/ui/agents/worker")
    budget = dashboard.api("GET", "/agents/worker/budget").json()
    assert len(budget) == 2  # its own policy and its parent's
    for status in budget:
        gauge = page.locator(f'.gauge[data-policy="{status["policy"]["policy_id"]}"]')
        for name in ("spent", "held", "remaining"):
            shown = gauge.locator(f'[data-figure="{name}"]').inner_text()
            assert Decimal(shown) == Decimal(status[name]), name
        limit = gauge.locator('[data-figure="limit"]').inner_text()
        assert Decimal(limit) == Decimal(status["policy"]["limit"])
    own = page.locator(f'.gauge[data-policy="{dashboard.policy_ids["worker"]}"]')
    assert Decimal(own.locator('[data-figure="held"]').inner_text()) == Decimal("1.25")
    assert Decimal(own.locator('[data-figure="spent"]').inner_text()) == expected["worker"]


def test_a_charge_made_elsewhere_appears_without_a_reload(
    dashboard: Dashboard, page: Any, storage: str
) -> None:
    dashboard.spend(("worker", "1"))
    dashboard.sign_in(page)
    page.goto(f"{dashboard.base_url}/ui/overview")
    before = figure(page, TODAY_USD)
    assert before == Decimal(UNIT_PRICE)
    page.evaluate("window.__same_document = true")
    page.wait_for_selector("body[data-version]")  # the page polls

    dashboard.spend(("other", "2"))
    wanted = str(before + 2 * Decimal(UNIT_PRICE))
    page.wait_for_function(
        "([selector, wanted]) => document.querySelector(selector)?.textContent.trim() === wanted",
        arg=[TODAY_USD, wanted],
        timeout=60_000,
    )
    assert page.evaluate("window.__same_document") is True  # swapped in place, not reloaded
    row = page.locator('#agents tr[data-agent="other"] [data-figure="agent-today"]')
    assert Decimal(row.inner_text()) == 2 * Decimal(UNIT_PRICE)
