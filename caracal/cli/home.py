"""``caracal init`` (the global ``--home`` option is in :mod:`caracal.cli.options`).

``caracal init`` creates what a home needs and never destroys or overwrites anything: each item that
already exists is reported (with what it holds) and left as it is. Running it again is always safe.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from caracal import __version__
from caracal.cli.options import apply_home
from caracal.cli.render import EXIT_ERROR, emit_json, table
from caracal.config import caracal_home, check_storage_url
from caracal.core.budget import DEFAULT_IDEMPOTENCY_WINDOW
from caracal.core.checkpoint import CheckpointSigner, public_key_path
from caracal.core.enforcement import DEFAULT_TTL
from caracal.core.fileio import write_atomically
from caracal.core.ledger import LedgerReader, LedgerWriter
from caracal.core.validation import dumps
from caracal.exceptions import CaracalError
from caracal.storage.home import EmbeddedHome

# ------------------------------------------------------------------------------------------ config.toml

CONFIG_TEMPLATE = """\
# Caracal configuration for this home.
# Written by `caracal init` (Caracal {version}) on {date}. `caracal init` never overwrites this file: edit it
# freely; delete it and run `caracal init` again to get a fresh, documented copy.
#
# HOW IT IS READ
#   Every command and every CaracalClient on this home read this file when they start; a setting left out
#   keeps its default (the value written below). An unknown section or setting, or a value of the wrong
#   type, is an error (a typo must not be ignored silently). The home folder itself is chosen by
#   `caracal --home PATH`, else $CARACAL_HOME, else ~/.caracal; $CARACAL_LEDGER (or `--ledger` on
#   `caracal ledger ...`) selects another ledger file.
#
# HOME LAYOUT (fixed by the code; not configurable in this file)
#   config.toml                      this file
#   data/ledger.jsonl                the append-only ledger: charges, holds and releases, one JSON per line
#   data/ledger.jsonl.lock           the writers' exclusive lock (flock)
#   data/ledger.jsonl.checkpoints    signed Merkle checkpoints (size, root) of the ledger
#   data/ledger.jsonl.merkle         cached Merkle frontier (a cache: rebuilt when missing)
#   data/ledger.jsonl.bak.N          rolling backups of the ledger
#   data/agents.json                 agents: id, unique name, owner, parent, metadata, status
#   data/policies.json               budget policies with every revision (the audit trail)
#   data/prices.json                 the user's price history
#   data/apikeys.json                API keys of the server (hashes only; owner-only)
#   data/alerts.json                 alert rules with their signing secrets (owner-only)
#   data/alert_outbox.json           alerts waiting for delivery, and recent deliveries (owner-only)
#                                    (each registry with its .lock and rolling .bak.N copies)
#   data/ledger.jsonl.*              other sidecars are caches, rebuilt from the ledger when missing
#   keys/checkpoint.key              Ed25519 key signing the checkpoints; owner-only (0600). Kept out of
#                                    data/ on purpose: whoever can rewrite the ledger must not be able to
#                                    re-sign it. Back it up separately.
#   keys/checkpoint.key.pub          its public key, for auditors (`caracal ledger verify --public-key`)
#   keys/admin.key                   the server's admin API key (owner-only); agent keys: `caracal agent key`
#   backups/<time>/                  copies of data/ made by `caracal backup create`

[storage]
# Where the ledger and the registries live. Unset (the default): this home's data/ folder; no server, no
# database. A PostgreSQL URL shares budgets between hosts: every host that enforces them runs with the same
# URL and a copy of keys/checkpoint.key (the signing key never goes into the database). $CARACAL_DATABASE_URL
# overrides this setting. Written by `caracal init --database URL` and `caracal migrate --to URL`.
# url = "postgresql://caracal@db.internal/caracal"
# On a database: the longest a statement may run, in seconds, before it is cancelled and the operation
# fails (an append is then denied, never left pending). Lock waits are bounded by [ledger] lock_timeout.
statement_timeout = 10.0

[ledger]
# How many rolling backups ledger.jsonl.bak.1..N to keep; a backup is taken on a writer's first append to
# an existing ledger. 0 disables them.
backup_count = 3
# Sign a checkpoint (size, Merkle root) every this many events; 0 disables the count trigger.
checkpoint_every = 1000
# ... and also when this many seconds have passed since the last checkpoint and events were appended
# (checkpoints are also signed when a writer closes).
checkpoint_interval = 60.0
# Skip the open-time backup when the newest backup is younger than this many seconds, so that short-lived
# writers (one CLI command each) do not copy a large ledger every time.
backup_min_interval = 600.0
# Longest wait, in seconds, for the ledger's exclusive lock before an append fails (and is denied).
lock_timeout = 10.0
# A process that opens a long ledger without a usable budget snapshot replays it once for the whole home;
# the others wait up to this many seconds for that replay (then read its snapshot), else replay themselves.
replay_wait = 600.0
# `caracal serve` verifies the whole ledger (as `caracal ledger verify`, in a child process) every this many
# seconds, one server process per home at a time. A problem found stops every decision and fires
# verification-failed alerts: it finds edits of old lines, which enforcement does not read again. 0: never.
verify_interval = 3600.0

[pricing]
# Price LLM resources named <provider>.<model>.<kind> (kind: input_tokens, output_tokens,
# cache_read_tokens, cache_write_tokens) from the genai-prices data bundled with the installed package when
# you have set no price of your own. Never fetched from the network. false: only your prices count, and
# an unpriced resource is refused (never charged at zero).
use_llm_prices = true
# Models whose price depends on the prompt size (long-context tiers): "refuse" them, or price them at the
# "base" tier.
tiered_llm_prices = "refuse"

[holds]
# How long, in seconds, a budget hold lives when the caller gives no TTL (`budget_check`, `reserve`);
# an expired hold no longer counts against the budget. (Gateway holds are charge-on-expiry: one that
# expires unsettled, e.g. after a crash, is billed at its bound, marked estimated.)
default_ttl = {default_ttl}
# Suspend an agent when a settlement exceeds its hold by more than this factor (usage far beyond the
# worst case: a runaway loop or a misbehaving upstream). Off when unset. It is always logged (WARNING),
# counted (caracal_charges_over_hold_total) and shown as "over limit" in `caracal budget status`.
# suspend_over_hold_factor = 10

[metering]
# Seconds an idempotency key is remembered after its charge (default 7 days): a retry with the same key
# inside this window returns the first charge; a retry after it is recorded as a NEW charge. Memory and
# the budget snapshot hold only the keys of one window. More than 0.
idempotency_window = {idempotency_window}

[sdk]
# What `budget_check` without an estimated_cost reserves (embedded client). Unset: it only checks that
# budget remains, so concurrent workers can overspend together. A string amount in the policy currency.
# default_estimate = "0.10"

[server]
# `caracal serve`: where it listens (--host / --port override these), and the largest request body it
# reads, in bytes (larger ones get 413 before any handler sees them).
host = "127.0.0.1"
port = 8787
# Processes serving that port (--workers overrides it), 1 to 64: each takes its share of the connections
# and all enforce against this home's ledger under its lock, so budgets hold across them. /metrics shows
# the figures of the worker that answers the scrape.
workers = 1
max_body_bytes = 1048576
# Seconds a request's whole body may take to arrive once its headers have: a client that sends part of a
# body and stalls gets 408 and its connection is closed.
body_timeout = 30

[gateway]
# The output cap injected into LLM calls that name none (max_tokens), so their worst case is bounded.
max_output_tokens = 4096
# Tokens held per image in a request (an image's URL or data does not bound its tokens).
image_tokens = 2000
# Seconds a gateway call's hold lives (longer than upstream_timeout: a call in flight keeps its hold).
# A hold still open after it (the server died before settling) is billed at the call's bound, estimated.
hold_ttl = 900
# Longest upstream call, in seconds (to the end of a stream).
upstream_timeout = 600

[alerts]
# `caracal serve` looks for alerts to fire (thresholds, suspensions, denials) and webhooks to deliver every
# this many seconds.
interval = 1.0
# A webhook that fails (no 2xx answer) is tried again after retry_base seconds, then twice as long each
# time, at most retry_max seconds apart; after max_attempts tries it is marked failed (kept and shown by
# `caracal alert deliveries`, never deleted). timeout: seconds one request may take.
retry_base = 1.0
retry_max = 300.0
max_attempts = 25
timeout = 10.0
# Delivered webhooks kept in the outbox for `caracal alert deliveries` (the oldest pruned first).
keep_delivered = 200

# MCP tool calls (`caracal mcp proxy -- <server command>`, and /mcp/NAME on `caracal serve` for each
# [mcp.servers.NAME]; needs caracal-core[mcp]). Each tools/call is held at the pricebook price of
# mcp.NAME.TOOL.calls (a tool with no price is refused) and billed from its result; hold_ttl: seconds a
# call's hold lives if nothing closes it (then it is billed at its bound, estimated).
# [mcp]
# hold_ttl = 300
# [mcp.servers.files]
# command = ["python", "files_server.py"]     # or: url = "https://host/mcp" (streamable HTTP)
# [mcp.servers.files.tools.list_dir]
# free = true                                 # never priced, held or charged
# [mcp.servers.files.tools.search]
# units = "rows"                              # billed per row of the result (mcp.files.search.rows)
# max_units = 100                             # held at 100 rows

# Where the gateway forwards calls, and the provider keys it uses (agents never see them). The key is
# api_key if set, else the environment variable named by api_key_env, read at each call. provider is the
# pricebook provider of the models: <provider>.<model>.input_tokens.
[gateway.openai]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
provider = "openai"

[gateway.anthropic]
base_url = "https://api.anthropic.com/v1"
api_key_env = "ANTHROPIC_API_KEY"
provider = "anthropic"
"""


_URL_PLACEHOLDER = '# url = "postgresql://caracal@db.internal/caracal"'


def config_text(now: datetime, database_url: str | None = None) -> str:
    ttl = DEFAULT_TTL.total_seconds()
    text = CONFIG_TEMPLATE.format(
        version=__version__,
        date=now.strftime("%Y-%m-%d"),
        default_ttl=int(ttl) if ttl == int(ttl) else ttl,
        idempotency_window=int(DEFAULT_IDEMPOTENCY_WINDOW.total_seconds()),
    )
    return (
        text
        if database_url is None
        else text.replace(_URL_PLACEHOLDER, f"url = {_toml_string(database_url)}")
    )


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_storage_url(config_path: Path, url: str) -> None:
    """Point a home's ``config.toml`` at ``url`` (``[storage] url``), keeping every other line as it is.

    The file is rewritten atomically and read back: a result that does not load is never left behind."""
    from caracal.config import load_settings

    text = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    line = f"url = {_toml_string(url)}"
    lines = text.splitlines()
    section = None
    for index, current in enumerate(lines):
        stripped = current.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped
        elif section == "[storage]" and (stripped.startswith("url") or stripped == _URL_PLACEHOLDER):
            lines[index] = line
            break
    else:
        if "[storage]" in (entry.strip() for entry in lines):
            position = [entry.strip() for entry in lines].index("[storage]")
            lines.insert(position + 1, line)
        else:
            lines += ["", "[storage]", line]
    new_text = "\n".join(lines) + "\n"
    previous = text.encode()
    write_atomically(config_path, new_text.encode())
    try:
        load_settings(config_path.parent)
    except CaracalError:
        write_atomically(config_path, previous)
        raise


# ------------------------------------------------------------------------------------------------- init


@dataclass(frozen=True)
class InitItem:
    """One thing ``caracal init`` looked at: what, where, and whether it was created, already existed
    (left untouched) or could not be checked/created (``error``)."""

    item: str
    path: Path | str
    """A file or folder, or where a database keeps it (a redacted URL: never made a Path, which would
    fold its ``//``)."""
    status: str  # "created" | "exists" | "error"
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item, "path": str(self.path), "status": self.status, "detail": self.detail}


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _create_exclusive(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` with ``data`` unless it exists (then False; never replaced)."""
    try:
        write_atomically(path, data, mode=mode, exclusive=True)
    except FileExistsError:
        return False
    return True


def initialize_home(
    home: EmbeddedHome, now: datetime | None = None, database_url: str | None = None
) -> list[InitItem]:
    """Create the home's folders, config, signing key, ledger, registries and admin API key; report each.

    The admin key is made only while no active admin key exists (so re-running never makes a second one);
    its token goes to ``keys/admin.key`` (0600) and only its hash to ``data/apikeys.json``. An old
    ``admin.key`` is replaced only then, when the token it holds can no longer authenticate (revoked).

    Never overwrites: files are created exclusively (a file that appears meanwhile wins), existing ones are
    only read to report what they hold. Errors on one item are reported in its row and do not stop the rest.
    """
    moment = now or datetime.now(timezone.utc)
    items: list[InitItem] = []

    def step(item: str, path: Path | str, action: Callable[[], tuple[str, str]]) -> None:
        try:
            status, detail = action()
        except CaracalError as exc:
            status, detail = "error", str(exc)
        except OSError as exc:
            status, detail = "error", f"{exc.strerror or exc}"
        items.append(InitItem(item, path, status, detail))

    def folder(path: Path, mode: int = 0o755) -> Callable[[], tuple[str, str]]:
        def make() -> tuple[str, str]:
            if path.is_dir():
                return "exists", ""
            path.mkdir(parents=True, mode=mode)
            return "created", ""

        return make

    def config() -> tuple[str, str]:
        if _create_exclusive(home.config_path, config_text(moment, database_url).encode()):
            return "created", "documented settings (see the comments)"
        if database_url is not None and home.settings.storage_url != database_url:
            set_storage_url(home.config_path, database_url)
            return "updated", "[storage] url now names the database"
        return "exists", "kept as it is"

    new_schema: list[bool] = []  # whether this run made the database's schema (set by the database step)

    def database() -> tuple[str, str]:
        from caracal.storage.postgres.migrations import status

        before = status(home.backend.db.url)  # type: ignore[attr-defined]  # a PostgresBackend here
        home.backend.initialize()
        after = status(home.backend.db.url)  # type: ignore[attr-defined]  # a PostgresBackend here
        new_schema.append(before.version == 0)
        if before.version == after.version:
            return "exists", f"schema version {after.version}"
        return "created", f"schema version {after.version} (was {before.version})"

    def key() -> tuple[str, str]:
        existed = home.key_path.exists()
        signer = CheckpointSigner.load_or_create(home.key_path)
        mode = stat.S_IMODE(home.key_path.stat().st_mode)
        detail = f"key id {signer.key_id}, mode {mode:04o}"
        if mode & 0o077:
            detail += f"; WARNING: readable by others, run: chmod 600 {home.key_path}"
        if not existed:
            detail += f"; public key {public_key_path(home.key_path)}"
        return ("exists" if existed else "created"), detail

    def ledger() -> tuple[str, str]:
        if not home.on_files:
            count = home.writer().last_event_id
            return ("exists" if count else "created"), _plural(count, "entry", "entries")
        if home.ledger_path.exists():
            last = LedgerReader(home.ledger_path).last_events(1)
            return "exists", _plural(last[0].event_id if last else 0, "entry", "entries")
        with LedgerWriter(home.ledger_path, signing_key_path=home.key_path):
            pass
        return "created", "empty"

    def registry(
        path: Path, empty: dict[str, Any], count: Callable[[], str]
    ) -> Callable[[], tuple[str, str]]:
        def make() -> tuple[str, str]:
            if not home.on_files:  # a row of the database: new with the schema this run made
                return ("created" if any(new_schema) else "exists"), count()
            if _create_exclusive(path, dumps(empty)):
                return "created", "empty"
            return "exists", count()

        return make

    def prices() -> tuple[str, str]:
        if home.prices.history() or Path(home.prices.path).exists():
            return "exists", _plural(len(home.prices.history()), "price")
        added = home.prices.seed_defaults()
        return "created", f"seeded {_plural(len(added), 'default price')} (illustrative: set your own)"

    def admin_key() -> tuple[str, str]:
        # Only the key's hash goes into data/apikeys.json; the token is in this file alone (never printed).
        key_file = home.admin_key_path
        created = home.keys.ensure_admin_key(key_file) is not None
        key = [k for k in home.keys.list() if k.role == "admin"][-1]
        if created:
            return "created", f"key id {key.key_id} for the HTTP API; the token is in this file only (0600)"
        detail = f"key id {key.key_id}"
        if not key_file.exists():
            detail += (
                f"; WARNING: the token file is missing: run `caracal agent key revoke {key.key_id}`, then "
                f"`caracal init` to make a new one"
            )
        elif (mode := stat.S_IMODE(key_file.stat().st_mode)) & 0o077:
            detail += f"; WARNING: readable by others (mode {mode:04o}), run: chmod 600 {key_file}"
        return "exists", detail

    step("home", home.home, folder(home.home))
    step("config", home.config_path, config)
    if home.on_files:
        step("data folder", home.data, folder(home.data))
    else:
        step("database", home.backend.location, database)
    step("keys folder", home.key_path.parent, folder(home.key_path.parent, 0o700))
    step("signing key", home.key_path, key)
    step("ledger", home.ledger_path if home.on_files else home.location, ledger)
    step(
        "agents",
        home.agents.path,
        registry(Path(home.agents.path), {"agents": {}}, lambda: _plural(len(home.agents.list()), "agent")),
    )
    step(
        "policies",
        home.policies.path,
        registry(
            Path(home.policies.path),
            {"policies": {}},
            lambda: _plural(len(home.policies.list(include_inactive=True)), "policy", "policies"),
        ),
    )
    step("prices", home.prices.path, prices)
    step("admin API key", home.admin_key_path, admin_key)
    return items


@click.command("init")
@click.option(
    "--home",
    "home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Create the home here (default: the global --home, else $CARACAL_HOME, else ~/.caracal).",
)
@click.option(
    "--database",
    "database_url",
    default=None,
    metavar="URL",
    help="Keep the ledger and registries in this PostgreSQL database (postgresql://user@host/db), shared "
    "with other hosts; written to [storage] url. Default: the home's files.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def init_command(home: Path | None, database_url: str | None, as_json: bool) -> None:
    """Create a Caracal home: config, ledger, registries, signing key, admin API key. Never overwrites
    anything."""
    apply_home(home)
    if database_url is not None:
        check_storage_url(database_url, "--database")
    target = EmbeddedHome(caracal_home(), database_url=database_url)
    items = initialize_home(target, database_url=database_url)
    failed = [item for item in items if item.status == "error"]
    if as_json:
        emit_json({"home": str(target.home), "ok": not failed, "items": [item.to_dict() for item in items]})
    else:
        created = sum(item.status in ("created", "updated") for item in items)
        table(
            ["ITEM", "STATUS", "PATH", "DETAIL"],
            [[item.item, item.status, item.path, item.detail] for item in items],
        )
        created += sum(
            item.status in ("updated", "ready") for item in items if item.item in ("config", "database")
        )
        if not failed and created:
            click.echo(f"\nCaracal Core initialized successfully: home {target.home} ({created} created)")
            click.echo(
                "\nNext steps:\n"
                '  caracal agent register --name "my-agent" --owner "user@example.com"\n'
                "  caracal policy create --agent-id my-agent --limit 10.00 --window daily\n"
                "  caracal pricebook set tool.search.calls 0.01\n"
                "  caracal budget status --agent-id my-agent"
            )
        elif not failed:
            click.echo(f"\nCaracal home {target.home} already exists; nothing was changed")
    for item in failed:
        click.echo(f"error: {item.item} ({item.path}): {item.detail}", err=True)
    if failed:
        raise SystemExit(EXIT_ERROR)
