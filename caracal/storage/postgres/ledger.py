"""The PostgreSQL ledger store: :class:`caracal.core.store.LedgerStore` on ``caracal_ledger``.

Positions are event ids (:attr:`PostgresLedgerStore.positions_are_ids`): the line of event N ends at
position N; position 0 is the empty ledger.

Invariants:

- **One writer at a time, across hosts.** :meth:`~PostgresLedgerStore.begin` opens a transaction and locks
  the single row of ``caracal_head`` (``SELECT ... FOR UPDATE``, waiting at most ``lock_timeout``, then
  :class:`LedgerLockTimeoutError`). A row lock, not an advisory lock: it belongs to this schema's table,
  so homes sharing a database never wait for each other, and it is released by COMMIT, ROLLBACK or a lost
  connection (a crashed writer never leaves it held). Within one backend object, steps also queue on a
  thread lock first, so waiting threads do not each hold a pooled connection.
- **Contiguous ids, exact bytes.** :meth:`~PostgresLedgerStore.write` refuses ids that do not follow the
  head, inserts the lines as given (``bytea``: the canonical bytes, without the newline), moves the head
  and notifies, then COMMITs: all of it or nothing. The primary key on ``event_id`` is a second guard.
- **Nothing acknowledged is lost; nothing unacknowledged is reported done.** ``write`` returns only after
  COMMIT succeeded (the server's durability settings, ``synchronous_commit``, apply). A failure before
  COMMIT rolls back (nothing recorded, :class:`LedgerWriteError`). A connection lost *during* COMMIT
  raises ``LedgerWriteError(outcome_unknown=True)``: the lines may or may not be there; the writer reads
  what is there at its next step and never writes them again on its own. No retry happens here.
- **The database clock.** ``begin`` reads ``clock_timestamp()`` with the lock: :meth:`now` returns it
  inside the step (on the step's thread), and elsewhere the local clock corrected by the last offset
  measured to the database's clock (one query the first time). Hosts whose clocks disagree still stamp
  entries with one clock.
- **Cheap, exact enough reads.** :meth:`end` is answered from the :class:`~.listener.Listener` (no query)
  while it is fresh, else by one query; on the thread of a step it is the locked head, exact. It never
  goes below anything this store has read or written (a tail never sees the ledger "shrink" because a
  notification is late, or because another thread's step committed rows it has not yet counted).
  :meth:`iter_lines` reads in keyset batches on short-lived pooled connections: memory stays bounded, and a
  slow consumer holds no connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from caracal.exceptions import (
    CaracalError,
    LedgerLockTimeoutError,
    LedgerReadError,
    LedgerWriteError,
)
from caracal.storage.postgres.checkpoints import PostgresCheckpointLog
from caracal.storage.postgres.connection import Database, advisory_key, millis, wait_deadline
from caracal.storage.postgres.listener import Listener

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("caracal.storage.postgres")

BATCH = 5000
"""Lines read per query by :meth:`PostgresLedgerStore.iter_lines` and :meth:`new_lines` (about 1.5 MB)."""


_RANGE = "SELECT event_id, line FROM caracal_ledger WHERE event_id > %s AND event_id <= %s ORDER BY event_id"
"""The rows with ids in a range, in order (read in binary: ``bytea`` as bytes)."""


def _read_batch(conn: psycopg.Connection[Any], after: int, stop: int) -> list[tuple[int, bytes]]:
    """Up to :data:`BATCH` rows ``(event_id, line)`` with ids in ``(after, stop]``, in order.

    Event ids are contiguous, so the range ``after+1 .. after+BATCH`` is asked first: a primary-key range
    whose plan cannot go wrong (with ``LIMIT`` alone and statistics older than a bulk load, the planner
    chose to sort the whole rest of the table, 70 ms a batch). Only when that range comes back short (the
    end, or rows missing, which the reader then reports as corruption) does a second query look past it.
    Rows arrive in binary format: ``bytea`` as bytes, not hex text to decode (about twice as fast).
    """
    upper = min(stop, after + BATCH)
    rows: list[tuple[int, bytes]] = conn.execute(_RANGE, (after, upper), binary=True).fetchall()
    if len(rows) < upper - after and upper < stop:
        rows += conn.execute(_RANGE + " LIMIT %s", (upper, stop, BATCH - len(rows)), binary=True).fetchall()
    return rows


def stream_lines(
    url: str,
    schema: str,
    statement_timeout: str,
    connect: dict[str, Any],
    after: int,
    end: int | None,
) -> Iterator[tuple[int, bytes]]:
    """The ledger's rows after event ``after`` (up to ``end``) as ``(event id, line)``, on a connection of
    its own: a replay helper's source (:meth:`PostgresLedgerStore.line_source`), in another process. The
    connection has the home's timeouts and keepalives (``connect``), so a server that stops answering ends
    the helper (and the replay reads on itself) instead of stalling it."""
    import psycopg

    stop = (1 << 62) if end is None else end
    with psycopg.connect(url, autocommit=True, **{**connect, "application_name": "caracal replay"}) as conn:
        conn.execute(
            "SELECT set_config('search_path', quote_ident(%s), false), "
            "set_config('statement_timeout', %s, false)",
            (schema, statement_timeout),
        )
        while after < stop:
            rows = _read_batch(conn, after, stop)
            if not rows:
                return
            yield from rows
            after = rows[-1][0]


before_commit: Callable[[Any], None] | None = None
"""Test hook: called with the step's connection right before COMMIT (to lose the connection there)."""
after_commit: Callable[[], None] | None = None
"""Test hook: called right after a step's COMMIT returned, before the store records its new head (the
moment when another thread can read rows the step's own head does not yet count)."""


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PostgresLedgerStore:
    """One ledger in the database of ``db`` (see the module docstring). Safe to share between threads."""

    positions_are_ids = True

    def __init__(
        self,
        db: Database,
        listener: Listener,
        step_lock: threading.Lock,
        *,
        lock_timeout: float = 10.0,
    ):
        self.db = db
        self.location = db.location
        self.lock_timeout = float(lock_timeout)
        self.checkpoints = PostgresCheckpointLog(db)
        self._listener = listener
        self._step_lock = step_lock
        self._conn: psycopg.Connection[Any] | None = None
        self._step_head = -1  # the locked head during a step (-1: no step)
        self._step_time: datetime | None = None
        self._step_thread = 0
        self._written = False
        self._seen = 0  # the largest position this store has read or written
        self._seen_lock = threading.Lock()
        # Where the last append step left its reader (the last row new_lines gave or write wrote; -1: not
        # known yet), and the rows after it that the next step read in the round trip that took the head
        # row: a step that follows another writer's then reads them without a round trip of its own.
        self._step_at = -1
        self._ahead: tuple[int, list[tuple[int, bytes]]] | None = None
        self._closed = False

    # ------------------------------------------------------------------ the append step

    def begin(self) -> None:
        if self._closed:
            raise LedgerWriteError(f"the ledger store for {self.location} is closed")
        deadline = time.monotonic() + self.lock_timeout
        if not self._step_lock.acquire(timeout=self.lock_timeout if self.lock_timeout > 0 else -1):
            raise LedgerLockTimeoutError(
                f"timed out after {self.lock_timeout}s waiting for another thread of this process to finish "
                f"appending to {self.location}"
            )
        try:
            row = self._lock_head(deadline)
        except LedgerLockTimeoutError as exc:
            self._end_step()
            raise LedgerLockTimeoutError(
                f"timed out after {self.lock_timeout}s waiting for the ledger lock of {self.location}: "
                f"another writer (thread, process or host) holds it ({exc})"
            ) from None
        except BaseException:
            self._end_step()
            raise
        self._step_head = int(row[0])
        self._step_time = row[1].astimezone(timezone.utc)  # whatever the session's TimeZone
        self._step_thread = threading.get_ident()
        self._written = False
        known = self._listener.known
        known.saw_clock_offset((self._step_time - _utc_now()).total_seconds())
        known.saw_head(self._step_head)
        self._see(self._step_head)

    def _lock_head(self, deadline: float) -> Any:
        """Take a connection (kept in ``self._conn``) and lock the head row on it: ``(last id, now)``.

        A pooled connection that died while idle (the server restarted, the network was cut) fails at once,
        before anything was done on it: it is dropped (the pool checks its siblings) and the step takes a
        fresh one, once, rather than denying the first action after every restart."""
        for retry in (False, True):
            conn = self._conn = self.db.getconn(LedgerWriteError, max(wait_deadline(deadline), 1.0))
            try:
                with self.db.errors(LedgerWriteError, "lock the ledger head of"):
                    # PostgreSQL reads 0 as "no limit": a spent deadline must still be a limit (1 ms).
                    wait = max(wait_deadline(deadline), 0.001) if self.lock_timeout > 0 else 0.0
                    statement = max(self.db.settings.statement_timeout, wait + 1.0) if wait else 0.0
                    at = self._step_at
                    ahead = None
                    with conn.pipeline():
                        conn.execute(
                            "SELECT set_config('lock_timeout', %s, true), "
                            "set_config('statement_timeout', %s, true)",
                            (millis(wait) if self.lock_timeout > 0 else "0", millis(statement)),
                        )
                        cursor = conn.execute(
                            "SELECT last_event_id, clock_timestamp() FROM caracal_head FOR UPDATE"
                        )
                        # After the lock, in the same round trip: the last checkpoint stored (see
                        # PostgresCheckpointLog.step_saw), so reading them under the lock costs no query
                        # when none is new.
                        stored = conn.execute(
                            "SELECT set_config('statement_timeout', %s, true), "
                            "(SELECT coalesce(max(seq), 0) FROM caracal_checkpoints)",
                            (millis(self.db.settings.statement_timeout),),
                        )
                        if at >= 0:  # what other writers appended since (none: an empty index range)
                            ahead = conn.execute(_RANGE, (at, at + BATCH), binary=True)
                    row = cursor.fetchone()
                    checkpoints = stored.fetchone()
                    if ahead is not None:
                        self._ahead = (at, ahead.fetchall())
            except LedgerLockTimeoutError:
                raise
            except LedgerWriteError:
                if retry or not conn.broken:
                    raise
                self._conn = None
                self.db.putconn(conn)
                logger.info("a pooled connection to %s was dead; the step took a new one", self.location)
                continue
            if row is None or checkpoints is None:
                raise LedgerWriteError(
                    f"the ledger head row of {self.location} is missing: the schema was altered by hand. "
                    "Restore it from a backup"
                )
            self.checkpoints.step_saw(int(checkpoints[1]))
            return row
        raise AssertionError("unreachable")  # pragma: no cover

    def new_lines(self, after: int) -> Iterator[tuple[int, bytes]]:
        conn = self._require_step()
        head = self._step_head
        ahead, self._ahead = self._ahead, None
        rows = ahead[1] if ahead is not None and ahead[0] == after else []
        self._step_at = after
        while after < head:
            if not rows:
                with self.db.errors(LedgerWriteError, "read the ledger of"):
                    rows = _read_batch(conn, after, head)
                if not rows:
                    return  # rows missing below the head: the caller finds the gap
            for event_id, line in rows:
                if event_id > head:
                    return  # (read ahead in the lock's round trip) a row above the head: not the ledger's
                yield event_id, line
                after = self._step_at = event_id
            rows = []

    def write(self, lines: list[bytes], first_event_id: int) -> int:
        conn = self._require_step()
        if self._written:
            raise LedgerWriteError(f"one write per append step on {self.location} (this step already wrote)")
        if not lines:
            return self._step_head
        if first_event_id != self._step_head + 1:
            raise LedgerWriteError(
                f"refusing to write event {first_event_id} to {self.location}: its head is at event "
                f"{self._step_head}, so the next event is {self._step_head + 1}. Nothing was recorded"
            )
        last = first_event_id + len(lines) - 1
        leaf = hashlib.sha256(b"\x00" + lines[-1]).digest()
        self._written = True
        if before_commit is not None:
            before_commit(conn)
        # One round trip: the rows, the head (the CTE fails the transaction unless exactly the locked head
        # row moved), the notification and the COMMIT go in one pipeline. The lines go as one binary bytea
        # array and their ids are numbered by the server: dumping them as text arrays took about six times
        # the CPU, in the step, while every other writer waits for the head row.
        try:
            with conn.pipeline():
                conn.execute(
                    "INSERT INTO caracal_ledger (event_id, line) SELECT %s::bigint + ordinal - 1, line "
                    "FROM unnest(%b::bytea[]) WITH ORDINALITY AS appended(line, ordinal)",
                    (first_event_id, lines),
                )
                conn.execute(
                    "WITH moved AS (UPDATE caracal_head SET last_event_id = %s, last_leaf = %s "
                    "WHERE last_event_id = %s RETURNING 1) "
                    "SELECT 1 / (SELECT count(*)::int FROM moved)",
                    (last, leaf, self._step_head),
                )
                conn.execute("SELECT pg_notify(%s, %s)", (self._listener.channel, f"l {last}"))
                conn.commit()
        except Exception as exc:
            broken = conn.closed or conn.broken
            if not broken:  # the server answered: the transaction was rolled back
                self._rollback()
                if "division by zero" in str(exc):
                    raise LedgerWriteError(
                        f"the ledger head of {self.location} moved during an append step; nothing was "
                        "recorded"
                    ) from None
                self._raise_nothing_recorded(exc)
            self.db.discard_dead()
            landed = self._resolve(first_event_id, lines[0])
            if landed is False:
                raise LedgerWriteError(
                    f"the connection to {self.location} was lost before events {first_event_id}..{last} were "
                    f"committed ({_first_line(exc)}). Nothing was recorded"
                ) from None
            if landed is None:
                raise LedgerWriteError(
                    f"the connection to {self.location} was lost while committing events {first_event_id}.."
                    f"{last} ({_first_line(exc)}): they may or may not have been recorded. They are not "
                    "reported as done; the next append step reads what the ledger holds. Check that the "
                    "database is reachable",
                    outcome_unknown=True,
                ) from None
        if after_commit is not None:
            after_commit()
        self._step_head = self._step_at = last
        self._listener.known.saw_head(last)
        self._see(last)
        return last

    def _resolve(self, first_event_id: int, first_line: bytes) -> bool | None:
        """After the connection broke during a write: did it commit? On a new connection, lock the head
        row (which waits for the dead session's transaction to end, committed or rolled back), then look
        for the first line. True: it landed; False: nothing was recorded; None: the database cannot be
        asked (the outcome stays unknown)."""
        try:
            with self.db.connection(LedgerWriteError, "check the outcome of an append to") as conn:
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", (millis(max(self.lock_timeout, 0.001)),)
                )
                conn.execute("SELECT 1 FROM caracal_head FOR UPDATE").fetchone()
                row = conn.execute(
                    "SELECT line FROM caracal_ledger WHERE event_id = %s", (first_event_id,)
                ).fetchone()
        except CaracalError:
            return None
        # Another writer's line there means ours was rolled back (we held the head until our transaction
        # ended); our own bytes mean it committed before the connection broke.
        return row is not None and bytes(row[0]) == first_line

    def finish(self) -> None:
        if self._conn is not None:
            self._end_step()

    def _end_step(self) -> None:
        conn, self._conn = self._conn, None
        self._step_head = -1
        self._step_time = None
        self._step_thread = 0
        self._ahead = None
        self.checkpoints.step_ended()
        try:
            if conn is not None:
                self.db.putconn(conn)  # rolls back what was not committed
        finally:
            with contextlib.suppress(RuntimeError):
                self._step_lock.release()

    def _require_step(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or self._step_head < 0:
            raise LedgerWriteError(f"no append step is open on {self.location} (call begin first)")
        return conn

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                conn.rollback()

    def _raise_nothing_recorded(self, exc: BaseException) -> None:
        try:
            self.db.raise_as(exc, LedgerWriteError, "append to")
        except LedgerWriteError as translated:
            raise LedgerWriteError(
                f"{translated} Nothing was recorded (the transaction was rolled back)."
            ) from None

    def now(self) -> datetime:
        """The step's database time on the step's thread; else the local clock corrected to the database's."""
        step_time = self._step_time
        if step_time is not None and self._step_thread == threading.get_ident():
            return step_time
        known = self._listener.known
        if known.clock_offset is None:
            with self.db.connection(LedgerWriteError, "read the clock of") as conn:
                row = conn.execute("SELECT clock_timestamp()").fetchone()
            if row is not None:
                known.saw_clock_offset((row[0] - _utc_now()).total_seconds())
        return _utc_now() + timedelta(seconds=known.clock_offset or 0.0)

    # ------------------------------------------------------------------ reading, without the lock

    def end(self) -> int:
        """Never below anything this store has read or written (a tail that read a row must find the
        ledger at least that long). The locked head answers only on the step's own thread: another thread
        may have read, through :meth:`iter_lines`, a row the step has just committed while the step's own
        record of its head still lags behind it (it is updated after COMMIT returns); answering that
        thread with the locked head made its tail see the ledger "shrink" and deny everything for good."""
        if self._step_thread == threading.get_ident():
            head = self._step_head
            if head >= 0:
                return max(head, self._seen)  # the head is locked by this step: exact
        if self._listener.fresh():
            return max(self._listener.known.head, self._seen)
        with self.db.connection(LedgerReadError, "read the ledger head of") as conn:
            row = conn.execute("SELECT last_event_id FROM caracal_head").fetchone()
        head = int(row[0]) if row is not None else 0
        self._listener.known.saw_head(head)
        return max(head, self._seen)

    def iter_lines(self, after: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Batches of :data:`BATCH` rows; from the second full batch on, the next batch is fetched by a
        helper thread while the caller works through this one (the server and the network work while this
        process parses: a replay or verify of millions of rows waits for none of its queries). At most two
        batches are held at once."""
        stop = (1 << 62) if end is None else end

        def fetch(start: int) -> list[tuple[int, bytes]]:
            with self.db.connection(LedgerReadError, "read the ledger of") as conn:
                return _read_batch(conn, start, stop)

        ahead: ThreadPoolExecutor | None = None
        try:
            rows = fetch(after) if after < stop else []
            while rows:
                last = rows[-1][0]
                self._see(last)
                more = len(rows) == BATCH and last < stop
                if more:
                    if ahead is None:
                        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="caracal-read-ahead")
                    following = ahead.submit(fetch, last)
                yield from rows
                if not more:
                    return
                rows = following.result()  # the reader's own errors (LedgerReadError) are raised here
        finally:
            if ahead is not None:
                ahead.shutdown(wait=True, cancel_futures=True)  # stopped early: waits for one batch at most

    def line_source(self) -> tuple[str, dict[str, Any]]:
        self.db.pool(LedgerReadError)  # the schema is known once the pool is open
        return "caracal.storage.postgres.ledger:stream_lines", {
            "url": self.db.url,
            "schema": self.db.schema,
            "statement_timeout": millis(self.db.settings.statement_timeout),
            "connect": self.db.connect_kwargs(),
        }

    def line_at(self, position: int) -> bytes | None:
        if position <= 0:
            return None
        with self.db.connection(LedgerReadError, "read the ledger of") as conn:
            row = conn.execute("SELECT line FROM caracal_ledger WHERE event_id = %s", (position,)).fetchone()
        if row is None:
            return None
        self._see(position)
        return bytes(row[0])

    def _see(self, position: int) -> None:
        """Raise :attr:`_seen` to ``position`` (under a lock: two threads each raising it must never leave
        the lower of their values)."""
        if position > self._seen:
            with self._seen_lock:
                if position > self._seen:
                    self._seen = position

    # ------------------------------------------------------------------ caches and housekeeping

    def load_cache(self, name: str) -> bytes | None:
        with self.db.connection(LedgerReadError, f"read the {name} cache of") as conn:
            row = conn.execute("SELECT body FROM caracal_caches WHERE name = %s", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def save_cache(self, name: str, data: bytes) -> None:
        with self.db.connection(LedgerWriteError, f"save the {name} cache of") as conn, conn.pipeline():
            conn.execute(
                "INSERT INTO caracal_caches (name, body) VALUES (%s, %s) ON CONFLICT (name) "
                "DO UPDATE SET body = excluded.body, updated_at = clock_timestamp()",
                (name, data),
            )
            conn.commit()  # in the same round trip

    def claim_key(self, key_id: str) -> str:
        """Record ``key_id`` as the key this ledger's checkpoints are signed with, if none is recorded yet;
        return the recorded one (every host must sign with the same key: checkpoints verify on all)."""
        with self.db.connection(LedgerWriteError, "record the signing key of") as conn:
            conn.execute(
                "INSERT INTO caracal_meta (key, value) VALUES ('checkpoint_key_id', %s) "
                "ON CONFLICT DO NOTHING",
                (key_id,),
            )
            row = conn.execute("SELECT value FROM caracal_meta WHERE key = 'checkpoint_key_id'").fetchone()
        return key_id if row is None else str(row[0])

    @contextlib.contextmanager
    def replay_lock(self, timeout: float) -> Iterator[bool]:
        """A session advisory lock keyed on the schema, polled until ``timeout``; held on a pooled
        connection until the block ends (a lost connection releases it)."""
        conn = self.db.getconn(LedgerReadError, max(timeout, 1.0))
        taken = False
        try:
            key = advisory_key("replay", self.db.schema)
            deadline = time.monotonic() + max(timeout, 0.0)
            with self.db.errors(LedgerReadError, "take the replay lock of"):
                conn.autocommit = True
                while True:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                    taken = bool(row and row[0])
                    if taken or time.monotonic() >= deadline:
                        break
                    time.sleep(min(0.05, wait_deadline(deadline)))
            yield taken
        finally:
            if taken and not conn.closed:
                with contextlib.suppress(Exception):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            with contextlib.suppress(Exception):
                conn.autocommit = False
            self.db.putconn(conn)

    def backup(self, end: int) -> None:
        """Nothing to do: a database has its own backups (``pg_dump``, base backups and WAL archiving);
        ``caracal ledger export`` writes the file backend's exact bytes for an independent copy."""

    def close(self) -> None:
        """Release this store (the pool and the listener belong to the backend). Idempotent."""
        self._closed = True
        if self._conn is not None and self._step_thread == threading.get_ident():
            self._end_step()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = ["BATCH", "PostgresLedgerStore"]
