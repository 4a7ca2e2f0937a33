"""``caracal budget ...``: where an agent stands against its budgets, and whether an amount would pass.

``status`` lists every active policy of the agent and of each of its ancestors (an agent's spend counts
against all of them): what is spent and held in the current window, what remains and when it resets. A
negative remainder (usage beyond a hold's bound was recorded) is shown as is, marked ``OVER LIMIT``.
``check`` asks the enforcer the same question an action would (reserving nothing) and exits 1 on a denial.
"""

from __future__ import annotations

import sys
from datetime import datetime
from decimal import Decimal
from typing import Any

import click

from caracal.cli.ledger import json_option
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


@budget_group.command("status")
@json_option
@click.option("--agent-id", "agent_ref", required=True, help="The agent (id or name).")
@handle_errors
def status_command(as_json: bool, agent_ref: str) -> None:
    """Each active policy of the agent and its ancestors: limit, spent, held, remaining, reset time."""
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
        ["POLICY", "AGENT", "WINDOW", "LIMIT", "SPENT", "HELD", "REMAINING", "CUR", "RESETS AT"],
        [
            [
                s.policy.policy_id,
                names.get(s.policy.agent_id, s.policy.agent_id),
                describe_window(s.policy),
                s.policy.limit,
                s.spent,
                s.held,
                f"{s.remaining} OVER LIMIT" if s.over_limit else s.remaining,
                s.policy.currency,
                _stamp(s.resets_at) or "never",
            ]
            for s in statuses
        ],
        right=(3, 4, 5, 6),
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
