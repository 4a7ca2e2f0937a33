"""What the ledger's logic needs from the place its lines are kept: the storage interface's ledger half.

The ledger logic (:class:`caracal.core.ledger.LedgerWriter`: validation, ids, the ``prev_hash`` chain, the
Merkle frontier, signed checkpoints, timestamps that never go backwards) is the same on every backend. A
backend (``caracal.storage.files``, ``caracal.storage.postgres``) provides only this: a totally ordered
sequence of line bytes that one writer at a time extends, durably, after catching up; reads after a
position; signed checkpoint records; and a place for sealed caches. Every backend keeps the exact line
bytes the file backend writes, so verification, proofs, checkpoints and exports do not depend on it.

**Positions.** A position names the point just after a complete line: for files, the byte offset after its
newline; for PostgreSQL, the line's event id. Position 0 is the empty ledger. Positions only grow; a backend
where they are event ids says so with :attr:`LedgerStore.positions_are_ids`.

The contract (``tests/storage/test_contract.py`` runs it on every backend):

- :meth:`LedgerStore.begin` takes the exclusive append lock (waiting at most ``lock_timeout``) and opens an
  append step; :meth:`LedgerStore.new_lines` then yields every complete line after a position (torn or
  uncommitted work of a crashed writer is never among them); :meth:`LedgerStore.write` makes lines durable
  and returns the position after them; :meth:`LedgerStore.finish` ends the step (releases the lock; on a
  database, rolls back anything not written). Nothing another writer does can come between ``begin`` and
  ``finish``.
- :meth:`LedgerStore.write` either returns (the lines are durable and will be read back by every reader)
  or raises :class:`~caracal.exceptions.LedgerWriteError`. Its ``outcome_unknown`` attribute is True when
  the lines may nevertheless have been recorded (a lost connection during COMMIT): the caller must then
  never report them as done and never write them again; it reads what is there at the next step.
- :meth:`LedgerStore.now` is the time source for entries: the local clock for files, the database's clock
  for PostgreSQL (hosts' clocks disagree). Inside a step it is the step's time.
- Reads (:meth:`LedgerStore.iter_lines`, :meth:`LedgerStore.line_at`, :meth:`LedgerStore.end`) need no
  lock and see only complete, durable lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from caracal.core.checkpoint import Checkpoint

Position = int


class CheckpointLog(Protocol):
    """The signed checkpoints of one ledger, in the order they were written."""

    def append(self, checkpoint: Checkpoint) -> None:
        """Store one checkpoint durably (a checkpoint of a size already stored is a no-op)."""

    def __iter__(self) -> Iterator[Checkpoint]:
        """Every checkpoint, oldest first."""

    def read_from(self, cursor: int) -> tuple[list[Checkpoint], int]:
        """The checkpoints stored after ``cursor`` (0, or a cursor an earlier call returned), and the cursor
        after them: followers read only what was added since they last looked."""

    def latest(self) -> Checkpoint | None:
        """The last checkpoint written, if any."""

    def roots(self) -> dict[int, bytes]:
        """The signed root of each checkpointed tree size."""


class LedgerStore(Protocol):
    """Where one ledger's lines live (see the module docstring for the contract)."""

    @property
    def location(self) -> str:
        """For messages: the ledger file's path, or the database URL without its password."""

    @property
    def lock_timeout(self) -> float:
        """How long :meth:`begin` waits for the lock."""

    @property
    def positions_are_ids(self) -> bool:
        """Whether positions are event ids (else byte offsets)."""

    @property
    def checkpoints(self) -> CheckpointLog:
        """The ledger's signed checkpoints."""

    # ------------------------------------------------------------------ the append step

    def begin(self) -> None:
        """Take the exclusive append lock and open a step. Raises LedgerLockTimeoutError after
        ``lock_timeout`` and LedgerWriteError (or LedgerUnavailableError) when the store cannot be reached."""

    def new_lines(self, after: Position) -> Iterator[tuple[Position, bytes]]:
        """Inside a step: every complete line after ``after``, as ``(position after it, line bytes without
        the newline)``, in order. The file backend repairs a torn last line here."""

    def write(self, lines: list[bytes], first_event_id: int) -> Position:
        """Inside a step: store ``lines`` (event ids ``first_event_id``..) durably after everything read;
        returns the position after the last. Raises LedgerWriteError and records nothing (or, with
        ``outcome_unknown``, maybe everything)."""

    def finish(self) -> None:
        """End the step and release the lock (idempotent; safe after a failed write)."""

    def now(self) -> datetime:
        """The current time for entries (aware, UTC): the local clock, or the database's."""

    # ------------------------------------------------------------------ reading, without the lock

    def end(self) -> Position:
        """The position after the last complete line, cheaply (a ``stat``, or one query)."""

    def iter_lines(self, after: Position, end: Position | None = None) -> Iterator[tuple[Position, bytes]]:
        """The complete lines after ``after`` (up to ``end``), streamed: memory does not grow with the
        ledger. Same items as :meth:`new_lines`."""

    def line_at(self, position: Position) -> bytes | None:
        """The line that ends at ``position``, or None when no line ends there."""

    def line_source(self) -> tuple[str, dict[str, Any]] | None:
        """How another process on this machine reads the same lines (a long replay's helper,
        :mod:`caracal.core.replay_helper`): ``("module:function", keyword arguments)``, the function taking
        ``after`` and ``end`` as well and yielding what :meth:`iter_lines` yields; None if it cannot."""

    # ------------------------------------------------------------------ caches and housekeeping

    def load_cache(self, name: str) -> bytes | None:
        """A cache saved by :meth:`save_cache` (sealed by the caller), or None."""

    def save_cache(self, name: str, data: bytes) -> None:
        """Keep a cache (losing one costs a rebuild, never data; failures are the caller's to log)."""

    def claim_key(self, key_id: str) -> str:
        """Record ``key_id`` (a checkpoint signing key's id) as the ledger's, unless one is recorded; return
        the recorded one. A writer whose key differs is refused: checkpoints signed by two keys would not
        verify on every host."""

    def replay_lock(self, timeout: float) -> contextlib.AbstractContextManager[bool]:
        """Held while one process replays the whole ledger; yields whether it was taken within ``timeout``."""

    def backup(self, end: Position) -> None:
        """Called before a writer's first append: keep a copy of the ledger up to ``end`` if the backend
        keeps copies (files: ``.bak.N``; a database has its own backups)."""

    def close(self) -> None:
        """Release connections and files (idempotent)."""


def lines_payload(lines: Iterable[bytes]) -> bytes:
    """Lines as the file backend stores them (and ``caracal ledger export`` writes them)."""
    return b"".join(line + b"\n" for line in lines)


__all__ = ["CheckpointLog", "LedgerStore", "Position", "lines_payload"]
