"""The ``caracal`` command: a thin layer of click commands over the library.

Each subcommand's module is imported only when that command runs (:class:`~caracal.cli.lazy.LazyGroup`):
``caracal --help`` imports click and nothing else of weight, and ``caracal budget status`` does not load
the server, the gateway or the verifier. The summaries below are what ``caracal --help`` lists; each is
the first sentence of its command's help (a test holds them to it).
"""

from __future__ import annotations

from pathlib import Path

import click

from caracal import __version__
from caracal.cli.lazy import LazyCommand, LazyGroup
from caracal.cli.options import apply_home, home_option

COMMANDS: dict[str, LazyCommand] = {
    "init": LazyCommand(
        "caracal.cli.home",
        "init_command",
        "Create a Caracal home: config, ledger, registries, signing key, admin API key.",
    ),
    "agent": LazyCommand("caracal.cli.agents", "agent_group", "Agents: who spends."),
    "policy": LazyCommand(
        "caracal.cli.policies",
        "policy_group",
        "Budget policies: a limit per window for an agent (its descendants' spend counts too).",
    ),
    "alert": LazyCommand(
        "caracal.cli.alerts",
        "alert_group",
        "Alerts: webhooks when a budget crosses a threshold, an agent is denied or suspended, and more.",
    ),
    "pricebook": LazyCommand(
        "caracal.cli.pricebook",
        "pricebook_group",
        "Prices per unit of each resource, versioned by effective time.",
    ),
    "budget": LazyCommand(
        "caracal.cli.budget", "budget_group", "Budgets: what an agent has spent, holds and has left."
    ),
    "backup": LazyCommand(
        "caracal.cli.backup",
        "backup_group",
        "Consistent copies of the home's data (ledger, registries) and restoring them.",
    ),
    "serve": LazyCommand(
        "caracal.cli.serve",
        "serve_command",
        "Serve the REST API (/api/v1), the gateway (/v1/chat/completions, /v1/embeddings, /v1/messages), "
        "/healthz, /metrics and the OpenAPI document (/docs).",
    ),
    "mcp": LazyCommand(
        "caracal.cli.mcp",
        "mcp_group",
        "MCP tool calls: a proxy that meters every tools/call against the agent's budget.",
    ),
    "ledger": LazyCommand(
        "caracal.cli.ledger", "ledger_group", "The append-only, tamper-evident ledger of charges."
    ),
    "migrate": LazyCommand(
        "caracal.cli.migrate",
        "migrate_command",
        "Move the home's ledger and registries into a PostgreSQL database, verified, then use it.",
    ),
    "db": LazyCommand(
        "caracal.cli.db",
        "db_group",
        "The PostgreSQL database of the home: its schema version and upgrades.",
    ),
    "ui": LazyCommand(
        "caracal.cli.ui",
        "ui_command",
        "Open the dashboard of a running 'caracal serve' (or print its address).",
    ),
    "demo": LazyCommand(
        "caracal.cli.demo",
        "demo_command",
        "Two child agents spend concurrently against their budgets and their parent's; watch it hold "
        "(--serve: then watch them spend on the dashboard).",
    ),
}


class CaracalGroup(LazyGroup):
    """The ``caracal`` group: with ``--config FILE`` (a v0.1 configuration), its commands are v0.1's, on that
    configuration's files (:mod:`caracal.cli.v01`); a command v0.1 did not have is refused."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        config_path = ctx.params.get("config_path")
        if config_path is None:
            return super().get_command(ctx, cmd_name)
        from caracal.cli import v01

        command = v01.command(cmd_name)  # not cached in self.commands: the next call may have no --config
        if command is None and cmd_name in self.lazy_commands:
            # Never run a command on another home than the one the file names.
            raise click.UsageError(
                f"'caracal --config {config_path} {cmd_name}': a v0.1 configuration has only the commands "
                f"{', '.join(sorted(v01.COMMANDS))}; run '{cmd_name}' on a Caracal home (--home). See "
                f"docs/v01-compatibility.md"
            )
        return command


@click.group(cls=CaracalGroup, lazy_commands=COMMANDS)
@click.version_option(__version__, prog_name="caracal")
@click.option(
    "-v", "--verbose", count=True, help="Log to stderr (-v: every ledger write at INFO; -vv: DEBUG)."
)
@home_option
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A Caracal Core v0.1 configuration (YAML): run v0.1's commands on its files, with v0.1's output "
    "(see docs/v01-compatibility.md).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default=None,
    help="Log Caracal's records at this level and above to stderr.",
)
@click.pass_context
def main(
    ctx: click.Context, verbose: int, home: Path | None, config_path: Path | None, log_level: str | None
) -> None:
    """Caracal Core: Economic control plane for AI agents."""
    apply_home(home)
    if log_level is not None:
        from caracal.logging_config import setup_logging

        setup_logging(log_level)
    if config_path is not None:
        if home is not None:
            raise click.UsageError(
                "--config (a v0.1 configuration's files) and --home (a Caracal home) name two different "
                "homes; give one"
            )
        from caracal.cli.v01.common import V01Session
        from caracal.config.settings import load_config
        from caracal.exceptions import CaracalError

        try:
            config = load_config(config_path)
        except CaracalError as exc:
            raise click.ClickException(str(exc)) from None
        ctx.obj = V01Session(config_path, config)
    if verbose:
        import logging  # here: only -v needs it, and every command that writes imports it anyway

        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


cli = main
"""Caracal Core v0.1's name for the command group (``from caracal.cli.main import cli``)."""


def __getattr__(name: str) -> object:
    """v0.1's parameter callbacks (``validate_*``), loaded on first use (:mod:`caracal.cli.v01_params`)."""
    from caracal.v01 import load

    return load(__name__, name)


if __name__ == "__main__":
    main()
