"""The ledger: an append-only sequence of charge events that many processes (and hosts) can share.

:class:`LedgerWriter` is the ledger's logic, the same on every backend; where the lines live is a
:class:`~caracal.core.store.LedgerStore` (a JSON Lines file by default, :mod:`caracal.core.filestore`; a
PostgreSQL database with ``caracal.storage.postgres``). Guarantees (see DESIGN.md, "Promises"):

- **Nothing acknowledged is lost.** :meth:`LedgerWriter.append_event` and :meth:`LedgerWriter.append_events`
  return only after the store made their lines durable (``fdatasync``, or a committed transaction). A failed
  write is rolled back and raised as :class:`LedgerWriteError`; it is never retried behind the caller's
  back. When the store cannot tell whether it was recorded (``outcome_unknown``), it is not reported as done
  and this writer reads what is there before its next append.
- **Contiguous ids across processes.** Every append happens inside the store's exclusive step (a ``flock``,
  or the database's head row lock). Inside it the writer first reads what other writers appended since it
  last looked (never the whole ledger) to learn the last id, the hash chain and the Merkle tree. Ids are
  therefore exactly 1..N with no gap or duplicate.
- **Corruption is refused, never repaired.** A complete line that does not parse, a gap in the ids or a
  broken chain makes the writer refuse to append (fail closed) until a person repairs the ledger. (Torn
  last lines of crashed file writers, which were never acknowledged, are set aside by the file store.)
- **Tamper evidence.** Each line carries ``prev_hash`` (see :mod:`caracal.core.events`), the writer keeps the
  RFC 9162 Merkle tree's frontier in memory (an append adds O(1) hashes, amortized), and signed checkpoints
  ``(size, root)`` are written every ``checkpoint_every`` events, after ``checkpoint_interval`` seconds, on
  :meth:`LedgerWriter.checkpoint` and on :meth:`LedgerWriter.close`, which also runs when the interpreter
  exits for a writer nobody closed (a script that never closes its client). Lines after the last
  checkpoint are covered by nothing but the writer's memory until then: a process killed before it
  checkpoints leaves them unsigned. The writer's sealed state (below) remembers what the ledger hashed
  to at the last checkpoint or rebuild; a ledger that no longer hashes to it is refused, never adopted.
- **Fast open.** Opening reads only the tail: the frontier is saved, sealed, as the store's ``merkle`` cache
  at each checkpoint and the writer catches up from there. Without it (an old ledger) the first open
  hashes the ledger once and saves it.
- **Backups.** Before a writer's first append the store may keep a copy (the file store's ``.bak.N``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from caracal.core.checkpoint import Checkpoint, CheckpointSigner
from caracal.core.drafts import Drafter, encode
from caracal.core.events import (
    LedgerEvent,
    canonical_line_fields,
    line_event_id,
    parse_line,
    validate_event_dict,
)
from caracal.core.filestore import FileLedgerStore, sidecar_path
from caracal.core.ledger_read import LedgerQuery, LedgerReader, LedgerTail, SpendTotals, query_bound
from caracal.core.merkle import EMPTY_ROOT, MerkleFrontier, leaf_hash
from caracal.core.replay_helper import HashedChunk
from caracal.core.sealed import seal, unseal
from caracal.core.store import LedgerStore
from caracal.core.validation import (
    format_timestamp,
    parse_timestamp,
)
from caracal.exceptions import (
    CaracalError,
    ConfigurationError,
    InvalidLedgerEventError,
    LedgerCorruptError,
    LedgerLockTimeoutError,
    LedgerWriteError,
    ProofError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "LedgerEvent",
    "LedgerQuery",
    "LedgerReader",
    "LedgerTail",
    "LedgerWriter",
    "SpendTotals",
    "query_bound",
    "read_merkle_state",
    "remembered_root",
    "sidecar_path",
]

logger = logging.getLogger("caracal.ledger")

Clock = Callable[[], datetime]

READ_BACK_LINES = 10_000
"""Other writers' lines an append step keeps, once read and checked, for a reader of the same ledger in
this process (its budget state) to fold in without reading them again; more are left for it to read."""


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


_OPEN_WRITERS: weakref.WeakSet[LedgerWriter] = weakref.WeakSet()
"""Writers of this process not closed yet: closed (checkpointed) when the interpreter exits."""


@atexit.register
def _close_at_exit() -> None:
    for writer in list(_OPEN_WRITERS):
        try:
            writer.close()
        except Exception:  # exiting anyway: a writer that cannot checkpoint must not stop the others
            logger.exception("could not close the ledger %s at exit", writer.location)


class LedgerWriter:
    """Appends events to a ledger; safe to share between threads, processes (and, on a database, hosts).

    ``ledger`` is a ledger file's path (the embedded backend: a :class:`FileLedgerStore` is opened on it with
    ``backup_count``, ``backup_min_interval`` and ``lock_timeout``) or any :class:`LedgerStore`.
    ``signing_key_path`` is the Ed25519 key that signs checkpoints (created when missing; default
    ``$CARACAL_HOME/keys/checkpoint.key``). It must not live in the ledger's folder. ``clock`` returns the
    current aware datetime (injected in tests); by default the store's clock (the database's, on
    PostgreSQL). ``lock_timeout`` bounds the wait for the exclusive lock.
    """

    def __init__(
        self,
        ledger: str | os.PathLike[str] | LedgerStore,
        backup_count: int = 3,
        *,
        signing_key_path: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        backup_min_interval: float = 600.0,
        lock_timeout: float = 10.0,
        clock: Clock | None = None,
    ):
        if not isinstance(backup_count, int) or isinstance(backup_count, bool) or backup_count < 0:
            raise ConfigurationError(f"backup_count must be a non-negative integer, got {backup_count!r}")
        if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ConfigurationError(
                f"checkpoint_every must be a non-negative integer, got {checkpoint_every!r}"
            )
        for name, value in (
            ("checkpoint_interval", checkpoint_interval),
            ("backup_min_interval", backup_min_interval),
            ("lock_timeout", lock_timeout),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigurationError(f"{name} must be a non-negative number of seconds, got {value!r}")
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = float(checkpoint_interval)
        if isinstance(ledger, (str, os.PathLike)):
            # The key is checked before the file is created: a refused setup leaves nothing behind.
            self._signer = _load_signer(Path(ledger), signing_key_path)
            store: LedgerStore = FileLedgerStore(
                ledger,
                lock_timeout=lock_timeout,
                backup_count=backup_count,
                backup_min_interval=backup_min_interval,
                clock=clock or _utc_now,
            )
        else:
            store = ledger
            try:
                self._signer = _load_signer(getattr(store, "path", None), signing_key_path)
            except BaseException:
                store.close()
                raise
        self.store = store
        try:
            recorded = store.claim_key(self._signer.key_id)
        except BaseException:
            store.close()
            raise
        if recorded != self._signer.key_id:
            store.close()
            raise ConfigurationError(
                f"this host's checkpoint signing key (id {self._signer.key_id}) is not the key of the ledger "
                f"at {store.location} (id {recorded}): every host of a home signs with the same key. Copy "
                "keys/checkpoint.key (and .pub) from a host of this home into this host's home"
            )
        self.ledger_path: Path | None = getattr(store, "path", None)
        """The ledger file (None on a backend without one)."""
        self.location = store.location
        self.lock_timeout = store.lock_timeout
        self._clock: Clock = clock or store.now
        self._drafter = Drafter(self._clock)
        self._cache_keys: dict[str, bytes] = {}
        self.checkpoints = store.checkpoints

        self._thread_lock = threading.RLock()
        self._pos = 0  # the store's position just past the last complete line we know
        self._last_id = 0
        self._last_leaf = EMPTY_ROOT
        self._tree = MerkleFrontier()
        # Leaf hashes of lines not yet folded into the frontier: an append only adds to this list, and the
        # hashing is done in bulk when a checkpoint or root needs it. Invariant: tree size + len == last id.
        self._unhashed: list[bytes] = []
        self._refused: str | None = None  # why this writer refuses to append (fail closed)
        self._remembered: tuple[int, bytes] = (0, EMPTY_ROOT)  # (event id, leaf) of a genuine saved state
        self._closed = False
        self._backup_pending = True
        self._set_last_checkpoint(0)
        self._last_checkpoint_at = time.monotonic()
        # The stored-form timestamp of the last line in the ledger ("" while empty): no entry is stamped
        # earlier (see drafts.encode). Stored forms are fixed-width: comparing the strings compares times.
        self._last_stamp = ""
        try:
            with self._locked():
                latest = self.checkpoints.latest()
                if latest is not None:
                    self._set_last_checkpoint(latest.size)
                self._load_state()
                rebuilt = self._pos == 0
                self._sync()
                if latest is not None and latest.size > self._last_id:
                    self._refuse(
                        f"the ledger holds {self._last_id} events but a signed checkpoint covers "
                        f"{latest.size}: its tail was truncated. Run 'caracal ledger verify' and restore "
                        f"from a backup"
                    )
                elif self._remembered[0] > self._last_id:
                    self._refuse(
                        f"the ledger holds {self._last_id} events but this home's writer recorded "
                        f"{self._remembered[0]} (its sealed Merkle state): its tail was truncated. Run "
                        "'caracal ledger verify' and restore from a backup"
                    )
                if rebuilt and self._last_id and self._refused is None:
                    self._save_state()  # no usable state: write one so the next open reads only the tail
        except BaseException:
            self.close()
            raise
        _OPEN_WRITERS.add(self)
        logger.debug("opened ledger %s at event %d", self.location, self._last_id)

    # ------------------------------------------------------------------ public API

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half of the key that signs this ledger's checkpoints."""
        return self._signer.public_key

    def cache_key(self, purpose: str) -> bytes:
        """The key that seals this ledger's caches of ``purpose`` (it lives with the signing key)."""
        key = self._cache_keys.get(purpose)
        if key is None:
            key = self._cache_keys[purpose] = self._signer.cache_key(purpose)
        return key

    @property
    def last_event_id(self) -> int:
        """The id of the last event this writer has seen (appended by it or by another writer)."""
        return self._last_id

    def now(self) -> datetime:
        """The time entries are stamped with (the store's clock unless one was injected)."""
        return self._clock()

    @property
    def _next_event_id(self) -> int:
        """Caracal Core v0.1's attribute: the id the next append will get, learnt from the ledger itself
        (under the lock, after folding in other writers' lines), never from a stale in-memory counter."""
        with self._locked():
            self._sync()
            return self._last_id + 1

    def append_event(
        self,
        agent_id: str,
        resource_type: str,
        quantity: Decimal | int | str,
        cost: Decimal | int | str,
        currency: str = "USD",
        metadata: Mapping[str, Any] | None = None,
        timestamp: datetime | str | None = None,
    ) -> LedgerEvent:
        """Validate, append and fsync one event; return it with its id.

        Raises :class:`InvalidLedgerEventError` (nothing written) for bad input and
        :class:`LedgerWriteError` when the event could not be made durable (nothing acknowledged, no partial
        line left behind).
        """
        _check_v01_wording(agent_id, resource_type, quantity, cost)
        return self.append_events(
            [
                {
                    "agent_id": agent_id,
                    "resource_type": resource_type,
                    "quantity": quantity,
                    "cost": cost,
                    "currency": currency,
                    "metadata": metadata,
                    "timestamp": timestamp,
                }
            ]
        )[0]

    def append_events(self, items: Iterable[Mapping[str, Any]]) -> list[LedgerEvent]:
        """Append many events with one lock, one write and one fsync (group commit).

        Each item is a mapping of :meth:`append_event`'s keyword arguments. Validation is all-or-nothing:
        if any item is invalid, nothing is written and the error names the item's index.
        """
        items = list(items)
        if not items:
            return []
        if self.store.positions_are_ids:
            # Stamped inside the step, with the database's time: drafts are made there.
            return self.transact(lambda: items)
        drafts = self._drafter.drafts(items)
        self._lock()
        try:
            self._ensure_usable()
            self._sync()
            leaves: list[bytes] = []
            lines: list[bytes] = []
            events = encode(drafts, self._last_id + 1, self._last_leaf, leaves, lines, self._last_stamp)
            self._write_encoded(events, leaves, lines)
        finally:
            self._unlock()
        return events

    def transact(self, decide: Callable[[], Iterable[Mapping[str, Any]] | None]) -> list[LedgerEvent]:
        """Call ``decide()`` while holding the exclusive lock, and append what it returns, atomically.

        This is the one primitive the control plane builds check-and-reserve on: no other writer (thread,
        process or host) can append between the moment ``decide`` looks at the ledger and the moment its
        items are durable. ``decide`` returns items as for :meth:`append_events` (or None/empty to append
        nothing); if it raises, nothing is appended and the exception propagates. The lock is held while
        it runs: keep it short. (A group of one: see :meth:`transact_group`.)
        """
        result = self.transact_group([decide], lambda _events: None)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def checkpoint(self) -> Checkpoint:
        """Sign and store a checkpoint of the ledger as it is now (after catching up with other writers);
        when the last stored checkpoint already covers exactly this size, that one is returned."""
        with self._locked():
            self._ensure_usable()
            self._sync()
            latest = self.checkpoints.latest()
            if latest is not None and latest.size == self._last_id:
                return latest
            return self._write_checkpoint()

    def root(self) -> tuple[int, bytes]:
        """``(size, root)`` of the Merkle tree over every complete line, as of now."""
        with self._locked():
            self._sync()
            tree = self._folded_tree()
            return tree.size, tree.root()

    def close(self) -> None:
        """Checkpoint what is not yet covered, save the tree state and release the store. Idempotent."""
        with self._thread_lock:
            if self._closed:
                return
            if self._refused is None:
                try:
                    with self._locked():
                        self._sync()
                        if self._last_id > self._last_checkpoint_size:
                            self._write_checkpoint()
                except CaracalError as exc:
                    logger.warning("could not checkpoint %s on close: %s", self.location, exc)
            self._closed = True
            self.store.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the append path

    def transact_group(
        self,
        decides: Sequence[Callable[[], Iterable[Mapping[str, Any]] | None]],
        staged: Callable[[list[LedgerEvent]], None],
        written: Callable[[int, int, int, list[bytes]], None] | None = None,
        caught_up: Callable[[HashedChunk | None], object] | None = None,
    ) -> list[list[LedgerEvent] | Exception]:
        """Run many :meth:`transact` decisions under one lock hold and commit them with one write and one
        fdatasync (group commit across callers).

        The decisions run in order. Each one's items get their ids and chain hashes at once and are passed to
        ``staged`` before the next decision runs, so a later decision sees every earlier one (a caller's
        live state folds them in: two holds of one batch can never both take the last of a budget). The
        result for each decision is its events, or the exception it raised (or its items' validation error):
        one bad decision appends nothing and does not affect the others.

        If the write fails, :class:`LedgerWriteError` is raised and nothing of the batch is acknowledged;
        ``staged`` has seen events that are not in the ledger, so the caller must rebuild what it derived
        from them. After a successful write, ``written(start, end, last_event_id, leaves)`` is called, still
        under the lock: the batch's lines span store positions ``start`` to ``end`` and have these leaf
        hashes (a reader that has folded them in through ``staged`` can skip them instead of reading them
        back).

        ``caught_up(read)``, if given, runs under the lock once the writer has read what other writers
        appended and before the first decision: a caller folds those lines into what it derives from the
        ledger there, so that no decision (however it is written) is taken on a stale view and ``staged``
        always continues exactly where the ledger ends. ``read`` is what the writer read (see :meth:`_sync`),
        so the caller need not read it again. If it raises, nothing is appended and the exception
        propagates.
        """
        results: list[list[LedgerEvent] | Exception] = []
        self._lock()
        try:
            self._ensure_usable()
            read = self._sync()
            if caught_up is not None:
                caught_up(read)
            next_id, prev = self._last_id + 1, self._last_leaf
            events: list[LedgerEvent] = []
            leaves: list[bytes] = []
            lines: list[bytes] = []
            floor = self._last_stamp
            for decide in decides:
                try:
                    drafts = self._drafter.drafts(decide() or ())
                except Exception as exc:  # handed to that decision's caller, as transact would raise it
                    results.append(exc)
                    continue
                batch = encode(drafts, next_id, prev, leaves, lines, floor)
                if batch:
                    next_id, prev, floor = batch[-1].event_id + 1, leaves[-1], batch[-1].timestamp
                    events += batch
                    staged(batch)
                results.append(batch)
            if events:
                start = self._pos
                self._write_encoded(events, leaves, lines)
                if written is not None:
                    written(start, self._pos, self._last_id, leaves)
            return results
        finally:
            self._unlock()

    def _write_encoded(self, events: list[LedgerEvent], leaves: list[bytes], lines: list[bytes]) -> None:
        """Write encoded events (continuing the ledger's last id and hash) durably, then do the bookkeeping.

        A failed write leaves this writer where it was: the next step reads whatever the store holds (on a
        database, a COMMIT whose outcome was unknown may turn out to have landed; it is then read back like
        another writer's lines, never written twice)."""
        if self._backup_pending:
            self._backup_pending = False
            self.store.backup(self._pos)
        self._pos = self.store.write(lines, events[0].event_id)
        self._last_id = events[-1].event_id
        self._last_leaf = leaves[-1]
        self._last_stamp = events[-1].timestamp
        self._unhashed += leaves
        if self._last_id >= self._next_checkpoint_size or (
            self.checkpoint_interval
            and time.monotonic() - self._last_checkpoint_at >= self.checkpoint_interval
        ):
            self._checkpoint_after_append()
        if logger.isEnabledFor(logging.INFO):
            for event in events:
                logger.info(
                    "ledger append event_id=%d agent_id=%s resource_type=%s quantity=%s cost=%s %s%s",
                    event.event_id,
                    event.agent_id,
                    event.resource_type,
                    event.quantity,
                    event.cost,
                    event.currency,
                    "" if event.kind is None else f" kind={event.kind} hold_id={event.hold_id}",
                )

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the thread lock and the store's exclusive lock (waiting at most ``lock_timeout``)."""
        self._lock()
        try:
            yield
        finally:
            self._unlock()

    def _lock(self) -> None:
        lock = self._thread_lock
        if not lock.acquire(blocking=False) and not lock.acquire(
            timeout=self.lock_timeout if self.lock_timeout > 0 else -1
        ):
            raise LedgerLockTimeoutError(
                f"timed out after {self.lock_timeout}s waiting for another thread to finish appending "
                f"to {self.location}"
            )
        try:
            if self._closed:
                raise LedgerWriteError(f"the writer for {self.location} is closed")
            self.store.begin()
        except BaseException:
            lock.release()
            raise

    def _unlock(self) -> None:
        try:
            self.store.finish()
        finally:
            self._thread_lock.release()

    # ------------------------------------------------------------------ catching up with the store

    def _ensure_usable(self) -> None:
        if self._refused is not None:
            raise LedgerWriteError(f"the ledger {self.location} refuses writes: {self._refused}")

    def _refuse(self, reason: str) -> None:
        """Fail closed: remember why, log it, and refuse every later append of this writer."""
        self._refused = reason
        logger.error("ledger %s refuses writes: %s", self.location, reason)

    def _sync(self) -> HashedChunk | None:
        """Bring the in-memory view up to the store: check and fold in lines other writers added (the file
        store repairs a torn tail once they are read). Runs under the lock; costs one ``fstat`` (or one
        row lock) when nothing changed.

        Returns the lines read, with their positions and leaf hashes (a reader of the same ledger can fold
        them in without reading them again), or None when there were more than :data:`READ_BACK_LINES`
        (they are not kept: the reader reads them itself, a batch at a time)."""
        last_id = self._last_id
        prev = self._last_leaf
        leaves: list[bytes] = []
        ends: list[int] = []  # positions and lines of the first READ_BACK_LINES, for the reader
        kept: list[bytes] = []
        parsed: list[LedgerEvent | None] = []  # the kept lines' events, where they were parsed here
        good = b""  # the last line that checked out
        chain: str | None
        event: LedgerEvent | None
        # The ledger no longer continues from what this writer had (see _witness): the store found the lines
        # before its position moved (before yielding any), or the first line does not chain to its last.
        moved = True
        try:
            for position, line in self.store.new_lines(self._pos):
                moved = False
                fast = canonical_line_fields(line)  # the writer's plain lines: validated by pattern, fast
                if fast is not None:
                    event_id, chain = fast
                    event = None
                else:
                    try:
                        # a complete line that is not a valid event is corruption
                        event = LedgerEvent(*validate_event_dict(orjson.loads(line)))
                    except (orjson.JSONDecodeError, InvalidLedgerEventError):
                        parse_line(line, last_id + 1)  # raises LedgerCorruptError with the precise reason
                        raise AssertionError("unreachable") from None  # pragma: no cover
                    event_id, chain = event.event_id, event.prev_hash
                if event_id != last_id + 1:
                    raise LedgerCorruptError(
                        f"ledger line {last_id + 1} holds event {event_id!r} but event {last_id + 1} was "
                        f"expected; the ledger is corrupt. Run 'caracal ledger verify'",
                        line_number=last_id + 1,
                        event_id=event_id if isinstance(event_id, int) else None,
                    )
                if chain is not None and chain != prev.hex():
                    moved = not leaves
                    raise LedgerCorruptError(
                        f"event {event_id} does not chain to event {last_id}: one of them was modified. "
                        f"Run 'caracal ledger verify'",
                        line_number=last_id + 1,
                        event_id=last_id or event_id,
                    )
                prev = leaf_hash(line)
                if event_id == self._remembered[0] and prev != self._remembered[1]:
                    raise LedgerCorruptError(
                        f"event {event_id} no longer has the bytes this home's writer recorded for it (its "
                        f"sealed Merkle state: leaf {self._remembered[1].hex()[:16]}…, the ledger now: "
                        f"{prev.hex()[:16]}…): a line up to it was modified. Run 'caracal ledger verify' "
                        "and restore the ledger from a backup",
                        line_number=event_id,
                        event_id=event_id,
                    )
                leaves.append(prev)
                if len(kept) < READ_BACK_LINES:
                    ends.append(position)
                    kept.append(line)
                    parsed.append(event)
                last_id = event_id
                self._pos = position
                self._last_id = last_id
                self._last_leaf = prev
                good = line
        except LedgerCorruptError as exc:
            if not moved or self._last_id == 0 or not self._witness():
                self._refuse(str(exc))
                raise
            size = self._last_id
            signed = LedgerCorruptError(
                f"{exc} (the ledger no longer continues from the {size} events this writer had: it signed a "
                f"checkpoint of the first {size} events as it had them)",
                line_number=exc.line_number,
                event_id=exc.event_id,
            )
            self._refuse(str(signed))
            raise signed from None
        finally:
            if leaves:
                self._unhashed += leaves
                self._last_stamp = _stored_stamp(good)
        return HashedChunk(ends, kept, leaves, {}, None, parsed) if len(kept) == len(leaves) else None

    def _witness(self) -> bool:
        """The ledger no longer continues from what this writer had: the first line after its last event
        does not chain to the bytes it recorded or read for that event (which was changed, and chained onto
        by someone who read it that way), or the lines before it moved (rewritten with other lengths). The
        ledger as it now is may hold together, so only this writer can tell; it signs a checkpoint of what
        it had (its tree is built from those bytes: true when they were there), so that ``verify``, a
        replay and an export report the rewrite instead of finding the ledger intact. Whether it did
        (errors are logged: the refusal is what matters)."""
        try:
            self._write_checkpoint()
        except (OSError, CaracalError) as exc:
            logger.warning("could not sign a checkpoint recording the rewrite of %s: %s", self.location, exc)
            return False
        return True

    def _load_state(self) -> None:
        """Start from the saved Merkle frontier if it still matches the ledger; else from the beginning.

        The state is a cache, sealed with a key kept in ``keys/`` (:mod:`caracal.core.sealed`): a forged or
        foreign one is ignored and rebuilt. Even a genuine one is trusted only after checking that the line
        it ends at is the event it claims and hashes to the leaf it records. When it does not, the ledger is
        read from the beginning, and the leaf a genuine state recorded must come out of it again: if event
        N now hashes to something else, a line up to N was modified after this home's writer wrote it
        (typically the last line, which no later line's ``prev_hash`` and maybe no checkpoint covers yet),
        and the writer refuses to append (chaining onto the modified line would make the edit look
        legitimate), keeping the state as evidence.
        """
        try:
            sealed = read_merkle_state(self.store, self.cache_key("merkle"))
        except ValueError as exc:
            logger.warning("ignoring unusable Merkle state of %s (%s); rebuilding it", self.location, exc)
            return
        if sealed is None:
            return
        tree, position, last_leaf = sealed
        # From here on the state is genuine: whatever else is wrong, event tree.size had this leaf when this
        # home's writer saved it. Its leaf commits to every line up to it (each line holds the previous
        # one's hash), so the rebuild checks the whole prefix against it (see _sync).
        self._remembered = (tree.size, last_leaf)
        offset = position if type(position) is int else 0
        line = self.store.line_at(offset) if offset and tree.size else None
        if line is None:
            return
        if line_event_id(line) != tree.size or leaf_hash(line) != last_leaf:
            logger.warning("the Merkle state of %s does not match the ledger; rebuilding it", self.location)
            return
        self._tree = tree
        self._pos = offset
        self._last_id = tree.size
        self._last_leaf = last_leaf
        self._last_stamp = _stored_stamp(line)

    def _save_state(self) -> None:
        state = {
            "offset": self._pos,
            "last_leaf": self._last_leaf.hex(),
            "tree": self._folded_tree().to_dict(),
        }
        try:
            self.store.save_cache("merkle", seal(self.cache_key("merkle"), "merkle", orjson.dumps(state)))
        except (OSError, CaracalError) as exc:  # a cache: losing it costs a rebuild on the next open
            logger.warning("could not save the Merkle state of %s: %s", self.location, exc)

    # ------------------------------------------------------------------ checkpoints

    def _folded_tree(self) -> MerkleFrontier:
        """The Merkle frontier over every line seen so far (folding in the leaves appended since)."""
        if self._unhashed:
            self._tree.extend(self._unhashed)
            self._unhashed = []
        return self._tree

    def _set_last_checkpoint(self, size: int) -> None:
        """Remember the last checkpoint's size; the next is due when the size reaches the next multiple of
        ``checkpoint_every`` (so that concurrent writers agree on where checkpoints fall)."""
        self._last_checkpoint_size = size
        every = self.checkpoint_every
        self._next_checkpoint_size = (size // every + 1) * every if every else 1 << 62

    def _checkpoint_after_append(self) -> None:
        """Write the checkpoint an append made due; the events are durable already, so a failure here is
        logged, not raised."""
        try:
            self._write_checkpoint()
        except CaracalError as exc:
            logger.warning("could not write a checkpoint of %s: %s", self.location, exc)

    def _write_checkpoint(self) -> Checkpoint:
        tree = self._folded_tree()
        checkpoint = self._signer.sign(
            tree.size, tree.root(), format_timestamp(self._clock().astimezone(timezone.utc))
        )
        try:
            self.checkpoints.append(checkpoint)
        except OSError as exc:
            raise LedgerWriteError(f"cannot write a checkpoint of {self.location}: {exc}") from exc
        self._set_last_checkpoint(checkpoint.size)
        self._last_checkpoint_at = time.monotonic()
        self._save_state()
        logger.info("ledger checkpoint size=%d root=%s", checkpoint.size, checkpoint.root.hex())
        return checkpoint


def _check_v01_wording(agent_id: object, resource_type: object, quantity: object, cost: object) -> None:
    """The seed's (Caracal Core v0.1's) messages for the commonest bad input to :meth:`append_event`;
    everything else is checked, with our messages, by the validation every append goes through."""
    for name, value in (("agent_id", agent_id), ("resource_type", resource_type)):
        if isinstance(value, str) and not value.strip():
            raise InvalidLedgerEventError(f"{name} cannot be empty")
    for name, amount in (("quantity", quantity), ("cost", cost)):
        finite = isinstance(amount, int) or (isinstance(amount, Decimal) and amount.is_finite())
        if finite and not isinstance(amount, bool) and amount < 0:  # type: ignore[operator]
            raise InvalidLedgerEventError(f"{name} must be non-negative, got {amount}")


def _stored_stamp(line: bytes) -> str:
    """The timestamp of a complete, valid line in the stored form (lines from other tools may use another
    offset or precision)."""
    stamp = orjson.loads(line)["timestamp"]
    if len(stamp) == 27 and stamp[10] == "T" and stamp[26] == "Z":
        return stamp  # type: ignore[no-any-return]
    return format_timestamp(parse_timestamp(stamp, "timestamp", LedgerCorruptError))


def read_merkle_state(
    ledger: str | os.PathLike[str] | LedgerStore, key: bytes
) -> tuple[MerkleFrontier, object, bytes] | None:
    """The writer's sealed Merkle state of ``ledger`` (its frontier, the store position it ends at, the
    last leaf), None when there is none; ``ValueError`` when it is forged, foreign or malformed. ``key`` is
    the ledger's ``merkle`` cache key (:meth:`CheckpointSigner.cache_key`)."""
    try:
        if isinstance(ledger, (str, os.PathLike)):
            state_path = sidecar_path(Path(ledger), "merkle")
            cached = state_path.read_bytes() if state_path.exists() else None
        else:
            cached = ledger.load_cache("merkle")
        if cached is None:
            return None
        state = orjson.loads(unseal(key, "merkle", cached))
        last_leaf = bytes.fromhex(state["last_leaf"])
        if len(last_leaf) != 32:
            raise ValueError("the last leaf is not a SHA-256 hash")
        return MerkleFrontier.from_dict(state["tree"]), state["offset"], last_leaf
    except (OSError, KeyError, TypeError, ProofError) as exc:  # SealError is a ValueError
        raise ValueError(str(exc) or type(exc).__name__) from exc


def remembered_root(
    ledger: str | os.PathLike[str] | LedgerStore, key_path: str | os.PathLike[str]
) -> tuple[int, bytes] | None:
    """``(size, root)`` of the Merkle tree this home's writer last saved (sealed) for ``ledger``: what the
    first ``size`` events hashed to when it wrote them. Between signed checkpoints it is the only record
    of the latest lines' bytes, so ``verify`` compares it like a checkpoint. None when there is no usable
    state or no key to check its seal with (a forged state is not evidence of anything)."""
    path = Path(key_path)
    if not path.exists():
        return None
    try:
        signer = CheckpointSigner.load_or_create(path)
        sealed = read_merkle_state(ledger, signer.cache_key("merkle"))
    except (OSError, ValueError, CaracalError):
        return None
    if sealed is None or sealed[0].size == 0:
        return None
    return sealed[0].size, sealed[0].root()


def _load_signer(ledger_path: Path | None, key_path: str | os.PathLike[str] | None) -> CheckpointSigner:
    if key_path is None:
        from caracal.config import default_signing_key_path

        key_path = default_signing_key_path()
    key = Path(key_path).expanduser().resolve()
    if ledger_path is not None:
        folder = ledger_path.parent.expanduser().resolve()
        if key.is_relative_to(folder):
            raise ConfigurationError(
                f"the checkpoint signing key {key} is inside the ledger's folder {folder}; keep it with the "
                f"configuration instead, so that whoever can rewrite the ledger cannot re-sign it"
            )
    try:
        return CheckpointSigner.load_or_create(key)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the checkpoint signing key {key}: {exc}") from exc
