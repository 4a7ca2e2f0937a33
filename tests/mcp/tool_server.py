"""A real MCP server for the tests (FastMCP): ``python tool_server.py`` serves stdio, ``python
tool_server.py --http PORT`` streamable HTTP at ``http://127.0.0.1:PORT/mcp``.

Every tool call it receives is appended to the file named by ``$MCP_TEST_SEEN`` (one JSON line, written
and fsynced before the tool runs), so a test can tell exactly which calls reached it.

- ``lookup(key)``: a priced tool; answers ``value-of-<key>``.
- ``echo(text)``: left unpriced (refused by the proxy).
- ``ping()``: declared free in the tests' config.
- ``search(n)``: returns ``{"rows": [...n rows]}``: billed per row.
- ``broken()``: raises (an error result: the tool ran and failed).
- ``progress(steps)``: reports progress at each step, then logs a message.
- ``die()``: the server process exits mid-call.
- ``slow()``: sleeps for a minute (the tests kill the proxy while it runs).
- resource ``notes://readme`` and prompt ``greet(name)``.
"""

from __future__ import annotations

import json
import os
import time

from mcp.server.fastmcp import Context, FastMCP

server = FastMCP("tool-server", instructions="test tools")


def _seen(tool: str, **arguments: object) -> None:
    path = os.environ.get("MCP_TEST_SEEN")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}) + "\n")
        file.flush()
        os.fsync(file.fileno())


@server.tool()
def lookup(key: str) -> str:
    """Look a key up."""
    _seen("lookup", key=key)
    return f"value-of-{key}"


@server.tool()
def echo(text: str) -> str:
    """Left unpriced in the tests."""
    _seen("echo", text=text)
    return text


@server.tool()
def ping() -> str:
    """Free health check."""
    _seen("ping")
    return "pong"


@server.tool()
def search(n: int) -> dict[str, list[str]]:
    """Return n rows."""
    _seen("search", n=n)
    return {"rows": [f"row-{index}" for index in range(n)]}


@server.tool()
def broken() -> str:
    """Always fails."""
    _seen("broken")
    raise RuntimeError("the tool failed on purpose")


@server.tool()
def die() -> str:
    """Kills its own server mid-call."""
    _seen("die")
    os._exit(3)


@server.tool()
def slow() -> str:
    """Runs for a minute."""
    _seen("slow")
    time.sleep(60)
    return "late"


@server.tool()
async def progress(steps: int, ctx: Context) -> str:  # type: ignore[type-arg]
    """Reports its progress and logs as it goes."""
    _seen("progress", steps=steps)
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
    await ctx.info("all steps done")
    return f"{steps} steps"


@server.resource("notes://readme")
def readme() -> str:
    return "the readme of the test server"


@server.prompt()
def greet(name: str) -> str:
    return f"Say hello to {name}."


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--http":  # streamable HTTP on 127.0.0.1:<port>, at /mcp
        server.settings.port = int(sys.argv[2])
        server.run(transport="streamable-http")
    else:
        server.run()
