"""``caracal ledger ...``: append, query, summarize, verify, checkpoint, prove and tail the ledger.

Each command parses its options, makes one library call, renders the result (a table, or JSON with
``--json``) and exits with a meaningful code (see :mod:`caracal.cli.render`).

The verifier and the home's writer wiring are imported by the commands that use them (verify, proof;
append, checkpoint): reading the ledger (query, summary, tail) is the common case and starts without them.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from caracal.cli.lazy import LazyCommand, LazyGroup
from caracal.cli.options import json_option
from caracal.cli.render import EXIT_VERIFY_FAILED, emit_json, fail, handle_errors, parse_json_object, table
from caracal.config import default_ledger_path, default_signing_key_path, load_settings, storage_url
from caracal.core.checkpoint import CheckpointStore, matches_signed
from caracal.core.ledger import (
    LedgerEvent,
    LedgerQuery,
    LedgerReader,
    LedgerTail,
    LedgerWriter,
    remembered_root,
)
from caracal.exceptions import AgentNotFoundError, CaracalError, InvalidLedgerEventError, ProofError
from caracal.storage.agents import AgentRegistry, default_agents_path

if TYPE_CHECKING:
    from caracal.core.store import LedgerStore
    from caracal.core.verify import VerificationReport
    from caracal.storage.home import EmbeddedHome

_PROGRESS_MIN_BYTES = 16 << 20


def ledger_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--ledger",
        "ledger",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="CARACAL_LEDGER",
        default=None,
        help="Ledger file (default: $CARACAL_LEDGER, else $CARACAL_HOME/data/ledger.jsonl).",
    )(command)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--agent-id, --resource-type, --start, --end: the filters of query and summary."""
    for option in reversed(
        [
            click.option("--agent-id", default=None, help="Only this agent."),
            click.option("--resource-type", "--resource", default=None, help="Only this resource."),
            click.option(
                "--start", default=None, help="From this time or date (inclusive; naive means UTC)."
            ),
            click.option(
                "--end", default=None, help="Up to this time or date (inclusive; a date: the whole day)."
            ),
        ]
    ):
        command = option(command)
    return command


def database_home() -> EmbeddedHome | None:
    """The home, when its storage is a database (``[storage] url`` or ``$CARACAL_DATABASE_URL``); None for
    a home on files, whose ledger commands read the file (or ``--ledger``) directly."""
    if storage_url(load_settings()) is None:
        return None
    from caracal.storage.home import EmbeddedHome

    return EmbeddedHome()


def home_agents() -> AgentRegistry | None:
    """The home's agent registry, or None when the home has none (a ledger can be read without a home)."""
    home = database_home()
    if home is not None:
        return home.agents
    registry = default_agents_path()
    return AgentRegistry(registry) if registry.exists() else None


def agent_filter(value: str | None) -> str | None:
    """An ``--agent-id`` filter: an agent's name in the home's registry becomes its id; anything else (an
    id, or an agent the registry does not know) is used as given."""
    registry = home_agents()
    if value is None or registry is None:
        return value
    try:
        return registry.get(value).agent_id
    except CaracalError:
        return value


def home_agent_names() -> dict[str, str]:
    """``agent id -> name`` for every agent of the home, to show beside the ids a ledger holds. Empty when
    the home has no registry or it cannot be read: names are a courtesy, and reading the ledger does not
    depend on them."""
    registry = home_agents()
    if registry is None:
        return {}
    try:
        return {agent.agent_id: agent.name for agent in registry.list()}
    except CaracalError:
        return {}


def resolve(ledger: Path | None) -> Path | LedgerStore:
    """The ledger a command reads: ``--ledger`` (a file), else the home's (its file, or its database)."""
    if ledger is not None:
        return ledger
    home = database_home()
    return home.ledger if home is not None else default_ledger_path()


def resolve_file(ledger: Path | None) -> Path:
    return ledger if ledger is not None else default_ledger_path()


def charged_agent(ledger: Path | None, agent: str) -> str:
    """The ``agent_id`` an append records. On the home's own ledger, once the home has an agent registry
    (``caracal init``), it must be a registered agent, named by id or name, and the id is what is stored:
    a name stored as given would count against the agent's ancestors' budgets but not its own policies,
    and an unknown agent would count against none, so both are refused (:class:`AgentNotFoundError`) rather
    than recorded. A ledger outside a home (``--ledger`` elsewhere) records the id as given."""
    registry = default_agents_path()
    path = resolve_file(ledger)
    home = database_home() if ledger is None else None
    if home is not None or (
        registry.exists() and (path == default_ledger_path() or _same_file(path, default_ledger_path()))
    ):
        try:
            return (home.agents if home is not None else AgentRegistry(registry)).get(agent).agent_id
        except AgentNotFoundError as exc:
            raise AgentNotFoundError(
                f"{exc}; in a home, a charge is recorded for a registered agent (so that its own policies "
                f"count it): register it with `caracal agent register`, or pass --ledger for a ledger "
                f"outside the home"
            ) from None
    return agent


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # either one missing: not the same existing file
        return False


def open_writer(ledger: Path | None) -> LedgerWriter:
    """A writer on the ledger, configured by the home's ``config.toml``."""
    from caracal.storage.files import FileBackend
    from caracal.storage.home import open_ledger_writer

    home = database_home() if ledger is None else None
    if home is not None:
        return open_ledger_writer(home.backend, home.key_path, home.settings)
    path = resolve_file(ledger)
    return open_ledger_writer(FileBackend(path.parent, path), default_signing_key_path(), load_settings())


def event_rows(events: list[LedgerEvent]) -> list[list[object]]:
    return [
        [e.event_id, e.timestamp, e.agent_id, e.resource_type, e.quantity, e.cost, e.currency] for e in events
    ]


def named(event: LedgerEvent, names: dict[str, str]) -> dict[str, object]:
    """The event's JSON with ``agent_name`` after ``agent_id`` (None when the home does not know it)."""
    data = event.to_dict()
    head = {"event_id": data.pop("event_id"), "agent_id": data.pop("agent_id")}
    return {**head, "agent_name": names.get(event.agent_id), **data}


def show_events(events: list[LedgerEvent], as_json: bool, names: dict[str, str] | None = None) -> None:
    """A table of entries; a KIND column appears when holds or releases are among them.

    With ``names`` (agent id -> name), a NAME column beside AGENT shows the names of the agents the home
    knows ("-" for others; no column when it knows none of them), and each JSON entry gets ``agent_name``.
    """
    if as_json:
        if names is None:
            emit_json([e.to_dict() for e in events])
        else:
            emit_json([named(e, names) for e in events])
        return
    if not events:
        click.echo("no events")
        return
    headers = ["ID", "TIMESTAMP", "AGENT", "RESOURCE", "QUANTITY", "COST", "CUR"]
    rows = event_rows(events)
    right = (0, 4, 5)
    if names and any(e.agent_id in names for e in events):
        headers.insert(3, "NAME")
        for row, event in zip(rows, events, strict=True):
            row.insert(3, names.get(event.agent_id, "-"))
        right = (0, 5, 6)
    if any(not e.is_charge for e in events):
        headers.append("KIND")
        for row, event in zip(rows, events, strict=True):
            row.append(event.kind or "charge")
    table(headers, rows, right=right)


@click.group(
    "ledger",
    cls=LazyGroup,
    lazy_commands={
        "demo": LazyCommand(
            "caracal.cli.ledger_demo",
            "demo_command",
            "Append, query, summarize, checkpoint, prove and verify a ledger, then catch a tampered copy.",
        )
    },
)
def ledger_group() -> None:
    """The append-only, tamper-evident ledger of charges."""


@ledger_group.command("append")
@ledger_option
@json_option
@click.option(
    "--agent-id",
    required=True,
    help="Agent charged: in a home, a registered agent's id or name (its id is stored).",
)
@click.option("--resource-type", required=True, help="What was consumed, e.g. openai.gpt-4o.input_tokens.")
@click.option("--quantity", required=True, help="How much (exact decimal).")
@click.option("--cost", required=True, help="Cost (exact decimal).")
@click.option("--currency", default="USD", show_default=True)
@click.option("--metadata", default=None, help="A JSON object stored with the event.")
@click.option("--timestamp", default=None, help="ISO 8601 time (default: now; naive means UTC).")
@handle_errors
def append_command(
    ledger: Path | None,
    as_json: bool,
    agent_id: str,
    resource_type: str,
    quantity: str,
    cost: str,
    currency: str,
    metadata: str | None,
    timestamp: str | None,
) -> None:
    """Append one charge; prints it with its event id once it is on disk."""
    meta = parse_json_object(metadata, "--metadata", InvalidLedgerEventError)
    agent = charged_agent(ledger, agent_id)
    with open_writer(ledger) as writer:
        event = writer.append_event(agent, resource_type, quantity, cost, currency, meta, timestamp)
    show_events([event], as_json)


@ledger_group.command("query")
@ledger_option
@json_option
@filter_options
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Show at most this many (the last).")
@click.option("--all", "all_kinds", is_flag=True, help="Also show holds and releases (not only charges).")
@handle_errors
def query_command(
    ledger: Path | None,
    as_json: bool,
    agent_id: str | None,
    resource_type: str | None,
    start: str | None,
    end: str | None,
    limit: int | None,
    all_kinds: bool,
) -> None:
    """Query ledger events: the charges (and with --all, holds and releases), filtered by agent, resource
    and time; the names of the home's agents beside their ids."""
    events = LedgerQuery(resolve(ledger)).get_events(
        agent_filter(agent_id), start, end, resource_type, charges_only=not all_kinds
    )
    if limit is not None:
        events = events[-limit:] if limit else []
    show_events(events, as_json, home_agent_names())


@ledger_group.command("summary")
@ledger_option
@json_option
@filter_options
@click.option(
    "--by",
    "group_by",
    type=click.Choice(["resource", "day", "agent"]),
    default="resource",
    show_default=True,
    help="How to group the totals.",
)
@handle_errors
def summary_command(
    ledger: Path | None,
    as_json: bool,
    agent_id: str | None,
    resource_type: str | None,
    start: str | None,
    end: str | None,
    group_by: str,
) -> None:
    """Summarize spending: the total grouped by resource, day or agent (exact decimals, one row per
    currency)."""
    totals = LedgerQuery(resolve(ledger)).summarize(
        group_by, agent_id=agent_filter(agent_id), start_time=start, end_time=end, resource_type=resource_type
    )
    rows = sorted(totals.items())
    if as_json:
        emit_json(
            [
                {
                    group_by: key,
                    "currency": currency,
                    "events": t.events,
                    "quantity": t.quantity,
                    "cost": t.cost,
                }
                for (key, currency), t in rows
            ]
        )
        return
    if not rows:
        click.echo("no events")
        return
    body: list[list[object]] = [[key, t.events, t.quantity, t.cost, cur] for (key, cur), t in rows]
    by_currency: dict[str, list[Any]] = {}
    for (_key, cur), t in rows:
        count, cost = by_currency.get(cur, [0, 0])
        by_currency[cur] = [count + t.events, cost + t.cost]
    for cur, (count, cost) in sorted(by_currency.items()):
        body.append(["TOTAL", count, "", cost, cur])
    table([group_by.upper(), "EVENTS", "QUANTITY", "COST", "CUR"], body, right=(1, 2, 3))


@ledger_group.command("verify")
@ledger_option
@json_option
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Key to check checkpoint signatures with (default: the configured signing key).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def verify_command(ledger: Path | None, as_json: bool, public_key: Path | None, quiet: bool) -> None:
    """Check every line, id, hash chain, checkpoint and signature; exit 3 if anything is wrong."""
    from caracal.core.verify import default_public_key, verify_ledger

    path = resolve(ledger)
    if isinstance(path, Path) and not path.exists():
        fail(f"no ledger at {path}")
    key = default_public_key(public_key)
    # The home's own ledger: its writer's sealed state also covers the lines after the last checkpoint.
    remembered = remembered_root(path, default_signing_key_path()) if ledger is None else None
    size = path.stat().st_size if isinstance(path, Path) else path.end() * 250  # about 250 bytes a line
    if quiet or as_json or size < _PROGRESS_MIN_BYTES or not isinstance(path, Path):
        report = verify_ledger(path, public_key=key, remembered=remembered)
    else:
        with click.progressbar(length=size, label="verifying", file=sys.stderr) as bar:
            done = [0]

            def progress(position: int, total: int) -> None:
                bar.update(position - done[0])
                done[0] = position

            report = verify_ledger(path, public_key=key, progress=progress, remembered=remembered)
    if as_json:
        emit_json(report.to_dict())
    else:
        print_report(report)
    if not report.ok:
        sys.exit(EXIT_VERIFY_FAILED)


def print_report(report: VerificationReport) -> None:
    click.echo(f"ledger:      {report.location}")
    click.echo(
        f"events:      {report.events}"
        + (f" ({report.bytes_checked} bytes)" if report.unit == "bytes" else "")
    )
    click.echo(f"merkle root: {report.root.hex()}")
    signed = (
        f"signatures checked with key {report.key_id}"
        if report.signatures_checked
        else ("signatures NOT checked (no key)")
    )
    click.echo(f"checkpoints: {report.checkpoints_matched}/{report.checkpoints_total} match; {signed}")
    if report.unchained_events:
        click.echo(
            f"note:        {report.unchained_events} events carry no prev_hash (written before chaining)"
        )
    if report.torn_tail_bytes:
        click.echo(
            f"note:        {report.torn_tail_bytes} bytes after the last complete line (a write in progress, "
            f"or a torn write the next append repairs)"
        )
    if report.ok:
        click.echo("OK: the ledger is intact")
        return
    click.echo(f"FAILED: {len(report.problems) + report.problems_omitted} problem(s)", err=True)
    if report.first_bad_event_id is not None and report.first_bad_event_is_exact:
        click.echo(f"first bad event: {report.first_bad_event_id}", err=True)
    elif report.first_bad_event_id is not None:  # a signed checkpoint's root says "somewhere from here"
        click.echo(
            f"first bad event: not known exactly, event {report.first_bad_event_id} or a later one (a "
            "root recorded for the ledger no longer matches it)",
            err=True,
        )
    for problem in report.problems:
        click.echo(f"  [{problem.kind}] {problem.message}", err=True)
    if report.problems_omitted:
        click.echo(f"  ... and {report.problems_omitted} more", err=True)


@ledger_group.command("checkpoint")
@ledger_option
@json_option
@handle_errors
def checkpoint_command(ledger: Path | None, as_json: bool) -> None:
    """Sign and store a checkpoint (size, Merkle root) of the ledger now."""
    with open_writer(ledger) as writer:
        checkpoint = writer.checkpoint()
    if as_json:
        emit_json(checkpoint.to_dict())
        return
    click.echo(f"checkpoint: size {checkpoint.size}, root {checkpoint.root.hex()}")
    click.echo(f"signed by key {checkpoint.key_id} at {checkpoint.timestamp}")


def _b64(values: list[bytes]) -> list[str]:
    return [base64.b64encode(v).decode() for v in values]


@ledger_group.command("proof")
@ledger_option
@json_option
@click.option("--event-id", type=int, default=None, help="Prove this event is in the ledger.")
@click.option(
    "--size", type=int, default=None, help="Tree size to prove against (default: the whole ledger)."
)
@click.option("--from-size", type=int, default=None, help="Prove the ledger of this size is a prefix of ...")
@click.option("--to-size", type=int, default=None, help="... the ledger of this size (default: all of it).")
@handle_errors
def proof_command(
    ledger: Path | None,
    as_json: bool,
    event_id: int | None,
    size: int | None,
    from_size: int | None,
    to_size: int | None,
) -> None:
    """RFC 9162 inclusion proof (--event-id) or consistency proof (--from-size), self-checked."""
    from caracal.core.verify import prove_consistency, prove_inclusion

    path = resolve(ledger)
    if (event_id is None) == (from_size is None):
        raise ProofError("give either --event-id (inclusion proof) or --from-size (consistency proof)")
    signed = (
        CheckpointStore(path.with_name(path.name + ".checkpoints"))
        if isinstance(path, Path)
        else path.checkpoints
    ).roots()
    if event_id is not None:
        inclusion = prove_inclusion(path, event_id, size)
        inclusion.verify()
        result: dict[str, Any] = {
            "type": "inclusion",
            "event_id": inclusion.event_id,
            "leafIdx": inclusion.event_id - 1,
            "treeSize": inclusion.size,
            "leafHash": base64.b64encode(inclusion.leaf_hash).decode(),
            "root": base64.b64encode(inclusion.root).decode(),
            "proof": _b64(inclusion.proof),
            "matches_signed_checkpoint": matches_signed(signed, inclusion.size, inclusion.root),
        }
    else:
        assert from_size is not None
        consistency = prove_consistency(path, from_size, to_size)
        consistency.verify()
        result = {
            "type": "consistency",
            "size1": consistency.size1,
            "size2": consistency.size2,
            "root1": base64.b64encode(consistency.root1).decode(),
            "root2": base64.b64encode(consistency.root2).decode(),
            "proof": _b64(consistency.proof),
        }
    if as_json:
        emit_json(result)
        return
    for key, value in result.items():
        if key == "proof":
            click.echo(f"proof ({len(value)} hashes, base64):")
            for item in value:
                click.echo(f"  {item}")
        else:
            click.echo(f"{key}: {value}")
    click.echo("verified: yes (RFC 9162)")


@ledger_group.command("export")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@ledger_option
@json_option
@handle_errors
def export_command(output: Path, ledger: Path | None, as_json: bool) -> None:
    """Write the ledger as a JSON Lines file, byte for byte what the file backend stores, with its signed
    checkpoints beside it (OUTPUT.checkpoints): 'caracal ledger verify --ledger OUTPUT' checks the copy."""
    from caracal.core.checkpoint import CheckpointStore
    from caracal.core.fileio import fsync_directory
    from caracal.core.store import lines_payload

    source = resolve(ledger)
    if output.exists():
        fail(f"{output} exists; export never overwrites a file: choose another name or remove it")
    reader = LedgerReader(source)
    lines = reader.store.iter_lines(0) if reader.store is not None else _file_lines(reader.ledger_path)
    checkpoints = (
        list(CheckpointStore(source.with_name(source.name + ".checkpoints")))
        if isinstance(source, Path)
        else list(source.checkpoints)
    )
    partial = output.with_name(output.name + ".partial")
    count = size = 0
    with open(partial, "wb") as handle:
        batch: list[bytes] = []
        for _position, line in lines:
            batch.append(line)
            if len(batch) >= 10_000:
                size += handle.write(lines_payload(batch))
                count += len(batch)
                batch.clear()
        size += handle.write(lines_payload(batch))
        count += len(batch)
        handle.flush()
        os.fsync(handle.fileno())
    sidecar = CheckpointStore(output.with_name(output.name + ".checkpoints"))
    sidecar.path.unlink(missing_ok=True)
    for checkpoint in checkpoints:
        if checkpoint.size <= count:
            sidecar.append(checkpoint)
    os.replace(partial, output)
    fsync_directory(output.parent.resolve())
    if as_json:
        emit_json({"output": str(output), "events": count, "bytes": size, "checkpoints": len(checkpoints)})
        return
    click.echo(f"exported {count} entries ({size} bytes) and {len(checkpoints)} checkpoints to {output}")


def _file_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The complete lines of a ledger file (reading needs no lock: it is append-only)."""
    from caracal.core.events import iter_lines
    from caracal.core.fileio import open_for_reading

    if not path.exists():
        return
    with open_for_reading(path) as handle:
        yield from iter_lines(handle)


@ledger_group.command("tail")
@ledger_option
@json_option
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they are appended.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.5, show_default=True)
@handle_errors
def tail_command(ledger: Path | None, as_json: bool, count: int, follow: bool, interval: float) -> None:
    """Show the last events, reading only the end of the file; --follow keeps watching."""
    path = resolve(ledger)
    tail = LedgerTail(path, from_end=True)  # first, so that nothing appended from now on is missed
    last = LedgerReader(path).last_events(count, end=tail.offset)
    if as_json:
        for event in last:
            click.echo(event.to_json_line())
    else:
        show_events(last, False)
    if not follow:
        return
    try:
        for event in tail.follow(interval):
            if as_json:
                click.echo(event.to_json_line())
            else:
                click.echo("  ".join(str(cell) for cell in event_rows([event])[0]))
    except KeyboardInterrupt:
        pass
