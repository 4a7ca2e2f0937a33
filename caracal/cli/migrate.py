"""``caracal migrate --to URL``: move the home's ledger and registries into a PostgreSQL database, verified.

The source (the home's ``data/`` folder) is verified first and held still (its append lock) while it is
copied; the copy is verified against it (same events, same Merkle root, same signed checkpoints). Only then
is ``[storage] url`` written to ``config.toml``, so every later command, client and server of this home
uses the database. The files stay where they were, untouched: a fallback, and the proof of what was moved.
See :mod:`caracal.storage.migrate`.
"""

from __future__ import annotations

import click

from caracal.cli.options import json_option
from caracal.cli.render import emit_json, handle_errors
from caracal.config import caracal_home, check_storage_url, load_settings, storage_url
from caracal.exceptions import MigrationError


@click.command("migrate")
@click.option("--to", "url", required=True, metavar="URL", help="The PostgreSQL database (postgresql://...).")
@click.option(
    "--keep-config",
    is_flag=True,
    help="Copy and verify only; leave config.toml pointing at the files.",
)
@json_option
@handle_errors
def migrate_command(url: str, keep_config: bool, as_json: bool) -> None:
    """Move the home's ledger and registries into a PostgreSQL database, verified, then use it."""
    from caracal.cli.home import set_storage_url
    from caracal.storage.backends import open_backend
    from caracal.storage.files import FileBackend
    from caracal.storage.migrate import migrate

    check_storage_url(url, "--to")
    home = caracal_home()
    settings = load_settings(home)
    current = storage_url(settings)
    if current is not None:
        raise MigrationError(
            f"this home already uses a database ({current.split('@')[-1]}); migrate moves a home's files "
            "into one. Unset [storage] url and $CARACAL_DATABASE_URL to migrate its files"
        )
    source = FileBackend(home / "data")
    if not source.ledger_path.exists():
        raise MigrationError(f"no ledger at {source.ledger_path}: nothing to migrate (run 'caracal init')")
    target = open_backend(home, settings, url)
    shown = [0]

    def progress(done: int, total: int) -> None:
        if not as_json and (done - shown[0] >= 100_000 or done == total):
            shown[0] = done
            click.echo(f"copied {done}/{total} entries", err=True)

    try:
        report = migrate(source, target, home / "keys" / "checkpoint.key", settings, progress)
    finally:
        target.close()
    if not keep_config:
        set_storage_url(home / "config.toml", url)
    if as_json:
        emit_json({**report.to_dict(), "config_updated": not keep_config})
        return
    click.echo(
        f"migrated {report.events} entries ({report.copied} copied now"
        + (f", {report.resumed_from} already there" if report.resumed_from else "")
        + f"), {report.checkpoints} checkpoints and {len(report.registries)} registries to {report.target}"
    )
    click.echo(f"verified: {report.events} events, Merkle root {report.root}, every checkpoint matches")
    if keep_config:
        click.echo("config.toml unchanged (--keep-config): the home still uses its files")
    else:
        click.echo(f"config.toml now sets [storage] url: this home uses {report.target}; its files are kept")
