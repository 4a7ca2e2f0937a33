"""``caracal serve``'s ``/mcp/tools`` (streamable HTTP) in front of the configured stdio tool server, and
``caracal mcp proxy --url`` enforcing through it: a real server process, the real ``mcp`` client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import types

from caracal.core.pricebook import multiply_exactly
from caracal.sdk.client import CaracalClient
from tests.cli.test_cli_serve import reserved_port, serving
from tests.mcp.env import (
    LOOKUP_PRICE,
    ROW_PRICE,
    SERVER,
    TOOL_SERVER,
    direct,
    make_home,
    over_http,
    proxied,
)
from tests.mcp.test_proxy_stdio import denied_meta, text_of


def test_tool_calls_over_streamable_http_are_held_billed_and_refused(caracal_home: Path) -> None:
    env = make_home(caracal_home, "0.06")  # the search's hold (50 rows: 0.050), then four lookups

    async def scenario(base_url: str) -> list[types.CallToolResult]:
        async with over_http(base_url, env.agent_token) as session:
            return [
                await session.call_tool("search", {"n": 3}),
                await session.call_tool("ping", {}),
                await session.call_tool("echo", {"text": "unpriced"}),
                *[await session.call_tool("lookup", {"key": key}) for key in "abcde"],
            ]

    with serving(caracal_home) as (base_url, _process):
        rows, ping, echo, *lookups = anyio.run(scenario, base_url)
    assert rows.structuredContent == {"rows": ["row-0", "row-1", "row-2"]}
    assert text_of(ping) == "pong"
    assert denied_meta(echo)["reason"] == "unpriced"
    assert [text_of(result) for result in lookups[:4]] == [f"value-of-{key}" for key in "abcd"]
    assert env.holds()[0].metadata == {"mcp_server": SERVER, "tool": "search", "units_bound": 50}
    meta = denied_meta(lookups[4])  # 0.003 + 4 x 0.0125 = 0.053 spent
    assert meta["reason"] == "budget_exceeded" and meta["remaining"] == "0.0070"
    assert env.seen_tools() == ["search", "ping", "lookup", "lookup", "lookup", "lookup"]
    assert [(c.resource_type, c.quantity, c.cost) for c in env.charges()] == [
        (f"mcp.{SERVER}.search.rows", Decimal(3), multiply_exactly(Decimal(3), ROW_PRICE)),
        *[(f"mcp.{SERVER}.lookup.calls", Decimal(1), LOOKUP_PRICE)] * 4,
    ]
    env.assert_sound()


def test_listings_pass_through_and_every_request_needs_a_key(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")

    async def scenario(base_url: str) -> tuple[list[object], list[object]]:
        async with over_http(base_url, env.admin_token, {"X-Caracal-Agent": env.agent_name}) as session:
            through = [
                (await session.list_tools()).model_dump(),
                (await session.read_resource("notes://readme")).model_dump(),
                (await session.get_prompt("greet", {"name": "Ada"})).model_dump(),
            ]
            await session.call_tool("lookup", {"key": "admin"})  # the admin key acts for the named agent
        async with direct(env) as session:
            itself = [
                (await session.list_tools()).model_dump(),
                (await session.read_resource("notes://readme")).model_dump(),
                (await session.get_prompt("greet", {"name": "Ada"})).model_dump(),
            ]
        return through, itself

    with serving(caracal_home) as (base_url, _process):
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        headers = {"Accept": "application/json, text/event-stream"}
        anonymous = httpx.post(f"{base_url}/mcp/{SERVER}", json=initialize, headers=headers)
        wrong = httpx.post(
            f"{base_url}/mcp/{SERVER}",
            json=initialize,
            headers={**headers, "Authorization": "Bearer ck_nope"},
        )
        unknown = httpx.post(
            f"{base_url}/mcp/nothing",
            json=initialize,
            headers={**headers, "Authorization": f"Bearer {env.admin_token}"},
        )
        through, itself = anyio.run(scenario, base_url)
        no_agent = httpx.post(
            f"{base_url}/mcp/{SERVER}",
            json=initialize,
            headers={**headers, "Authorization": f"Bearer {env.admin_token}"},
        )
        subprocess.run(
            [sys.executable, "-m", "caracal", "agent", "suspend", env.agent_name],
            check=True,
            capture_output=True,
        )
        suspended = httpx.post(
            f"{base_url}/mcp/{SERVER}",
            json=initialize,
            headers={**headers, "Authorization": f"Bearer {env.agent_token}"},
        )
    assert no_agent.status_code == 400 and "x-caracal-agent header" in no_agent.text
    assert suspended.status_code == 403 and "suspended" in suspended.text
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert unknown.status_code == 404
    assert through == itself
    assert [(c.resource_type, c.cost) for c in env.charges()] == [
        (f"mcp.{SERVER}.lookup.calls", LOOKUP_PRICE)
    ]
    env.assert_sound()


def test_the_stdio_proxy_enforces_through_a_remote_server(caracal_home: Path) -> None:
    env = make_home(caracal_home, "0.02")  # one lookup, not two

    async def scenario(base_url: str) -> list[types.CallToolResult]:
        async with proxied(env, "--url", base_url, "--api-key", env.agent_token) as session:
            return [await session.call_tool("lookup", {"key": key}) for key in ("r1", "r2")]

    with serving(caracal_home) as (base_url, _process):
        first, second = anyio.run(scenario, base_url)
    assert text_of(first) == "value-of-r1"
    assert env.holds()[0].metadata == {"mcp_server": SERVER, "tool": "lookup", "units_bound": 1}
    meta = denied_meta(second)
    assert meta["reason"] == "budget_exceeded" and meta["remaining"] == "0.0075"
    assert env.seen_tools() == ["lookup"]
    assert [(c.resource_type, c.cost) for c in env.charges()] == [
        (f"mcp.{SERVER}.lookup.calls", LOOKUP_PRICE)
    ]
    env.assert_sound()


def test_an_upstream_reached_by_url_is_metered_the_same(caracal_home: Path) -> None:
    """``[mcp.servers.NAME] url = ...``: the tool server runs on its own (streamable HTTP) and caracal serve
    connects to it."""
    env = make_home(caracal_home, "10")
    with reserved_port() as port:
        upstream = subprocess.Popen(
            [sys.executable, str(TOOL_SERVER), "--http", str(port)],
            env={**os.environ, "MCP_TEST_SEEN": str(env.seen_file)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60  # a bound on waiting, not a performance assertion
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                    break
                except httpx.HTTPError:
                    assert upstream.poll() is None and time.monotonic() < deadline, (
                        "the tool server did not start"
                    )
                    time.sleep(0.05)
            with (caracal_home / "config.toml").open("a", encoding="utf-8") as config:
                config.write(f'\n[mcp.servers.remote]\nurl = "http://127.0.0.1:{port}/mcp"\n')
            with CaracalClient(caracal_home) as client:
                client.set_price("mcp.remote.lookup.calls", "0.003")

            async def scenario(base_url: str) -> list[types.CallToolResult]:
                async with over_http(base_url, env.agent_token, server="remote") as session:
                    return [
                        await session.call_tool("lookup", {"key": "far"}),
                        await session.call_tool("echo", {"text": "unpriced"}),
                    ]

            with serving(caracal_home) as (base_url, _process):
                lookup, echo = anyio.run(scenario, base_url)
        finally:
            upstream.kill()
            upstream.wait()
    assert text_of(lookup) == "value-of-far"
    assert denied_meta(echo)["reason"] == "unpriced"
    assert env.seen_tools() == ["lookup"]
    assert [(c.resource_type, c.cost) for c in env.charges()] == [
        ("mcp.remote.lookup.calls", Decimal("0.003"))
    ]
    env.assert_sound()


@pytest.mark.slow
def test_concurrent_calls_through_two_server_workers_never_overspend(caracal_home: Path) -> None:
    """A budget for exactly five lookups; twelve calls at once over six HTTP clients, to a server with two
    worker processes (each with its own tool server and group committer)."""
    env = make_home(caracal_home, str(LOOKUP_PRICE * 5))
    results: list[types.CallToolResult] = []

    async def one_client(base_url: str, index: int) -> None:
        async with over_http(base_url, env.agent_token) as session:
            for number in range(2):
                results.append(await session.call_tool("lookup", {"key": f"c{index}-{number}"}))

    async def scenario(base_url: str) -> None:
        async with anyio.create_task_group() as clients:
            for index in range(6):
                clients.start_soon(one_client, base_url, index)

    with serving(caracal_home, "--workers", "2") as (base_url, _process):
        anyio.run(scenario, base_url)
    served = [result for result in results if not result.isError]
    assert len(results) == 12 and len(served) == 5
    assert all(denied_meta(r)["reason"] == "budget_exceeded" for r in results if r.isError)
    assert len(env.seen()) == 5
    assert [c.cost for c in env.charges()] == [LOOKUP_PRICE] * 5
    env.assert_sound()
