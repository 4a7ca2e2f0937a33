"""Command groups whose subcommands are imported only when they run.

A command module imports what its commands need (the ledger, the enforcer, the server), so importing all
of them to run one would make every ``caracal ...`` pay for every other command. A :class:`LazyGroup`
names each subcommand's module and attribute instead, and imports it when click asks for that command.

Its ``--help`` lists the subcommands without importing them: each :class:`LazyCommand` carries the first
sentence of its command's help (what click's command list shows), and click shortens it to the terminal
width exactly as it would the loaded command's help. ``tests/cli/test_cli_startup.py`` checks that every
summary is the loaded command's first sentence, so the listing cannot drift from the commands.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click


@dataclass(frozen=True)
class LazyCommand:
    """Where a subcommand lives (``module``, ``attribute``), and its ``summary``: the first sentence of its
    help, which is what the parent's ``--help`` shows for it."""

    module: str
    attribute: str
    summary: str

    def load(self) -> click.Command:
        command = getattr(importlib.import_module(self.module), self.attribute)
        if not isinstance(command, click.Command):  # a wrong entry in a table of ours: a bug, not input
            raise TypeError(f"{self.module}.{self.attribute} is not a click command")
        return command


class LazyGroup(click.Group):
    """A ``click.Group`` whose ``lazy_commands`` are imported on first use (see the module docstring)."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, LazyCommand] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(self.lazy_commands[cmd_name].load(), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's command list, with a stand-in carrying the summary for each command not loaded yet."""
        commands: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None:
                command = click.Command(name, help=self.lazy_commands[name].summary)
            if not command.hidden:
                commands.append((name, command))
        if not commands:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in commands)
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])
