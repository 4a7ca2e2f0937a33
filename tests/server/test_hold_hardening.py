"""Hardening of holds over the real app (HTTP through httpx): a suspended agent's key may read but not
write (403 on every write route, the gateway included), and a settle beyond its hold is loud (a metric,
"over limit" in the budget status, and, when configured, the agent suspended)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from caracal.core.ledger import LedgerReader
from caracal.server.runner import ServerThread
from tests.server.conftest import Live, start
from tests.server.gateway_env import CHAT, GPT, behaviour_model, nonce, split, start_gateway

API = "/api/v1"


def refused(response: object, *words: str) -> None:
    assert response.status_code == 403, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("application/json")  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    for word in ("may read but not write", "suspended", *words):
        assert word in error["message"], error


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Live]:
    yield from start(tmp_path / "home")


def over_limit_server(tmp_path: Path, config: str) -> Iterator[Live]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(config)
    yield from start(home)


# ------------------------------------------------------------------------------------ suspended keys


@pytest.mark.parametrize("suspend", ["worker", "team"])
def test_a_suspended_agents_key_may_read_but_not_write(server: Live, suspend: str) -> None:
    hold = server.post(f"{API}/holds", "worker", json={"agent_id": "worker", "amount": "1"}).json()
    server.service.home.agents.suspend(suspend)
    event = {"agent_id": "worker", "resource_type": "tool.search", "quantity": "1"}
    refused(server.post(f"{API}/events", "worker", json=event), suspend)
    refused(server.post(f"{API}/holds", "worker", json={"agent_id": "worker", "amount": "1"}), suspend)
    refused(server.post(f"{API}/holds/{hold['hold_id']}/settle", "worker", json={"charges": []}), suspend)
    refused(server.post(f"{API}/holds/{hold['hold_id']}/release", "worker"), suspend)
    # Reads still work.
    assert server.get(f"{API}/agents/worker", "worker").status_code == 200
    assert server.get(f"{API}/agents/worker/budget", "worker").status_code == 200
    assert server.get(f"{API}/ledger/events", "worker", params={"agent_id": "worker"}).status_code == 200
    check = server.post(f"{API}/check", "worker", json={"agent_id": "worker"})
    assert check.status_code == 200 and check.json()["allowed"] is False
    # Nothing was written by the refused calls: the ledger holds only the first hold.
    assert [e.kind for e in LedgerReader(server.service.home.ledger)] == ["hold"]
    # The admin may still close the hold; activated again, the agent's key writes again.
    assert server.post(f"{API}/holds/{hold['hold_id']}/release").json()["released"] is True
    server.service.home.agents.activate(suspend)
    assert server.post(f"{API}/events", "worker", json=event).status_code == 201


def test_a_suspended_agents_key_gets_403_from_the_gateway_and_nothing_is_forwarded(
    caracal_home: Path,
) -> None:
    with start_gateway(caracal_home / "gw") as env:
        agent = env.agent()
        env.service.home.agents.suspend(agent.agent_id)
        marker = nonce()
        body = {"model": behaviour_model(GPT, "ok"), "messages": [{"role": "user", "content": marker}]}
        refused(env.post(CHAT, body, agent=agent), agent.name)
        assert env.upstream_requests(marker) == []
        assert env.entries(agent.agent_id) == []


# ----------------------------------------------------------------------------------------- over hold


def settle_far_over(server: Live) -> dict[str, object]:
    hold = server.post(f"{API}/holds", "worker", json={"agent_id": "worker", "amount": "0.0002"}).json()
    charge = {"resource_type": "llm.output_tokens", "quantity": "1000000", "cost": "12.50"}
    settled = server.post(f"{API}/holds/{hold['hold_id']}/settle", "worker", json={"charges": [charge]})
    assert settled.status_code == 200 and settled.json()["over_hold"] is True
    return dict(hold)


def test_a_settle_far_beyond_its_hold_is_counted_and_shows_over_limit(server: Live) -> None:
    settle_far_over(server)
    assert "caracal_charges_over_hold_total 1.0" in server.get("/metrics").text
    statuses = server.get(f"{API}/agents/worker/budget", "worker").json()
    mine = next(s for s in statuses if s["policy"]["agent_id"] == server.agent_ids["worker"])
    assert mine["remaining"] == "-2.50" and mine["over_limit"] is True
    assert server.service.home.agents.get("worker").status == "active"  # suspension is opt-in

    env = {**os.environ, "CARACAL_HOME": str(server.home)}
    table = subprocess.run(
        [sys.executable, "-m", "caracal", "budget", "status", "--agent-id", "worker"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    assert "-2.50 OVER LIMIT" in table
    as_json = subprocess.run(
        [sys.executable, "-m", "caracal", "budget", "status", "--agent-id", "worker", "--json"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    rows = json.loads(as_json)
    assert rows[0]["over_limit"] is True and rows[0]["remaining"] == "-2.50"


def test_suspend_over_hold_factor_suspends_the_agent(tmp_path: Path) -> None:
    live = over_limit_server(tmp_path, "[holds]\nsuspend_over_hold_factor = 100\n")
    server = next(live)
    try:
        hold = server.post(f"{API}/holds", "worker", json={"agent_id": "worker", "amount": "1"}).json()
        within = {"resource_type": "llm.output_tokens", "quantity": "1", "cost": "5"}  # 5x: flagged only
        server.post(f"{API}/holds/{hold['hold_id']}/settle", "worker", json={"charges": [within]})
        assert server.service.home.agents.get("worker").status == "active"
        settle_far_over(server)  # 62500x the hold
        assert server.service.home.agents.get("worker").status == "suspended"
        refused(server.post(f"{API}/holds", "worker", json={"agent_id": "worker", "amount": "1"}), "worker")
    finally:
        live.close()


async def overreporting_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An OpenAI-compatible upstream that reports 1M output tokens whatever the request's cap."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = {
        "id": "chatcmpl-over",
        "object": "chat.completion",
        "model": "gpt-over",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1_000_000, "total_tokens": 1_000_001},
    }
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def test_an_upstream_reporting_far_more_than_the_cap_is_billed_and_loud(
    caracal_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        ServerThread(overreporting_upstream) as upstream,
        start_gateway(caracal_home / "gw", upstream_url=upstream.base_url) as env,
    ):
        env.set_price("openai", "gpt-over", "0.0000025", "0.0000125")
        agent = env.agent(limit="1.00")
        body = {"model": "gpt-over", "max_tokens": 5, "messages": [{"role": "user", "content": nonce()}]}
        with caplog.at_level(logging.WARNING, logger="caracal.enforcement"):
            assert env.post(CHAT, body, agent=agent).status_code == 200
            _holds, charges, _releases = split(env.closed_entries(agent.agent_id))
        assert sum(c.cost for c in charges) == Decimal("12.5000025")  # billed in full: the provider bills it
        assert all(c.metadata and c.metadata["over_hold"] is True for c in charges)
        warning = next(
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "caracal.enforcement"
        )
        assert agent.name in warning and "12.5000025" in warning and "against hold" in warning
        metrics = env.client.get("/metrics", headers={"Authorization": f"Bearer {env.admin_token}"}).text
        assert "caracal_charges_over_hold_total 1.0" in metrics
        status = env.client.get(f"{API}/agents/{agent.agent_id}/budget", headers=agent.auth()).json()
        assert status[0]["over_limit"] is True and Decimal(status[0]["remaining"]) < 0
        denied = env.post(CHAT, body, agent=agent)
        assert denied.status_code == 402  # over its limit: nothing more is forwarded
