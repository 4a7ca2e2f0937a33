"""What this process knows of a database's changes without asking it: LISTEN/NOTIFY, fail closed.

A budget check asks the ledger store for its end (:meth:`LedgerStore.end`) and the registries for their
documents (:meth:`Document.read_cached`) before every decision; a query each time would cost a round trip
per check. Instead, every change notifies (``NOTIFY`` in the writing transaction, delivered at its commit):
``l <last event id>`` after an append, ``d <name> <version>`` after a registry change, on the schema's own
channel (:func:`~caracal.storage.postgres.connection.channel_name`). A :class:`Listener` thread per backend
object keeps the latest values in a :class:`Known` shared by every backend of the process on the same
schema (so what one backend object wrote, another sees at once: read-your-writes within a process).

Invariants:

- **Fail closed.** :meth:`Listener.fresh` is true only while the listening connection is known to be alive:
  it was set up (LISTEN, then one read of the head and versions), and it delivered a notification or
  answered a heartbeat within :data:`STALE_AFTER` seconds. When it is not fresh, callers ask the database
  (one cheap query) instead of trusting a listener that may be deaf.
- **Values only grow.** Event ids and document versions never decrease; :class:`Known` keeps maxima, so a
  late notification never moves a reader backwards.
- **Across processes it is eventually consistent**, by the delivery delay of a notification (well under a
  millisecond on a quiet host): a lock-free budget check may not yet see a charge another host committed
  an instant before, exactly as if the check had run an instant earlier. Decisions that reserve or charge
  run inside the append step, under the head's row lock, where the store answers exactly.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caracal.storage.postgres.connection import channel_name

if TYPE_CHECKING:
    import psycopg

    from caracal.storage.postgres.connection import Database

logger = logging.getLogger("caracal.storage.postgres")

HEARTBEAT = 1.0
"""Seconds between the listener's heartbeats (a re-read of the head and versions) when nothing is notified."""
CLOCK_STEP = 1.0
"""A clock offset this much lower than the one kept means a clock was stepped (see Known.saw_clock_offset)."""
STALE_AFTER = 3.0
"""A listener that has shown no sign of life for this long is not trusted (callers query instead)."""


@dataclass
class Known:
    """The latest head and document versions this process has seen on one schema (maxima; thread-safe
    enough: each update is a single assignment of a larger value under a lock)."""

    head: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    clock_offset: float | None = None
    """Seconds to add to the local clock to get the database's (last measured)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw_clock_offset(self, measured: float) -> None:
        """One measurement of the database's clock minus this host's, in seconds.

        Each measurement reads the database's clock before this host's (the answer has to travel back), so
        it is at most the true offset, short by the way back. Keeping the largest keeps the best estimate,
        and makes this process's idea of the database's time never step back by a round trip's jitter (a
        price set "now" and a charge an instant later must not swap order). A measurement lower by more
        than :data:`CLOCK_STEP` seconds means a clock was stepped: it replaces the old one."""
        current = self.clock_offset
        if current is None or measured > current or measured < current - CLOCK_STEP:
            self.clock_offset = measured

    def saw_head(self, event_id: int) -> None:
        if event_id > self.head:
            with self.lock:
                if event_id > self.head:
                    self.head = event_id

    def saw_version(self, name: str, version: int) -> None:
        if version > self.versions.get(name, -1):
            with self.lock:
                if version > self.versions.get(name, -1):
                    self.versions[name] = version


_known: dict[str, Known] = {}
_known_lock = threading.Lock()


def known_for(server_key: str) -> Known:
    """The process-wide :class:`Known` of one schema (``host:port/db/schema``)."""
    with _known_lock:
        known = _known.get(server_key)
        if known is None:
            known = _known[server_key] = Known()
        return known


class Listener:
    """A daemon thread on its own connection that LISTENs to one schema's channel (module docstring).

    Started on first use; reconnects with backoff after any error; :meth:`close` stops it (the thread
    closes its connection and exits within one heartbeat)."""

    def __init__(self, db: Database):
        self.db = db
        self._known: Known | None = None
        self._alive_at = -1e18  # monotonic time of the last sign of life; < 0: never
        self._ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def channel(self) -> str:
        """The schema's channel (the database must have been used: its schema is known then)."""
        return channel_name(self.db.schema)

    @property
    def known(self) -> Known:
        """The process-wide :class:`Known` of this schema (the database must have been used)."""
        known = self._known
        if known is None:
            from caracal.exceptions import LedgerReadError

            self.db.pool(LedgerReadError)  # the schema's identity is known once the database was reached
            known = self._known = known_for(self.db.server_key)
        return known

    def fresh(self) -> bool:
        """Whether the listener's values can be trusted now (starting it if needed)."""
        if self._thread is None:
            self.start()
        return self._ready and time.monotonic() - self._alive_at < STALE_AFTER

    def start(self) -> None:
        with self._start_lock:
            if self._stop.is_set() and (self._thread is None or not self._thread.is_alive()):
                self._stop.clear()  # closed, and used again: a new thread (the old one has exited)
                self._thread = None
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name=f"caracal-listen {self.db.location}", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._ready = False

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.2
            except Exception as exc:  # any failure: not trusted until reconnected and resynced
                self._ready = False
                if not self._stop.is_set():
                    logger.warning(
                        "listener on %s lost (%s); retrying",
                        self.db.location,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._ready = False
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _listen(self) -> None:
        from caracal.exceptions import LedgerReadError

        self.db.pool(LedgerReadError)  # the schema is known (and checked) before listening
        conn = self._conn = self.db.connect(autocommit=True)
        from psycopg import sql

        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        while not self._stop.is_set():
            self._sync(conn)
            self._ready = True
            for notify in conn.notifies(timeout=HEARTBEAT):
                self._alive_at = time.monotonic()
                self._handle(notify.payload)
                if self._stop.is_set():
                    return

    def _sync(self, conn: psycopg.Connection[Any]) -> None:
        """Read the head and every document version (after LISTEN: nothing committed since is missed)."""
        head = conn.execute("SELECT last_event_id FROM caracal_head").fetchone()
        if head is not None:
            self.known.saw_head(int(head[0]))
        for name, version in conn.execute("SELECT name, version FROM caracal_documents").fetchall():
            self.known.saw_version(str(name), int(version))
        self._alive_at = time.monotonic()

    def _handle(self, payload: str) -> None:
        parts = payload.split(" ")
        try:
            if parts[0] == "l" and len(parts) == 2:
                self.known.saw_head(int(parts[1]))
            elif parts[0] == "d" and len(parts) == 3:
                self.known.saw_version(parts[1], int(parts[2]))
        except ValueError:
            logger.warning("ignoring a malformed notification on %s: %r", self.db.location, payload)


__all__ = ["CLOCK_STEP", "HEARTBEAT", "STALE_AFTER", "Known", "Listener", "known_for"]
