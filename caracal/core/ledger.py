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
  :meth:`LedgerWriter.checkpoint` and on :meth:`LedgerWriter.close`.
- **Fast open.** Opening reads only the tail: the frontier is saved, sealed, as the store's ``merkle`` cache
  at each checkpoint and the writer catches up from there. Without it (an old ledger) the first open
  hashes the ledger once and saves it.
- **Backups.** Before a writer's first append the store may keep a copy (the file store's ``.bak.N``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from caracal.core.checkpoint import Checkpoint, CheckpointSigner
from caracal.core.events import (
    LedgerEvent,
    canonical_line_fields,
    check_extensions,
    complete_end,
    iter_lines,
    ledger_size,
    line_body,
    line_event_id,
    parse_line,
    read_last_lines,
    validate_event_dict,
)
from caracal.core.fileio import open_for_reading
from caracal.core.filestore import FileLedgerStore, sidecar_path
from caracal.core.merkle import EMPTY_ROOT, MerkleFrontier, leaf_hash
from caracal.core.money import add
from caracal.core.sealed import seal, unseal
from caracal.core.store import LedgerStore
from caracal.core.validation import (
    check_currency,
    check_identifier,
    check_metadata,
    format_timestamp,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import (
    CaracalError,
    ConfigurationError,
    InvalidLedgerEventError,
    LedgerCorruptError,
    LedgerError,
    LedgerLockTimeoutError,
    LedgerReadError,
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
    "sidecar_path",
]

logger = logging.getLogger("caracal.ledger")

Clock = Callable[[], datetime]

_APPEND_FIELDS = frozenset(
    {
        "agent_id",
        "resource_type",
        "quantity",
        "cost",
        "currency",
        "metadata",
        "timestamp",
        "kind",
        "hold_id",
        "idempotency_key",
        "expires_at",
        "on_expiry",
    }
)
_NO_EXTENSIONS: tuple[None, None, None, None, None] = (None, None, None, None, None)
_EMPTY_HASH_HEX = EMPTY_ROOT.hex()  # prev_hash of event 1: the leaf hash "before" the first line
_TAIL_PROBE = 1 << 16




def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


_Fields = tuple[str, str, str, Decimal, Decimal, str, "dict[str, Any] | None"]
_Extensions = tuple["str | None", "str | None", "str | None", "str | None", "str | None"]
_Draft = tuple[_Fields, _Extensions, bytes]
"""A validated event without its id and chain hash (known only under the lock): its fields (agent_id,
timestamp, resource_type, quantity, cost, currency, metadata), its control-plane extensions (kind, hold_id,
idempotency_key, expires_at, on_expiry) and all of them already serialized as the middle of its JSON line,
so that the work done under the lock is only splicing in the id and the hash."""


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
        self._closed = False
        self._backup_pending = True
        self._set_last_checkpoint(0)
        self._last_checkpoint_at = time.monotonic()
        self._stamp: tuple[datetime | None, str] = (None, "")  # last (moment, text): a batch shares one
        # The stored-form timestamp of the last line in the ledger ("" while empty): no entry is stamped
        # earlier (see _encode). Stored forms are fixed-width, so comparing the strings compares the times.
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
                if rebuilt and self._last_id and self._refused is None:
                    self._save_state()  # no usable state: write one so the next open reads only the tail
        except BaseException:
            self.close()
            raise
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
            # Stamped inside the step, with the database's time (see _prepare): drafts are made there.
            return self.transact(lambda: items)
        drafts = self._drafts(items)
        self._lock()
        try:
            self._ensure_usable()
            self._sync()
            leaves: list[bytes] = []
            lines: list[bytes] = []
            events = self._encode(drafts, self._last_id + 1, self._last_leaf, leaves, lines, self._last_stamp)
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

    def _drafts(self, items: Iterable[Mapping[str, Any]]) -> list[_Draft]:
        """Validate items (all or nothing) into drafts; errors name the item's index."""
        drafts = []
        now = self._clock()  # one clock reading per batch: the events of a group commit share their moment
        prepare = self._prepare
        for index, item in enumerate(items):
            try:
                drafts.append(prepare(now, **item))
            except InvalidLedgerEventError as exc:
                raise InvalidLedgerEventError(f"item {index}: {exc}") from None
            except TypeError:
                if not isinstance(item, Mapping):
                    raise InvalidLedgerEventError(
                        f"item {index} must be a mapping, got {type(item).__name__}"
                    ) from None
                unknown = sorted(map(repr, set(item) - _APPEND_FIELDS))
                if unknown:
                    raise InvalidLedgerEventError(f"item {index} has unknown fields: {unknown}") from None
                raise
        return drafts

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

    # ------------------------------------------------------------------ validation

    def _prepare(
        self,
        now: datetime | None,
        agent_id: object = None,
        resource_type: object = None,
        quantity: object = None,
        cost: object = None,
        currency: object = "USD",
        metadata: object = None,
        timestamp: object = None,
        kind: object = None,
        hold_id: object = None,
        idempotency_key: object = None,
        expires_at: object = None,
        on_expiry: object = None,
    ) -> _Draft:
        """Validate one event's fields (``now`` stands in for a missing timestamp; None: read the clock)."""
        error = InvalidLedgerEventError
        if timestamp is None:
            timestamp = now or self._clock()
        if type(timestamp) is datetime and (timestamp.tzinfo is None or timestamp.tzinfo is timezone.utc):
            moment = timestamp  # fast path; other zones go through parse_timestamp, which reports overflow
        else:
            moment = parse_timestamp(timestamp, "timestamp", error)
        stamp = self._stamp
        if stamp[0] is not moment:
            stamp = self._stamp = (moment, format_timestamp(moment))
        fields = (
            check_identifier(agent_id, "agent_id", error),
            stamp[1],
            check_identifier(resource_type, "resource_type", error),
            parse_amount(quantity, "quantity", error),
            parse_amount(cost, "cost", error),
            check_currency(currency, error),
            None if metadata is None else check_metadata(metadata, error),
        )
        if (
            kind is None
            and hold_id is None
            and idempotency_key is None
            and expires_at is None
            and on_expiry is None
        ):
            extensions: _Extensions = _NO_EXTENSIONS
            return fields, extensions, line_body(*fields)
        else:
            if isinstance(expires_at, datetime):
                expires_at = format_timestamp(parse_timestamp(expires_at, "expires_at", error))
            extensions = check_extensions(
                None if kind == "charge" else kind, hold_id, idempotency_key, expires_at, on_expiry
            )
        # The event's line is '{"event_id":N,' + body + ',"prev_hash":"H"}', in LedgerEvent.to_dict order.
        return fields, extensions, line_body(*fields, extensions)

    # ------------------------------------------------------------------ the append path

    def transact_group(
        self,
        decides: Sequence[Callable[[], Iterable[Mapping[str, Any]] | None]],
        staged: Callable[[list[LedgerEvent]], None],
        written: Callable[[int, int, int, list[bytes]], None] | None = None,
        caught_up: Callable[[], object] | None = None,
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

        ``caught_up()``, if given, runs under the lock once the writer has read what other writers appended
        and before the first decision: a caller folds those lines into what it derives from the ledger
        there, so that no decision (however it is written) is taken on a stale view and ``staged`` always
        continues exactly where the ledger ends. If it raises, nothing is appended and the exception
        propagates.
        """
        results: list[list[LedgerEvent] | Exception] = []
        self._lock()
        try:
            self._ensure_usable()
            self._sync()
            if caught_up is not None:
                caught_up()
            next_id, prev = self._last_id + 1, self._last_leaf
            events: list[LedgerEvent] = []
            leaves: list[bytes] = []
            lines: list[bytes] = []
            floor = self._last_stamp
            for decide in decides:
                try:
                    drafts = self._drafts(decide() or ())
                except Exception as exc:  # handed to that decision's caller, as transact would raise it
                    results.append(exc)
                    continue
                batch = self._encode(drafts, next_id, prev, leaves, lines, floor)
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

    @staticmethod
    def _encode(
        drafts: list[_Draft],
        next_id: int,
        prev: bytes,
        leaves: list[bytes],
        lines: list[bytes],
        floor: str,
    ) -> list[LedgerEvent]:
        """Give drafts their ids and chain hashes from ``next_id`` / ``prev``; their leaf hashes and line
        bytes are appended to ``leaves`` and ``lines``.

        **Timestamps never go backwards.** ``floor`` is the stored-form timestamp of the entry before the
        first draft (the last line of the ledger, read under the lock after catching up on other writers); a
        draft stamped earlier (a clock behind another process's, or one that was set back) is stamped with
        the time of the entry before it instead. So after an entry written by a clock that was ahead (say a
        day), every later entry carries that later time until the clocks meet again: the spend counts at
        the later time, which is also where the budget state counts it (its minutes never go backwards
        either, see :mod:`caracal.core.budget`), so the ledger's days and the budgets' windows agree.
        Explicit timestamps are held to the same rule: an entry is never dated before one already
        recorded."""
        events = []
        sha256 = hashlib.sha256  # leaf_hash, inlined: this loop runs once per event of a batch
        for fields, extensions, body in drafts:
            if fields[1] < floor:  # fixed-width stored forms: string order is time order
                fields = (fields[0], floor, *fields[2:])
                body = line_body(*fields, extensions)
            else:
                floor = fields[1]
            prev_hex = prev.hex()
            line = b'{"event_id":%d,%s,"prev_hash":"%s"}' % (next_id, body, prev_hex.encode())
            prev = sha256(b"\x00" + line).digest()
            events.append(LedgerEvent(next_id, *fields, prev_hex, *extensions))
            leaves.append(prev)
            lines.append(line)
            next_id += 1
        return events

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

    def _sync(self) -> None:
        """Bring the in-memory view up to the store: check and fold in lines other writers added (the file
        store repairs a torn tail once they are read). Runs under the lock; costs one ``fstat`` (or one
        row lock) when nothing changed."""
        last_id = self._last_id
        prev = self._last_leaf
        leaves = []
        good = b""  # the last line that checked out
        try:
            for position, line in self.store.new_lines(self._pos):
                fast = canonical_line_fields(line)  # the writer's plain lines: validated by pattern, fast
                if fast is not None:
                    event_id, chain = fast
                else:
                    try:
                        data = orjson.loads(line)
                        validate_event_dict(data)  # a complete line that is not a valid event is corruption
                        event_id = data["event_id"]
                        chain = data.get("prev_hash")
                    except (orjson.JSONDecodeError, InvalidLedgerEventError):
                        parse_line(line, last_id + 1)  # raises LedgerCorruptError with the precise reason
                        raise AssertionError("unreachable") from None  # pragma: no cover
                if event_id != last_id + 1:
                    raise LedgerCorruptError(
                        f"ledger line {last_id + 1} holds event {event_id!r} but event {last_id + 1} was "
                        f"expected; the ledger is corrupt. Run 'caracal ledger verify'",
                        line_number=last_id + 1,
                        event_id=event_id if isinstance(event_id, int) else None,
                    )
                if chain is not None and chain != prev.hex():
                    raise LedgerCorruptError(
                        f"event {event_id} does not chain to event {last_id}: one of them was modified. "
                        f"Run 'caracal ledger verify'",
                        line_number=last_id + 1,
                        event_id=last_id or event_id,
                    )
                prev = leaf_hash(line)
                leaves.append(prev)
                last_id = event_id
                self._pos = position
                self._last_id = last_id
                self._last_leaf = prev
                good = line
        except LedgerCorruptError as exc:
            self._refuse(str(exc))
            raise
        finally:
            if leaves:
                self._unhashed += leaves
                self._last_stamp = _stored_stamp(good)

    def _load_state(self) -> None:
        """Start from the saved Merkle frontier if it still matches the ledger; else from the beginning.

        The state is a cache, sealed with a key kept in ``keys/`` (:mod:`caracal.core.sealed`): a forged or
        foreign one is ignored and rebuilt. Even a genuine one is trusted only after checking that the line
        it ends at is the event it claims and hashes to the leaf it records.
        """
        try:
            cached = self.store.load_cache("merkle")
            if cached is None:
                return
            state = orjson.loads(unseal(self.cache_key("merkle"), "merkle", cached))
            tree = MerkleFrontier.from_dict(state["tree"])
            offset = state["offset"]
            last_leaf = bytes.fromhex(state["last_leaf"])
        except (OSError, ValueError, KeyError, TypeError, ProofError) as exc:  # SealError is a ValueError
            logger.warning("ignoring unusable Merkle state of %s (%s); rebuilding it", self.location, exc)
            return
        line = self.store.line_at(offset) if isinstance(offset, int) and tree.size else None
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


# ====================================================================== reading


@dataclass
class SpendTotals:
    """Running totals for one group of events (an agent, a resource, a day) in one currency."""

    events: int = 0
    quantity: Decimal = field(default_factory=Decimal)
    cost: Decimal = field(default_factory=Decimal)

    def add(self, event: LedgerEvent) -> None:
        self.events += 1
        self.quantity = add(self.quantity, event.quantity)  # exact: never rounded (caracal.core.money)
        self.cost = add(self.cost, event.cost)


def query_bound(
    value: datetime | date | str | None,
    name: str,
    error: type[Exception] = LedgerReadError,
    *,
    end: bool = False,
) -> datetime | None:
    """A query bound as an aware UTC datetime; a bare date is the start (for ``end``, the end) of that day.
    ``error`` is raised for something that is not a time."""
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, datetime.max.time() if end else datetime.min.time())
    elif isinstance(value, str) and len(value.strip()) == 10:
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return query_bound(day, name, error, end=end)
    return parse_timestamp(value, name, error)


class LedgerReader:
    """Streams the events of a ledger, in order, with strict parsing.

    ``ledger`` is a ledger file's path, or a :class:`LedgerStore` (any backend). Reading never takes the
    writers' lock: the ledger is append-only, so any prefix of complete lines is a consistent view. Bytes
    after the last newline (a write in progress) are not read.
    """

    def __init__(self, ledger: str | os.PathLike[str] | LedgerStore):
        if isinstance(ledger, (str, os.PathLike)):
            self.store: LedgerStore | None = None
            self.ledger_path = Path(ledger)
        else:
            path = getattr(ledger, "path", None)  # a file store: read its file directly, as for a path
            self.store = None if path is not None else ledger
            self.ledger_path = Path(path) if path is not None else Path(ledger.location)

    def iter_events(self) -> Iterator[LedgerEvent]:
        """Every event, in order. Raises :class:`LedgerCorruptError` on the first line that does not parse."""
        for _offset, _number, event in self._scan(0, 0):
            yield event

    def __iter__(self) -> Iterator[LedgerEvent]:
        return self.iter_events()

    def last_events(self, count: int, end: int | None = None) -> list[LedgerEvent]:
        """The last ``count`` events (before byte offset ``end``, a line boundary, if given), reading only
        the end of the file."""
        if not isinstance(count, int) or count < 0:
            raise LedgerReadError(f"count must be a non-negative integer, got {count!r}")
        if self.store is not None:  # positions are event ids
            last = self.store.end() if end is None else end
            return [parse_line(line, 0) for _id, line in self.store.iter_lines(max(0, last - count), last)]
        handle = self._open()
        if handle is None:
            return []
        with handle:
            if end is None:
                end = complete_end(handle, os.fstat(handle.fileno()).st_size)
            lines = read_last_lines(handle, end, count)
        return [parse_line(line, 0) for _offset, line in lines]

    def _open(self) -> Any:
        try:
            return open_for_reading(self.ledger_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LedgerReadError(f"cannot read the ledger {self.ledger_path}: {exc.strerror}") from exc

    def _scan(self, start: int, line_number: int) -> Iterator[tuple[int, int, LedgerEvent]]:
        """Yield ``(end_position, line_number, event)`` for each complete line from ``start``."""
        if self.store is not None:
            for position, line in self.store.iter_lines(start):
                line_number += 1
                yield position, line_number, parse_line(line, line_number)
            return
        handle = self._open()
        if handle is None:
            return
        try:
            with handle:
                for offset, line in iter_lines(handle, start):
                    line_number += 1
                    yield offset + len(line) + 1, line_number, parse_line(line, line_number)
        except OSError as exc:
            raise LedgerReadError(f"cannot read the ledger {self.ledger_path}: {exc.strerror}") from exc


class LedgerQuery(LedgerReader):
    """Filters and sums over the ledger (the original Caracal API, plus summaries).

    Time bounds are inclusive; naive datetimes are UTC; a bare date as ``end_time`` means the end of that
    day. Sums are exact Decimals. Summing across currencies is refused rather than silently mixed.
    """

    def __init__(self, ledger: str | os.PathLike[str] | LedgerStore):
        """As :class:`LedgerReader`; a ledger *path* whose file does not exist yet is created empty (as
        Caracal Core v0.1's ``LedgerQuery`` did), so a query of a new install reads an empty ledger."""
        super().__init__(ledger)
        if self.store is None and not self.ledger_path.exists():
            try:
                self.ledger_path.touch(exist_ok=True)  # not its folder: a mistyped path fails here
            except OSError as exc:
                raise LedgerReadError(f"cannot create {self.ledger_path}: {exc.strerror or exc}") from exc

    def get_events(
        self,
        agent_id: str | None = None,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        resource_type: str | None = None,
        *,
        charges_only: bool = True,
    ) -> list[LedgerEvent]:
        """The charges that match every given filter; ``charges_only=False`` adds holds and releases.

        Charges only by default because v0.1 callers sum what this returns: holds and releases are not
        spend, and counting them gave several times the real spend. Summing the default result gives
        exactly :meth:`sum_spending`."""
        return list(
            self.iter_matching(agent_id, start_time, end_time, resource_type, charges_only=charges_only)
        )

    def iter_matching(
        self,
        agent_id: str | None = None,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        resource_type: str | None = None,
        *,
        charges_only: bool = True,
    ) -> Iterator[LedgerEvent]:
        """Stream the events that match every given filter; only charges (spend) unless ``charges_only``
        is False: holds and releases are not spend, so sums built on this must never see them."""
        start = query_bound(start_time, "start_time")
        end = query_bound(end_time, "end_time", end=True)
        if start is not None and end is not None and start > end:
            raise LedgerReadError(f"start_time {start.isoformat()} is after end_time {end.isoformat()}")
        for event in self.iter_events():
            if charges_only and not event.is_charge:
                continue
            if agent_id is not None and event.agent_id != agent_id:
                continue
            if resource_type is not None and event.resource_type != resource_type:
                continue
            if start is not None or end is not None:
                moment = event.time
                if (start is not None and moment < start) or (end is not None and moment > end):
                    continue
            yield event

    def sum_spending(
        self,
        agent_id: str,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        currency: str | None = None,
    ) -> Decimal:
        """Total cost of ``agent_id``'s events in the window (inclusive)."""
        totals = self.summarize("agent", agent_id=agent_id, start_time=start_time, end_time=end_time)
        return _single_currency(totals, currency).get(agent_id, SpendTotals()).cost

    def aggregate_by_agent(
        self,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        currency: str | None = None,
    ) -> dict[str, Decimal]:
        """Total cost per agent in the window (inclusive)."""
        totals = self.summarize("agent", start_time=start_time, end_time=end_time)
        return {key: value.cost for key, value in _single_currency(totals, currency).items()}

    def summary_by_resource(self, **filters: Any) -> dict[tuple[str, str], SpendTotals]:
        """Totals per ``(resource_type, currency)``; accepts :meth:`get_events`'s filters."""
        return self.summarize("resource", **filters)

    def summary_by_day(self, **filters: Any) -> dict[tuple[str, str], SpendTotals]:
        """Totals per ``(UTC day as YYYY-MM-DD, currency)``; accepts :meth:`get_events`'s filters."""
        return self.summarize("day", **filters)

    def summarize(
        self,
        group_by: str,
        agent_id: str | None = None,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        resource_type: str | None = None,
    ) -> dict[tuple[str, str], SpendTotals]:
        """Totals per ``(key, currency)`` where key is the agent, resource or UTC day."""
        keys: dict[str, Callable[[LedgerEvent], str]] = {
            "agent": lambda e: e.agent_id,
            "resource": lambda e: e.resource_type,
            "day": lambda e: e.timestamp[:10] if e.timestamp.endswith("Z") else e.time.date().isoformat(),
        }
        if group_by not in keys:
            raise LedgerReadError(f"group_by must be one of {sorted(keys)}, got {group_by!r}")
        key_of = keys[group_by]
        totals: dict[tuple[str, str], SpendTotals] = {}
        for event in self.iter_matching(agent_id, start_time, end_time, resource_type):
            group = (key_of(event), event.currency)
            if group not in totals:
                totals[group] = SpendTotals()
            totals[group].add(event)
        return totals


def _single_currency(
    totals: dict[tuple[str, str], SpendTotals], currency: str | None
) -> dict[str, SpendTotals]:
    """Collapse ``(key, currency)`` totals to one currency, refusing to add different currencies."""
    currencies = {cur for _key, cur in totals}
    if currency is None:
        if len(currencies) > 1:
            raise LedgerError(
                f"the matching events are in several currencies ({', '.join(sorted(currencies))}); "
                f"pass currency= to choose one"
            )
    else:
        check_currency(currency, LedgerReadError)
    return {key: value for (key, cur), value in totals.items() if currency is None or cur == currency}


class LedgerTail(LedgerReader):
    """Follows a ledger as it grows: each :meth:`poll` returns only the events appended since the last one.

    Later parts keep live aggregates with it without ever re-reading the file. It checks that ids continue
    without a gap and that the file never shrinks; either would mean the ledger was rewritten, which is an
    error rather than something to paper over.
    """

    def __init__(self, ledger: str | os.PathLike[str] | LedgerStore, *, from_end: bool = False):
        super().__init__(ledger)
        self.offset = 0
        self.last_event_id = 0
        if from_end and self.store is not None:
            self.offset = self.last_event_id = self.store.end()
        elif from_end:
            handle = self._open()
            if handle is not None:
                with handle:
                    self.offset = complete_end(handle, os.fstat(handle.fileno()).st_size)
                    last = read_last_lines(handle, self.offset, 1)
                if last:
                    self.last_event_id = parse_line(last[0][1], 0).event_id

    def poll(self) -> list[LedgerEvent]:
        """Events appended since the previous call (complete lines only), in order."""
        size = ledger_size(self.ledger_path) if self.store is None else self.store.end()
        if size < self.offset:
            raise LedgerCorruptError(
                f"the ledger {self.ledger_path} shrank from {self.offset} to {size} bytes: it was truncated "
                f"or replaced"
            )
        if size == self.offset:
            return []  # the common case on a budget check: one stat, nothing to read
        events = []
        for end, number, event in self._scan(self.offset, self.last_event_id):
            if event.event_id != self.last_event_id + 1:
                raise LedgerCorruptError(
                    f"ledger line {number} holds event {event.event_id}, expected {self.last_event_id + 1}",
                    line_number=number,
                    event_id=event.event_id,
                )
            events.append(event)
            self.offset = end
            self.last_event_id = event.event_id
        return events

    def follow(self, interval: float = 0.5, stop: Callable[[], bool] | None = None) -> Iterator[LedgerEvent]:
        """Yield events as they are appended, polling every ``interval`` seconds until ``stop()`` is true."""
        while stop is None or not stop():
            batch = self.poll()
            yield from batch
            if not batch:
                time.sleep(interval)
