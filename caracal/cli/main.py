"""The ``caracal`` command: a thin layer of click commands over the library."""

from __future__ import annotations

import logging

import click

from caracal import __version__
from caracal.cli.demo import demo_command as control_plane_demo
from caracal.cli.ledger import ledger_group
from caracal.cli.ledger_demo import demo_command

ledger_group.add_command(demo_command)


@click.group()
@click.version_option(__version__, prog_name="caracal")
@click.option(
    "-v", "--verbose", count=True, help="Log to stderr (-v: every ledger write at INFO; -vv: DEBUG)."
)
def main(verbose: int) -> None:
    """Caracal: an economic control plane for AI agents."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


main.add_command(ledger_group)
main.add_command(control_plane_demo)


if __name__ == "__main__":
    main()
