"""What every v0.1 command shares: the configuration's files (:class:`V01Session`), v0.1's error output,
and its ``--format table|json`` option (beside our ``--json``).

The session is made by the ``caracal`` group from ``--config FILE`` and opens the files (a
:class:`~caracal.v01.home.V01Home`) only when a command first needs them, so ``--help`` touches nothing;
they are closed when the command ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from caracal.cli.options import output_options
from caracal.cli.render import error_handler
from caracal.exceptions import ConfigurationError

if TYPE_CHECKING:
    from caracal.config.settings import CaracalConfig
    from caracal.v01.home import V01Home

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1


@dataclass
class V01Session:
    """A v0.1 configuration given with ``--config``: its path, what it says, and its files once opened."""

    config_path: Path
    config: CaracalConfig
    _home: V01Home | None = field(default=None, repr=False)

    @property
    def exists(self) -> bool:
        return self.config_path.expanduser().is_file()

    def home(self) -> V01Home:
        """The configuration's files, opened on first use (closed with the command's context).

        A configuration file that does not exist names no files: v0.1 then fell back to ``~/.caracal``,
        which here may be a Caracal home; so only ``init`` (which creates the file) runs on it."""
        if self._home is None:
            if not self.exists:
                raise ConfigurationError(
                    f"the configuration {self.config_path} does not exist; create it and its files with "
                    f"'caracal --config {self.config_path} init'"
                )
            from caracal.v01.home import V01Home

            self._home = V01Home(self.config)
            context = click.get_current_context(silent=True)
            if context is not None:
                context.call_on_close(self.close)
        return self._home

    def close(self) -> None:
        if self._home is not None:
            self._home.close()
            self._home = None


def session() -> V01Session:
    """The current command's v0.1 session (set by ``caracal --config FILE``)."""
    found = click.get_current_context().find_object(V01Session)
    if found is None:  # a v0.1 command run without the group: a wiring bug, not user input
        raise ConfigurationError("v0.1 commands run as 'caracal --config FILE <command>'")
    return found


def fail(message: str) -> None:
    """v0.1's error output: ``Error: <message>`` on stderr, exit code 1."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_ERROR)


v01_errors = error_handler(fail)
"""Turn any :class:`CaracalError` into v0.1's error output (:func:`fail`)."""


format_option = output_options("--format", "-f")
"""v0.1's ``--format/-f table|json`` and our ``--json``; the command receives ``as_json``."""


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> None:
    """v0.1's tables: columns two spaces apart (those in ``right`` right-aligned), the last one unpadded,
    under a line of dashes as long as the header."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers[:-1])]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells[:-1], widths, strict=True))
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs]
        return "  ".join([*padded, cells[-1]])

    header = line(headers)
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        click.echo(line(row))


def plain_time(timestamp: str) -> str:
    """v0.1's table form of a timestamp: ``2024-01-15 10:30:00`` for ``2024-01-15T10:30:00Z``."""
    return timestamp.replace("T", " ").replace("Z", "")


__all__ = ["V01Session", "columns", "fail", "format_option", "plain_time", "session", "v01_errors"]
