"""The live budget state of one ledger: current, checked, and saved so the next process need not replay.

:class:`LiveBudget` keeps a :class:`~caracal.core.budget.BudgetState` up to date with the ledger as every
process appends to it:

- **Current.** :meth:`LiveBudget.catch_up` folds in whatever was appended since it last looked, by this
  process or any other (one ``stat`` when nothing was). The enforcer calls it under the ledger's lock before
  every decision, so no decision is taken on a stale view.
- **Checked.** Lines are read through a :class:`~caracal.core.replay.VerifiedTail`: ids, the hash chain and
  every signed checkpoint. Once a line fails, every later call raises :class:`LedgerVerificationError`
  (fail closed) until the process is restarted on a repaired ledger.
- **Saved.** The state is sealed into ``<ledger>.budget`` (:mod:`caracal.core.sealed`, with a key kept in
  ``keys/``) every :data:`SNAPSHOT_EVERY` entries and on close. A process resumes from it when it is
  genuine and still matches the ledger, and otherwise replays the ledger, checking every line.
- **One replay per home.** A replay of a long ledger (:data:`REPLAY_LOCK_BYTES` or more to read with no
  usable snapshot) runs at most once per home at a time: the process that must replay takes an exclusive
  ``flock`` on ``<ledger>.replay.lock``, replays, saves the snapshot and releases it. A process that finds
  the lock taken waits for it, then resumes from the snapshot the first one saved and reads only what was
  appended after it. The ledger's own append lock is never held while replaying, so appends go on
  meanwhile. A process that waited the ledger's ``lock_timeout`` in vain (a replay that slow, or stuck)
  logs a warning and replays itself: the same result, the work done twice. A lock file that cannot be
  opened at all raises :class:`LedgerReadError`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from caracal.core.budget import DEFAULT_IDEMPOTENCY_WINDOW, BudgetState
from caracal.core.events import LedgerEvent, line_event_id
from caracal.core.ledger import LedgerWriter
from caracal.core.replay import VerifiedTail, failed
from caracal.core.replay_helper import HashedChunk
from caracal.core.sealed import SealError, seal, unseal
from caracal.exceptions import CaracalError, LedgerVerificationError

SNAPSHOT_EVERY = 10_000
"""Entries folded in between two saves of the budget snapshot (and one more on close)."""
REPLAY_BATCH = 10_000
"""Entries read and folded in at a time: a replay holds one batch of parsed entries, never the ledger."""
LINE_BYTES = 250
"""About how long a ledger line is: converts a count of unread entries into bytes."""
REPLAY_LOCK_BYTES = 1 << 20
"""A process that would read this many bytes of ledger or more without a usable snapshot replays under the
home's replay lock (so that one process replays and the others resume from its snapshot)."""
HELPER_BYTES = 32 << 20
"""A replay of this much ledger or more has a helper process read and hash the lines while it parses them
(:mod:`caracal.core.replay_helper`), if the machine has a second core: about 130,000 entries, where starting
the helper (some 50 ms) is a few percent of the replay."""
logger = logging.getLogger("caracal.enforcement")


class LiveBudget:
    """The budget state of the ledger ``writer`` appends to (see the module docstring).

    ``chain_of`` gives an agent's id and its ancestors' (the identity registry); ``clock`` is the reader's
    clock, which bounds holds stamped by a clock that ran ahead. ``lock`` guards the state: hold it across
    a read of the state and the decision taken on it. ``idempotency_window``: how long idempotency keys
    are remembered (:class:`BudgetState`).

    Constructing it resumes from the snapshot, or replays a long ledger once per home (module docstring);
    a ledger that fails verification during that replay is reported by the next :meth:`catch_up`.
    ``replayed`` counts the entries this object has read from the ledger file (not its own staged ones).
    """

    def __init__(
        self,
        writer: LedgerWriter,
        chain_of: Callable[[str], tuple[str, ...]],
        clock: Callable[[], datetime],
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        replay_wait: float | None = None,
    ):
        self.writer = writer
        self.store = writer.store
        self.lock = threading.RLock()
        self.replayed = 0
        self._chain_of = chain_of
        self._clock = clock
        self._idempotency_window = idempotency_window
        self._replay_wait = writer.lock_timeout if replay_wait is None else replay_wait
        self._distrust: LedgerVerificationError | None = None
        self._reset()
        self._load_snapshot()
        if self._unread_bytes() >= REPLAY_LOCK_BYTES:
            self._replay_once()

    def _reset(self) -> None:
        self.state = BudgetState(self._chain_of, self._idempotency_window)
        self.tail = self._new_tail()
        self._saved_at = 0

    def _new_tail(self) -> VerifiedTail:
        return VerifiedTail(self.store, self.writer.checkpoints, self.writer.public_key)

    @property
    def distrusted(self) -> LedgerVerificationError | None:
        """Why every decision is denied for good (None while the ledger checks out)."""
        return self._distrust

    def distrust(self, exc: LedgerVerificationError) -> None:
        """Stop deciding for good: every later :meth:`catch_up` (so every decision) raises ``exc``. For a
        problem found outside this state's own reading (a whole-ledger verification found an edit of lines
        it read long ago); the first problem is kept."""
        with self.lock:
            if self._distrust is None:
                self._distrust = exc
                logger.error("%s", exc)

    # ------------------------------------------------------------------ reading

    def catch_up(self, read: HashedChunk | None = None) -> BudgetState:
        """Fold in every entry appended since the last call (by any process); returns the state.

        ``read``: lines of this ledger already read (by the writer's append step, under the ledger's lock),
        taken instead of reading them again where they follow what this state has folded in."""
        with self.lock:
            if self._distrust is not None:  # a copy: raising the same object again would add this call's
                raise copy.copy(self._distrust).with_traceback(None)  # frames to the first one's traceback
            state = self.state
            while True:
                taken, read = read, None
                try:
                    if taken is not None:
                        batch = events = self.tail.take(taken)  # then a poll: a stat, nothing more to read
                    else:
                        batch = events = self.tail.poll(REPLAY_BATCH)
                except LedgerVerificationError as exc:
                    self._distrust = exc
                    logger.error("%s", exc)
                    raise
                if events and events[0].event_id <= state.last_event_id:
                    # Folded in already when this process staged them (see :meth:`stage`).
                    events = [e for e in events if e.event_id > state.last_event_id]
                self.replayed += len(batch)
                if events:
                    state.apply_all(events, self._clock())  # the reader's clock bounds skewed holds
                if state.last_event_id - self._saved_at >= SNAPSHOT_EVERY:
                    self.save_snapshot()
                if len(batch) < REPLAY_BATCH and taken is None:  # the end of the file
                    return state

    def _unread_bytes(self) -> int:
        """About how many bytes of ledger are left to read (on a store whose positions are event ids, at
        :data:`LINE_BYTES` a line)."""
        unread = self.store.end() - self.tail.offset
        return unread * LINE_BYTES if self.store.positions_are_ids else unread

    def _replay_once(self) -> None:
        """Replay under the home's replay lock, then save the snapshot; or, if another process replayed
        while this one waited, resume from its snapshot (see the module docstring)."""
        location = self.store.location
        with self.store.replay_lock(self._replay_wait) as taken:
            if not taken:
                # Slower than one replay should be (or stuck): replay here too rather than deny; the
                # result is the same, only the work is done twice.
                logger.warning(
                    "another process has been replaying %s for over %ss; replaying here too",
                    location,
                    self._replay_wait,
                )
                self.catch_up_and_save()
                return
            self._reset()
            self._load_snapshot()  # another process may have saved one while this one waited
            if self._unread_bytes() < REPLAY_LOCK_BYTES:
                return  # the rest (what was appended after that snapshot) is read by the next catch_up
            logger.info("replaying %s to rebuild the budget state", location)
            self.catch_up_and_save()

    def _helped(self) -> bool:
        """Whether this replay is long enough, and the machine has the cores, to hash in a helper process."""
        return self._unread_bytes() >= HELPER_BYTES and (os.cpu_count() or 1) > 1

    def catch_up_and_save(self) -> None:
        """Replay (what is unread) and save the snapshot. Errors are not raised here but met again by the
        next :meth:`catch_up`, where callers expect them (a verification failure stays: fail closed)."""
        try:
            with self.tail.replaying(helper=self._helped()):
                self.catch_up()
        except LedgerVerificationError:
            return  # kept in self._distrust: every catch_up raises it
        except CaracalError:
            self._reset()
            return
        self.save_snapshot()

    # ------------------------------------------------------------------ this process's own appends

    def stage(self, events: list[LedgerEvent]) -> None:
        """Fold in entries this process is about to write (they have their ids), so that the next decision
        of the same group sees them. If the write then fails, :meth:`rebuild`."""
        with self.lock:
            self.state.apply_all(events)

    def written(self, start: int, end: int, last_event_id: int, leaves: list[bytes]) -> None:
        """The staged entries are on disk at bytes ``start``..``end``: move the tail past them, so it does
        not read back what this process wrote (which would also slow the next append)."""
        with self.lock:
            if self.state.last_event_id == last_event_id:
                self.tail.skip(start, end, last_event_id, leaves)

    def rebuild(self) -> None:
        """Start again from the snapshot and the file (after a write whose staged entries never landed)."""
        with self.lock:
            self._reset()
            self._load_snapshot()

    # ------------------------------------------------------------------ the snapshot

    def _load_snapshot(self) -> None:
        """Resume from the saved state if it is genuine and still matches the ledger; else replay.

        The snapshot is a cache in the data folder, so it is sealed with a key kept in ``keys/``: a forged,
        edited or foreign snapshot is ignored (and logged) and the ledger is replayed, each line checked. A
        genuine one is trusted only when the line at its offset is the event it claims, byte for byte (its
        hash; the line carries the chain hash of every line before it, so a ledger that was replaced or
        rewritten never matches). Opening a home then reads only what was appended since.

        A genuine snapshot is also a high-water mark: it proves the ledger once held ``offset`` bytes. A
        ledger now shorter than that lost acknowledged entries (its tail was cut, perhaps with the checkpoints
        that would have shown it), so every decision is denied (:class:`LedgerVerificationError`) instead of
        replaying what is left.
        """
        try:
            sealed = self.store.load_cache("budget")
            if sealed is None:
                return
            data = orjson.loads(unseal(self.writer.cache_key("budget"), "budget", sealed))
            offset, last_event_id = data["offset"], data["state"]["last_event_id"]
            size = self.store.end()
            if isinstance(offset, int) and isinstance(last_event_id, int) and offset > size:
                unit = "events" if self.store.positions_are_ids else "bytes"
                self._distrust = failed(
                    last_event_id,
                    f"the ledger holds {size} {unit} but the budget snapshot sealed at event {last_event_id} "
                    f"saw {offset}: its tail was removed. If an older ledger was restored on purpose, delete "
                    f"{self.snapshot_location} and open the home again",
                )
                logger.error("%s", self._distrust)
                return
            line = self.store.line_at(offset)
            if line is None or line_event_id(line) != last_event_id:
                return
            if data.get("line_sha256") != hashlib.sha256(line).hexdigest():
                return
            state = BudgetState.from_snapshot(data["state"], self._chain_of, self._idempotency_window)
            tail = self._new_tail()
            tail.resume(offset, last_event_id, data["tail"])
        except SealError as exc:
            logger.warning(
                "ignoring the budget snapshot %s: %s; replaying the ledger", self.snapshot_location, exc
            )
            return
        except (OSError, ValueError, KeyError, TypeError, CaracalError, orjson.JSONDecodeError) as exc:
            logger.warning(
                "ignoring the unusable budget snapshot %s (%s); replaying the ledger",
                self.snapshot_location,
                exc,
            )
            return
        self.state, self.tail, self._saved_at = state, tail, last_event_id

    def save_snapshot(self) -> None:
        """Save the state beside the ledger, sealed (a cache: losing it costs a replay, never data)."""
        with self.lock:
            if self._distrust is not None:
                return  # never seal a state derived from a ledger that failed verification
            offset = self.tail.offset
            data = {"offset": offset, "state": self.state.to_snapshot(), "tail": self.tail.to_dict()}
            self._saved_at = self.state.last_event_id
        try:
            line = self.store.line_at(offset)
            data["line_sha256"] = hashlib.sha256(line).hexdigest() if line is not None else None
            sealed = seal(self.writer.cache_key("budget"), "budget", orjson.dumps(data))
            self.store.save_cache("budget", sealed)
        except (OSError, CaracalError) as exc:
            logger.warning("could not save the budget snapshot %s: %s", self.snapshot_location, exc)

    @property
    def snapshot_path(self) -> Path | None:
        """The sealed budget snapshot's file, ``<ledger>.budget`` (None on a backend without files)."""
        path = self.writer.ledger_path
        return None if path is None else path.with_name(path.name + ".budget")

    @property
    def snapshot_location(self) -> str:
        """Where the sealed budget snapshot lives, for messages (its file, or a database row)."""
        path = self.snapshot_path
        return str(path) if path is not None else f"{self.store.location} (cache 'budget')"


__all__ = ["REPLAY_LOCK_BYTES", "SNAPSHOT_EVERY", "LiveBudget"]
