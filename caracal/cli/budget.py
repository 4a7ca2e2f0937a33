"""``caracal budget ...``: where an agent stands against its budgets, and whether an amount would pass.

``status`` lists every active policy of the agent and of each of its ancestors (an agent's spend counts
against all of them): what is spent and held in the current window, what remains and when it resets. A
negative remainder (usage beyond a hold's bound was recorded) is shown as is, marked ``OVER LIMIT``.
Without ``--agent-id`` it lists every agent's own policies, and names the agents no policy covers (every
action of theirs is denied).
``check`` asks the enforcer the same question an action would (reserving nothing) and exits 1 on a denial.
``denials`` lists the denied reserves of the last hours from the home's denial log
(:mod:`caracal.storage.denials`).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from caracal.cli.options import json_option
from caracal.cli.policies import agent_names
from caracal.cli.render import EXIT_ERROR, emit_json, handle_errors, table
from caracal.core.enforcement import Decision, PolicyStatus, describe_window
from caracal.core.validation import format_timestamp
from caracal.sdk.client import CaracalClient


def _stamp(moment: datetime | None) -> str | None:
    return format_timestamp(moment) if moment is not None else None


def status_dict(status: PolicyStatus, names: dict[str, str]) -> dict[str, Any]:
    policy = status.policy
    return {
        "policy_id": policy.policy_id,
        "agent_id": policy.agent_id,
        "agent_name": names.get(policy.agent_id),
        "window": policy.window.to_dict(),
        "window_description": describe_window(policy),
        "limit": policy.limit,
        "currency": policy.currency,
        "spent": status.spent,
        "held": status.held,
        "remaining": status.remaining,
        "over_limit": status.over_limit,
        "window_start": _stamp(status.window_start),
        "resets_at": _stamp(status.resets_at),
    }


@click.group("budget")
def budget_group() -> None:
    """Budgets: what an agent has spent, holds and has left."""


STATUS_COLUMNS = ["WINDOW", "LIMIT", "SPENT", "HELD", "REMAINING", "CUR", "RESETS AT"]


def status_cells(status: PolicyStatus) -> list[object]:
    """The cells under :data:`STATUS_COLUMNS` for one policy."""
    policy = status.policy
    return [
        describe_window(policy),
        policy.limit,
        status.spent,
        status.held,
        f"{status.remaining} OVER LIMIT" if status.over_limit else status.remaining,
        policy.currency,
        _stamp(status.resets_at) or "never",
    ]


@budget_group.command("status")
@json_option
@click.option(
    "--agent-id", "agent_ref", default=None, help="The agent (id or name); without it, every agent."
)
@handle_errors
def status_command(as_json: bool, agent_ref: str | None) -> None:
    """Each active policy of the agent and its ancestors (without --agent-id: every agent's own policies):
    limit, spent, held, remaining, reset time."""
    if agent_ref is None:
        all_agents_status(as_json)
        return
    with CaracalClient() as client:
        agent = client.get_agent(agent_ref)
        statuses = client.budget_status(agent.agent_id)
        names = agent_names(client)
    if as_json:
        emit_json([status_dict(s, names) for s in statuses])
        return
    if not statuses:
        click.echo(
            f"agent {agent.name!r} and its ancestors have no active policy: every action is denied; "
            f"create one with 'caracal policy create --agent-id {agent.name} --limit ... --window daily'"
        )
        return
    table(
        ["POLICY", "AGENT", *STATUS_COLUMNS],
        [
            [s.policy.policy_id, names.get(s.policy.agent_id, s.policy.agent_id), *status_cells(s)]
            for s in statuses
        ],
        right=(3, 4, 5, 6),
    )


def all_agents_status(as_json: bool) -> None:
    """``budget status`` without an agent: each agent's own active policies, agents sorted by name; then
    the agents that no active policy covers (none of their own, none of an ancestor's), which are denied
    everything. ``--json`` prints the same list of policy statuses as for one agent."""
    with CaracalClient() as client:
        agents = client.home.agents.list()
        statuses: list[PolicyStatus] = []
        uncovered: list[str] = []
        for agent in agents:
            over = client.budget_status(agent.agent_id)
            statuses += [s for s in over if s.policy.agent_id == agent.agent_id]
            if not over:
                uncovered.append(agent.name)
        names = agent_names(client)
    if as_json:
        emit_json([status_dict(s, names) for s in statuses])
        return
    if not agents:
        click.echo("no agents: register one with 'caracal agent register --name ... --owner ...'")
        return
    if statuses:
        table(
            ["AGENT", "AGENT ID", "POLICY", *STATUS_COLUMNS],
            [
                [names[s.policy.agent_id], s.policy.agent_id, s.policy.policy_id, *status_cells(s)]
                for s in statuses
            ],
            right=(4, 5, 6, 7),
        )
    if uncovered:
        click.echo(
            ("\n" if statuses else "")
            + f"no active policy over {', '.join(repr(name) for name in uncovered)} (nor over an ancestor): "
            "every action is denied; create one with "
            "'caracal policy create --agent-id NAME --limit ... --window daily'"
        )


def show_decision(decision: Decision, names: dict[str, str]) -> None:
    click.echo(("allowed" if decision.allowed else "DENIED") + f": {decision.reason}")
    rows: list[tuple[str, object]] = [
        ("agent", f"{names.get(decision.agent_id, '?')} ({decision.agent_id})"),
        ("amount", f"{decision.amount} {decision.currency}"),
    ]
    if decision.policy_id is not None:
        owner = decision.policy_agent_id or ""
        rows.append(("policy", f"{decision.policy_id} of {names.get(owner, owner)}"))
    amounts: tuple[tuple[str, Decimal | None], ...] = (
        ("limit", decision.limit),
        ("spent", decision.spent),
        ("held", decision.held),
        ("remaining", decision.remaining),
    )
    for key, amount in amounts:
        if amount is not None:
            rows.append((key, f"{amount} {decision.currency}"))
    if decision.resets_at is not None:
        rows.append(("resets at", format_timestamp(decision.resets_at)))
    for key, value in rows:
        click.echo(f"  {key + ':':<11}{value}")


@budget_group.command("check")
@json_option
@click.option("--agent-id", "agent_ref", required=True, help="The agent (id or name).")
@click.option("--amount", default=None, help="Would this amount be allowed? (default: is any budget left?)")
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 code of the amount.")
@handle_errors
def check_command(as_json: bool, agent_ref: str, amount: str | None, currency: str) -> None:
    """Would the agent be allowed to spend AMOUNT now? Reserves nothing; exit 1 when denied."""
    with CaracalClient() as client:
        decision = client.check(agent_ref, amount, currency)
        names = agent_names(client)
    if as_json:
        emit_json(decision.to_dict())
    else:
        show_decision(decision, names)
    if not decision.allowed:
        sys.exit(EXIT_ERROR)


@budget_group.command("denials")
@json_option
@click.option(
    "--agent-id", "agent_ref", default=None, help="Only this agent (id or name) and its descendants."
)
@click.option(
    "--hours", type=click.IntRange(min=1, max=24 * 7), default=24, show_default=True, help="How far back."
)
@handle_errors
def denials_command(as_json: bool, agent_ref: str | None, hours: int) -> None:
    """The denied reserves of the last hours, per hour, agent and policy: how many, and the latest reason."""
    with CaracalClient() as client:
        home = client.home
        agent_ids: set[str] | None = None
        if agent_ref is not None:
            agent = home.agents.get(agent_ref)
            agent_ids = {agent.agent_id, *(a.agent_id for a in home.agents.descendants(agent.agent_id))}
        records = home.denials.recent(home.now() - timedelta(hours=hours), agent_ids)
        names = agent_names(client)
    if as_json:
        emit_json([record.to_dict() for record in records])
        return
    if not records:
        click.echo(f"no denials in the last {hours} h")
        return
    table(
        ["LAST", "AGENT", "POLICY", "COUNT", "AMOUNT", "REASON"],
        [
            [
                format_timestamp(r.last),
                names.get(r.agent_id, r.agent_id),
                r.policy_id or "-",
                r.count,
                "-" if r.amount is None else f"{r.amount} {r.currency}",
                r.reason,
            ]
            for r in records
        ],
        right=(3, 4),
    )
