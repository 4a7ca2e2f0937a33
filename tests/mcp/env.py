"""A Caracal home with an agent, a budget, prices and the ``[mcp]`` config for the test tool server, and
ways to reach that server through Caracal: ``caracal mcp proxy`` over stdio (a real subprocess), or
``caracal serve``'s ``/mcp/tools`` over streamable HTTP, each with the real ``mcp`` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from caracal.core.events import LedgerEvent
from caracal.sdk.client import CaracalClient
from tests import homes

TOOL_SERVER = Path(__file__).with_name("tool_server.py")
SERVER = "tools"

LOOKUP_PRICE = Decimal("0.0125")
ROW_PRICE = Decimal("0.001")
MAX_ROWS = 50
BROKEN_PRICE = Decimal("0.02")
SLOW_PRICE = Decimal("0.5")

PRICES = {
    f"mcp.{SERVER}.lookup.calls": LOOKUP_PRICE,
    f"mcp.{SERVER}.search.rows": ROW_PRICE,
    f"mcp.{SERVER}.broken.calls": BROKEN_PRICE,
    f"mcp.{SERVER}.slow.calls": SLOW_PRICE,
}


@dataclass
class McpHome:
    home: Path
    seen_file: Path
    agent_id: str
    agent_name: str
    agent_token: str
    admin_token: str

    # ------------------------------------------------------------------ what the tool server saw

    def seen(self) -> list[dict[str, object]]:
        if not self.seen_file.exists():
            return []
        return [json.loads(line) for line in self.seen_file.read_text().splitlines() if line.strip()]

    def seen_tools(self) -> list[str]:
        return [str(call["tool"]) for call in self.seen()]

    # ------------------------------------------------------------------ the ledger

    def entries(self) -> list[LedgerEvent]:
        return [event for event in homes.events(self.home) if event.agent_id == self.agent_id]

    def charges(self) -> list[LedgerEvent]:
        return [event for event in self.entries() if event.is_charge]

    def open_holds(self) -> set[str | None]:
        events = self.entries()
        opened = {e.hold_id for e in events if e.kind == "hold"}
        closed = {e.hold_id for e in events if e.kind == "release"}
        return opened - closed

    def holds(self) -> list[LedgerEvent]:
        return [event for event in self.entries() if event.kind == "hold"]

    def assert_sound(self) -> None:
        """Every hold closed, and the ledger verifies."""
        assert self.open_holds() == set()
        report = homes.verify(self.home)
        assert report.ok, report

    # ------------------------------------------------------------------ processes

    def proxy_parameters(self, *extra: str) -> StdioServerParameters:
        """``caracal mcp proxy --name tools --agent-id <agent> [extra] -- python tool_server.py``."""
        return StdioServerParameters(
            command=sys.executable,
            args=[
                "-m",
                "caracal",
                "mcp",
                "proxy",
                "--name",
                SERVER,
                "--agent-id",
                self.agent_name,
                *extra,
                "--",
                sys.executable,
                str(TOOL_SERVER),
            ],
            env={**os.environ, "CARACAL_HOME": str(self.home), "MCP_TEST_SEEN": str(self.seen_file)},
        )


def make_home(home: Path, limit: str, *, hold_ttl: int = 30) -> McpHome:
    """``caracal init`` on ``home``, an agent with an agent key and a total budget of ``limit`` USD, the
    :data:`PRICES`, and ``[mcp]`` for :data:`SERVER` (ping free, search per row up to :data:`MAX_ROWS`)."""
    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True)
    seen_file = home / f"seen-{uuid.uuid4().hex[:8]}.jsonl"
    with (home / "config.toml").open("a", encoding="utf-8") as config:
        config.write(
            f"\n[mcp]\nhold_ttl = {hold_ttl}\n\n"
            f"[mcp.servers.{SERVER}]\n"
            f"command = {json.dumps([sys.executable, str(TOOL_SERVER)])}\n"
            f"env = {{ MCP_TEST_SEEN = {json.dumps(str(seen_file))} }}\n\n"
            f"[mcp.servers.{SERVER}.tools.ping]\nfree = true\n\n"
            f'[mcp.servers.{SERVER}.tools.search]\nunits = "rows"\nmax_units = {MAX_ROWS}\n'
        )
    name = f"agent-{uuid.uuid4().hex[:8]}"
    with CaracalClient(home) as client:
        agent = client.register_agent(name, "tests@example.com")
        client.create_policy(agent.agent_id, limit, "total")
        for resource, price in PRICES.items():
            client.set_price(resource, str(price))
        _key, token = client.home.keys.create("agent", agent.agent_id, f"{name} key")
    admin = (home / "keys" / "admin.key").read_text().strip()
    return McpHome(home, seen_file, agent.agent_id, name, token, admin)


@asynccontextmanager
async def proxied(env: McpHome, *extra: str) -> AsyncIterator[ClientSession]:
    """A client session with ``caracal mcp proxy`` (a subprocess), initialized."""
    async with (
        stdio_client(env.proxy_parameters(*extra)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def direct(env: McpHome) -> AsyncIterator[ClientSession]:
    """A client session with the tool server itself (no Caracal), initialized."""
    parameters = StdioServerParameters(command=sys.executable, args=[str(TOOL_SERVER)])
    async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def over_http(
    base_url: str, token: str, headers: dict[str, str] | None = None, *, server: str = SERVER
) -> AsyncIterator[ClientSession]:
    """A client session with ``caracal serve``'s ``/mcp/<server>`` (streamable HTTP), initialized."""
    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
    url = f"{base_url}/mcp/{server}"
    async with (
        httpx.AsyncClient(headers=sent, timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session
