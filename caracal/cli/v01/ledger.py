"""``caracal --config FILE ledger query|summary``: v0.1's ledger commands on our ledger reader.

Times are ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM:SS`` or ISO 8601, naive meaning UTC. A bare date as ``--end``
means the whole of that day (v0.1 stopped at its first second). Only charges are listed and summed (holds
and releases are not spend); sums are exact and never mix currencies (several currencies are refused).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import click

from caracal.cli.render import emit_json
from caracal.cli.v01.common import columns, format_option, plain_time, session, v01_errors
from caracal.core.ledger import LedgerEvent, LedgerQuery, query_bound
from caracal.exceptions import CaracalError, LedgerReadError

TIME_HELP = "YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or ISO 8601 (UTC unless it says otherwise)"


@click.group("ledger")
def ledger_group() -> None:
    """Query and manage the ledger."""


def _bounds(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """``--start``/``--end`` as UTC datetimes, with v0.1's messages for text that is not a time."""
    bounds = []
    for name, text, is_end in (("start", start, False), ("end", end, True)):
        try:
            bounds.append(query_bound(None if text is None else text.strip(), f"--{name}", end=is_end))
        except CaracalError as exc:
            raise LedgerReadError(f"Invalid {name} time: {exc} (expected {TIME_HELP})") from None
    first, last = bounds
    if first is not None and last is not None and first > last:
        raise LedgerReadError("Start time must be before or equal to end time")
    return first, last


def _query() -> LedgerQuery:
    return session().home().ledger_query


def _events_table(events: list[LedgerEvent]) -> None:
    click.echo(f"Total events: {len(events)}\n")
    columns(
        ("Event ID", "Agent ID", "Resource Type", "Quantity", "Cost", "Timestamp"),
        [
            (str(e.event_id), e.agent_id, e.resource_type, str(e.quantity), f"{e.cost} {e.currency}",
             plain_time(e.timestamp))
            for e in events
        ],
    )  # fmt: skip


@ledger_group.command("query")
@click.option("--agent-id", "-a", default=None, help="Only this agent's events.")
@click.option("--start", "-s", default=None, help=f"From this time ({TIME_HELP}).")
@click.option("--end", "-e", default=None, help="Up to this time (a date: the whole day).")
@click.option("--resource", "-r", default=None, help="Only this resource type.")
@format_option
@v01_errors
def query_command(
    agent_id: str | None, start: str | None, end: str | None, resource: str | None, as_json: bool
) -> None:
    """Query ledger events (charges) with optional filters, in the order they were recorded."""
    first, last = _bounds(start, end)
    events = _query().get_events(agent_id, first, last, resource)
    if not events:
        click.echo("No events found matching the specified filters.")
    elif as_json:
        emit_json([event.to_dict() for event in events])
    else:
        _events_table(events)


def _totals(
    group: str, agent_id: str | None, first: datetime, last: datetime
) -> tuple[dict[str, Decimal], str]:
    """Spend per agent or resource in the window, and its one currency (several are refused: v0.1's
    output has one total, and adding different currencies would be wrong)."""
    totals = _query().summarize(group, agent_id=agent_id, start_time=first, end_time=last)
    currencies = sorted({currency for _key, currency in totals})
    if len(currencies) > 1:
        raise LedgerReadError(
            f"the charges are in several currencies ({', '.join(currencies)}); see them per currency with "
            f"'caracal --config FILE ledger query --format json'"
        )
    return {key: value.cost for (key, _currency), value in totals.items()}, (currencies or ["USD"])[0]


def _agent_summary(agent_id: str, first: datetime, last: datetime, as_json: bool) -> None:
    breakdown, currency = _totals("resource", agent_id, first, last)
    total = sum(breakdown.values(), Decimal(0))
    if as_json:
        emit_json(
            {
                "agent_id": agent_id,
                "start_time": first.isoformat(),
                "end_time": last.isoformat(),
                "total_spending": total,
                "currency": currency,
                "breakdown_by_resource": breakdown,
            }
        )
        return
    click.echo(f"Spending Summary for Agent: {agent_id}")
    click.echo("=" * 70 + "\n")
    click.echo(f"Time Period: {first} to {last}")
    click.echo(f"Total Spending: {total} {currency}\n")
    if not breakdown:
        click.echo("No spending recorded in this time period.")
        return
    width = max(len("Resource Type"), *(len(resource) for resource in breakdown))
    click.echo("Breakdown by Resource Type:")
    click.echo("-" * 70)
    click.echo(f"{'Resource Type':<{width}}  Cost ({currency})")
    click.echo("-" * 70)
    for resource, cost in sorted(breakdown.items(), key=lambda item: item[1], reverse=True):
        click.echo(f"{resource:<{width}}  {cost}")


def _all_agents_summary(first: datetime, last: datetime, as_json: bool) -> None:
    spending, currency = _totals("agent", None, first, last)
    if not spending:
        click.echo("No spending recorded in the specified time period.")
        return
    if as_json:
        emit_json(
            {
                "start_time": first.isoformat(),
                "end_time": last.isoformat(),
                "currency": currency,
                "agents": spending,
            }
        )
        return
    click.echo("Spending Summary by Agent")
    click.echo("=" * 70 + "\n")
    click.echo(f"Time Period: {first} to {last}")
    click.echo(f"Total Agents: {len(spending)}\n")
    click.echo(f"Total Spending: {sum(spending.values(), Decimal(0))} {currency}\n")
    width = max(len("Agent ID"), *(len(agent) for agent in spending))
    click.echo(f"{'Agent ID':<{width}}  Spending ({currency})")
    click.echo("-" * 70)
    for agent, cost in sorted(spending.items(), key=lambda item: item[1], reverse=True):
        click.echo(f"{agent:<{width}}  {cost}")


@ledger_group.command("summary")
@click.option("--agent-id", "-a", default=None, help="One agent's spending, by resource type.")
@click.option("--start", "-s", default=None, help=f"From this time ({TIME_HELP}); required.")
@click.option("--end", "-e", default=None, help="Up to this time (a date: the whole day); required.")
@format_option
@v01_errors
def summary_command(agent_id: str | None, start: str | None, end: str | None, as_json: bool) -> None:
    """Summarize spending in a time window: per agent, or one agent's per resource type."""
    first, last = _bounds(start, end)
    if first is None or last is None:
        which = "when using --agent-id" if agent_id else "for multi-agent summary"
        raise LedgerReadError(f"--start and --end are required {which}")
    if agent_id:
        _agent_summary(agent_id, first, last, as_json)
    else:
        _all_agents_summary(first, last, as_json)


__all__ = ["ledger_group"]
