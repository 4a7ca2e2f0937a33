"""``caracal --config FILE agent register|list|get``: v0.1's agent commands on our agent registry.

``register`` takes v0.1's ``--metadata key=value`` pairs; ``get`` prints one agent. Names are unique and
ids are UUIDs, as every Caracal registry keeps them; a duplicate name is refused (exit 1).
"""

from __future__ import annotations

import click

from caracal.cli.render import emit_json
from caracal.cli.v01.common import columns, fail, format_option, plain_time, session, v01_errors
from caracal.exceptions import InvalidAgentError
from caracal.v01.identity import AgentIdentity


@click.group("agent")
def agent_group() -> None:
    """Manage AI agent identities."""


def _metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    """v0.1's ``-m key=value`` pairs as a mapping (the last value of a repeated key wins)."""
    metadata: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidAgentError(f"Invalid metadata format '{item}'. Expected key=value")
        metadata[key.strip()] = value.strip()
    return metadata


def _show(agent: AgentIdentity, heading: str | None = None) -> None:
    if heading:
        click.echo(heading)
    click.echo(f"Agent ID:    {agent.agent_id}")
    click.echo(f"Name:        {agent.name}")
    click.echo(f"Owner:       {agent.owner}")
    click.echo(f"Created:     {agent.created_at}")
    if agent.metadata:
        click.echo("Metadata:")
        for key, value in agent.metadata.items():
            click.echo(f"  {key}: {value}")


@agent_group.command("register")
@click.option("--name", "-n", required=True, help="Human-readable agent name (must be unique).")
@click.option("--owner", "-o", required=True, help="Owner identifier (email or username).")
@click.option("--metadata", "-m", multiple=True, help="Metadata key=value (repeatable).")
@v01_errors
def register_command(name: str, owner: str, metadata: tuple[str, ...]) -> None:
    """Register a new AI agent with a unique identity."""
    agent = session().home().agent_registry.register_agent(name, owner, _metadata(metadata))
    click.echo("✓ Agent registered successfully!\n")
    _show(agent)


@agent_group.command("list")
@format_option
@v01_errors
def list_command(as_json: bool) -> None:
    """List all registered agents."""
    agents = session().home().agent_registry.list_agents()
    if not agents:
        click.echo("No agents registered.")
        return
    if as_json:
        emit_json([agent.to_dict() for agent in agents])
        return
    click.echo(f"Total agents: {len(agents)}\n")
    columns(
        ("Agent ID", "Name", "Owner", "Created"),
        [(a.agent_id, a.name, a.owner, plain_time(a.created_at)) for a in agents],
    )


@agent_group.command("get")
@click.option("--agent-id", "-a", required=True, help="Agent ID (or name) to show.")
@format_option
@v01_errors
def get_command(agent_id: str, as_json: bool) -> None:
    """Get details for a specific agent."""
    agent = session().home().agent_registry.get_agent(agent_id)
    if agent is None:
        fail(f"Agent not found: {agent_id}")
        return
    if as_json:
        emit_json(agent.to_dict())
        return
    _show(agent, "Agent Details\n" + "=" * 50)
