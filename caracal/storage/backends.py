"""Choosing a home's backend: its files, or the PostgreSQL database its configuration names.

``$CARACAL_DATABASE_URL`` wins over ``[storage] url`` in ``config.toml``; with neither, the home's
``data/`` folder. The PostgreSQL driver is an optional extra (``caracal-core[postgres]``): it is imported
only when a database URL is configured, and its absence is a clear configuration error, never a fallback
to files (a host that silently enforced against its own files would not share the others' budgets).
"""

from __future__ import annotations

from pathlib import Path

from caracal.config import Settings, storage_url
from caracal.exceptions import ConfigurationError
from caracal.storage.files import FileBackend
from caracal.storage.interface import Backend


def open_backend(home: Path, settings: Settings, url: str | None = None) -> Backend:
    """The backend of ``home`` (``url``, when given, instead of the configured one)."""
    url = url or storage_url(settings)
    if url is None:
        return FileBackend(home / "data")
    try:
        from caracal.storage.postgres import PostgresBackend
    except ImportError as exc:  # pragma: no cover - the extra is installed with the test dependencies
        raise ConfigurationError(
            f"this home's storage is a PostgreSQL database, but its driver is not installed ({exc}); "
            "install it with: pip install 'caracal-core[postgres]'"
        ) from None
    return PostgresBackend(url, settings)


__all__ = ["open_backend"]
