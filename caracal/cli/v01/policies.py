"""``caracal --config FILE policy create|list|get``: v0.1's policy commands on our policy registry.

The limit is parsed exactly (text to Decimal, never a float) and must be positive. Unlike v0.1, every
calendar window Caracal enforces is accepted (hourly, daily, weekly, monthly, total) and any ISO 4217
currency: see ``docs/v01-compatibility.md``.
"""

from __future__ import annotations

from decimal import Decimal

import click

from caracal.cli.render import emit_json
from caracal.cli.v01.common import columns, format_option, plain_time, session, v01_errors
from caracal.cli.v01_params import validate_currency
from caracal.core.validation import parse_amount
from caracal.exceptions import CaracalError, InvalidPolicyError
from caracal.v01.policy import BudgetPolicy


@click.group("policy")
def policy_group() -> None:
    """Manage budget policies."""


def _limit(text: str) -> Decimal:
    """The limit as an exact Decimal; v0.1's messages for text that is not a positive number."""
    try:
        limit = parse_amount(text, "limit", InvalidPolicyError)
    except CaracalError:
        if text.strip().startswith("-"):
            raise InvalidPolicyError(f"Limit amount must be positive, got {text}") from None
        raise InvalidPolicyError(f"Invalid limit amount '{text}'. Must be a valid number.") from None
    if limit <= 0:
        raise InvalidPolicyError(f"Limit amount must be positive, got {text}")
    return limit


@policy_group.command("create")
@click.option("--agent-id", "-a", required=True, help="Agent ID this policy applies to.")
@click.option("--limit", "-l", required=True, help="Maximum spending in the window (e.g. 100.00).")
@click.option(
    "--window", "-w", default="daily", show_default=True, help="hourly, daily, weekly, monthly or total."
)
@click.option("--currency", "-c", default="USD", show_default=True, help="ISO 4217 currency code.")
@v01_errors
def create_command(agent_id: str, limit: str, window: str, currency: str) -> None:
    """Create a new budget policy for an agent."""
    amount = _limit(limit)
    try:
        code = validate_currency(None, None, currency) or "USD"
    except click.BadParameter as exc:
        raise InvalidPolicyError(f"currency {exc.message}") from None
    policy = session().home().policy_store.create_policy(agent_id, amount, window, code)
    click.echo("✓ Policy created successfully!\n")
    click.echo(f"Policy ID:    {policy.policy_id}")
    click.echo(f"Agent ID:     {policy.agent_id}")
    click.echo(f"Limit:        {policy.limit_amount} {policy.currency}")
    click.echo(f"Time Window:  {policy.time_window}")
    click.echo(f"Created:      {policy.created_at}")
    click.echo(f"Active:       {policy.active}")


def _table(policies: list[BudgetPolicy]) -> None:
    click.echo(f"Total policies: {len(policies)}\n")
    columns(
        ("Policy ID", "Agent ID", "Limit", "Window", "Active", "Created"),
        [
            (p.policy_id, p.agent_id, f"{p.limit_amount} {p.currency}", p.time_window,
             "Yes" if p.active else "No", plain_time(p.created_at))
            for p in policies
        ],
    )  # fmt: skip


@policy_group.command("list")
@click.option("--agent-id", "-a", default=None, help="Only this agent's active policies.")
@format_option
@v01_errors
def list_command(agent_id: str | None, as_json: bool) -> None:
    """List budget policies (every one, or an agent's active ones)."""
    store = session().home().policy_store
    policies = store.get_policies(agent_id) if agent_id else store.list_all_policies()
    if not policies:
        click.echo(f"No policies found for agent: {agent_id}" if agent_id else "No policies found.")
        return
    if as_json:
        emit_json([policy.to_dict() for policy in policies])
    else:
        _table(policies)


@policy_group.command("get")
@click.option("--agent-id", "-a", required=True, help="Agent ID to show the policies of.")
@format_option
@v01_errors
def get_command(agent_id: str, as_json: bool) -> None:
    """Get the active policies of a specific agent."""
    policies = session().home().policy_store.get_policies(agent_id)
    if not policies:
        click.echo(f"No active policies found for agent: {agent_id}")
        return
    if as_json:
        emit_json([policy.to_dict() for policy in policies])
        return
    click.echo(f"Policies for Agent: {agent_id}")
    click.echo("=" * 70)
    for number, policy in enumerate(policies, 1):
        click.echo("" if number == 1 else "\n" + "-" * 70 + "\n")
        click.echo(f"Policy #{number}")
        click.echo(f"  Policy ID:    {policy.policy_id}")
        click.echo(f"  Limit:        {policy.limit_amount} {policy.currency}")
        click.echo(f"  Time Window:  {policy.time_window}")
        click.echo(f"  Active:       {'Yes' if policy.active else 'No'}")
        click.echo(f"  Created:      {policy.created_at}")


__all__ = ["policy_group"]
