"""The storage interface: what a backend provides, and nothing more.

A backend is two things:

- a :class:`~caracal.core.store.LedgerStore` (defined beside the ledger logic that uses it, since ``core``
  never imports ``storage``): a totally ordered, durable sequence of ledger lines with an exclusive append
  step, reads after a position, signed checkpoints and sealed caches;
- a :class:`Document` per registry (agents, policies, prices, API keys): one JSON object that every
  process reads cheaply and changes in serialized read-modify-write transactions.

``caracal.storage.files`` keeps them in a home folder (the default: no server needed);
``caracal.storage.postgres`` in a PostgreSQL database shared by many hosts. Everything above this module
(``sdk``, ``cli``, ``server``, and ``caracal.storage.home``) uses a backend only through this interface,
and ``tests/storage/test_contract.py`` holds every backend to the same contract.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from caracal.core.store import CheckpointLog, LedgerStore, Position

T = TypeVar("T")

REGISTRIES = (
    "agents", "policies", "prices", "apikeys", "denials", "alerts", "alert_outbox", "dashboard",
    *(f"responses.{shard:x}" for shard in range(16)),
)  # fmt: skip
"""The registry documents every backend keeps (``denials``: the log of :mod:`caracal.storage.denials`;
``alerts``, ``alert_outbox``: the rules and outbox of :mod:`caracal.storage.alerts`; ``dashboard``: the
dashboard's session secret and the last verification's result, shared by every server process of the
home; ``responses.0`` to ``responses.f``: the shards of the gateway's Responses API responses,
:mod:`caracal.storage.responses`, whose ``SHARD_NAMES`` they are)."""


class Document(Protocol):
    """One registry: a JSON object. Invariants (every backend):

    - :meth:`read` and :meth:`read_cached` see the whole document as some transaction left it, never a mix;
    - :meth:`transaction` serializes read-modify-write cycles across threads, processes and hosts: no update
      is lost; if the block raises, nothing is written;
    - a document that cannot be read or written raises :class:`~caracal.exceptions.RegistryError` naming it
      (never an empty document in its place).
    """

    @property
    def label(self) -> str:
        """For messages: the file's path, or ``<database> (registry agents)``."""

    def read_cached(self, parse: Callable[[dict[str, Any]], T]) -> T:
        """``parse(document)``, recomputed only when the document may have changed (budget checks call
        this on every decision, so an unchanged document must cost about a ``stat``, not a parse)."""

    def read(self) -> dict[str, Any]:
        """The current document (a fresh copy)."""

    def transaction(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Lock, read, let the caller change the document in place, write it back if it changed."""


class Backend(Protocol):
    """One home's storage: its ledger store and its registry documents."""

    @property
    def kind(self) -> str:
        """``files`` or ``postgresql``."""

    @property
    def location(self) -> str:
        """For messages: the data folder, or the database URL without its password."""

    def initialize(self) -> None:
        """Create the storage, or bring its schema up to date (``caracal init``, ``caracal db upgrade``,
        ``caracal migrate``): the data folder; the database's schema migrations."""

    def ledger_store(
        self, *, lock_timeout: float, backup_count: int, backup_min_interval: float
    ) -> LedgerStore:
        """The ledger's store (one per writer)."""

    def document(self, name: str, default: Callable[[], dict[str, Any]], *, mode: int = 0o644) -> Document:
        """The registry ``name`` (one of :data:`REGISTRIES`); ``default()`` is the document before the first
        write; ``mode`` is the file mode where that means something (the API keys are owner-only)."""

    def close(self) -> None:
        """Release connections (idempotent)."""


__all__ = ["REGISTRIES", "Backend", "CheckpointLog", "Document", "LedgerStore", "Position"]
