"""``caracal mcp proxy`` as an MCP client starts it: a real subprocess over stdio, in front of the real test
tool server, driven by the real ``mcp`` client. Enforcement is embedded on the test's home (files or
PostgreSQL); what was billed is read back from the ledger."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, types
from mcp.client.stdio import stdio_client

from caracal.core.pricebook import multiply_exactly
from caracal.sdk.client import CaracalClient
from tests.mcp.env import (
    BROKEN_PRICE,
    LOOKUP_PRICE,
    MAX_ROWS,
    ROW_PRICE,
    SERVER,
    direct,
    make_home,
    proxied,
)


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def denied_meta(result: types.CallToolResult) -> dict[str, Any]:
    assert result.isError is True
    assert result.meta is not None
    meta = result.meta["caracal/denied"]
    assert isinstance(meta, dict)
    return meta


def test_a_priced_call_is_held_forwarded_and_billed_at_its_exact_price(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")

    async def scenario() -> list[types.CallToolResult]:
        async with proxied(env) as session:
            return [await session.call_tool("lookup", {"key": f"k{index}"}) for index in range(3)]

    results = anyio.run(scenario)
    assert [text_of(result) for result in results] == ["value-of-k0", "value-of-k1", "value-of-k2"]
    assert all(result.isError is False for result in results)
    assert env.seen_tools() == ["lookup"] * 3
    charges = env.charges()
    assert [(c.resource_type, c.quantity, c.cost) for c in charges] == [
        (f"mcp.{SERVER}.lookup.calls", Decimal(1), LOOKUP_PRICE)
    ] * 3
    holds = env.holds()
    assert len(holds) == 3
    assert all(hold.cost == LOOKUP_PRICE and hold.on_expiry == "charge" for hold in holds)
    assert holds[0].metadata == {"mcp_server": SERVER, "tool": "lookup", "units_bound": 1}
    assert {charge.hold_id for charge in charges} == {hold.hold_id for hold in holds}
    env.assert_sound()


def test_free_units_and_failing_tools_are_billed_as_configured(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")

    async def scenario() -> tuple[types.CallToolResult, types.CallToolResult, types.CallToolResult]:
        async with proxied(env) as session:
            ping = await session.call_tool("ping", {})
            rows = await session.call_tool("search", {"n": 7})
            broken = await session.call_tool("broken", {})
            return ping, rows, broken

    ping, rows, broken = anyio.run(scenario)
    assert text_of(ping) == "pong"
    assert rows.structuredContent == {"rows": [f"row-{index}" for index in range(7)]}
    assert broken.isError is True and "failed on purpose" in text_of(broken)
    assert env.seen_tools() == ["ping", "search", "broken"]  # each reached the server once
    charges = env.charges()
    assert [(c.resource_type, c.quantity, c.cost) for c in charges] == [
        (f"mcp.{SERVER}.search.rows", Decimal(7), multiply_exactly(Decimal(7), ROW_PRICE)),
        (f"mcp.{SERVER}.broken.calls", Decimal(1), BROKEN_PRICE),
    ]  # ping is free: no hold, no charge
    assert charges[1].metadata is not None and charges[1].metadata.get("tool_error") is True
    holds = env.holds()
    assert [hold.cost for hold in holds] == [multiply_exactly(Decimal(MAX_ROWS), ROW_PRICE), BROKEN_PRICE]
    env.assert_sound()


def test_an_unpriced_tool_is_refused_and_never_reaches_the_server(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")

    async def scenario() -> types.CallToolResult:
        async with proxied(env) as session:
            return await session.call_tool("echo", {"text": "hello"})

    result = anyio.run(scenario)
    meta = denied_meta(result)
    assert meta["reason"] == "unpriced"
    assert meta["resource_type"] == f"mcp.{SERVER}.echo.calls"
    assert f"caracal pricebook set mcp.{SERVER}.echo.calls" in text_of(result)
    assert f"[mcp.servers.{SERVER}.tools.echo] free = true" in text_of(result)
    assert env.seen_tools() == []
    assert env.entries() == []  # nothing held, nothing billed


def test_a_call_the_budget_cannot_cover_is_denied_naming_the_policy_and_not_forwarded(
    caracal_home: Path,
) -> None:
    env = make_home(caracal_home, "0.03")  # two lookups (0.025), not three

    async def scenario() -> list[types.CallToolResult]:
        async with proxied(env) as session:
            return [await session.call_tool("lookup", {"key": f"k{index}"}) for index in range(3)]

    first, second, third = anyio.run(scenario)
    assert first.isError is False and second.isError is False
    meta = denied_meta(third)
    assert meta["reason"] == "budget_exceeded"
    assert meta["amount"] == str(LOOKUP_PRICE) and meta["currency"] == "USD"
    assert meta["remaining"] == "0.0050"
    policy_id = meta["policy_id"]
    assert isinstance(policy_id, str) and policy_id in text_of(third)
    assert "0.0050 USD left" in text_of(third)
    assert meta["decision"]["allowed"] is False
    assert env.seen() == [
        {"tool": "lookup", "arguments": {"key": "k0"}, "pid": env.seen()[0]["pid"]},
        {"tool": "lookup", "arguments": {"key": "k1"}, "pid": env.seen()[0]["pid"]},
    ]
    assert sum((c.cost for c in env.charges()), Decimal(0)) == Decimal("0.0250")
    env.assert_sound()


def test_listing_resources_and_prompts_pass_through_unchanged(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")

    async def listings(session: Any) -> list[Any]:
        return [
            (await session.list_tools()).model_dump(),
            (await session.list_resources()).model_dump(),
            (await session.read_resource("notes://readme")).model_dump(),
            (await session.list_prompts()).model_dump(),
            (await session.get_prompt("greet", {"name": "Ada"})).model_dump(),
        ]

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with proxied(env) as session:
            through = await listings(session)
        async with direct(env) as session:
            itself = await listings(session)
        return through, itself

    through, itself = anyio.run(scenario)
    assert through == itself
    assert {tool["name"] for tool in through[0]["tools"]} >= {"lookup", "ping", "search", "broken"}
    assert through[2]["contents"][0]["text"] == "the readme of the test server"
    assert env.entries() == [] and env.seen() == []  # none of it is a tool call: nothing billed


def test_the_proxy_refuses_to_start_for_an_unknown_agent(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")
    env.agent_name = "no-such-agent"
    parameters = env.proxy_parameters()
    finished = subprocess.run(
        [parameters.command, *parameters.args],
        env=parameters.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert "no-such-agent" in finished.stderr
    assert finished.stdout == ""  # stdout is the protocol: nothing else is ever written there
    assert env.seen() == [] and env.entries() == []


def test_progress_and_log_messages_of_a_call_reach_the_client(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")
    with CaracalClient(caracal_home) as client:
        client.set_price(f"mcp.{SERVER}.progress.calls", "0.001")
    progress: list[tuple[float, float | None, str | None]] = []
    logged: list[object] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params.data)

    async def scenario() -> types.CallToolResult:
        async with (
            stdio_client(env.proxy_parameters()) as (read, write),
            ClientSession(read, write, logging_callback=on_log) as session,
        ):
            await session.initialize()
            return await session.call_tool("progress", {"steps": 3}, progress_callback=on_progress)

    result = anyio.run(scenario)
    assert text_of(result) == "3 steps"
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert logged == ["all steps done"]
    assert [(c.resource_type, c.cost) for c in env.charges()] == [
        (f"mcp.{SERVER}.progress.calls", Decimal("0.001"))
    ]
    env.assert_sound()
