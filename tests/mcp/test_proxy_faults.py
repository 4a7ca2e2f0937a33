"""The proxy under concurrency and crashes: several proxy processes on one home never overspend together,
and a proxy killed mid-call leaves a hold that expires and is billed at its bound (as the gateway's)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from mcp import types
from mcp.shared.exceptions import McpError

from caracal.core.enforcement import ESTIMATED_RESOURCE
from caracal.sdk.client import CaracalClient
from tests.mcp.env import LOOKUP_PRICE, SERVER, SLOW_PRICE, make_home, proxied

PROXIES = 3
CALLS_PER_PROXY = 4
AFFORDABLE = 5


@pytest.mark.slow
def test_several_proxies_on_one_home_never_overspend_together(caracal_home: Path) -> None:
    """A budget for exactly five lookups; three proxy processes try four each, all at once."""
    env = make_home(caracal_home, str(LOOKUP_PRICE * AFFORDABLE))
    results: list[types.CallToolResult] = []

    async def one_proxy(index: int) -> None:
        async with proxied(env) as session:

            async def call(number: int) -> None:
                results.append(await session.call_tool("lookup", {"key": f"p{index}-{number}"}))

            async with anyio.create_task_group() as calls:
                for number in range(CALLS_PER_PROXY):
                    calls.start_soon(call, number)

    async def scenario() -> None:
        async with anyio.create_task_group() as proxies:
            for index in range(PROXIES):
                proxies.start_soon(one_proxy, index)

    anyio.run(scenario)
    assert len(results) == PROXIES * CALLS_PER_PROXY
    served = [result for result in results if not result.isError]
    denied = [result for result in results if result.isError]
    assert len(served) == AFFORDABLE
    assert all(
        result.meta is not None and result.meta["caracal/denied"]["reason"] == "budget_exceeded"
        for result in denied
    )
    assert len(env.seen()) == AFFORDABLE  # a denied call never reached the server
    charges = env.charges()
    assert [charge.cost for charge in charges] == [LOOKUP_PRICE] * AFFORDABLE
    assert sum((charge.cost for charge in charges), Decimal(0)) == LOOKUP_PRICE * AFFORDABLE
    env.assert_sound()


def _message(process: subprocess.Popen[bytes], payload: dict[str, object]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(payload).encode() + b"\n")
    process.stdin.flush()


@pytest.mark.slow
def test_a_proxy_killed_mid_call_leaves_a_hold_that_expires_billed_at_its_bound(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")
    parameters = env.proxy_parameters()
    proxy = subprocess.Popen(
        [parameters.command, *parameters.args],
        env=parameters.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    tool_pid: int | None = None
    try:
        _message(
            proxy,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": types.LATEST_PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "tests", "version": "1"},
                },
            },
        )
        assert proxy.stdout is not None
        assert json.loads(proxy.stdout.readline())["id"] == 1
        _message(proxy, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _message(
            proxy,
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "slow", "arguments": {}}},
        )
        deadline = time.monotonic() + 60  # a bound on waiting, not a performance assertion
        while not env.seen():
            assert time.monotonic() < deadline, "the slow call never reached the tool server"
            time.sleep(0.05)
        tool_pid = int(str(env.seen()[0]["pid"]))
        assert len(env.open_holds()) == 1  # held before it was forwarded
        proxy.kill()  # mid-call: nothing settles or releases the hold
        proxy.wait()
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait()
        if tool_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(tool_pid, signal.SIGKILL)
    (hold,) = env.holds()
    assert hold.cost == SLOW_PRICE and hold.on_expiry == "charge"
    assert env.charges() == [] and len(env.open_holds()) == 1

    later = datetime.now(timezone.utc) + timedelta(hours=1)  # past the hold's [mcp] hold_ttl (30 s)
    with CaracalClient(caracal_home, clock=lambda: later) as client:
        assert client.enforcer.expire() == [hold.hold_id]
    (charge,) = env.charges()
    assert charge.resource_type == ESTIMATED_RESOURCE
    assert charge.cost == SLOW_PRICE and charge.hold_id == hold.hold_id
    assert charge.metadata is not None and charge.metadata["estimated"] is True
    env.assert_sound()


@pytest.mark.slow
def test_a_call_that_runs_past_its_hold_is_cut_off_and_billed_at_its_bound(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10", hold_ttl=2)  # the slow tool runs for a minute; it gets 1.8 s

    async def scenario() -> BaseException | None:
        async with proxied(env) as session:
            try:
                await session.call_tool("slow", {})
            except McpError as exc:
                return exc
        return None

    try:
        error = anyio.run(scenario)
    finally:
        for call in env.seen():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(str(call["pid"])), signal.SIGKILL)
    assert isinstance(error, McpError)
    assert env.seen_tools() == ["slow"]
    (charge,) = env.charges()
    assert charge.resource_type == f"mcp.{SERVER}.slow.calls"
    assert charge.cost == SLOW_PRICE and charge.metadata is not None and charge.metadata["estimated"] is True
    env.assert_sound()


def test_a_server_that_dies_mid_call_bills_that_call_at_its_bound_and_refuses_the_next(
    caracal_home: Path,
) -> None:
    env = make_home(caracal_home, "10")
    with CaracalClient(caracal_home) as client:
        client.set_price(f"mcp.{SERVER}.die.calls", "0.3")

    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []
        async with proxied(env) as session:
            for tool, arguments in (("die", {}), ("lookup", {"key": "after"})):
                try:
                    await session.call_tool(tool, arguments)
                except McpError as exc:
                    errors.append(exc)
        return errors

    died, refused = anyio.run(scenario)
    assert "Connection closed" in str(died)
    assert "could not be reached" in str(refused) and "nothing was forwarded or billed" in str(refused)
    assert env.seen_tools() == ["die"]
    (charge,) = env.charges()  # the call that was sent may have run: its bound; the next one: nothing
    assert charge.resource_type == f"mcp.{SERVER}.die.calls" and charge.cost == Decimal("0.3")
    assert charge.metadata is not None and charge.metadata["estimated"] is True
    assert len(env.holds()) == 2
    env.assert_sound()
