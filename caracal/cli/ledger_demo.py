"""``caracal ledger demo``: the ledger's main job, end to end, in a folder of its own.

It appends charges (one at a time and as a group commit), queries and summarizes them, signs a checkpoint,
proves an event's inclusion, verifies the whole ledger, and finally shows that editing one line of a copy
is caught. Nothing outside the demo folder is touched; the folder is laid out like a Caracal home, so the
printed ``CARACAL_HOME=... caracal ledger ...`` commands work on it afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import click

from caracal.cli.ledger import event_rows, print_report
from caracal.cli.render import EXIT_ERROR, handle_errors, table
from caracal.config import default_ledger_path, default_signing_key_path
from caracal.core.checkpoint import load_public_key
from caracal.core.ledger import LedgerQuery, LedgerWriter
from caracal.core.verify import prove_inclusion, verify_ledger

# Illustrative unit prices for the demo only (USD per unit); real prices come from the pricebook.
_PRICES = {
    "openai.gpt-4o.input_tokens": Decimal("0.0000025"),
    "openai.gpt-4o.output_tokens": Decimal("0.00001"),
    "anthropic.claude-sonnet-4.input_tokens": Decimal("0.000003"),
    "tool.web_search.calls": Decimal("0.005"),
}
_CHARGES = [
    ("research-agent", "openai.gpt-4o.input_tokens", 12000),
    ("research-agent", "openai.gpt-4o.output_tokens", 1800),
    ("research-agent", "tool.web_search.calls", 3),
    ("writer-agent", "anthropic.claude-sonnet-4.input_tokens", 30000),
    ("writer-agent", "openai.gpt-4o.output_tokens", 4200),
]


def _step(number: int, text: str) -> None:
    click.echo()
    click.secho(f"{number}. {text}", bold=True)


@click.command("demo")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the demo's ledger and key (default: a new temporary folder, kept for inspection).",
)
@click.option("--batch", type=click.IntRange(min=1, max=1_000_000), default=1000, show_default=True)
@handle_errors
def demo_command(folder: Path | None, batch: int) -> None:
    """Append, query, summarize, checkpoint, prove and verify a ledger, then catch a tampered copy."""
    home = folder or Path(tempfile.mkdtemp(prefix="caracal-demo-"))
    ledger = default_ledger_path(home)
    key = default_signing_key_path(home)
    click.secho("Caracal ledger demo", bold=True)
    click.echo(f"ledger:      {ledger}")
    click.echo(f"signing key: {key}  (kept apart from the ledger's folder)")

    with LedgerWriter(ledger, signing_key_path=key) as writer:
        _step(1, "Appending charges one at a time (each is fsynced before append_event returns)")
        events = []
        for agent, resource, quantity in _CHARGES:
            cost = Decimal(quantity) * _PRICES[resource]
            events.append(writer.append_event(agent, resource, Decimal(quantity), cost))
        table(
            ["ID", "TIMESTAMP", "AGENT", "RESOURCE", "QUANTITY", "COST", "CUR"],
            event_rows(events),
            right=(0, 4, 5),
        )

        _step(
            2, f"Appending {batch:,} tool-call charges as one group commit (one lock, one write, one fsync)"
        )
        items = [
            {
                "agent_id": "crawler-agent",
                "resource_type": "tool.web_search.calls",
                "quantity": Decimal(1),
                "cost": _PRICES["tool.web_search.calls"],
                "metadata": {"call": n},
            }
            for n in range(batch)
        ]
        started = time.perf_counter()
        appended = writer.append_events(items)
        elapsed = time.perf_counter() - started
        click.echo(
            f"events {appended[0].event_id}..{appended[-1].event_id} durable in {elapsed * 1000:.1f} ms "
            f"({len(appended) / elapsed:,.0f} events/s)"
        )

        _step(3, "Signing a checkpoint of the Merkle tree (size, root) with the Ed25519 key")
        checkpoint = writer.checkpoint()
        click.echo(f"size {checkpoint.size}, root {checkpoint.root.hex()}, key {checkpoint.key_id}")

    query = LedgerQuery(ledger)
    _step(4, "Querying research-agent's charges")
    mine = query.get_events(agent_id="research-agent")
    table(
        ["ID", "TIMESTAMP", "AGENT", "RESOURCE", "QUANTITY", "COST", "CUR"], event_rows(mine), right=(0, 4, 5)
    )
    click.echo(f"research-agent spent {query.sum_spending('research-agent')} USD in total")

    _step(5, "Summary by resource")
    rows = [
        [key_, t.events, t.quantity, t.cost, cur]
        for (key_, cur), t in sorted(query.summary_by_resource().items())
    ]
    table(["RESOURCE", "EVENTS", "QUANTITY", "COST", "CUR"], rows, right=(1, 2, 3))

    _step(6, "Proving that event 2 is in the signed tree (RFC 9162 inclusion proof)")
    proof = prove_inclusion(ledger, 2, checkpoint.size)
    proof.verify()
    click.echo(
        f"event 2 is leaf 1 of {proof.size}; {len(proof.proof)} hashes lead to the signed root: verified"
    )

    _step(7, "Verifying the whole ledger (every line, id, hash chain, checkpoint and signature)")
    report = verify_ledger(ledger, public_key=load_public_key(key))
    print_report(report)
    if not report.ok:
        raise SystemExit(EXIT_ERROR)

    _step(8, "Tampering with a copy: changing event 2's cost, then verifying the copy")
    copy = ledger.with_name("tampered.jsonl")
    shutil.copyfile(ledger, copy)
    shutil.copyfile(
        ledger.with_name(ledger.name + ".checkpoints"), copy.with_name(copy.name + ".checkpoints")
    )
    lines = copy.read_bytes().split(b"\n")
    original_cost = str(events[1].cost).encode()
    lines[1] = lines[1].replace(b'"cost":"' + original_cost + b'"', b'"cost":"0.001"')
    copy.write_bytes(b"\n".join(lines))
    tampered = verify_ledger(copy, public_key=load_public_key(key))
    click.echo(
        f"verify of the tampered copy: {'OK' if tampered.ok else 'FAILED'}; "
        f"first bad event: {tampered.first_bad_event_id}"
    )
    for problem in tampered.problems:
        click.echo(f"  [{problem.kind}] {problem.message}")
    if tampered.ok:
        raise SystemExit(EXIT_ERROR)

    click.echo()
    click.echo("Done. Look around with, for example:")
    click.echo(f"  CARACAL_HOME={home} caracal ledger query --agent-id research-agent")
    click.echo(f"  CARACAL_HOME={home} caracal ledger verify")
