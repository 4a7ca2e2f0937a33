"""The file backend: a home's ``data/`` folder (the default; no server, no database).

- the ledger: ``data/ledger.jsonl`` and its sidecars, through :class:`caracal.core.filestore.FileLedgerStore`
  (``flock``, ``fdatasync``, torn-tail repair, ``.bak.N``);
- the registries: ``data/<name>.json``, each a :class:`caracal.storage.jsonfile.JsonDocument` (atomic
  replace, ``flock``-serialized transactions, ``.bak.N``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from caracal.core.filestore import FileLedgerStore
from caracal.storage.jsonfile import JsonDocument


class FileBackend:
    """The :class:`caracal.storage.interface.Backend` of one home folder's ``data/``."""

    kind = "files"

    def __init__(self, data: Path, ledger_path: Path | None = None):
        self.data = Path(data)
        self.ledger_path = ledger_path if ledger_path is not None else self.data / "ledger.jsonl"
        self.location = str(self.data)

    def initialize(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)

    def ledger_store(
        self, *, lock_timeout: float, backup_count: int, backup_min_interval: float
    ) -> FileLedgerStore:
        return FileLedgerStore(
            self.ledger_path,
            lock_timeout=lock_timeout,
            backup_count=backup_count,
            backup_min_interval=backup_min_interval,
        )

    def document(
        self, name: str, default: Callable[[], dict[str, Any]], *, mode: int = 0o644
    ) -> JsonDocument:
        return JsonDocument(self.data / f"{name}.json", default=default, mode=mode)

    def close(self) -> None:
        """Nothing to release: every file is opened per use."""


__all__ = ["FileBackend"]
