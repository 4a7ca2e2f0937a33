"""What an agent key can learn from the server's answers: about its own agent and descendants, and nothing
about other agents or the host (no filesystem path, no count of agents, no other agent's name or id),
whether the answer is a success, a 403, a would-be 404 or a server-side failure. ``/healthz`` is open and
says only that the service is up."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.server.conftest import RESOURCE, Live

API = "/api/v1"


def secrets_of(server: Live) -> list[str]:
    """What the key of ``other`` must never see: the home's path and the other agents' names and ids."""
    return [
        str(server.home),
        "agents.json",
        "registered",
        "did you mean",
        *(server.agent_ids[name] for name in ("team", "worker")),
        *("'team'", "'worker'", '"team"', '"worker"'),
    ]


def assert_reveals_nothing(server: Live, response: httpx.Response) -> None:
    for secret in secrets_of(server):
        assert secret not in response.text, (secret, response.request.url, response.text)


def probe(server: Live, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = server.request(method, path, "other", **kwargs)
    assert_reveals_nothing(server, response)
    return response


def test_healthz_says_only_that_the_service_is_up(server: Live) -> None:
    server.post(f"{API}/events", json={"agent_id": "worker", "resource_type": RESOURCE, "quantity": "1"})
    response = server.get("/healthz", who=None)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_an_unknown_agent_and_another_agent_get_the_same_answer(server: Live) -> None:
    """An agent key cannot tell an agent that does not exist from one it may not see: both are the same
    403, which names neither (so names cannot be probed), nor the registry's path or size."""
    unknown_id = str(uuid.UUID(int=7))
    refs = {"worker": ["nobody", "Worker", unknown_id], server.agent_ids["worker"]: ["nobody", unknown_id]}
    calls = [
        lambda ref: ("GET", f"{API}/agents/{ref}", {}),
        lambda ref: ("GET", f"{API}/agents/{ref}/budget", {}),
        lambda ref: ("GET", f"{API}/policies", {"params": {"agent_id": ref}}),
        lambda ref: ("GET", f"{API}/ledger/events", {"params": {"agent_id": ref}}),
        lambda ref: ("POST", f"{API}/check", {"json": {"agent_id": ref, "amount": "1"}}),
        lambda ref: ("POST", f"{API}/holds", {"json": {"agent_id": ref, "amount": "1"}}),
        lambda ref: (
            "POST",
            f"{API}/events",
            {"json": {"agent_id": ref, "resource_type": RESOURCE, "quantity": "1"}},
        ),
    ]
    for call in calls:
        for existing, unknowns in refs.items():
            method, path, kwargs = call(existing)
            seen = probe(server, method, path, **kwargs)
            assert seen.status_code == 403, seen.text
            for unknown in unknowns:
                method, path, kwargs = call(unknown)
                missing = probe(server, method, path, **kwargs)
                assert (missing.status_code, missing.json()) == (seen.status_code, seen.json()), path
    # Its own answers name no other agent either; the admin still gets the full story.
    for path in (f"{API}/agents", f"{API}/agents/other", f"{API}/agents/other/budget"):
        assert probe(server, "GET", path).status_code == 200
    assert probe(server, "GET", f"{API}/ledger/summary").status_code == 403
    assert probe(server, "GET", f"{API}/no-such-thing").status_code == 404
    admin = server.get(f"{API}/agents/nobody")
    assert admin.status_code == 404 and "no agent named 'nobody'" in admin.json()["error"]["message"]


def test_an_idempotency_conflict_does_not_describe_another_agents_charge(server: Live) -> None:
    event = {"resource_type": RESOURCE, "quantity": "1", "idempotency_key": "shared-key"}
    first = server.post(f"{API}/events", "worker", json={"agent_id": "worker", **event})
    assert first.status_code == 201, first.text
    conflict = probe(server, "POST", f"{API}/events", json={"agent_id": "other", **event})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["type"] == "IdempotencyConflictError"


@pytest.mark.files_only("breaks a registry file to cause a server-side failure")
def test_a_server_side_failure_names_nothing_of_the_host(server: Live) -> None:
    """A failure on the server (here a damaged registry file) keeps its type and status for an agent key,
    but not its message, which names files; the admin gets the message in full."""
    (server.home / "data" / "policies.json").write_text("{damaged")
    response = probe(server, "GET", f"{API}/policies", params={"agent_id": "other"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "RegistryError" and "server's log" in error["message"]
    admin = server.get(f"{API}/policies", params={"agent_id": "other"})
    assert admin.status_code == 503 and "policies.json" in admin.json()["error"]["message"]
