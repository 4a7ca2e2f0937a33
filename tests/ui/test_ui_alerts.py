"""The alerts page in a real browser: the admin creates a rule (its secret shown once), tests it against a
real receiver, watches a threshold crossing arrive once and show as delivered, and deletes the rule; the
page and the API show the same rules. An agent key sees no alerts page, and every action needs the CSRF
token."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.alert_receiver import Receiver
from tests.ui.conftest import Dashboard
from tests.ui.test_ui_access import csrf_of, signed_in


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_the_admin_creates_tests_watches_and_deletes_a_rule(
    dashboard: Dashboard, page: Any, receiver: Receiver
) -> None:
    dashboard.sign_in(page)
    page.click("nav >> text=Alerts")
    page.wait_for_url("**/ui/alerts")
    page.fill("input[name=name]", "worker at 80%")
    page.fill("input[name=url]", receiver.url)
    page.select_option("select[name=on]", "threshold")
    page.fill("input[name=threshold]", "0.8")
    page.fill("input[name=agent]", "worker")
    page.click("#new-rule button[type=submit]")
    secret = page.locator('[data-figure="alert-secret"]').inner_text().strip()
    assert secret.startswith("whsec_")

    (rule,) = dashboard.api("GET", "/alerts").json()
    assert (rule["name"], rule["on"], rule["threshold"], rule["agent_id"]) == (
        "worker at 80%", "threshold", "0.8", dashboard.agent_ids["worker"]
    )  # fmt: skip
    assert "secret" not in rule
    row = page.locator('tr[data-rule="worker at 80%"]')
    assert "0.8 (80%) of the limit" in row.inner_text() and "agent worker" in row.inner_text()

    row.locator("text=Test").click()
    assert page.locator('[data-figure="test-state"]').inner_text() == "delivered"
    (tested,) = receiver.requests
    assert tested.json["type"] == "test" and tested.verifies(secret)

    dashboard.spend(("worker", "33"))  # 8.25 of 10.00: past 80%, from another process
    wait_for(lambda: sum(r.json["type"] == "policy.threshold_crossed" for r in receiver.requests) == 1,
             "the crossing's webhook")  # fmt: skip
    crossing = next(r for r in receiver.requests if r.json["type"] == "policy.threshold_crossed")
    assert crossing.verifies(secret) and crossing.json["figures"]["spent"] == "8.25"

    def shown_delivered() -> bool:
        page.goto(f"{dashboard.base_url}/ui/alerts")
        state = page.locator(f'tr[data-delivery="{crossing.event_id}"] [data-figure="delivery-state"]')
        return state.count() == 1 and state.inner_text() == "delivered"

    wait_for(shown_delivered, "the delivery to show as delivered")
    dashboard.spend(("worker", "2"))  # 8.75: still this window, no second crossing
    time.sleep(3)
    assert sum(r.json["type"] == "policy.threshold_crossed" for r in receiver.requests) == 1

    page.locator('tr[data-rule="worker at 80%"]').locator("text=Delete").click()
    page.wait_for_url("**/ui/alerts")
    assert dashboard.api("GET", "/alerts").json() == []
    assert page.locator('tr[data-rule="worker at 80%"]').count() == 0


@pytest.mark.parametrize("expected_errors", [["status of 400"]])  # the refused form's answer
def test_a_bad_rule_is_refused_with_its_reason_and_the_form_kept(dashboard: Dashboard, page: Any) -> None:
    dashboard.sign_in(page)
    page.goto(f"{dashboard.base_url}/ui/alerts")
    page.fill("input[name=name]", "broken")
    page.fill("input[name=url]", "ftp://example.com/hook")
    page.fill("input[name=threshold]", "0.8")
    page.click("#new-rule button[type=submit]")
    assert "http:// or https://" in page.locator("#alert-error").inner_text()
    assert page.input_value("input[name=name]") == "broken"
    assert dashboard.api("GET", "/alerts").json() == []


def test_alerts_are_the_admins_and_every_action_needs_the_csrf_token(
    dashboard: Dashboard, receiver: Receiver
) -> None:
    agent, _ = signed_in(dashboard, "worker")
    assert agent.get("/ui/alerts").status_code == 403
    assert 'href="/ui/alerts"' not in agent.get("/ui/overview").text
    token = csrf_of(agent, "/ui/overview")
    form = {"csrf": token, "name": "x", "url": receiver.url, "on": "suspended"}
    assert agent.post("/ui/alerts", data=form).status_code == 403

    admin, _ = signed_in(dashboard)
    token = csrf_of(admin, "/ui/alerts")
    form = {"name": "suspensions", "url": receiver.url, "on": "suspended"}
    for csrf in (None, "", "0" * 64):
        data = form if csrf is None else {**form, "csrf": csrf}
        assert admin.post("/ui/alerts", data=data).status_code == 403
    assert dashboard.api("GET", "/alerts").json() == []
    assert admin.post("/ui/alerts", data={**form, "csrf": token}).status_code == 201
    (rule,) = dashboard.api("GET", "/alerts").json()
    for action in ("test", "delete"):
        assert admin.post(f"/ui/alerts/{rule['id']}/{action}").status_code == 403
    assert (
        httpx.post(f"{dashboard.base_url}/ui/alerts/{rule['id']}/delete", data={"csrf": token}).status_code
        == 401
    )
    assert len(dashboard.api("GET", "/alerts").json()) == 1
    assert receiver.requests == []
