"""Options shared by many commands: the global ``--home`` and every command's ``--json``.

``caracal --home PATH ...`` (or ``$CARACAL_HOME``) selects the Caracal home for every command: the group
callback sets ``$CARACAL_HOME`` for the duration of the command, so everything that resolves the home
(``caracal ledger ...`` included) follows it.

This module imports only click and :mod:`caracal.config`: the ``caracal`` group itself is built from it,
and ``caracal --help`` must not import what the commands need (see :mod:`caracal.cli.lazy`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from caracal.config import HOME_ENV

F = TypeVar("F", bound=Callable[..., Any])


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


def output_options(*format_names: str) -> Callable[[F], F]:
    """``--json`` and ``--format table|json`` (Caracal Core v0.1's spelling; ``format_names`` are its option
    names, e.g. ``"--format", "-f"``): the command receives one ``as_json`` flag, true when either asks
    for JSON."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, output_format: str | None, as_json: bool, **kwargs: Any) -> Any:
            wants_json = as_json or (output_format or "").lower() == "json"
            return command(*args, as_json=wants_json, **kwargs)

        # click reads the options from this list; a copy, so the wrapped function's own stays as it was
        wrapper.__click_params__ = list(getattr(command, "__click_params__", []))  # type: ignore[attr-defined]
        with_format = click.option(
            *format_names,
            "output_format",
            type=click.Choice(["table", "json"], case_sensitive=False),
            default=None,
            help="Output format: table (the default) or json (same as --json).",
        )(wrapper)
        return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(  # type: ignore[return-value]
            with_format
        )

    return decorate


json_option = output_options("--format")
"""Every command's ``--json`` (and ``--format json``, as v0.1 scripts write it)."""
