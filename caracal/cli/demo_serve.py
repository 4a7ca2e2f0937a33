"""``caracal demo --serve``: after the demo, serve its home (REST API and dashboard) and keep its agents
spending slowly, so that a new user watches the figures move on the dashboard. Ctrl-C stops it all: the
spender first, then the server (which saves its snapshot and a checkpoint, as ``caracal serve`` does)."""

from __future__ import annotations

import random
import threading
from decimal import Decimal
from pathlib import Path

import click

from caracal.exceptions import BudgetExceededError, CaracalError

SPEND_EVERY = 1.5
"""Seconds between two steps of the background agents."""
_REASON = "caracal demo --serve: room to keep spending"
_ROOM = Decimal(10)
"""With --serve the demo's daily limits are raised this many times, so the agents have room to go on."""


def serve_demo(home: Path, host: str, port: int, agents: list[str], seed: int) -> None:
    from caracal.sdk.client import CaracalClient
    from caracal.server.app import create_app
    from caracal.server.runner import serve
    from caracal.server.service import Service

    service = Service(home)
    try:
        service.keys.ensure_admin_key(service.home.admin_key_path)
        admin_key = service.home.admin_key_path.read_text("ascii").strip()
        for policy in service.home.policies.list():
            raised = policy.limit * _ROOM
            service.home.policies.update(policy.policy_id, limit=raised, reason=_REASON)
    except BaseException:
        service.close()
        raise
    app = create_app(service, own_service=True)
    stop = threading.Event()

    def spend() -> None:
        rng = random.Random(seed)
        client = CaracalClient(home)
        try:
            while not stop.wait(SPEND_EVERY):
                name = rng.choice(agents)
                searches = rng.randint(1, 4)
                try:
                    with client.budget_check(name, estimated_cost=Decimal("0.03")):
                        client.emit_event(name, "tool.web_search.calls", searches)
                        client.emit_event(name, "openai.gpt-4o.output_tokens", rng.randint(50, 600))
                except BudgetExceededError:
                    pass  # denied: the dashboard shows it; the next step tries again
                except CaracalError as exc:
                    click.echo(f"demo spender: {exc}", err=True)
        finally:
            client.close()

    spender = threading.Thread(target=spend, name="caracal-demo-spender", daemon=True)
    where = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ui"
    click.echo()
    click.secho("Dashboard", bold=True)
    click.echo(f"  open {where}")
    click.echo(f"  sign in with the admin key: {admin_key}")
    click.echo(f"  (it is in {service.home.admin_key_path}); the daily limits were raised {_ROOM}x so the")
    click.echo("  agents can keep spending a step every few seconds. Ctrl-C stops.")
    spender.start()
    try:
        serve(app, host, port, "warning")
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully, then re-raised the Ctrl-C it caught: that is the normal end
    finally:
        stop.set()
        spender.join(timeout=30)
    click.echo("stopped: the server saved its snapshot and a checkpoint; the home stays for inspection")
