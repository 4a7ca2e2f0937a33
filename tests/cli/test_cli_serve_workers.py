"""``caracal serve --workers N`` as an operator runs it: a real supervisor process and its worker processes
on one port, used by real HTTP clients, stopped with SIGTERM or Ctrl-C.

What must hold: requests are answered by several worker processes (each names its pid at ``/metrics``);
the workers enforce against one home, so concurrent gateway calls spread over them never overspend; a hold
taken through one worker is settled through another; and stopping the supervisor stops every worker
gracefully, each writing its queued ledger operations (the gateway's settlements) before it exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from caracal.core.checkpoint import CheckpointStore
from caracal.core.ledger import LedgerReader
from caracal.core.windows import parse_window
from caracal.server.gateway.estimate import bound_openai_chat
from caracal.server.gateway.pricing import hold_amount
from caracal.server.gateway.tokens import counter_for_model
from caracal.storage.home import EmbeddedHome
from tests.cli.test_cli_serve import serving
from tests.server.fake_upstream import serve_fake_upstream
from tests.server.gateway_env import PROVIDER_KEY, behaviour_model, open_holds, split

WORKERS = 2
PROCESS_LINE = re.compile(r'^caracal_server_process\{pid="(\d+)"\} 1\.0$', re.MULTILINE)


def caracal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caracal", *args], capture_output=True, text=True)


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)": state, ppid, ...
        if int(fields[1]) == pid:
            children.add(int(entry.name))
    return children


def answering_pids(base_url: str, admin: str, want: int = WORKERS) -> set[int]:
    """The pids of the processes that answered ``/metrics``, over rounds of 16 concurrent requests, each on
    a fresh connection, until ``want`` different ones have answered (or 50 rounds have passed: which worker
    accepts a connection is the kernel's choice, so it may take a few rounds)."""

    async def scrape() -> set[int]:
        seen: set[int] = set()
        limits = httpx.Limits(max_keepalive_connections=0)
        headers = {"Authorization": f"Bearer {admin}"}
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            for _ in range(50):
                answers = await asyncio.gather(*(client.get("/metrics", headers=headers) for _ in range(16)))
                for answer in answers:
                    assert answer.status_code == 200, answer.text
                    seen.update(int(pid) for pid in PROCESS_LINE.findall(answer.text))
                if len(seen) >= want:
                    break
        return seen

    return asyncio.run(scrape())


def test_workers_from_the_config_share_the_port_and_the_home_and_stop_on_ctrl_c(caracal_home: Path) -> None:
    assert caracal("init").returncode == 0
    config = caracal_home / "config.toml"
    text = config.read_text()
    assert "\nworkers = 1\n" in text  # documented in the config init writes
    config.write_text(text.replace("\nworkers = 1\n", f"\nworkers = {WORKERS}\n"))
    (caracal_home / "data" / "apikeys.json").unlink()  # the admin key is made once, by the supervisor
    (caracal_home / "keys" / "admin.key").unlink()

    with serving(caracal_home, new_session=True) as (base_url, process):
        admin = (caracal_home / "keys" / "admin.key").read_text().strip()
        pids = answering_pids(base_url, admin)
        assert len(pids) == WORKERS, pids
        assert process.pid not in pids and pids <= children_of(process.pid)

        # Holds taken and settled over fresh connections, so through either worker, in any combination.
        headers = {"Authorization": f"Bearer {admin}"}
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:
            assert client.post("/api/v1/agents", json={"name": "bot", "owner": "ops"}).status_code == 201
            assert client.post("/api/v1/policies", json={"agent_id": "bot", "limit": "5"}).status_code == 201
            for _ in range(10):
                hold = client.post("/api/v1/holds", json={"agent_id": "bot", "amount": "0.5"})
                assert hold.status_code == 201, hold.text
                settled = client.post(
                    f"/api/v1/holds/{hold.json()['hold_id']}/settle",
                    json={"charges": [{"resource_type": "tool.calls", "quantity": "1", "cost": "0.25"}]},
                )
                assert settled.status_code == 200, settled.text
            for _ in range(4):  # whichever worker answers knows what the other recorded
                denied = client.post("/api/v1/holds", json={"agent_id": "bot", "amount": "3"})
                assert denied.status_code == 402, denied.text
                assert Decimal(denied.json()["error"]["decision"]["remaining"]) == Decimal("2.5")

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        assert process.wait(timeout=60) == 0
    assert not children_of(process.pid)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    stderr = process.stderr.read()  # type: ignore[union-attr]
    assert stderr.count("created the admin API key") == 1, stderr
    assert stderr.count(f"with {WORKERS} workers") == 1, stderr
    assert "Traceback" not in stderr, stderr

    ledger = caracal_home / "data" / "ledger.jsonl"
    events = list(LedgerReader(ledger))
    holds, charges, releases = split(events)
    assert (len(holds), len(charges), len(releases)) == (10, 10, 10)
    assert not open_holds(events)
    assert caracal("ledger", "verify").returncode == 0
    latest = CheckpointStore(ledger.with_name("ledger.jsonl.checkpoints")).latest()
    assert latest is not None and latest.size == len(events)  # the last worker to stop checkpointed it all


CALLS = 60
HOLDS_COVERED = 20
CAP = 10
MODEL = behaviour_model("gpt-4o-mini", "slow")
INPUT, OUTPUT = Decimal("0.000001"), Decimal("0.01")


def gateway_home(home: Path, upstream: str, marker: str) -> tuple[str, str, Decimal, Decimal]:
    """A home whose gateway forwards to ``upstream``, with one agent (its key) whose total budget covers
    :data:`HOLDS_COVERED` worst-case calls. Returns (agent id, agent key, the hold of one call, the limit).

    Prices are output-dominated and every call asks for :data:`CAP` output tokens, which the fake answers
    in full: a settled call costs nearly its whole hold, so exactly :data:`HOLDS_COVERED` calls fit however
    the calls interleave and whichever worker takes them (see tests/server/test_gateway_overspend.py)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[gateway.openai]\nbase_url = "{upstream}/v1"\napi_key = "{PROVIDER_KEY}"\n', encoding="utf-8"
    )
    embedded = EmbeddedHome(home)
    try:
        agent = embedded.agents.register("fleet", "ops@example.com")
        token = embedded.keys.create("agent", agent.agent_id)[1]
        embedded.prices.set(f"openai.{MODEL}.input_tokens", str(INPUT), "USD")
        embedded.prices.set(f"openai.{MODEL}.output_tokens", str(OUTPUT), "USD")
        bound, _ = bound_openai_chat(  # the bound the gateway computes (with the model's tokenizer)
            body_of(marker, 0), max_output_tokens=4096, image_tokens=2000, counter=counter_for_model(MODEL)
        )
        hold, _ = hold_amount(embedded.prices.pricebook(), "openai", MODEL, bound, datetime.now(timezone.utc))
        limit = hold * HOLDS_COVERED
        embedded.policies.create(agent.agent_id, str(limit), parse_window("total"), "USD")
    finally:
        embedded.close()
    return agent.agent_id, token, hold, limit


def body_of(marker: str, index: int) -> dict[str, Any]:
    # One marker and a fixed-width index: every call has the same bytes and tokens, so the same hold.
    return {
        "model": MODEL,
        "max_tokens": CAP,
        "messages": [{"role": "user", "content": f"burst {marker} {index:04d}"}],
    }


def burst(base_url: str, token: str, marker: str) -> list[tuple[int, Any]]:
    """:data:`CALLS` gateway calls at once, each on its own connection."""

    async def one(client: httpx.AsyncClient, index: int) -> tuple[int, Any]:
        answer = await client.post(
            "/v1/chat/completions", json=body_of(marker, index), headers={"Authorization": f"Bearer {token}"}
        )
        return answer.status_code, answer.json()

    async def run() -> list[tuple[int, Any]]:
        limits = httpx.Limits(max_connections=CALLS + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, index) for index in range(CALLS)))

    return asyncio.run(run())


def gateway_decisions(base_url: str, admin: str, calls: int) -> dict[int, tuple[int, int]]:
    """``{pid: (allowed, denied)}``: the gateway decisions of each worker, from its ``/metrics`` (scraped on
    fresh connections) once the workers' figures add up to ``calls`` decisions. Polls: the calls are still
    arriving; fails after a generous bound (not a performance assertion)."""
    latest: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
        [pid] = PROCESS_LINE.findall(text)
        counts = {"allowed": 0, "denied": 0}
        for line in text.splitlines():
            if line.startswith("caracal_decisions_total{") and 'operation="gateway"' in line:
                outcome = "allowed" if 'outcome="allowed"' in line else "denied"
                counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
        latest[int(pid)] = (counts["allowed"], counts["denied"])
        if sum(a + d for a, d in latest.values()) == calls and len(latest) == WORKERS:
            return latest
        time.sleep(0.02)
    raise AssertionError(f"the workers decided {latest} of {calls} calls")


def test_concurrent_gateway_calls_through_two_workers_never_overspend_and_sigterm_settles_them(
    caracal_home: Path,
) -> None:
    marker = uuid.uuid4().hex
    outcomes: list[tuple[int, Any]] = []
    # The upstream answers slowly, so the granted calls are still in flight when the server is stopped: the
    # workers finish them, then write their settlements before they exit.
    with serve_fake_upstream(delay_ms=1500, completion_tokens=CAP) as fake:
        agent_id, token, hold, limit = gateway_home(caracal_home, fake.base_url, marker)
        with serving(caracal_home, "--workers", str(WORKERS), new_session=True) as (base_url, process):
            admin = (caracal_home / "keys" / "admin.key").read_text().strip()
            # /healthz answers once one worker listens: wait until every worker does before the burst.
            assert len(answering_pids(base_url, admin)) == WORKERS
            calls = threading.Thread(target=lambda: outcomes.extend(burst(base_url, token, marker)))
            calls.start()
            try:
                decisions = gateway_decisions(base_url, admin, CALLS)
            finally:
                process.send_signal(signal.SIGTERM)
                calls.join()
            assert process.wait(timeout=60) == 0
            assert not children_of(process.pid)
        reached = [r for r in list(fake.requests) if marker in json.dumps(r.body)]

    # Both workers took calls and decided them against one budget: together exactly what it covers.
    assert all(allowed + denied > 0 for allowed, denied in decisions.values()), decisions
    assert sum(allowed for allowed, _ in decisions.values()) == HOLDS_COVERED, decisions
    granted = [body for status, body in outcomes if status == 200]
    denied = [body for status, body in outcomes if status != 200]
    assert len(granted) == HOLDS_COVERED, {status for status, _ in outcomes}
    assert len(reached) == HOLDS_COVERED  # a denied call never reaches the upstream
    for error in denied:
        assert error["error"]["type"] == "BudgetExceededError", error
    stderr = process.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in stderr, stderr

    events = [e for e in LedgerReader(caracal_home / "data" / "ledger.jsonl") if e.agent_id == agent_id]
    holds, charges, releases = split(events)
    assert len(holds) == HOLDS_COVERED and all(h.cost == hold for h in holds)
    assert len(releases) == HOLDS_COVERED and not open_holds(events)  # every granted call settled
    spent = sum((c.cost for c in charges), Decimal(0))
    assert Decimal(0) < spent <= limit
    assert not any((c.metadata or {}).get("estimated") for c in charges)  # billed from usage, none guessed

    assert caracal("ledger", "verify").returncode == 0
    status = caracal("budget", "status", "--agent-id", "fleet", "--json")
    assert status.returncode == 0, status.stderr
    [policy] = json.loads(status.stdout)
    assert Decimal(policy["held"]) == 0 and Decimal(policy["spent"]) == spent
    assert Decimal(policy["limit"]) == limit and not policy["over_limit"]


@pytest.mark.parametrize("workers", ["0", "65", "two"])
def test_a_bad_worker_count_is_a_usage_error(caracal_home: Path, workers: str) -> None:
    assert caracal("init").returncode == 0
    result = caracal("serve", "--workers", workers)
    assert result.returncode == 2
    assert "--workers" in result.stderr


BAD_CONFIG = [("0", "between 1 and 64"), ("65", "1 and 64"), ('"2"', "must be int"), ("-1", "negative")]


@pytest.mark.parametrize(("value", "message"), BAD_CONFIG)
def test_a_bad_worker_count_in_the_config_is_refused(caracal_home: Path, value: str, message: str) -> None:
    (caracal_home / "config.toml").write_text(f"[server]\nworkers = {value}\n")
    result = caracal("serve")
    assert result.returncode == 1
    assert "server.workers" in result.stderr and message in result.stderr, result.stderr


def test_workers_of_a_killed_supervisor_shut_down_by_themselves(caracal_home: Path) -> None:
    """SIGKILL (or the OOM killer) leaves the supervisor no chance to stop its workers; orphans would go on
    serving the port with nobody to stop or replace them. Each notices and shuts down gracefully."""
    assert caracal("init").returncode == 0
    with serving(caracal_home, "--workers", str(WORKERS), new_session=True) as (base_url, process):
        admin = (caracal_home / "keys" / "admin.key").read_text().strip()
        pids = answering_pids(base_url, admin)
        assert len(pids) == WORKERS, pids
        process.kill()  # the supervisor only; its workers are not signalled
        process.wait()
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not alive, f"workers {alive} outlived their supervisor"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/healthz", timeout=5)
