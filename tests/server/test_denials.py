"""Denials are logged by whichever process made them and read by everyone: ``GET /api/v1/denials`` and
``caracal budget denials`` show the denials other OS processes (embedded SDK clients on the same home)
made, counted exactly, and an agent key sees only its own subtree's."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import orjson

from tests.server.conftest import Live

DENY = """
import sys
from caracal.exceptions import BudgetExceededError
from caracal.sdk.client import CaracalClient

client = CaracalClient(sys.argv[1])
for _ in range(int(sys.argv[3])):
    try:
        client.reserve(sys.argv[2], "50.00")
    except BudgetExceededError:
        pass
    else:
        raise SystemExit("a reserve over the limit was allowed")
if sys.argv[4] == "close":
    client.close()
# else: the v0.1 pattern, a script that never closes its client (the log is written at exit)
"""


def _deny_from_processes(live: Live, agent: str, times: int, processes: int) -> None:
    env = {**os.environ, "CARACAL_HOME": str(live.home)}
    running = [
        subprocess.Popen(
            [sys.executable, "-c", DENY, str(live.home), agent, str(times), "close" if i % 2 else "exit"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for process in running:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err


def test_denials_from_other_processes_are_counted_exactly(server: Live) -> None:
    _deny_from_processes(server, "worker", times=5, processes=3)
    answer = server.get("/api/v1/denials")
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()
    assert record["agent_id"] == server.agent_ids["worker"]
    assert record["policy_id"] == server.policy_ids["worker"]
    assert record["count"] == 15
    assert Decimal(record["amount"]) == Decimal("50.00") and record["currency"] == "USD"
    assert "limit" in record["reason"]


def test_the_server_logs_its_own_denials_and_an_agent_key_sees_its_subtree_only(server: Live) -> None:
    for _ in range(2):
        denied = server.post("/api/v1/holds", "worker", json={"agent_id": "worker", "amount": "50.00"})
        assert denied.status_code == 402, denied.text
    denied = server.post("/api/v1/holds", "other", json={"agent_id": "other", "amount": "50.00"})
    assert denied.status_code == 402
    counts = {r["agent_id"]: r["count"] for r in server.get("/api/v1/denials").json()}
    assert counts == {server.agent_ids["worker"]: 2, server.agent_ids["other"]: 1}
    # the parent sees its child's denials; the child its own; an unrelated agent neither
    assert [r["count"] for r in server.get("/api/v1/denials", "team").json()] == [2]
    assert [r["count"] for r in server.get("/api/v1/denials", "worker").json()] == [2]
    assert [r["agent_id"] for r in server.get("/api/v1/denials", "other").json()] == [
        server.agent_ids["other"]
    ]
    assert server.get("/api/v1/denials", "other", params={"agent_id": "worker"}).status_code == 403
    assert server.get("/api/v1/denials", None).status_code == 401
    # a time bound after the denials shows none
    assert server.get("/api/v1/denials", params={"since": "2999-01-01"}).json() == []


def test_the_cli_lists_denials_made_by_another_process(server: Live) -> None:
    _deny_from_processes(server, "worker", times=3, processes=1)
    env = {**os.environ, "CARACAL_HOME": str(server.home)}
    shown = subprocess.run(
        [sys.executable, "-m", "caracal", "budget", "denials", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    (record,) = orjson.loads(shown.stdout)
    assert record["count"] == 3 and record["agent_id"] == server.agent_ids["worker"]
    table = subprocess.run(
        [sys.executable, "-m", "caracal", "budget", "denials", "--agent-id", "team"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    assert "worker" in table.stdout and " 3 " in table.stdout


def test_a_forged_denial_log_is_refused_with_its_name_not_read_as_empty(server: Live) -> None:
    if os.environ.get("CARACAL_DATABASE_URL"):
        with server.service.home.backend.document("denials", dict).transaction() as document:
            document.clear()
            document.update({"version": 1, "records": {"x": {"agent_id": 1}}})
    else:
        (server.home / "data" / "denials.json").write_text('{"version": 1, "records": {"x": {"count": -1}}}')
    answer = server.get("/api/v1/denials")
    assert answer.status_code >= 500 or answer.status_code == 409, answer.text
    assert "denial record" in answer.text
    # enforcement is not affected: a denial is still answered (and its logging failure only logged)
    assert server.post("/api/v1/holds", json={"agent_id": "worker", "amount": "50.00"}).status_code == 402
    # a process denied while the log is unwritable is still answered, and says what it could not record
    done = subprocess.run(
        [sys.executable, "-c", DENY, str(server.home), "worker", "3", "close"],
        env={**os.environ, "CARACAL_HOME": str(server.home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "3 denials of this process are not in the denial log" in done.stderr, done.stderr
