"""The server's write paths (REST metering and holds, the gateway) and the CLI's, each run right after
*another process* appended to the same home: each succeeds and is counted once.

The server keeps a live view of the ledger; before the fix, its first write after a foreign append
failed ("budget state expected event N") and the call's charge was lost.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import orjson

from caracal.core.ledger import LedgerQuery, LedgerReader
from caracal.sdk.client import CaracalClient
from tests import homes
from tests.foreign import append_from_another_process
from tests.server.gateway_env import CHAT, GPT, behaviour_model, nonce, split, start_gateway

RESOURCE = "tool.calls"


def test_rest_and_gateway_writes_after_another_process_appended(caracal_home: Path) -> None:
    with start_gateway(caracal_home) as env:
        agent = env.agent("100")
        env.service.home.prices.set(RESOURCE, "0.01", "USD")
        admin = {"Authorization": f"Bearer {env.admin_token}"}
        assert env.service.enforcer.check(agent.agent_id).spent == 0  # the server has read the ledger

        def foreign() -> None:
            append_from_another_process(agent.name, RESOURCE)

        # REST metering, plain and with an idempotency key (retried after yet another foreign append)
        foreign()
        event = {"agent_id": agent.agent_id, "resource_type": RESOURCE, "quantity": "2"}
        assert env.client.post("/api/v1/events", json=event, headers=agent.auth()).status_code == 201
        foreign()
        keyed = {**event, "idempotency_key": "rest-retry"}
        first = env.client.post("/api/v1/events", json=keyed, headers=agent.auth())
        foreign()
        again = env.client.post("/api/v1/events", json=keyed, headers=agent.auth())
        assert first.status_code in (200, 201) and again.status_code in (200, 201), again.text
        assert first.json()["event_id"] == again.json()["event_id"]
        # REST holds: reserve, settle; reserve, release
        foreign()
        hold = env.client.post(
            "/api/v1/holds", json={"agent_id": agent.agent_id, "amount": "0.50"}, headers=admin
        )
        assert hold.status_code == 201, hold.text
        foreign()
        charges = {"charges": [{"resource_type": RESOURCE, "quantity": "3", "cost": "0.03"}]}
        settled = env.client.post(
            f"/api/v1/holds/{hold.json()['hold_id']}/settle", json=charges, headers=admin
        )
        assert settled.status_code == 200, settled.text
        foreign()
        hold = env.client.post(
            "/api/v1/holds", json={"agent_id": agent.agent_id, "amount": "0.50"}, headers=admin
        )
        foreign()
        released = env.client.post(f"/api/v1/holds/{hold.json()['hold_id']}/release", headers=admin)
        assert released.status_code == 200, released.text
        # the gateway: hold, forward, settle from usage
        foreign()
        marker = nonce()
        body = {"model": behaviour_model(GPT, "ok"), "messages": [{"role": "user", "content": marker}]}
        answer = env.post(CHAT, body, agent=agent)
        assert answer.status_code == 200, answer.text
        events = env.closed_entries(agent.agent_id, holds=3)
        gateway_holds = [e for e in events if e.kind == "hold" and e.cost != Decimal("0.50")]
        assert len(gateway_holds) == 1
        _holds, gateway_charges, _releases = split(
            [e for e in events if e.hold_id == gateway_holds[0].hold_id]
        )
        assert gateway_charges, "the forwarded call was billed"
        gateway_cost = sum((e.cost for e in gateway_charges), Decimal(0))

        ledger = env.service.home.ledger
        all_events = list(LedgerReader(ledger).iter_events())
        assert [e.event_id for e in all_events] == list(range(1, len(all_events) + 1))
        spent = LedgerQuery(ledger).sum_spending(agent.agent_id)
        # 8 foreign charges of 0.01, 0.02 + 0.02 (REST), 0.03 (settle), and the gateway call
        assert spent == Decimal("0.08") + Decimal("0.07") + gateway_cost
        status = env.client.get(f"/api/v1/agents/{agent.agent_id}/budget", headers=admin)
        assert Decimal(status.json()[0]["spent"]) == spent
        name = agent.name
    with CaracalClient() as fresh:
        assert fresh.check(name).spent == spent
    assert homes.verify(caracal_home).ok


def test_cli_ledger_append_after_another_process_appended(caracal_home: Path) -> None:
    def caracal(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "caracal", *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    caracal("init")
    agent_id = orjson.loads(caracal("agent", "register", "--name", "worker", "--owner", "o@x.com", "--json"))[
        "agent_id"
    ]
    caracal("policy", "create", "--agent-id", "worker", "--limit", "10", "--window", "daily")
    caracal("pricebook", "set", RESOURCE, "0.01")
    append_from_another_process("worker", RESOURCE)
    caracal("budget", "status", "--agent-id", "worker")  # leaves a budget snapshot at event 1
    append_from_another_process("worker", RESOURCE)
    caracal(
        "ledger",
        "append",
        "--agent-id",
        agent_id,
        "--resource-type",
        RESOURCE,
        "--quantity",
        "5",
        "--cost",
        "0.05",
    )
    append_from_another_process("worker", RESOURCE)
    status = orjson.loads(caracal("budget", "status", "--agent-id", "worker", "--json"))
    assert Decimal(status[0]["spent"]) == Decimal("0.08")
    assert [e.event_id for e in homes.events(caracal_home)] == [1, 2, 3, 4]
    assert homes.verify(caracal_home).ok


def test_registry_changes_by_another_process_reach_the_next_request(caracal_home: Path) -> None:
    """Suspending, re-activating, changing a limit and revoking a key from the CLI (another process) while
    the server runs: the server's very next decision follows the change."""

    def caracal(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "caracal", *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr

    with start_gateway(caracal_home) as env:
        agent = env.agent("1.00")

        def hold(amount: str) -> int:
            body = {"agent_id": agent.agent_id, "amount": amount}
            answer = env.client.post("/api/v1/holds", json=body, headers=agent.auth())
            if answer.status_code == 201:
                released = env.client.post(
                    f"/api/v1/holds/{answer.json()['hold_id']}/release", headers=agent.auth()
                )
                assert released.status_code == 200
            return answer.status_code

        assert hold("0.50") == 201
        caracal("agent", "suspend", agent.name)
        assert hold("0.50") in (402, 403)
        caracal("agent", "activate", agent.name)
        assert hold("0.50") == 201
        assert hold("5.00") == 402
        assert agent.policy_id is not None
        caracal("policy", "update", agent.policy_id, "--limit", "10")
        assert hold("5.00") == 201
        caracal("agent", "key", "revoke", agent.key_id)
        assert hold("0.50") == 401
