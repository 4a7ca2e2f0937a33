"""The ``caracal`` command: a thin layer of click commands over the library."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from caracal import __version__
from caracal.cli.agents import agent_group
from caracal.cli.backup import backup_group
from caracal.cli.budget import budget_group
from caracal.cli.demo import demo_command as control_plane_demo
from caracal.cli.home import apply_home, home_option, init_command
from caracal.cli.ledger import ledger_group
from caracal.cli.ledger_demo import demo_command
from caracal.cli.policies import policy_group
from caracal.cli.pricebook import pricebook_group
from caracal.cli.serve import serve_command

ledger_group.add_command(demo_command)


@click.group()
@click.version_option(__version__, prog_name="caracal")
@click.option(
    "-v", "--verbose", count=True, help="Log to stderr (-v: every ledger write at INFO; -vv: DEBUG)."
)
@home_option
def main(verbose: int, home: Path | None) -> None:
    """Caracal: an economic control plane for AI agents."""
    apply_home(home)
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


main.add_command(ledger_group)
for _command in (
    init_command,
    agent_group,
    policy_group,
    pricebook_group,
    budget_group,
    backup_group,
    serve_command,
):
    main.add_command(_command)
main.add_command(control_plane_demo)


if __name__ == "__main__":
    main()
