"""``caracal agent ...``: register, list, show, suspend and activate agents (economic identities), and
``caracal agent key ...``: create, revoke and list their API keys for the HTTP API.

An agent is named by its id (a UUID) or its unique name wherever a command takes ``ID_OR_NAME``.
An API key's token is printed once, by ``key create``; only its hash is stored, and no other command ever
prints a token or a hash.
"""

from __future__ import annotations

import click
import orjson

from caracal.cli.options import json_option
from caracal.cli.policies import POLICY_HEADERS, agent_names, policy_rows
from caracal.cli.render import emit_json, handle_errors, parse_json_object, table
from caracal.core.apikeys import TOKEN_WARNING, ApiKey
from caracal.core.identity import Agent
from caracal.core.policy import Policy
from caracal.core.validation import format_timestamp
from caracal.exceptions import InvalidAgentError
from caracal.sdk.client import CaracalClient
from caracal.storage.apikeys import ApiKeyRegistry


def show_agent(agent: Agent, parent_name: str | None = None, title: str | None = None) -> None:
    if title:
        click.echo(title)
    parent = "-"
    if agent.parent_id is not None:
        parent = f"{parent_name} ({agent.parent_id})" if parent_name else agent.parent_id
    rows = [
        ("id", agent.agent_id),
        ("name", agent.name),
        ("owner", agent.owner),
        ("parent", parent),
        ("status", agent.status),
        ("created", agent.created_at),
        ("updated", agent.updated_at),
        ("metadata", orjson.dumps(agent.metadata).decode() if agent.metadata is not None else "-"),
    ]
    for key, value in rows:
        click.echo(f"  {key + ':':<11}{value}")


@click.group("agent")
def agent_group() -> None:
    """Agents: who spends. Each has an id, a unique name, an owner and optionally a parent."""


@agent_group.command("register")
@json_option
@click.option("--name", required=True, help="Unique, descriptive name (e.g. research-bot).")
@click.option("--owner", required=True, help="Who is responsible for it (e.g. an email).")
@click.option("--parent", default=None, help="Id or name of the parent agent (its budgets also apply).")
@click.option("--metadata", default=None, help="A JSON object stored with the agent.")
@handle_errors
def register_command(as_json: bool, name: str, owner: str, parent: str | None, metadata: str | None) -> None:
    """Register a new, active agent; prints it with its id."""
    meta = parse_json_object(metadata, "--metadata", InvalidAgentError)
    with CaracalClient() as client:
        agent = client.register_agent(name, owner, parent, meta)
        parent_name = client.get_agent(agent.parent_id).name if agent.parent_id else None
    if as_json:
        emit_json(agent.to_dict())
        return
    show_agent(agent, parent_name, title=f"registered agent {agent.name!r} with id {agent.agent_id}")


@agent_group.command("list")
@json_option
@click.option(
    "--status",
    default=None,
    type=click.Choice(["active", "suspended"]),
    help="Only agents with this status.",
)
@click.option("--parent", default=None, help="Only the direct children of this agent (id or name).")
@handle_errors
def list_command(as_json: bool, status: str | None, parent: str | None) -> None:
    """List agents, sorted by name."""
    with CaracalClient() as client:
        agents = client.home.agents.list(status, parent)  # type: ignore[arg-type]  # checked by click
        names = agent_names(client) if any(a.parent_id for a in agents) else {}
    if as_json:
        emit_json([agent.to_dict() for agent in agents])
        return
    if not agents:
        click.echo("no agents")
        return
    table(
        ["ID", "NAME", "OWNER", "PARENT", "STATUS", "CREATED"],
        [
            [
                a.agent_id,
                a.name,
                a.owner,
                names.get(a.parent_id, a.parent_id) if a.parent_id else "-",
                a.status,
                a.created_at,
            ]
            for a in agents
        ],
    )


@agent_group.command("show")
@json_option
@click.argument("agent_ref", metavar="ID_OR_NAME")
@handle_errors
def show_command(as_json: bool, agent_ref: str) -> None:
    """Show one agent, its ancestors and its policies."""
    with CaracalClient() as client:
        agent = client.get_agent(agent_ref)
        ancestors = client.home.agents.ancestors(agent.agent_id)
        children = client.home.agents.list(parent=agent.agent_id)
        policies: list[Policy] = client.home.policies.list(agent.agent_id, include_inactive=True)
    if as_json:
        emit_json(
            {
                **agent.to_dict(),
                "ancestors": [a.agent_id for a in ancestors],
                "children": [a.agent_id for a in children],
                "policies": [p.to_dict() for p in policies],
            }
        )
        return
    show_agent(agent, ancestors[0].name if ancestors else None, title=f"agent {agent.name!r}")
    click.echo(f"  {'ancestors:':<11}{' > '.join(a.name for a in ancestors) or '-'}")
    click.echo(f"  {'children:':<11}{', '.join(a.name for a in children) or '-'}")
    if policies:
        click.echo("")
        table(POLICY_HEADERS, policy_rows(policies, {agent.agent_id: agent.name}), right=(2, 6))
    else:
        click.echo(f"  {'policies:':<11}none (every action of this agent is denied until one exists)")


def _set_status(agent_ref: str, as_json: bool, suspend: bool) -> None:
    with CaracalClient() as client:
        agents = client.home.agents
        agent = agents.suspend(agent_ref) if suspend else agents.activate(agent_ref)
    if as_json:
        emit_json(agent.to_dict())
        return
    effect = (
        "its actions (and those of its descendants) are denied"
        if suspend
        else "its actions are checked against its budgets again"
    )
    click.echo(f"agent {agent.name!r} ({agent.agent_id}) is {agent.status}: {effect}")


@agent_group.command("suspend")
@json_option
@click.argument("agent_ref", metavar="ID_OR_NAME")
@handle_errors
def suspend_command(as_json: bool, agent_ref: str) -> None:
    """Suspend an agent: every action of it and its descendants is denied (idempotent)."""
    _set_status(agent_ref, as_json, suspend=True)


@agent_group.command("activate")
@json_option
@click.argument("agent_ref", metavar="ID_OR_NAME")
@handle_errors
def activate_command(as_json: bool, agent_ref: str) -> None:
    """Make a suspended agent active again (idempotent)."""
    _set_status(agent_ref, as_json, suspend=False)


# ------------------------------------------------------------------------------------------- API keys


def _key_registry(client: CaracalClient) -> ApiKeyRegistry:
    return client.home.keys


def _key_owner(key: ApiKey, names: dict[str, str]) -> str:
    if key.agent_id is None:
        return "(admin)"
    name = names.get(key.agent_id)
    return f"{name} ({key.agent_id})" if name else key.agent_id


@agent_group.group("key")
def key_group() -> None:
    """API keys for the HTTP API: an agent key acts only for its agent (and may read its descendants)."""


@key_group.command("create")
@json_option
@click.argument("agent_ref", metavar="ID_OR_NAME")
@click.option("--label", default=None, help="What the key is for (e.g. the host or deployment using it).")
@handle_errors
def key_create_command(as_json: bool, agent_ref: str, label: str | None) -> None:
    """Create an API key for an agent and print its token, once."""
    with CaracalClient() as client:
        agent = client.get_agent(agent_ref)
        key, token = _key_registry(client).create("agent", agent.agent_id, label)
    if as_json:
        emit_json({**key.public_dict(), "agent_name": agent.name, "token": token, "warning": TOKEN_WARNING})
        return
    click.echo(f"created API key {key.key_id} for agent {agent.name!r} ({agent.agent_id})")
    click.echo(f"token: {token}")
    click.echo(f"WARNING: {TOKEN_WARNING}", err=True)


@key_group.command("revoke")
@json_option
@click.argument("key_id")
@handle_errors
def key_revoke_command(as_json: bool, key_id: str) -> None:
    """Revoke an API key: requests with it are refused from now on (idempotent)."""
    with CaracalClient() as client:
        registry = _key_registry(client)
        was_active = registry.get(key_id).active
        key = registry.revoke(key_id)
        names = agent_names(client) if key.agent_id else {}
    if as_json:
        emit_json(key.public_dict())
        return
    owner = _key_owner(key, names)
    revoked = format_timestamp(key.revoked_at) if key.revoked_at else "?"
    if was_active:
        click.echo(f"revoked API key {key.key_id} of {owner}: requests with it are refused")
    else:
        click.echo(f"API key {key.key_id} of {owner} was already revoked (at {revoked}); nothing changed")


@key_group.command("list")
@json_option
@click.argument("agent_ref", metavar="[ID_OR_NAME]", required=False)
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@handle_errors
def key_list_command(as_json: bool, agent_ref: str | None, include_revoked: bool) -> None:
    """List API keys (of one agent if given), oldest first. Never shows tokens or hashes."""
    with CaracalClient() as client:
        agent_id = client.get_agent(agent_ref).agent_id if agent_ref is not None else None
        keys = _key_registry(client).list(agent_id, include_revoked=include_revoked)
        names = agent_names(client) if any(key.agent_id for key in keys) else {}
    if as_json:
        emit_json([key.public_dict() for key in keys])
        return
    if not keys:
        click.echo("no API keys" if include_revoked else "no active API keys (--all includes revoked ones)")
        return
    table(
        ["KEY ID", "ROLE", "AGENT", "LABEL", "CREATED", "REVOKED"],
        [
            [
                key.key_id,
                key.role,
                _key_owner(key, names),
                key.label or "-",
                format_timestamp(key.created_at),
                format_timestamp(key.revoked_at) if key.revoked_at else "-",
            ]
            for key in keys
        ],
    )
