"""``caracal db upgrade`` and ``caracal db status``: the PostgreSQL schema of a home's database.

The database is ``--database URL``, else ``$CARACAL_DATABASE_URL``, else ``[storage] url`` in the home's
``config.toml``. A home on files has no database: both commands say so (exit code 1). Messages never show
the URL's password.
"""

from __future__ import annotations

import click

from caracal.cli.options import json_option
from caracal.cli.render import emit_json, handle_errors
from caracal.config import caracal_home, check_storage_url, load_settings, storage_url
from caracal.exceptions import ConfigurationError

database_option = click.option(
    "--database",
    "url",
    metavar="URL",
    default=None,
    help="The PostgreSQL database (default: $CARACAL_DATABASE_URL, else [storage] url in config.toml).",
)


def _url(url: str | None) -> str:
    if url is not None:
        return check_storage_url(url, "--database")
    configured = storage_url(load_settings(caracal_home()))
    if configured is None:
        raise ConfigurationError(
            "this home keeps its data in files: no database to manage. Pass --database URL, set "
            "$CARACAL_DATABASE_URL, or set [storage] url in config.toml"
        )
    return configured


@click.group("db")
def db_group() -> None:
    """The PostgreSQL database of the home: its schema version and upgrades."""


@db_group.command("upgrade")
@database_option
@json_option
@handle_errors
def upgrade_command(url: str | None, as_json: bool) -> None:
    """Apply the schema migrations this Caracal knows and the database lacks (safe to repeat)."""
    from caracal.storage.postgres.connection import require_driver
    from caracal.storage.postgres.migrations import status, upgrade

    require_driver()
    target = _url(url)
    before = status(target).version
    after = upgrade(target)
    if as_json:
        emit_json({**after.to_dict(), "previous_version": before})
        return
    if after.version == before:
        click.echo(f"{after.location}: schema {after.schema!r} is at version {after.version}, up to date")
    else:
        click.echo(
            f"{after.location}: upgraded schema {after.schema!r} from version {before} to {after.version}"
        )


@db_group.command("status")
@database_option
@json_option
@handle_errors
def status_command(url: str | None, as_json: bool) -> None:
    """Show the database's schema version and whether this Caracal can use it (exit code 1 when not)."""
    from caracal.storage.postgres.connection import require_driver
    from caracal.storage.postgres.migrations import status

    require_driver()
    found = status(_url(url))
    if as_json:
        emit_json(found.to_dict())
    else:
        click.echo(f"database: {found.location}")
        click.echo(f"schema:   {found.schema}")
        click.echo(f"version:  {found.version} (this Caracal knows {found.known}: {found.state})")
    if found.version != found.known:
        raise SystemExit(1)
