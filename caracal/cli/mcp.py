"""``caracal mcp``: the metering MCP proxy.

``caracal mcp proxy [--name NAME] [--agent-id ID] [--url URL --api-key KEY] -- <server command> [args]``
is a stdio MCP server: an MCP client (an IDE, an agent framework) starts it in place of the server command,
and every ``tools/call`` is priced, held and settled for the agent (:mod:`caracal.mcp.metering`). Without
``--url`` it enforces on the local home (``$CARACAL_HOME``); with it, through a remote ``caracal serve``.
The billing of tools (free, units) comes from ``[mcp.servers.NAME]`` in the local home's ``config.toml``.
Nothing is ever written to stdout but the protocol.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from caracal.cli.render import handle_errors
from caracal.exceptions import ConfigurationError

_LAUNCHERS = re.compile(r"^(python[0-9.]*|node|npx|uvx|uv|bun|bunx|deno|pipx|java|ruby|go)$")


def default_name(command: tuple[str, ...]) -> str:
    """A server name for ``command`` when none is given: its program, or for an interpreter or launcher
    (python, node, npx, uvx...) its first argument that is not an option; cut to the allowed characters."""
    program = Path(command[0]).name
    chosen = program
    if _LAUNCHERS.match(program):
        chosen = next((arg for arg in command[1:] if not arg.startswith("-") and arg != "run"), program)
    stem = Path(chosen.split("@")[0]).stem or program
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64]
    return name or "server"


@click.group("mcp")
def mcp_group() -> None:
    """MCP tool calls: a proxy that meters every tools/call against the agent's budget."""


@mcp_group.command(
    "proxy",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--name", default=None, help="The server's name in resource names (mcp.NAME.TOOL.calls).")
@click.option(
    "--agent-id",
    envvar="CARACAL_AGENT_ID",
    default=None,
    help="The agent (name or id) that pays. [env: CARACAL_AGENT_ID]",
)
@click.option(
    "--url", envvar="CARACAL_URL", default=None, help="A remote 'caracal serve'. [env: CARACAL_URL]"
)
@click.option("--api-key", envvar="CARACAL_API_KEY", default=None, help="Its API key. [env: CARACAL_API_KEY]")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def proxy_command(
    name: str | None,
    agent_id: str | None,
    url: str | None,
    api_key: str | None,
    command: tuple[str, ...],
) -> None:
    """Serve an MCP server's tools over stdio, each call held and billed for the agent.

    Give the server's command after '--', e.g. 'caracal mcp proxy --agent-id bot -- python server.py'.
    """
    from caracal.mcp import require_mcp

    require_mcp()
    import anyio

    from caracal.config import caracal_home, load_settings
    from caracal.config.mcp import check_server_name
    from caracal.mcp.metering import ClientBudget
    from caracal.mcp.proxy import run_stdio_proxy
    from caracal.sdk.client import CaracalClient

    if not agent_id:
        raise ConfigurationError(
            "caracal mcp proxy needs the agent that pays: --agent-id NAME (or $CARACAL_AGENT_ID)"
        )
    if url is None and api_key is not None:
        raise ConfigurationError("--api-key is for a remote server: give its --url (or $CARACAL_URL) too")
    server_name = check_server_name(name if name is not None else default_name(command), "--name")
    settings = load_settings(caracal_home())
    config = settings.mcp.server(server_name)
    client = CaracalClient(base_url=url, api_key=api_key) if url is not None else CaracalClient()
    with client:
        agent = client.get_agent(agent_id)  # fail fast: an unknown agent or an unreachable server
        anyio.run(
            run_stdio_proxy, config, command, ClientBudget(client), settings.mcp.hold_ttl, agent.agent_id
        )
