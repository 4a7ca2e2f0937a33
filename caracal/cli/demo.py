"""``caracal demo``: Caracal's main job on the embedded default, end to end.

A parent agent delegates to two child agents that run at the same time (two threads, each with its own
client, as two workers would). Each step reserves its estimated cost before it "runs", records what it
used against the hold, and settles; Caracal allows or denies each step as it happens. The children's
budgets and the parent's shared budget all hold. Then the summary, each budget's status, and a full
verification of the ledger.
"""

from __future__ import annotations

import random
import tempfile
import threading
from decimal import Decimal
from pathlib import Path

import click

from caracal.cli.ledger import print_report
from caracal.cli.render import handle_errors, table
from caracal.core.checkpoint import load_public_key
from caracal.core.enforcement import describe_window
from caracal.core.ledger import LedgerQuery
from caracal.core.verify import verify_ledger
from caracal.exceptions import BudgetExceededError
from caracal.sdk.client import CaracalClient

_TOOL_PRICE = Decimal("0.005")


@click.command("demo")
@click.option(
    "--home",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Caracal home for the demo (default: a new temporary folder, kept for inspection).",
)
@click.option("--steps", type=click.IntRange(min=1, max=1000), default=40, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed for the simulated work.")
@click.option(
    "--serve",
    is_flag=True,
    help="Then serve the home (API, dashboard at /ui) while the agents keep spending slowly; Ctrl-C stops.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="With --serve: the address to use.")
@click.option("--port", type=click.IntRange(1, 65535), default=8787, show_default=True, help="With --serve.")
@handle_errors
def demo_command(folder: Path | None, steps: int, seed: int, serve: bool, host: str, port: int) -> None:
    """Two child agents spend concurrently against their budgets and their parent's; watch it hold
    (--serve: then watch them spend on the dashboard)."""
    home = folder or Path(tempfile.mkdtemp(prefix="caracal-demo-"))
    click.secho("Caracal demo: budgets that hold under concurrency", bold=True)
    click.echo(f"home: {home}  (nothing outside it is touched)")
    setup = CaracalClient(home)
    parent = setup.register_agent("research-lead", "demo@example.com")
    children = [
        setup.register_agent(name, "demo@example.com", parent="research-lead") for name in ("scout", "writer")
    ]
    setup.set_price("tool.web_search.calls", _TOOL_PRICE)
    for child in children:
        setup.create_policy(child.name, "0.40", "daily")
    setup.create_policy(parent.name, "0.60", "daily")
    click.echo("budgets: scout $0.40/day, writer $0.40/day, their parent research-lead $0.60/day (shared)")
    click.echo()

    printing = threading.Lock()
    tallies = {child.name: {"allowed": 0, "denied": 0} for child in children}

    def work(name: str, rng: random.Random) -> None:
        client = CaracalClient(home)
        try:
            for step in range(1, steps + 1):
                searches = rng.randint(2, 8)
                tokens = rng.randint(200, 2000)
                estimate = searches * _TOOL_PRICE + Decimal(tokens) * Decimal("0.00001")
                try:
                    with client.budget_check(name, estimated_cost=estimate) as scope:
                        client.emit_event(name, "tool.web_search.calls", searches)
                        client.emit_event(name, "openai.gpt-4o.output_tokens", rng.randint(100, tokens))
                    tallies[name]["allowed"] += 1
                    left = (scope.decision.remaining or Decimal(0)) - estimate
                    with printing:
                        click.echo(
                            f"  ALLOW {name:<7} step {step:>2}: held {estimate:.4f}, spent {scope.spent:.6f} "
                            f"(left before settling: {left:.4f})"
                        )
                except BudgetExceededError as exc:
                    tallies[name]["denied"] += 1
                    with printing:
                        click.secho(f"  DENY  {name:<7} step {step:>2}: {exc}", fg="yellow")
                    if tallies[name]["denied"] >= 3:
                        return
        finally:
            client.close()

    rng = random.Random(seed)
    threads = [
        threading.Thread(target=work, args=(child.name, random.Random(rng.random())), name=child.name)
        for child in children
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    click.echo()
    click.secho("Spend by agent (charges only; holds are not spend)", bold=True)
    ledger = setup.home.ledger_path
    totals = LedgerQuery(ledger).summarize("agent")
    names = {agent.agent_id: agent.name for agent in setup.home.agents.list()}
    table(
        ["AGENT", "CHARGES", "COST", "CUR", "STEPS ALLOWED", "DENIED"],
        [
            [names.get(agent, agent), t.events, t.cost, cur, *tallies.get(names.get(agent, ""), {}).values()]
            for (agent, cur), t in sorted(totals.items())
        ],
        right=(1, 2, 4, 5),
    )
    click.echo()
    click.secho("Budget status", bold=True)
    rows = []
    seen: set[str] = set()
    for child in children:
        for status in setup.budget_status(child.name):
            if status.policy.policy_id not in seen:
                seen.add(status.policy.policy_id)
                rows.append(
                    [
                        names[status.policy.agent_id],
                        describe_window(status.policy),
                        status.policy.limit,
                        status.spent,
                        status.held,
                        status.remaining,
                    ]
                )
    table(["AGENT", "WINDOW", "LIMIT", "SPENT", "HELD", "REMAINING"], rows, right=(2, 3, 4, 5))
    over = [row for row in rows if Decimal(str(row[5])) < 0]
    click.echo()
    click.secho("Verifying the ledger", bold=True)
    setup.close()
    report = verify_ledger(ledger, public_key=load_public_key(setup.home.key_path))
    print_report(report)
    if over or not report.ok:
        raise SystemExit(1)
    click.echo()
    click.echo(f"Look around: CARACAL_HOME={home} caracal ledger query   (or: ledger summary, ledger verify)")
    if serve:
        from caracal.cli.demo_serve import serve_demo

        serve_demo(home, host, port, [child.name for child in children], seed)
