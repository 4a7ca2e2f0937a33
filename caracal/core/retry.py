"""Retrying transient I/O failures (Caracal Core v0.1's ``caracal.core.retry``).

Only ``OSError`` (``IOError``) counts as transient; anything else is raised at once. After ``max_retries``
retries the last error is raised unchanged. Delays grow geometrically (``base_delay * backoff_factor**n``)
and are capped by ``max_delay``; every bound is checked up front, so a retry loop cannot run unbounded.

Caracal's own writers do not use it around appends: an append either returned (acknowledged and fsynced)
or raised, and blindly repeating one could record a charge twice (retry with an idempotency key instead).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from caracal.exceptions import ConfigurationError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("caracal.retry")

MAX_RETRIES = 100
MAX_DELAY = 60.0


def _check(max_retries: int, base_delay: float, backoff_factor: float, max_delay: float) -> None:
    if type(max_retries) is not int or not 0 <= max_retries <= MAX_RETRIES:
        raise ConfigurationError(
            f"max_retries must be an integer from 0 to {MAX_RETRIES}, got {max_retries!r}"
        )
    for name, value in (("base_delay", base_delay), ("max_delay", max_delay)):
        if not isinstance(value, (int, float)) or not 0 <= value <= MAX_DELAY:
            raise ConfigurationError(f"{name} must be from 0 to {MAX_DELAY} seconds, got {value!r}")
    if not isinstance(backoff_factor, (int, float)) or not 1 <= backoff_factor <= 10:
        raise ConfigurationError(f"backoff_factor must be from 1 to 10, got {backoff_factor!r}")


def retry_write_operation(
    operation: Callable[[], T],
    operation_name: str,
    max_retries: int = 3,
    base_delay: float = 0.1,
    backoff_factor: float = 2.0,
    max_delay: float = 5.0,
) -> T:
    """Run ``operation()``; on ``OSError`` wait and run it again, at most ``max_retries`` more times."""
    _check(max_retries, base_delay, backoff_factor, max_delay)
    attempt = 0
    while True:
        try:
            return operation()
        except OSError as exc:
            if attempt >= max_retries:
                logger.error("%s failed after %d attempts: %s", operation_name, attempt + 1, exc)
                raise
            delay = min(base_delay * backoff_factor**attempt, max_delay)
            logger.warning("%s failed (%s); retry %d of %d in %.3fs", operation_name, exc, attempt + 1,
                           max_retries, delay)  # fmt: skip
            time.sleep(delay)
            attempt += 1


def retry_on_transient_failure(
    max_retries: int = 3, base_delay: float = 0.1, backoff_factor: float = 2.0, max_delay: float = 5.0
) -> Callable[[F], F]:
    """Decorator form of :func:`retry_write_operation`."""
    _check(max_retries, base_delay, backoff_factor, max_delay)

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return retry_write_operation(
                lambda: function(*args, **kwargs),
                getattr(function, "__qualname__", "operation"),
                max_retries,
                base_delay,
                backoff_factor,
                max_delay,
            )

        return wrapper  # type: ignore[return-value]

    return decorate


__all__ = ["retry_on_transient_failure", "retry_write_operation"]
