"""Logging for Caracal Core v0.1 code: ``setup_logging`` and ``get_logger`` (the v0.1 API).

Every Caracal logger is a child of the ``caracal`` logger, so configuring that one configures them all.
:func:`setup_logging` is idempotent: it replaces the handlers it installed before instead of adding more,
so calling it again (a CLI run per test, a reconfiguration) never duplicates lines.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from caracal.exceptions import ConfigurationError

ROOT = "caracal"
DEFAULT_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_OURS = "_caracal_handler"


def setup_logging(
    level: str = "INFO",
    log_file: str | os.PathLike[str] | None = None,
    log_format: str | None = None,
) -> logging.Logger:
    """Send the ``caracal`` logger's records at ``level`` and above to stderr and, when given, ``log_file``
    (its folder is created). Returns the ``caracal`` logger. A bad level is a :class:`ConfigurationError`.

    v0.1 logged to stdout; we log to stderr, so ``--format json`` output on stdout stays parseable.
    """
    name = str(level).upper()
    if name not in LEVELS:
        raise ConfigurationError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    logger = logging.getLogger(ROOT)
    logger.setLevel(getattr(logging, name))
    for handler in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(log_format or DEFAULT_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        path = Path(log_file).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot open the log file {path}: {exc.strerror or exc}") from exc
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OURS, True)
        logger.addHandler(handler)
    return logger


def get_logger(name: str) -> logging.Logger:
    """The logger ``caracal.<name>`` (a child of the one :func:`setup_logging` configures)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError("a logger name must be a non-empty string")
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


__all__ = ["get_logger", "setup_logging"]
