"""The REST API over real HTTP: every endpoint's happy path and its main errors, metrics, OpenAPI and a
concurrent burst of holds."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi.routing import APIRoute

from caracal.core.checkpoint import Checkpoint
from caracal.core.merkle import verify_consistency, verify_inclusion
from caracal.core.validation import MAX_METADATA_BYTES
from caracal.core.verify import verify_ledger
from caracal.server import api
from tests.pg import ledger_lines
from tests.server.conftest import RESOURCE, Live, start

API = "/api/v1"


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"type", "code", "message"}
    return error


def charge(server: Live, agent: str = "worker", quantity: str = "2", who: str = "admin", **extra: Any) -> Any:
    body = {"agent_id": agent, "resource_type": RESOURCE, "quantity": quantity, **extra}
    response = server.post(f"{API}/events", who, json=body)
    assert response.status_code == 201, response.text
    return response.json()


# --------------------------------------------------------------------------------------- operations


def test_healthz_needs_no_key(server: Live) -> None:
    response = server.get("/healthz", who=None)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_openapi_lists_every_route(server: Live) -> None:
    document = server.get("/openapi.json", who=None).json()
    routes = [route for route in api.router.routes if isinstance(route, APIRoute)]
    assert len(routes) == len(api.router.routes)
    for route in routes:
        path = route.path_format
        methods = {method.lower() for method in route.methods or ()}
        assert path in document["paths"], path
        assert methods <= set(document["paths"][path]), (path, methods)
    assert "/metrics" in document["paths"] and "/healthz" in document["paths"]


def test_metrics_show_decisions_holds_and_group_commits(server: Live) -> None:
    hold = server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "1"}).json()
    server.post(f"{API}/holds/{hold['hold_id']}/release")
    server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "1000"})
    server.post(f"{API}/check", json={"agent_id": "worker", "amount": "1"})
    charge(server)
    response = server.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'caracal_decisions_total{operation="reserve",outcome="allowed"} 1.0' in text
    assert 'caracal_decisions_total{operation="reserve",outcome="denied"} 1.0' in text
    assert 'caracal_decisions_total{operation="check",outcome="allowed"} 1.0' in text
    assert 'caracal_holds_total{event="placed"} 1.0' in text
    assert 'caracal_holds_total{event="released"} 1.0' in text
    assert "caracal_group_commit_size_count" in text
    assert "caracal_http_request_seconds_bucket" in text
    assert 'route="/api/v1/holds"' in text


def test_oversized_body_is_413(tmp_path: Path) -> None:
    live_iter = start(tmp_path / "home", max_body_bytes=2000)
    server = next(live_iter)
    try:
        body = {
            "agent_id": "worker",
            "resource_type": RESOURCE,
            "quantity": "1",
            "metadata": {"x": "y" * 5000},
        }
        error = error_of(server.post(f"{API}/events", json=body), 413)
        assert "2000 bytes" in error["message"]
        # Streamed without a Content-Length: counted as it arrives.
        chunks = iter([b'{"agent_id": "worker", "metadata": {"x": "', b"y" * 5000, b'"}}'])
        response = server.post(f"{API}/events", content=chunks, headers={"content-type": "application/json"})
        error_of(response, 413)
        assert server.get(f"{API}/ledger/events").json() == []
    finally:
        live_iter.close()


# -------------------------------------------------------------------------------------------- agents


def test_agents_create_list_get(server: Live) -> None:
    response = server.post(
        f"{API}/agents", json={"name": "helper", "owner": "me", "parent": "team", "metadata": {"tier": 1}}
    )
    assert response.status_code == 201, response.text
    helper = response.json()
    assert helper["parent_id"] == server.agent_ids["team"]
    assert helper["metadata"] == {"tier": 1}
    names = {agent["name"] for agent in server.get(f"{API}/agents").json()}
    assert names == {"team", "worker", "other", "helper"}
    seen_by_team = {agent["name"] for agent in server.get(f"{API}/agents", "team").json()}
    assert seen_by_team == {"team", "worker", "helper"}
    seen_by_worker = {agent["name"] for agent in server.get(f"{API}/agents", "worker").json()}
    assert seen_by_worker == {"worker"}
    assert server.get(f"{API}/agents/helper").json()["agent_id"] == helper["agent_id"]
    assert server.get(f"{API}/agents/{helper['agent_id']}", "team").json()["name"] == "helper"


def test_agent_errors(server: Live) -> None:
    error = error_of(server.post(f"{API}/agents", json={"name": "team", "owner": "x"}), 409)
    assert error["type"] == "DuplicateAgentError"
    assert error_of(server.get(f"{API}/agents/nobody"), 404)["type"] == "AgentNotFoundError"
    error_of(server.post(f"{API}/agents", json={"name": "x", "owner": "y", "parent": "nobody"}), 404)
    error_of(server.post(f"{API}/agents", json={"name": "x", "owner": "y", "colour": "red"}), 400)
    error_of(server.post(f"{API}/agents", json={"name": "bad\nname", "owner": "y"}), 400)
    big = {"blob": "x" * (MAX_METADATA_BYTES + 1)}
    error = error_of(server.post(f"{API}/agents", json={"name": "x", "owner": "y", "metadata": big}), 400)
    assert "metadata" in error["message"]
    error_of(server.get(f"{API}/agents/{'a' * 300}"), 400)
    error_of(
        server.post(f"{API}/agents", content=b"{not json", headers={"content-type": "application/json"}), 400
    )


def test_suspend_and_activate(server: Live) -> None:
    response = server.post(f"{API}/agents/team/suspend")
    assert response.status_code == 200 and response.json()["status"] == "suspended"
    assert server.post(f"{API}/agents/team/suspend").json()["status"] == "suspended"  # idempotent
    # A suspended ancestor denies its descendants.
    error = error_of(server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "1"}), 402)
    assert "team is suspended" in error["message"] and error["decision"]["allowed"] is False
    assert server.post(f"{API}/agents/team/activate").json()["status"] == "active"
    assert server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "1"}).status_code == 201
    error_of(server.post(f"{API}/agents/nobody/suspend"), 404)
    error_of(server.post(f"{API}/agents/nobody/activate"), 404)


# ---------------------------------------------------------------------------------------------- keys


def test_keys_create_list_revoke(server: Live) -> None:
    response = server.post(f"{API}/agents/other/keys", json={"label": "ci runner"})
    assert response.status_code == 201, response.text
    created = response.json()
    token = created["token"]
    assert created["agent_id"] == server.agent_ids["other"] and created["label"] == "ci runner"
    assert created["active"] is True and "token_sha256" not in created
    headers = {"Authorization": f"Bearer {token}"}
    assert server.get(f"{API}/agents/other", who=None, headers=headers).status_code == 200

    listed = server.get(f"{API}/agents/other/keys").json()
    assert {key["key_id"] for key in listed} == {server.key_ids["other"], created["key_id"]}
    assert all("token" not in key and "token_sha256" not in key for key in listed)

    revoked = server.request("DELETE", f"{API}/keys/{created['key_id']}")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    again = server.request("DELETE", f"{API}/keys/{created['key_id']}")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]  # idempotent
    error = error_of(server.get(f"{API}/agents/other", who=None, headers=headers), 401)
    assert "revoked" in error["message"]
    assert token not in error["message"]

    assert len(server.get(f"{API}/agents/other/keys").json()) == 1
    assert len(server.get(f"{API}/agents/other/keys", params={"include_revoked": True}).json()) == 2
    no_body = server.post(f"{API}/agents/other/keys")
    assert no_body.status_code == 201 and no_body.json()["label"] is None


def test_key_errors(server: Live) -> None:
    assert (
        error_of(server.request("DELETE", f"{API}/keys/0123456789ab"), 404)["type"] == "ApiKeyNotFoundError"
    )
    error_of(server.request("DELETE", f"{API}/keys/not-a-key"), 404)
    error_of(server.post(f"{API}/agents/nobody/keys", json={}), 404)
    error_of(server.get(f"{API}/agents/nobody/keys"), 404)
    error_of(server.post(f"{API}/agents/other/keys", json={"label": "x", "role": "admin"}), 400)
    error_of(server.post(f"{API}/agents/other/keys", json={"label": "bad\nlabel"}), 400)


# ------------------------------------------------------------------------------------------ policies


def test_policy_lifecycle(server: Live) -> None:
    response = server.post(f"{API}/policies", json={"agent_id": "other", "limit": "5.50", "window": "total"})
    assert response.status_code == 201, response.text
    policy = response.json()
    pid = policy["policy_id"]
    assert policy["limit"] == "5.50"
    assert server.get(f"{API}/policies/{pid}").json()["limit"] == "5.50"
    assert server.get(f"{API}/policies/{pid}", "other").status_code == 200

    updated = server.request("PATCH", f"{API}/policies/{pid}", json={"limit": 7, "reason": "more room"})
    assert updated.status_code == 200, updated.text
    assert Decimal(updated.json()["limit"]) == 7 and updated.json()["revision"] == 2

    off = server.post(f"{API}/policies/{pid}/deactivate", json={"reason": "paused"})
    assert off.status_code == 200 and off.json()["active"] is False
    assert server.post(f"{API}/policies/{pid}/deactivate").json()["revision"] == 3  # idempotent
    ids = {p["policy_id"] for p in server.get(f"{API}/policies", params={"agent_id": "other"}).json()}
    assert pid not in ids
    ids = {
        p["policy_id"]
        for p in server.get(f"{API}/policies", params={"agent_id": "other", "include_inactive": True}).json()
    }
    assert pid in ids
    on = server.post(f"{API}/policies/{pid}/activate")
    assert on.status_code == 200 and on.json()["active"] is True and on.json()["revision"] == 4
    assert len(server.get(f"{API}/policies").json()) == 4


def test_policy_reads_follow_the_tree(server: Live) -> None:
    worker_policy = server.policy_ids["worker"]
    team_policy = server.policy_ids["team"]
    assert server.get(f"{API}/policies/{worker_policy}", "team").status_code == 200
    assert server.get(f"{API}/policies/{worker_policy}", "worker").status_code == 200
    error_of(server.get(f"{API}/policies/{team_policy}", "worker"), 403)
    error_of(server.get(f"{API}/policies/{worker_policy}", "other"), 403)


def test_policy_errors(server: Live) -> None:
    error_of(server.get(f"{API}/policies/pol-nope"), 404)
    error_of(server.request("PATCH", f"{API}/policies/pol-nope", json={"limit": "1"}), 404)
    error_of(server.post(f"{API}/policies/pol-nope/deactivate"), 404)
    error_of(server.post(f"{API}/policies/pol-nope/activate"), 404)
    pid = server.policy_ids["worker"]
    error = error_of(server.request("PATCH", f"{API}/policies/{pid}", json={"limit": 2.5}), 400)
    assert "float" in error["message"]
    error_of(server.request("PATCH", f"{API}/policies/{pid}", json={"limit": "-1"}), 400)
    error_of(server.request("PATCH", f"{API}/policies/{pid}", json={"limit": "NaN"}), 400)
    error_of(server.request("PATCH", f"{API}/policies/{pid}", json={}), 400)
    error_of(server.post(f"{API}/policies", json={"agent_id": "worker", "limit": 1.5}), 400)
    error_of(
        server.post(f"{API}/policies", json={"agent_id": "worker", "limit": "1", "window": "fortnightly"}),
        400,
    )
    error_of(
        server.post(f"{API}/policies", json={"agent_id": "worker", "limit": "1", "timezone": "Mars/Base"}),
        400,
    )
    error_of(
        server.post(f"{API}/policies", json={"agent_id": "worker", "limit": "1", "currency": "XXXX"}), 400
    )
    error_of(server.post(f"{API}/policies", json={"agent_id": "nobody", "limit": "1"}), 404)


# -------------------------------------------------------------------------------------------- prices


def test_prices(server: Live) -> None:
    response = server.request("PUT", f"{API}/prices/tool.fetch", json={"unit_price": "0.010"})
    assert response.status_code == 200, response.text
    assert response.json()["unit_price"] == "0.010"
    resources = {price["resource_type"] for price in server.get(f"{API}/prices", "worker").json()}
    assert {"tool.fetch", RESOURCE} <= resources
    error_of(server.request("PUT", f"{API}/prices/tool.fetch", json={"unit_price": 0.01}), 400)
    error_of(server.request("PUT", f"{API}/prices/tool.fetch", json={"unit_price": "-1"}), 400)


# ---------------------------------------------------------------------------- metering, enforcement


def test_event_is_priced_and_recorded(server: Live) -> None:
    event = charge(server, quantity="3", who="worker", metadata={"step": 1})
    assert event["cost"] == "0.75" and event["agent_id"] == server.agent_ids["worker"]
    assert event["metadata"]["step"] == 1


def test_event_errors(server: Live) -> None:
    body: dict[str, Any] = {"agent_id": "worker", "resource_type": "tool.unpriced", "quantity": "1"}
    assert error_of(server.post(f"{API}/events", json=body), 400)["type"] == "UnknownPriceError"
    body = {"agent_id": "worker", "resource_type": RESOURCE, "quantity": 1.0}
    assert "float" in error_of(server.post(f"{API}/events", json=body), 400)["message"]
    body = {"agent_id": "nobody", "resource_type": RESOURCE, "quantity": "1"}
    error_of(server.post(f"{API}/events", json=body), 404)
    body = {"agent_id": "worker", "resource_type": RESOURCE, "quantity": "1", "metadata": {"x": "y" * 20000}}
    assert "metadata" in error_of(server.post(f"{API}/events", json=body), 400)["message"]
    body = {"agent_id": "worker", "resource_type": RESOURCE, "quantity": "1", "hold_id": "h-none"}
    error_of(server.post(f"{API}/events", json=body), 404)
    assert server.get(f"{API}/ledger/events").json() == []


def test_event_idempotency(server: Live) -> None:
    first = charge(server, idempotency_key="job-1")
    again = charge(server, idempotency_key="job-1")
    assert again["event_id"] == first["event_id"]
    body = {"agent_id": "worker", "resource_type": RESOURCE, "quantity": "5", "idempotency_key": "job-1"}
    error = error_of(server.post(f"{API}/events", json=body), 409)
    assert error["type"] == "IdempotencyConflictError"
    assert len(server.get(f"{API}/ledger/events").json()) == 1


def test_check_and_budget(server: Live) -> None:
    charge(server, quantity="4")  # 1.00 spent by worker
    decision = server.post(f"{API}/check", "worker", json={"agent_id": "worker", "amount": "1"}).json()
    assert decision["allowed"] is True
    decision = server.post(f"{API}/check", "team", json={"agent_id": "worker", "amount": "9.5"}).json()
    assert decision["allowed"] is False
    assert decision["policy_id"] == server.policy_ids["worker"] and decision["remaining"] == "9.00"
    statuses = server.get(f"{API}/agents/worker/budget", "worker").json()
    by_policy = {status["policy"]["policy_id"]: status for status in statuses}
    assert by_policy[server.policy_ids["worker"]]["spent"] == "1.00"
    assert by_policy[server.policy_ids["team"]]["spent"] == "1.00"  # counts against the parent too
    error_of(server.post(f"{API}/check", json={"agent_id": "worker", "amount": 0.5}), 400)
    error_of(server.get(f"{API}/agents/nobody/budget"), 404)


def test_hold_settle_release(server: Live) -> None:
    response = server.post(f"{API}/holds", "worker", json={"agent_id": "worker", "amount": "2", "ttl": 60})
    assert response.status_code == 201, response.text
    hold = response.json()
    assert hold["decision"]["allowed"] is True
    charges = [{"resource_type": RESOURCE, "quantity": "4", "cost": "1.00"}]
    settled = server.post(f"{API}/holds/{hold['hold_id']}/settle", "worker", json={"charges": charges})
    assert settled.status_code == 200, settled.text
    error_of(server.post(f"{API}/holds/{hold['hold_id']}/settle", json={"charges": []}), 404)

    other = server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "3"}).json()
    released = server.post(f"{API}/holds/{other['hold_id']}/release", "worker")
    assert released.json() == {"hold_id": other["hold_id"], "released": True}
    assert server.post(f"{API}/holds/{other['hold_id']}/release").json()["released"] is False
    error_of(server.post(f"{API}/holds/h-nope/settle", json={"charges": []}), 404)
    kinds = [
        event.get("kind")
        for event in server.get(f"{API}/ledger/events", params={"include_holds": True}).json()
    ]
    assert kinds.count(None) == 1 and kinds.count("hold") == 2  # one charge; two holds, both closed


def test_hold_denied_is_402_with_the_decision(server: Live) -> None:
    charge(server, quantity="8")  # 2.00 of worker's 10.00
    server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "3"})
    error = error_of(server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "6"}), 402)
    assert error["type"] == "BudgetExceededError"
    decision = error["decision"]
    assert decision["allowed"] is False
    assert decision["policy_id"] == server.policy_ids["worker"]
    assert decision["remaining"] == "5.00" and decision["held"] == "3" and decision["spent"] == "2.00"
    # The parent's budget applies to the child as well.
    error = error_of(server.post(f"{API}/holds", json={"agent_id": "team", "amount": "200"}), 402)
    assert error["decision"]["policy_id"] == server.policy_ids["team"]


def test_hold_errors(server: Live) -> None:
    error_of(server.post(f"{API}/holds", json={"agent_id": "worker", "amount": 1.5}), 400)
    error_of(server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "-1"}), 400)
    error_of(server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "1", "ttl": 0}), 400)
    error_of(server.post(f"{API}/holds", json={"agent_id": "nobody", "amount": "1"}), 404)
    error_of(server.post(f"{API}/holds", json={"agent_id": "worker", "amount": "1", "extra": 1}), 400)


def test_concurrent_holds_never_overspend(server: Live) -> None:
    agent = server.service.home.agents.register("burst", "ops")
    from caracal.core.windows import parse_window

    policy = server.service.home.policies.create(agent.agent_id, "20", parse_window("total", None, "UTC"))

    def reserve(_: int) -> httpx.Response:
        return server.post(f"{API}/holds", json={"agent_id": "burst", "amount": "1"})

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(reserve, range(50)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(201) == 20 and statuses.count(402) == 30, statuses
    for response in responses:
        if response.status_code == 402:
            assert response.json()["error"]["decision"]["policy_id"] == policy.policy_id
    report = verify_ledger(server.service.home.ledger)
    assert report.ok, report.problems
    holds = server.get(f"{API}/ledger/events", params={"agent_id": "burst", "include_holds": True}).json()
    assert len(holds) == 20


# --------------------------------------------------------------------------------------------- ledger


def test_ledger_events_filters(server: Live) -> None:
    for agent, quantity in (("worker", "1"), ("team", "2"), ("other", "3"), ("worker", "4")):
        charge(server, agent, quantity)
    events = server.get(f"{API}/ledger/events").json()
    assert [event["event_id"] for event in events] == [1, 2, 3, 4]
    worker = server.get(f"{API}/ledger/events", params={"agent_id": "worker"}).json()
    assert [event["quantity"] for event in worker] == ["1", "4"]
    assert [e["event_id"] for e in server.get(f"{API}/ledger/events", params={"limit": 2}).json()] == [3, 4]
    paged = server.get(f"{API}/ledger/events", params={"after_id": 1, "limit": 2}).json()
    assert [event["event_id"] for event in paged] == [2, 3]
    assert server.get(f"{API}/ledger/events", params={"limit": 0}).json() == []
    today = events[0]["timestamp"][:10]
    assert len(server.get(f"{API}/ledger/events", params={"since": today, "until": today}).json()) == 4
    assert server.get(f"{API}/ledger/events", params={"until": "2000-01-01"}).json() == []
    assert server.get(f"{API}/ledger/events", params={"resource_type": "nothing"}).json() == []
    # An agent key reads its own (or a descendant's) entries, and must say which agent.
    mine = server.get(f"{API}/ledger/events", "team", params={"agent_id": "worker"}).json()
    assert len(mine) == 2
    error_of(server.get(f"{API}/ledger/events", "worker"), 403)
    error_of(server.get(f"{API}/ledger/events", "worker", params={"agent_id": "team"}), 403)
    error_of(server.get(f"{API}/ledger/events", "worker", params={"agent_id": "nobody"}), 403)  # as "team"


def test_ledger_events_errors(server: Live) -> None:
    error = error_of(
        server.get(f"{API}/ledger/events", params={"since": "2026-02-01", "until": "2026-01-01"}), 400
    )
    assert "after" in error["message"]
    error_of(server.get(f"{API}/ledger/events", params={"since": "yesterday"}), 400)
    error_of(server.get(f"{API}/ledger/events", params={"limit": 1001}), 400)
    error_of(server.get(f"{API}/ledger/events", params={"limit": -1}), 400)
    error_of(server.get(f"{API}/ledger/events", params={"agent_id": "x" * 300}), 400)


def test_ledger_summary(server: Live) -> None:
    charge(server, "worker", "4")
    charge(server, "other", "8")
    by_agent = server.get(f"{API}/ledger/summary", params={"by": "agent"}).json()
    assert {row["agent"]: row["cost"] for row in by_agent} == {
        server.agent_ids["worker"]: "1.00",
        server.agent_ids["other"]: "2.00",
    }
    by_resource = server.get(f"{API}/ledger/summary").json()
    assert by_resource == [
        {"resource": RESOURCE, "currency": "USD", "events": 2, "quantity": "12", "cost": "3.00"}
    ]
    by_day = server.get(f"{API}/ledger/summary", params={"by": "day", "agent_id": "other"}).json()
    assert len(by_day) == 1 and by_day[0]["cost"] == "2.00"
    error_of(server.get(f"{API}/ledger/summary", params={"by": "week"}), 400)
    error_of(server.get(f"{API}/ledger/summary", params={"since": "2026-02-01", "until": "2026-01-01"}), 400)


def test_ledger_verify(server: Live) -> None:
    charge(server)
    report = server.post(f"{API}/ledger/verify").json()
    assert report["ok"] is True and report["events"] == 1 and report["problems"] == []


def test_checkpoint_and_proofs_verify_independently(server: Live) -> None:
    error_of(server.get(f"{API}/ledger/checkpoint"), 404)
    for quantity in ("1", "2", "3", "4", "5"):
        charge(server, quantity=quantity)
    signed = server.post(f"{API}/ledger/checkpoint")
    assert signed.status_code == 200, signed.text
    checkpoint = server.get(f"{API}/ledger/checkpoint").json()
    assert checkpoint["size"] == 5 and checkpoint["root"] == signed.json()["root"]
    public_key = serialization.load_pem_public_key(checkpoint["public_key_pem"].encode())
    assert isinstance(public_key, Ed25519PublicKey)
    Checkpoint.from_dict(
        {k: checkpoint[k] for k in ("size", "root", "timestamp", "key_id", "signature")}
    ).verify(public_key)
    charge(server, quantity="6")

    lines = ledger_lines(server.service.home.ledger)
    inclusion = server.get(f"{API}/ledger/proofs/inclusion", params={"event_id": 3, "tree_size": 5}).json()
    assert inclusion["leaf_hash"] == hashlib.sha256(b"\x00" + lines[2]).hexdigest()
    assert inclusion["root"] == checkpoint["root_hex"] and inclusion["matches_signed_checkpoint"] is True
    verify_inclusion(
        bytes.fromhex(inclusion["leaf_hash"]),
        inclusion["leaf_index"],
        inclusion["tree_size"],
        [bytes.fromhex(node) for node in inclusion["proof"]],
        bytes.fromhex(inclusion["root"]),
    )
    latest = server.get(f"{API}/ledger/proofs/inclusion", params={"event_id": 6}).json()
    assert latest["tree_size"] == 6 and latest["matches_signed_checkpoint"] is None

    consistency = server.get(f"{API}/ledger/proofs/consistency", params={"first": 5}).json()
    assert consistency["second"] == 6 and consistency["first_root"] == checkpoint["root_hex"]
    assert consistency["first_matches_signed_checkpoint"] is True
    verify_consistency(
        5,
        6,
        bytes.fromhex(consistency["first_root"]),
        bytes.fromhex(consistency["second_root"]),
        [bytes.fromhex(node) for node in consistency["proof"]],
    )


def test_proof_errors(server: Live) -> None:
    charge(server)
    assert (
        error_of(server.get(f"{API}/ledger/proofs/inclusion", params={"event_id": 2}), 400)["type"]
        == "ProofError"
    )
    error_of(server.get(f"{API}/ledger/proofs/inclusion", params={"event_id": 1, "tree_size": 9}), 400)
    error_of(server.get(f"{API}/ledger/proofs/inclusion", params={"event_id": 0}), 400)
    error_of(server.get(f"{API}/ledger/proofs/inclusion"), 400)
    error_of(server.get(f"{API}/ledger/proofs/consistency", params={"first": 2}), 400)
    error_of(server.get(f"{API}/ledger/proofs/consistency", params={"first": 1, "second": 3}), 400)


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_both_key_headers(server: Live, header: str) -> None:
    token = server.tokens["worker"]
    value = f"Bearer {token}" if header == "authorization" else token
    response = server.get(f"{API}/agents/worker", who=None, headers={header: value})
    assert response.status_code == 200, response.text
