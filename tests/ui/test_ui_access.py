"""Who sees what on the dashboard, and what its actions require: sign-in cookies, CSRF tokens, agent scope."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import httpx

from tests.ui.conftest import UNIT_PRICE, Dashboard, figure, run_sdk

TODAY_USD = '[data-figure="spend-today"][data-currency="USD"]'


def signed_in(dashboard: Dashboard, who: str = "admin") -> tuple[httpx.Client, httpx.Response]:
    """An httpx client holding a session cookie, and the sign-in's response."""
    token = dashboard.admin_token if who == "admin" else dashboard.tokens[who]
    client = httpx.Client(base_url=dashboard.base_url, timeout=30)
    response = client.post("/ui/login", data={"key": token})
    assert response.status_code == 303, response.text
    return client, response


def csrf_of(client: httpx.Client, path: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
    assert found is not None
    return found.group(1)


def test_the_session_cookie_is_httponly_samesite_strict_and_scoped_to_the_dashboard(
    dashboard: Dashboard,
) -> None:
    client, response = signed_in(dashboard)
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert "httponly" in attributes
    assert re.search(r"samesite=strict", cookie, re.I)
    assert re.search(r"path=/ui(;|$)", cookie, re.I)
    assert dashboard.admin_token not in cookie  # the key itself never travels in the cookie
    assert client.get("/ui/overview").status_code == 200
    value = cookie.split(";")[0].split("=", 1)[1]
    tampered = value[:-1] + ("1" if value[-1] == "0" else "0")  # one hex digit of the HMAC changed
    forged = httpx.get(f"{dashboard.base_url}/ui/overview", cookies={"caracal_session": tampered})
    assert forged.status_code == 303 and forged.headers["location"] == "/ui/login"
    assert client.post("/ui/login", data={"key": "ck_nope_nope"}).status_code == 401
    elsewhere = {"origin": "https://evil.example"}
    refused = httpx.post(
        f"{dashboard.base_url}/ui/login", data={"key": dashboard.admin_token}, headers=elsewhere
    )
    assert refused.status_code == 403 and "set-cookie" not in refused.headers


def test_actions_need_the_sessions_csrf_token(dashboard: Dashboard) -> None:
    client, _ = signed_in(dashboard)
    token = csrf_of(client, "/ui/agents/worker")
    other_client, _ = signed_in(dashboard)
    other_token = csrf_of(other_client, "/ui/agents/worker")
    assert other_token != token  # per session
    for data in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": other_token}):
        refused = client.post("/ui/agents/worker/suspend", data=data)
        assert refused.status_code == 403, data
    assert client.post("/ui/ledger/verify", data={}).status_code == 403
    assert client.post("/ui/logout", data={"csrf": "bad"}).status_code == 403
    assert dashboard.api("GET", "/agents/worker").json()["status"] == "active"

    done = client.post("/ui/agents/worker/suspend", data={"csrf": token})
    assert done.status_code == 303
    assert dashboard.api("GET", "/agents/worker").json()["status"] == "suspended"
    assert client.post("/ui/agents/worker/activate", headers={"x-csrf-token": token}).status_code == 303
    assert dashboard.api("GET", "/agents/worker").json()["status"] == "active"

    # without a session there is no action at all
    anonymous = httpx.post(f"{dashboard.base_url}/ui/agents/worker/suspend", data={"csrf": token})
    assert anonymous.status_code == 401
    assert client.post("/ui/logout", data={"csrf": token}).status_code == 303


def test_an_agent_key_cannot_suspend_even_with_its_token(dashboard: Dashboard) -> None:
    client, _ = signed_in(dashboard, "team")
    token = csrf_of(client, "/ui/agents/worker")
    assert client.post("/ui/agents/worker/suspend", data={"csrf": token}).status_code == 403
    assert dashboard.api("GET", "/agents/worker").json()["status"] == "active"


def test_revoking_the_key_signs_its_sessions_out(dashboard: Dashboard) -> None:
    client, _ = signed_in(dashboard, "worker")
    assert client.get("/ui/overview").status_code == 200
    assert dashboard.api("DELETE", f"/keys/{dashboard.key_ids['worker']}").status_code == 200
    gone = client.get("/ui/overview")
    assert gone.status_code == 303 and gone.headers["location"] == "/ui/login"
    assert client.get("/ui/state").status_code == 401


def test_an_agent_key_sees_only_its_own_subtree(
    dashboard: Dashboard, page: Any, expected_errors: list[str]
) -> None:
    expected_errors.append("the server responded with a status of 403")  # the pages it must not see
    dashboard.spend(("worker", "2"), ("other", "4"), ("team", "1"))
    run_sdk(dashboard.home, "try:\n    client.reserve('other', '1000')\nexcept Exception:\n    pass\n")
    assert len(dashboard.api("GET", "/denials").json()) == 1
    dashboard.sign_in(page, "worker")
    page.goto(f"{dashboard.base_url}/ui/overview")
    assert figure(page, TODAY_USD) == 2 * Decimal(UNIT_PRICE)  # worker's spend only
    content = page.content()
    assert "other" not in re.sub(r"<[^>]+>", " ", content).split()
    assert page.locator('#agents tr[data-agent="other"]').count() == 0
    assert page.locator('#agents tr[data-agent="team"]').count() == 0
    assert page.locator("#denials tr[data-agent]").count() == 0  # other's denial is not worker's to see

    for ref in ("other", dashboard.agent_ids["other"], "team", "no-such-agent"):
        response = page.goto(f"{dashboard.base_url}/ui/agents/{ref}")
        assert response is not None and response.status == 403, ref
        assert "no such agent, or not yours to see" in page.content()
    unknown = page.goto(f"{dashboard.base_url}/ui/ledger?agent=other")
    assert unknown is not None and unknown.status == 403

    page.goto(f"{dashboard.base_url}/ui/ledger")
    agents = set(page.locator("table.events tbody tr td:nth-child(3)").all_inner_texts())
    assert agents == {"worker"}
    assert page.locator("a[href^='/ui/ledger/proof/']").count() == 0  # proofs are the admin's
    response = page.goto(f"{dashboard.base_url}/ui/agents/worker")
    assert response is not None and response.status == 200
    assert page.locator("form[action$='/suspend']").count() == 0


def test_the_admin_sees_every_page_without_javascript_errors(dashboard: Dashboard, page: Any) -> None:
    dashboard.spend(("worker", "2"), ("other", "4"))
    report = dashboard.api("POST", "/ledger/verify").json()
    assert report["ok"] and report["events"] == 2
    dashboard.sign_in(page)
    # the API's verification, recorded for the dashboard
    assert "last verify: OK, 2 entries" in page.locator(".stat").last.inner_text()
    for path in (
        "/ui/overview",
        "/ui/overview?granularity=day&by=resource",
        "/ui/agents/team",
        "/ui/agents/worker?granularity=hour",
        "/ui/ledger",
        "/ui/ledger?kind=charge&agent=other",
    ):
        response = page.goto(f"{dashboard.base_url}{path}")
        assert response is not None and response.status == 200, path
        page.wait_for_selector("body[data-version]")  # the live script ran
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{dashboard.base_url}/ui/overview")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1  # readable on a phone: nothing wider than the screen
