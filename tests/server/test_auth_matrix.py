"""Who may call what: every REST route (taken from the app, so a new route without an entry here fails)
against every kind of caller.

Each route has a scope:

- ``admin``: the admin key only (agent keys get 403);
- ``act``: a write for agent ``worker``: the admin or worker's own key (its parent ``team`` gets 403: a
  parent may read its children, not spend as them);
- ``read``: a read about ``worker``: the admin, worker's key, or an ancestor's (``team``);
- ``any``: any valid key.

Every route answers 401 (with ``WWW-Authenticate``) to a request without a key, with a well-formed but
unknown key, a malformed key, another scheme, or a revoked key — before the body is even parsed, so an
unauthenticated caller learns nothing about the endpoint's input. Authorization (which agent) is decided
once the body is read (the agent is named there), so an authenticated caller with a bad body gets 400.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import APIRoute

from caracal.server import alerts_api, api
from tests.server.conftest import RESOURCE, Live, start

API = "/api/v1"
UNKNOWN_TOKEN = "ck_0123456789ab_" + "A" * 43
_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


@dataclass
class Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)


def hold_of_worker(server: Live) -> str:
    response = server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "0.01"})
    assert response.status_code == 201, response.text
    hold_id: str = response.json()["hold_id"]
    return hold_id


def alert_rule(server: Live) -> str:
    rule = server.service.home.alerts.create(
        name=unique("rule"), url="http://127.0.0.1:9/hook", on="suspended"
    )
    return rule.rule_id


def failed_alert(server: Live) -> str:
    """An outbox entry that failed (its rule was deleted before delivery)."""
    alerts = server.service.home.alerts
    rule_id = alert_rule(server)
    event = alerts.test(rule_id)
    alerts.finish(
        event.event_id, delivered=False, status=None, error="x", retry_base=1, retry_max=1, max_attempts=1,
        keep_delivered=1,
    )  # fmt: skip
    return event.event_id


def throwaway_key(server: Live) -> str:
    key, _token = server.service.keys.create("agent", server.agent_ids["other"], "throwaway")
    return key.key_id


Builder = Callable[[Live], Call]

MATRIX: dict[tuple[str, str], tuple[str, Builder]] = {
    ("GET", "/metrics"): ("admin", lambda s: Call("GET", "/metrics")),
    ("POST", f"{API}/agents"): (
        "admin",
        lambda s: Call("POST", f"{API}/agents", {"name": unique("agent"), "owner": "me"}),
    ),
    ("GET", f"{API}/agents"): ("any", lambda s: Call("GET", f"{API}/agents")),
    ("GET", f"{API}/agents/{{agent}}"): ("read", lambda s: Call("GET", f"{API}/agents/worker")),
    ("GET", f"{API}/agents/{{agent}}/budget"): ("read", lambda s: Call("GET", f"{API}/agents/worker/budget")),
    ("POST", f"{API}/agents/{{agent}}/suspend"): (
        "admin",
        lambda s: Call("POST", f"{API}/agents/worker/suspend"),
    ),
    ("POST", f"{API}/agents/{{agent}}/activate"): (
        "admin",
        lambda s: Call("POST", f"{API}/agents/worker/activate"),
    ),
    ("POST", f"{API}/agents/{{agent}}/keys"): (
        "admin",
        lambda s: Call("POST", f"{API}/agents/worker/keys", {"label": "new"}),
    ),
    ("GET", f"{API}/agents/{{agent}}/keys"): ("admin", lambda s: Call("GET", f"{API}/agents/worker/keys")),
    ("DELETE", f"{API}/keys/{{key_id}}"): (
        "admin",
        lambda s: Call("DELETE", f"{API}/keys/{throwaway_key(s)}"),
    ),
    ("POST", f"{API}/policies"): (
        "admin",
        lambda s: Call("POST", f"{API}/policies", {"agent_id": "worker", "limit": "5"}),
    ),
    ("GET", f"{API}/policies"): (
        "read",
        lambda s: Call("GET", f"{API}/policies", params={"agent_id": "worker"}),
    ),
    ("GET", f"{API}/policies/{{policy_id}}"): (
        "read",
        lambda s: Call("GET", f"{API}/policies/{s.policy_ids['worker']}"),
    ),
    ("PATCH", f"{API}/policies/{{policy_id}}"): (
        "admin",
        lambda s: Call("PATCH", f"{API}/policies/{s.policy_ids['worker']}", {"limit": "12"}),
    ),
    ("POST", f"{API}/policies/{{policy_id}}/deactivate"): (
        "admin",
        lambda s: Call("POST", f"{API}/policies/{s.policy_ids['worker']}/deactivate", {"reason": "x"}),
    ),
    ("POST", f"{API}/policies/{{policy_id}}/activate"): (
        "admin",
        lambda s: Call("POST", f"{API}/policies/{s.policy_ids['worker']}/activate"),
    ),
    ("PUT", f"{API}/prices/{{resource_type}}"): (
        "admin",
        lambda s: Call("PUT", f"{API}/prices/tool.other", {"unit_price": "1"}),
    ),
    ("GET", f"{API}/prices"): ("any", lambda s: Call("GET", f"{API}/prices")),
    ("GET", f"{API}/prices/{{resource_type}}"): ("any", lambda s: Call("GET", f"{API}/prices/{RESOURCE}")),
    ("POST", f"{API}/events"): (
        "act",
        lambda s: Call(
            "POST", f"{API}/events", {"agent_id": "worker", "resource_type": RESOURCE, "quantity": "1"}
        ),
    ),
    ("POST", f"{API}/check"): (
        "read",
        lambda s: Call("POST", f"{API}/check", {"agent_id": "worker", "amount": "1"}),
    ),
    ("POST", f"{API}/holds"): (
        "act",
        lambda s: Call("POST", f"{API}/holds", {"agent_id": "worker", "amount": "1"}),
    ),
    ("POST", f"{API}/holds/{{hold_id}}/settle"): (
        "act",
        lambda s: Call("POST", f"{API}/holds/{hold_of_worker(s)}/settle", {"charges": []}),
    ),
    ("POST", f"{API}/holds/{{hold_id}}/release"): (
        "act",
        lambda s: Call("POST", f"{API}/holds/{hold_of_worker(s)}/release"),
    ),
    ("GET", f"{API}/ledger/events"): (
        "read",
        lambda s: Call("GET", f"{API}/ledger/events", params={"agent_id": "worker"}),
    ),
    ("GET", f"{API}/ledger/summary"): ("admin", lambda s: Call("GET", f"{API}/ledger/summary")),
    ("POST", f"{API}/ledger/verify"): ("admin", lambda s: Call("POST", f"{API}/ledger/verify")),
    ("GET", f"{API}/ledger/checkpoint"): ("admin", lambda s: Call("GET", f"{API}/ledger/checkpoint")),
    ("POST", f"{API}/ledger/checkpoint"): ("admin", lambda s: Call("POST", f"{API}/ledger/checkpoint")),
    ("GET", f"{API}/ledger/proofs/inclusion"): (
        "admin",
        lambda s: Call("GET", f"{API}/ledger/proofs/inclusion", params={"event_id": 1}),
    ),
    ("GET", f"{API}/ledger/proofs/consistency"): (
        "admin",
        lambda s: Call("GET", f"{API}/ledger/proofs/consistency", params={"first": 1}),
    ),
    ("GET", f"{API}/denials"): ("any", lambda s: Call("GET", f"{API}/denials")),
    ("POST", f"{API}/alerts"): (
        "admin",
        lambda s: Call(
            "POST",
            f"{API}/alerts",
            {"name": unique("rule"), "url": "http://127.0.0.1:9/h", "on": "suspended"},
        ),
    ),
    ("GET", f"{API}/alerts"): ("admin", lambda s: Call("GET", f"{API}/alerts")),
    ("GET", f"{API}/alerts/deliveries"): ("admin", lambda s: Call("GET", f"{API}/alerts/deliveries")),
    ("GET", f"{API}/alerts/{{rule_id}}"): ("admin", lambda s: Call("GET", f"{API}/alerts/{alert_rule(s)}")),
    ("DELETE", f"{API}/alerts/{{rule_id}}"): (
        "admin",
        lambda s: Call("DELETE", f"{API}/alerts/{alert_rule(s)}"),
    ),
    ("POST", f"{API}/alerts/deliveries/{{event_id}}/retry"): (
        "admin",
        lambda s: Call("POST", f"{API}/alerts/deliveries/{failed_alert(s)}/retry"),
    ),
    ("POST", f"{API}/alerts/{{rule_id}}/test"): (
        "admin",
        lambda s: Call("POST", f"{API}/alerts/{alert_rule(s)}/test"),
    ),
}

# Who is allowed, per scope ("worker" is the agent every call is about; "team" is its parent).
ALLOWED = {
    "admin": set(),
    "act": {"worker"},
    "read": {"worker", "team"},
    "any": {"worker", "team", "other"},
}

BAD_KEYS = {
    "no key": {},
    "unknown key": {"Authorization": f"Bearer {UNKNOWN_TOKEN}"},
    "malformed key": {"Authorization": "Bearer not-a-caracal-key"},
    "other scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "bearer without token": {"Authorization": "Bearer"},
    "unknown x-api-key": {"x-api-key": UNKNOWN_TOKEN},
}


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the tests that change nothing (every request is refused; the ``server`` tests of
    this module run on both backends)."""
    yield from start(tmp_path_factory.mktemp("shared") / "home")


def routes_of_the_app() -> set[tuple[str, str]]:
    found = {("GET", "/metrics")}
    for route in [*api.router.routes, *alerts_api.router.routes]:
        assert isinstance(route, APIRoute), route
        for method in route.methods or ():
            if route.path_format.startswith(f"{API}/"):
                found.add((method, route.path_format))
    return found


def test_every_route_has_a_matrix_entry() -> None:
    assert routes_of_the_app() == set(MATRIX)


def test_the_matrix_covers_the_openapi_document(server: Live) -> None:
    paths = server.get("/openapi.json", who=None).json()["paths"]
    listed = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith(f"{API}/") or path == "/metrics"
        for method in operations
    }
    assert listed == set(MATRIX)


def send(server: Live, call: Call, headers: dict[str, str]) -> Any:
    return server.client.request(call.method, call.path, headers=headers, json=call.json, params=call.params)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: Any, what: str) -> None:
    assert response.status_code == 401, (what, response.status_code, response.text)
    assert response.headers.get("www-authenticate") == "Bearer", what
    error = response.json()["error"]
    assert error["type"] == "AuthenticationError" and error["code"] == "authentication", what


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda route: f"{route[0]} {route[1]}")
def test_route(server: Live, route: tuple[str, str]) -> None:
    scope, build = MATRIX[route]
    server.post(f"{API}/events", json={"agent_id": "worker", "resource_type": RESOURCE, "quantity": "1"})

    for what, headers in {**BAD_KEYS, "revoked key": bearer(server.revoked_token)}.items():
        assert_401(send(server, build(server), headers), what)
    revoked_x = send(server, build(server), {"x-api-key": server.revoked_token})
    assert_401(revoked_x, "revoked x-api-key")

    for who in ("other", "team", "worker"):
        response = send(server, build(server), bearer(server.tokens[who]))
        if who in ALLOWED[scope]:
            assert response.status_code not in (401, 403), (who, response.status_code, response.text)
            assert response.status_code < 400, (who, response.status_code, response.text)
        else:
            assert response.status_code == 403, (who, response.status_code, response.text)
            assert response.json()["error"]["type"] == "PermissionDeniedError"

    # The admin, through both headers.
    response = send(server, build(server), bearer(server.admin_token))
    assert response.status_code not in (401, 403), response.text
    response = send(server, build(server), {"x-api-key": server.admin_token})
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize(
    "route",
    sorted(route for route in MATRIX if route[0] in ("POST", "PUT", "PATCH")),
    ids=lambda route: f"{route[0]} {route[1]}",
)
def test_401_comes_before_the_body_is_read(shared_server: Live, route: tuple[str, str]) -> None:
    server = shared_server
    call = MATRIX[route][1](server)
    for body in (b"{not json", b"[1, 2, 3]", b'{"unexpected": 1.5}'):
        response = server.client.request(
            call.method, call.path, content=body, headers={"content-type": "application/json"}
        )
        assert_401(response, body.decode())
    response = server.client.request(
        call.method,
        call.path,
        content=b"{not json",
        headers={"content-type": "application/json", **bearer(server.revoked_token)},
    )
    assert_401(response, "revoked")


def test_unknown_api_paths_are_json_404(server: Live) -> None:
    for who in (None, "admin"):
        response = server.get(f"{API}/no-such-thing", who)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "http_404"


def test_listing_all_policies_needs_the_admin(server: Live) -> None:
    assert server.get(f"{API}/policies", "team").status_code == 403
    assert server.get(f"{API}/policies").status_code == 200


def test_agent_key_sees_only_its_subtree(server: Live) -> None:
    names = {agent["name"] for agent in server.get(f"{API}/agents", "other").json()}
    assert names == {"other"}
    assert server.get(f"{API}/agents/team", "worker").status_code == 403
    assert server.get(f"{API}/agents/worker", "other").status_code == 403
