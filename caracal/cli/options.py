"""Options shared by many commands: the global ``--home`` and every command's ``--json``.

``caracal --home PATH ...`` (or ``$CARACAL_HOME``) selects the Caracal home for every command: the group
callback sets ``$CARACAL_HOME`` for the duration of the command, so everything that resolves the home
(``caracal ledger ...`` included) follows it.

This module imports only click and :mod:`caracal.config`: the ``caracal`` group itself is built from it,
and ``caracal --help`` must not import what the commands need (see :mod:`caracal.cli.lazy`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from caracal.config import HOME_ENV


def home_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--home PATH`` on the ``caracal`` group (see :func:`apply_home`)."""
    return click.option(
        "--home",
        "home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Caracal home for this command (default: ${HOME_ENV}, else ~/.caracal).",
    )(command)


def apply_home(home: Path | None) -> None:
    """Point ``$CARACAL_HOME`` at ``home`` (absolute) for the current command, restoring the previous value
    when the command's context closes (so in-process callers such as tests do not leak it)."""
    if home is None:
        return
    previous = os.environ.get(HOME_ENV)
    os.environ[HOME_ENV] = str(home.expanduser().absolute())
    context = click.get_current_context(silent=True)
    if context is None:
        return

    def restore() -> None:
        if previous is None:
            os.environ.pop(HOME_ENV, None)
        else:
            os.environ[HOME_ENV] = previous

    context.call_on_close(restore)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)
