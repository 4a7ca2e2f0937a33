"""Output for people (aligned tables) and scripts (``--json``), and the CLI's error handling.

Exit codes: 0 success; 1 Caracal refused or failed (the message says why); 2 usage error (click's own);
3 ``ledger verify`` found problems.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import click
import orjson

from caracal.exceptions import CaracalError

EXIT_ERROR = 1
EXIT_VERIFY_FAILED = 3

F = TypeVar("F", bound=Callable[..., Any])


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def emit_json(value: object) -> None:
    """Print ``value`` as indented JSON; Decimals as exact strings, bytes as hex."""
    click.echo(orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2).decode())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()) -> None:
    """Print an aligned table; columns whose index is in ``right`` (numbers) are right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def error_handler(report: Callable[[str], None]) -> Callable[[F], F]:
    """A decorator that hands any :class:`CaracalError` of the command to ``report`` (which exits)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except CaracalError as exc:
                report(str(exc))

        return wrapper  # type: ignore[return-value]

    return decorate


handle_errors = error_handler(fail)
"""Turn any :class:`CaracalError` into a one-line message on stderr and exit code 1."""


def parse_json_object(text: str | None, option: str, error: type[CaracalError]) -> dict[str, Any] | None:
    """``--metadata`` and the like: a JSON object, or None when not given."""
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise error(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise error(f'{option} must be a JSON object such as \'{{"team": "research"}}\'')
    return value
