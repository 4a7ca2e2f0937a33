"""MCP proxy benchmark: prints figures, asserts nothing. Run: ``python bench/bench_mcp.py [--calls 200]``.

The test tool server (``tests/mcp/tool_server.py``, FastMCP over stdio) is called with the real ``mcp``
client, the same sequential ``tools/call`` of a priced tool (``lookup``) once directly and once through
``caracal mcp proxy`` (embedded enforcement on a fresh file home: each call is priced, held with an fsync,
forwarded and settled with another fsync), in alternating rounds so drift of this VM hits both alike.
Printed: latency p50/p99 of each path, the added latency at p50 and p99, and calls/s through the proxy.
A free tool (``ping``: no hold, no charge) shows what the forwarding itself costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOOL_SERVER = ROOT / "tests" / "mcp" / "tool_server.py"


def make_home(home: Path) -> None:
    env = {**os.environ, "CARACAL_HOME": str(home)}
    caracal = [sys.executable, "-m", "caracal"]
    subprocess.run([*caracal, "init"], check=True, capture_output=True, env=env)
    with (home / "config.toml").open("a", encoding="utf-8") as config:
        config.write("\n[mcp.servers.tools.tools.ping]\nfree = true\n")
    for args in (
        ["agent", "register", "--name", "bench", "--owner", "bench"],
        ["policy", "create", "--agent-id", "bench", "--limit", "1000000", "--window", "total"],
        ["pricebook", "set", "mcp.tools.lookup.calls", "0.001"],
    ):
        subprocess.run([*caracal, *args], check=True, capture_output=True, env=env)


@asynccontextmanager
async def session(parameters: StdioServerParameters) -> AsyncIterator[ClientSession]:
    async with stdio_client(parameters, errlog=open(os.devnull, "w")) as (read, write):  # noqa: SIM117
        async with ClientSession(read, write) as opened:
            await opened.initialize()
            yield opened


async def timed(opened: ClientSession, tool: str, arguments: dict[str, object], calls: int) -> list[float]:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await opened.call_tool(tool, arguments)
        latencies.append(time.perf_counter() - started)
        assert not result.isError, result
    return latencies


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) >= 2 else values[0] * 1000


async def main(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        home.mkdir()
        make_home(home)
        direct = StdioServerParameters(command=sys.executable, args=[str(TOOL_SERVER)])
        proxied = StdioServerParameters(
            command=sys.executable,
            args=["-m", "caracal", "mcp", "proxy", "--name", "tools", "--agent-id", "bench", "--",
                  sys.executable, str(TOOL_SERVER)],
            env={**os.environ, "CARACAL_HOME": str(home)},
        )  # fmt: skip
        async with session(direct) as plain, session(proxied) as metered:
            for tool, arguments in (("lookup", {"key": "k"}), ("ping", {})):
                times: dict[str, list[float]] = {"direct": [], "proxy": []}
                for _ in range(rounds):
                    times["direct"] += await timed(plain, tool, arguments, calls // rounds)
                    times["proxy"] += await timed(metered, tool, arguments, calls // rounds)
                d50, d99 = p(times["direct"], 50), p(times["direct"], 99)
                p50, p99 = p(times["proxy"], 50), p(times["proxy"], 99)
                rate = len(times["proxy"]) / sum(times["proxy"])
                kind = "priced: hold + settle" if tool == "lookup" else "free: forwarded only"
                print(
                    f"{tool:6} ({kind}), {len(times['proxy'])} sequential calls: direct p50 {d50:.2f} ms "
                    f"p99 {d99:.2f} ms | proxy p50 {p50:.2f} ms p99 {p99:.2f} ms | added p50 "
                    f"{p50 - d50:.2f} ms p99 {p99 - d99:.2f} ms | {rate:.0f} calls/s through the proxy"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    options = parser.parse_args()
    anyio.run(main, options.calls, options.rounds)
