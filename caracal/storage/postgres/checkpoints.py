"""Signed checkpoints in ``caracal_checkpoints``: the :class:`caracal.core.store.CheckpointLog` of the
PostgreSQL backend.

Invariants:

- **One record per size.** :meth:`PostgresCheckpointLog.append` of a size already stored is a no-op
  (``ON CONFLICT DO NOTHING``): writers on several hosts that checkpoint the same size store it once.
- **Followers miss nothing.** Records carry ``seq``, the order they were stored in; inserts take a table
  lock (``SHARE ROW EXCLUSIVE``: it excludes other inserters, not readers) and number themselves
  ``max(seq) + 1`` under it, so ``seq`` order is commit order, and a follower that read up to ``seq`` N
  (:meth:`read_from`, whose cursor is that ``seq``) never finds a record below N appear later.
- **Durable on return.** ``append`` commits on its own pooled connection (it may be called inside an
  append step, whose transaction must not carry it). Errors are :class:`LedgerReadError` (the database
  could not be read: transient, never taken for tampering), :class:`CheckpointError` (a malformed record)
  or :class:`LedgerWriteError` (storing), never a driver exception.
- **No query for nothing new inside an append step.** The step learns the last ``seq`` stored in the round
  trip that takes the ledger's head row (:meth:`PostgresCheckpointLog.step_saw`); until the step ends, a
  :meth:`read_from` on the step's thread from that ``seq`` on answers "nothing new" without a query. A
  checkpoint is stored after the step that appended its lines has committed, so one stored later is one
  a read a moment later could as well have missed; it is read by the next step.
- The record is the JSON the file backend writes (:meth:`Checkpoint.to_dict`), so exports and proofs do
  not depend on the backend.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import orjson

from caracal.core.checkpoint import Checkpoint
from caracal.exceptions import CheckpointError, LedgerReadError, LedgerWriteError
from caracal.storage.postgres.connection import Database


class PostgresCheckpointLog:
    """The checkpoints of the ledger in ``db`` (see the module docstring)."""

    def __init__(self, db: Database):
        self.db = db
        self._step_seq: int | None = None  # the last seq stored when the current append step began
        self._step_thread = 0

    def step_saw(self, seq: int) -> None:
        """The append step of the calling thread holds the head row, and ``seq`` was the last record stored
        once it did (see the module docstring)."""
        self._step_seq, self._step_thread = seq, threading.get_ident()

    def step_ended(self) -> None:
        self._step_seq, self._step_thread = None, 0

    def append(self, checkpoint: Checkpoint) -> None:
        record = orjson.dumps(checkpoint.to_dict())
        self.step_ended()  # a record stored now is after what the step saw
        # One round trip (it runs on the append step's thread, between two steps): the lock, the insert
        # and the COMMIT go in one pipeline.
        with self.db.connection(LedgerWriteError, "store a checkpoint in") as conn, conn.pipeline():
            conn.execute("LOCK TABLE caracal_checkpoints IN SHARE ROW EXCLUSIVE MODE")
            conn.execute(
                "INSERT INTO caracal_checkpoints (size, seq, record) "
                "SELECT %s, coalesce(max(seq), 0) + 1, %s FROM caracal_checkpoints "
                "ON CONFLICT (size) DO NOTHING",
                (checkpoint.size, record),
            )
            conn.commit()

    def __iter__(self) -> Iterator[Checkpoint]:
        records, _cursor = self.read_from(0)
        return iter(records)

    def read_from(self, cursor: int) -> tuple[list[Checkpoint], int]:
        known = self._step_seq
        if known is not None and cursor >= known and self._step_thread == threading.get_ident():
            return [], cursor
        with self.db.connection(LedgerReadError, "read the checkpoints of") as conn:
            rows = conn.execute(
                "SELECT seq, record FROM caracal_checkpoints WHERE seq > %s ORDER BY seq", (cursor,)
            ).fetchall()
        checkpoints = [self._parse(seq, record) for seq, record in rows]
        return checkpoints, (int(rows[-1][0]) if rows else cursor)

    def latest(self) -> Checkpoint | None:
        """The checkpoint of the largest size (normally the last one stored; when two writers checkpoint
        at once, the one that says the most about the ledger)."""
        with self.db.connection(LedgerReadError, "read the checkpoints of") as conn:
            row = conn.execute(
                "SELECT seq, record FROM caracal_checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else self._parse(row[0], row[1])

    def roots(self) -> dict[int, bytes]:
        return {checkpoint.size: checkpoint.root for checkpoint in self}

    def _parse(self, seq: int, record: bytes) -> Checkpoint:
        try:
            return Checkpoint.from_dict(orjson.loads(bytes(record)))
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(
                f"checkpoint record {seq} in {self.db.location} is not valid JSON: {exc}"
            ) from None


__all__ = ["PostgresCheckpointLog"]
