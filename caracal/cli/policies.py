"""``caracal policy ...``: budget policies: create, list, update, deactivate, activate, and their history.

A policy is never edited in place: an update or a deactivation adds a revision, and ``policy history`` shows
every revision with its time and reason (the audit trail).
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from caracal.cli.options import json_option
from caracal.cli.render import emit_json, handle_errors, table
from caracal.core.enforcement import describe_window
from caracal.core.policy import Policy
from caracal.sdk.client import CaracalClient

POLICY_HEADERS = ["POLICY", "AGENT", "LIMIT", "CUR", "WINDOW", "ACTIVE", "REV", "UPDATED"]


def agent_names(client: CaracalClient) -> dict[str, str]:
    """``agent id -> name`` for every agent (to show names rather than UUIDs in tables)."""
    return {agent.agent_id: agent.name for agent in client.home.agents.list()}


def policy_rows(policies: Sequence[Policy], names: dict[str, str]) -> list[list[object]]:
    return [
        [
            p.policy_id,
            names.get(p.agent_id, p.agent_id),
            p.limit,
            p.currency,
            describe_window(p),
            "yes" if p.active else "no",
            p.revision,
            p.updated_at,
        ]
        for p in policies
    ]


def show_policy(policy: Policy, agent_name: str, title: str) -> None:
    click.echo(title)
    rows = [
        ("id", policy.policy_id),
        ("agent", f"{agent_name} ({policy.agent_id})"),
        ("limit", f"{policy.limit} {policy.currency}"),
        ("window", describe_window(policy)),
        ("active", "yes" if policy.active else "no"),
        ("revision", policy.revision),
        ("updated", policy.updated_at),
        ("reason", policy.reason or "-"),
    ]
    for key, value in rows:
        click.echo(f"  {key + ':':<10}{value}")


@click.group("policy")
def policy_group() -> None:
    """Budget policies: a limit per window for an agent (its descendants' spend counts too)."""


@policy_group.command("create")
@json_option
@click.option("--agent-id", "agent_ref", required=True, help="The agent (id or name); it must exist.")
@click.option("--limit", required=True, help="Most the window may hold, an exact decimal (e.g. 100.00).")
@click.option(
    "--window",
    default=None,
    help="hourly, daily, weekly, monthly or total (default: daily; rolling with --rolling).",
)
@click.option("--rolling", default=None, help="A sliding window of this duration instead (e.g. 24h, 7d).")
@click.option(
    "--timezone",
    default="UTC",
    show_default=True,
    help="IANA time zone the calendar window is aligned in (e.g. Europe/Berlin).",
)
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 code.")
@handle_errors
def create_command(
    as_json: bool,
    agent_ref: str,
    limit: str,
    window: str | None,
    rolling: str | None,
    timezone: str,
    currency: str,
) -> None:
    """Create an active budget policy for an agent."""
    with CaracalClient() as client:
        policy = client.create_policy(
            agent_ref, limit, window, currency=currency, timezone=timezone, rolling=rolling
        )
        name = client.get_agent(policy.agent_id).name
    if as_json:
        emit_json(policy.to_dict())
        return
    show_policy(policy, name, f"created policy {policy.policy_id}")


@policy_group.command("list")
@json_option
@click.option("--agent-id", "agent_ref", default=None, help="Only this agent's policies (id or name).")
@click.option("--all", "include_inactive", is_flag=True, help="Include deactivated policies.")
@handle_errors
def list_command(as_json: bool, agent_ref: str | None, include_inactive: bool) -> None:
    """List policies (active ones unless --all)."""
    with CaracalClient() as client:
        agent_id = client.get_agent(agent_ref).agent_id if agent_ref is not None else None
        policies = client.home.policies.list(agent_id, include_inactive=include_inactive)
        names = agent_names(client) if policies else {}
    if as_json:
        emit_json([p.to_dict() for p in policies])
        return
    if not policies:
        click.echo("no policies" if include_inactive else "no active policies")
        return
    table(POLICY_HEADERS, policy_rows(policies, names), right=(2, 6))


def _revised(policy: Policy, names: dict[str, str], as_json: bool, title: str) -> None:
    if as_json:
        emit_json(policy.to_dict())
        return
    show_policy(policy, names.get(policy.agent_id, "?"), title)


@policy_group.command("update")
@json_option
@click.argument("policy_id")
@click.option("--limit", required=True, help="The new limit, an exact decimal.")
@click.option("--reason", default=None, help="Why (kept in the policy's history).")
@handle_errors
def update_command(as_json: bool, policy_id: str, limit: str, reason: str | None) -> None:
    """Change a policy's limit (adds a revision; the window and currency stay)."""
    with CaracalClient() as client:
        policy = client.home.policies.update(policy_id, limit=limit, reason=reason)
        names = agent_names(client)
    _revised(policy, names, as_json, f"updated policy {policy.policy_id} (revision {policy.revision})")


def _set_active(
    policy_id: str, active: bool, reason: str | None, as_json: bool, changed: str, unchanged: str
) -> None:
    """(De)activate a policy; the registry leaves one already in that state as it is (no revision)."""
    with CaracalClient() as client:
        policies = client.home.policies
        before = policies.get(policy_id).revision
        policy = (policies.activate if active else policies.deactivate)(policy_id, reason=reason)
        names = agent_names(client)
    note = changed if policy.revision != before else unchanged
    _revised(policy, names, as_json, f"policy {policy.policy_id} {note}")


@policy_group.command("deactivate")
@json_option
@click.argument("policy_id")
@click.option("--reason", default=None, help="Why (kept in the policy's history).")
@handle_errors
def deactivate_command(as_json: bool, policy_id: str, reason: str | None) -> None:
    """Deactivate a policy (adds a revision). An agent left without an active policy is denied."""
    _set_active(policy_id, False, reason, as_json, "is now inactive", "was already inactive; nothing changed")


@policy_group.command("activate")
@json_option
@click.argument("policy_id")
@click.option("--reason", default=None, help="Why (kept in the policy's history).")
@handle_errors
def activate_command(as_json: bool, policy_id: str, reason: str | None) -> None:
    """Activate a deactivated policy again (adds a revision)."""
    _set_active(policy_id, True, reason, as_json, "is active again", "was already active; nothing changed")


@policy_group.command("history")
@json_option
@click.argument("policy_id")
@handle_errors
def history_command(as_json: bool, policy_id: str) -> None:
    """Every revision of a policy, oldest first: the audit trail of its limit and status."""
    with CaracalClient() as client:
        revisions = client.home.policies.history(policy_id)
        names = agent_names(client)
    if as_json:
        emit_json([p.to_dict() for p in revisions])
        return
    table(
        ["REV", "UPDATED", "AGENT", "LIMIT", "CUR", "WINDOW", "ACTIVE", "REASON"],
        [
            [
                p.revision,
                p.updated_at,
                names.get(p.agent_id, p.agent_id),
                p.limit,
                p.currency,
                describe_window(p),
                "yes" if p.active else "no",
                p.reason or "-",
            ]
            for p in revisions
        ],
        right=(0, 3),
    )
