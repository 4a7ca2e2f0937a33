"""Several hosts, one set of budgets: three ``caracal serve`` processes on different ports share one home's
storage, and 200 concurrent gateway calls spread over them against a budget of 50 worst cases never
overspend it.

On PostgreSQL each server runs from its own home folder (its own ``config.toml`` and a copy of the home's
keys, as on separate hosts), all naming the same database. On files the three share one home folder (one
machine). The arithmetic is that of ``test_gateway_overspend``: output-dominated user prices, ``max_tokens``
fixed and the fake answering exactly that many tokens, so exactly 50 calls can be granted however the 200
interleave, and which server took each does not matter.

Also here: 4 OS processes x 4 threads of the embedded SDK under one parent budget, with no server between
them and the storage.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from caracal.core.ledger import LedgerReader
from caracal.core.verify import verify_ledger
from caracal.core.windows import parse_window
from caracal.storage.home import EmbeddedHome
from tests.cli.test_cli_serve import serving
from tests.server.gateway_env import (
    CHAT,
    GatewayEnv,
    behaviour_model,
    nonce,
    open_holds,
    split,
    start_gateway,
)

CALLS = 200
HOLDS_COVERED = 50
SERVERS = 3
MODEL = behaviour_model("gpt-4o-mini", "slow")
CAP = 10


@pytest.fixture
def env(tmp_path: Path, storage: str) -> Iterator[GatewayEnv]:
    with start_gateway(tmp_path / "host-0", delay_ms=100) as live:
        live.set_price("openai", MODEL, Decimal("0.000001"), Decimal("0.01"))
        yield live


def host_folders(env: GatewayEnv, storage: str, tmp_path: Path) -> list[Path]:
    """One home folder per server: copies of the first host's config and keys on a database (separate
    hosts share only the database); the same folder three times on files (one machine)."""
    if storage == "files":
        return [env.home] * SERVERS
    folders = []
    for index in range(1, SERVERS + 1):
        folder = tmp_path / f"host-{index}"
        folder.mkdir()
        shutil.copy(env.home / "config.toml", folder / "config.toml")
        shutil.copytree(env.home / "keys", folder / "keys")
        folders.append(folder)
    return folders


async def _call(client: httpx.AsyncClient, url: str, body: Any, token: str) -> int:
    response = await client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    return response.status_code


def test_three_servers_on_one_storage_never_overspend_200_concurrent_calls(
    env: GatewayEnv, storage: str, tmp_path: Path
) -> None:
    marker = nonce()
    bodies = [
        {"model": MODEL, "max_tokens": CAP, "messages": [{"role": "user", "content": f"{marker} {i:04d}"}]}
        for i in range(CALLS)
    ]
    _bound, _forward, hold = env.worst_case(CHAT, bodies[0])
    limit = hold * HOLDS_COVERED
    agent = env.agent(str(limit))
    with ExitStack() as stack:
        urls = [
            stack.enter_context(serving(folder))[0] + CHAT for folder in host_folders(env, storage, tmp_path)
        ]

        async def burst() -> list[int]:
            limits = httpx.Limits(max_connections=CALLS + 10, max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
                return await asyncio.gather(
                    *(_call(client, urls[i % SERVERS], body, agent.token) for i, body in enumerate(bodies))
                )

        statuses = asyncio.run(burst())
        assert set(statuses) <= {200, 402}, set(statuses)
        granted = statuses.count(200)
        assert granted == HOLDS_COVERED
        assert len(env.upstream_requests(marker)) == granted  # denied calls never reached the provider
        events = env.closed_entries(agent.agent_id, holds=granted)
    holds, charges, releases = split(events)
    assert len(holds) == len(releases) == granted
    assert sum((c.cost for c in charges), Decimal(0)) <= limit
    ledger = env.service.home.ledger
    assert not open_holds(list(LedgerReader(ledger)))
    report = verify_ledger(ledger, public_key=env.service.home.writer().public_key)
    assert report.ok, report.problems


WORKER = textwrap.dedent(
    """
    import sys, threading
    from caracal.sdk.client import CaracalClient
    from caracal.exceptions import BudgetExceededError

    agent, rounds = sys.argv[1], int(sys.argv[2])
    granted = []
    def work():
        with CaracalClient() as client:
            for _ in range(rounds):
                try:
                    hold = client.reserve(agent, "1.00", ttl=60)
                except BudgetExceededError:
                    continue
                client.settle(hold.hold_id, [{"resource_type": "tool.call", "quantity": "1", "cost": "1.00"}])
                granted.append(1)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(len(granted))
    """
)


def test_four_sdk_processes_of_four_threads_share_one_parent_budget(storage: str, caracal_home: Path) -> None:
    """16 embedded clients in 4 processes, each child agent reserving 1.00 and settling it, against a
    parent budget of 25.00: exactly 25 grants in all, nothing over, nothing left open."""
    home = EmbeddedHome(caracal_home)
    try:
        parent = home.agents.register("parent", "ops@example.com")
        home.policies.create(parent.agent_id, "25.00", parse_window("total"), "USD")
        children = [home.agents.register(f"child-{i}", "ops@example.com", parent.agent_id) for i in range(4)]
        for child in children:
            home.policies.create(child.agent_id, "1000", parse_window("total"), "USD")
    finally:
        home.close()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, child.name, "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for child in children
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0] * 4, [err.decode()[-2000:] for _out, err in outputs]
    granted = sum(int(out) for out, _err in outputs)
    assert granted == 25  # 64 attempts of 1.00 against 25.00: every grant is settled at exactly its hold
    home = EmbeddedHome(caracal_home)
    try:
        events = list(LedgerReader(home.ledger))
        charges = [e for e in events if e.is_charge]
        assert sum((c.cost for c in charges), Decimal(0)) == Decimal("25.00")
        assert not open_holds(events)
        assert verify_ledger(home.ledger, public_key=home.writer().public_key).ok
    finally:
        home.close()
