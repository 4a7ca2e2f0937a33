"""``caracal --config FILE ...``: Caracal Core v0.1's commands on a v0.1 configuration's files.

v0.1 scripts run ``caracal --config FILE agent|policy|ledger|pricebook|backup|init ...`` and read v0.1's
output (``✓ Agent registered successfully!``, ``Total events: 3``, ``--format json``). With ``--config``,
the ``caracal`` group resolves those commands here instead of to its own (:func:`command`); each one parses
v0.1's options, makes one call on the configuration's files opened as a
:class:`~caracal.v01.home.V01Home` (our registries, ledger and enforcer on v0.1's file formats: no second
implementation of anything) and prints what v0.1 printed.

Invariants:

- **One home per command.** Every command of this tree runs on the files ``FILE`` names and nothing else;
  a command v0.1 did not have (``budget``, ``serve``, ...) is refused with ``--config`` rather than run on
  another home (:data:`COMMANDS` is the whole tree).
- **Errors** are v0.1's: ``Error: <message>`` on stderr and exit code 1 for anything Caracal refuses; click's
  usage errors keep exit code 2.
- **Where v0.1 was unsafe, ours holds** (any ISO currency, every calendar window, no price of zero for an
  unknown resource, money never a float): see ``docs/v01-compatibility.md``.

This module imports only click and :mod:`caracal.cli.lazy`: the ``caracal`` group is built from it.
"""

from __future__ import annotations

import click

from caracal.cli.lazy import LazyCommand

COMMANDS: dict[str, LazyCommand] = {
    "init": LazyCommand(
        "caracal.cli.v01.init",
        "init_command",
        "Create the files of a v0.1 configuration (config.yaml, agents, policies, ledger, pricebook).",
    ),
    "agent": LazyCommand("caracal.cli.v01.agents", "agent_group", "Manage AI agent identities."),
    "policy": LazyCommand("caracal.cli.v01.policies", "policy_group", "Manage budget policies."),
    "ledger": LazyCommand("caracal.cli.v01.ledger", "ledger_group", "Query and manage the ledger."),
    "pricebook": LazyCommand("caracal.cli.v01.pricebook", "pricebook_group", "Manage resource prices."),
    "backup": LazyCommand("caracal.cli.v01.backup", "backup_group", "Backup and restore operations."),
}
"""The v0.1 command tree: what ``caracal --config FILE <name>`` runs."""


def command(name: str) -> click.Command | None:
    """The v0.1 command ``name`` (imported now), or None when v0.1 had no such command."""
    lazy = COMMANDS.get(name)
    return None if lazy is None else lazy.load()


__all__ = ["COMMANDS", "command"]
