"""``caracal alert ...``: alert rules (create, list, delete, test) and the outbox of their webhooks.

Works on the home directly (no server needed). ``caracal serve`` fires the rules and delivers their
webhooks; ``alert test`` delivers its test event itself (one attempt), and what it could not deliver stays
in the outbox for the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from caracal.cli.options import json_option
from caracal.cli.render import emit_json, fail, handle_errors, table
from caracal.core.alerts import AlertRule
from caracal.storage.home import EmbeddedHome

STATES = ("pending", "delivered", "failed")
ON_CHOICES = ("denied", "over-hold", "suspended", "verification-failed")
SECRET_WARNING = "the secret signs this rule's webhooks and is shown only now: give it to the receiver"


def _what(rule: AlertRule) -> str:
    if rule.on == "threshold":
        held = " (spent+held)" if rule.count_holds else ""
        return f"threshold {rule.threshold}{held}"
    return rule.on


def _scope(rule: AlertRule, names: dict[str, str]) -> str:
    if rule.policy_id is not None:
        return f"policy {rule.policy_id}"
    if rule.agent_id is not None:
        return f"agent {names.get(rule.agent_id, rule.agent_id)}"
    return "all"


def _rows(rules: Sequence[AlertRule], names: dict[str, str]) -> list[list[object]]:
    return [[r.rule_id, r.name, _what(r), _scope(r, names), r.format, r.url] for r in rules]


@click.group("alert")
def alert_group() -> None:
    """Alerts: webhooks when a budget crosses a threshold, an agent is denied or suspended, and more."""


@alert_group.command("create")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")  # --format is the body's
@click.option("--name", required=True, help="A name people recognise (shown in every alert).")
@click.option("--url", required=True, help="The webhook: http(s) URL that receives a signed POST.")
@click.option("--threshold", default=None, help="Fire at this fraction of a policy's limit (0.8).")
@click.option("--count-holds", is_flag=True, help="With --threshold: count live holds as used.")
@click.option("--policy", "policy_id", default=None, help="With --threshold: only this policy.")
@click.option("--agent", "agent_ref", default=None, help="Only this agent (id or name); else every agent.")
@click.option("--on", "on", type=click.Choice(ON_CHOICES), default=None, help="Fire on this instead.")
@click.option(
    "--format",
    "body_format",
    type=click.Choice(["json", "slack"]),
    default="json",
    show_default=True,
    help="The body: Caracal's JSON event, or a Slack incoming-webhook message.",
)
@handle_errors
def create_command(
    as_json: bool,
    name: str,
    url: str,
    threshold: str | None,
    count_holds: bool,
    policy_id: str | None,
    agent_ref: str | None,
    on: str | None,
    body_format: str,
) -> None:
    """Create an alert rule; prints its signing secret once."""
    if (threshold is None) == (on is None):
        raise click.UsageError("give either --threshold FRACTION or --on EVENT")
    if threshold is None and (count_holds or policy_id is not None):
        raise click.UsageError("--count-holds and --policy go with --threshold")
    if policy_id is not None and agent_ref is not None:
        raise click.UsageError("--policy and --agent: give one")
    home = EmbeddedHome()
    try:
        rule = home.create_alert(
            name=name,
            url=url,
            on=on or "threshold",
            threshold=threshold,
            count_holds=count_holds,
            policy_id=policy_id,
            agent=agent_ref,
            format=body_format,
        )
        names = {agent.agent_id: agent.name for agent in home.agents.list()}
    finally:
        home.close()
    if as_json:
        emit_json({**rule.public_dict(), "secret": rule.secret, "warning": SECRET_WARNING})
        return
    click.echo(f"created alert rule {rule.rule_id}")
    for key, value in (
        ("name", rule.name),
        ("fires on", _what(rule)),
        ("scope", _scope(rule, names)),
        ("url", rule.url),
        ("format", rule.format),
        ("secret", rule.secret),
    ):
        click.echo(f"  {key + ':':<10}{value}")
    click.echo(f"  ({SECRET_WARNING})")


@alert_group.command("list")
@json_option
@handle_errors
def list_command(as_json: bool) -> None:
    """List alert rules (never their secrets)."""
    home = EmbeddedHome()
    try:
        rules = home.alerts.list()
        names = {agent.agent_id: agent.name for agent in home.agents.list()} if rules else {}
    finally:
        home.close()
    if as_json:
        emit_json([rule.public_dict() for rule in rules])
        return
    if not rules:
        click.echo("no alert rules")
        return
    table(["RULE", "NAME", "FIRES ON", "SCOPE", "FORMAT", "URL"], _rows(rules, names))


@alert_group.command("delete")
@json_option
@click.argument("rule_id")
@handle_errors
def delete_command(as_json: bool, rule_id: str) -> None:
    """Delete an alert rule (its undelivered webhooks are marked failed, not sent)."""
    home = EmbeddedHome()
    try:
        rule = home.alerts.delete(rule_id)
    finally:
        home.close()
    if as_json:
        emit_json({**rule.public_dict(), "deleted": True})
        return
    click.echo(f"deleted alert rule {rule.rule_id} ({rule.name})")


@alert_group.command("test")
@json_option
@click.argument("rule_id")
@handle_errors
def test_command(as_json: bool, rule_id: str) -> None:
    """Send a test event to the rule's webhook now (exit 1 when it was not delivered)."""
    from caracal.server.alerting import Sender  # httpx: only this command needs it

    home = EmbeddedHome()
    try:
        event = home.alerts.test(rule_id)
        sender = Sender(home)
        try:
            sender.deliver_due(only=event.event_id)
        finally:
            sender.close()
        entry = home.alerts.delivery(event.event_id)
    finally:
        home.close()
    if as_json:
        emit_json(entry)
    elif entry["state"] == "delivered":
        click.echo(f"delivered test event {entry['id']} to {entry['url']} (HTTP {entry['last_status']})")
    if entry["state"] != "delivered":
        fail(
            f"test event {entry['id']} was not delivered to {entry['url']}: {entry['last_error']}; it "
            "stays in the outbox and 'caracal serve' tries again"
        )


@alert_group.command("deliveries")
@json_option
@click.option("--state", type=click.Choice(STATES), default=None, help="Only those in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most so many.")
@handle_errors
def deliveries_command(as_json: bool, state: str | None, limit: int) -> None:
    """The outbox: recent webhooks (newest first), their state, attempts and last error."""
    home = EmbeddedHome()
    try:
        entries = home.alerts.deliveries(limit, state)
    finally:
        home.close()
    if as_json:
        emit_json(entries)
        return
    if not entries:
        click.echo("no alert deliveries")
        return
    table(
        ["EVENT", "TYPE", "RULE", "STATE", "TRIES", "CREATED", "LAST ERROR"],
        [_delivery_row(entry) for entry in entries],
        right=(4,),
    )


@alert_group.command("retry")
@json_option
@click.argument("event_id")
@handle_errors
def retry_command(as_json: bool, event_id: str) -> None:
    """Queue a failed webhook again (the server sends it; its attempts start afresh)."""
    home = EmbeddedHome()
    try:
        entry = home.alerts.retry(event_id)
    finally:
        home.close()
    if as_json:
        emit_json(entry)
        return
    click.echo(f"queued alert {entry['id']} again for {entry['url']}; 'caracal serve' sends it")


def _delivery_row(entry: dict[str, Any]) -> list[object]:
    error = entry.get("last_error") or "-"
    return [
        entry["id"],
        entry["type"],
        entry["rule_id"],
        entry["state"],
        entry["attempts"],
        entry["created_at"],
        error if len(error) <= 60 else error[:57] + "...",
    ]


__all__ = ["alert_group"]
