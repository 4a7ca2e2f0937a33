"""Group commit: many callers' ledger operations share one lock hold, one write and one fsync.

A server has many requests in flight; run one at a time, each hold, charge and release pays its own
fdatasync and the disk's sync rate caps throughput. :class:`GroupCommitter` puts operations on a queue that
one thread drains: it takes *everything* queued, runs it with :meth:`Enforcer.run_group` (in order, each
seeing the entries of the ones before it, so the no-overspend rule holds inside a group exactly as across
groups) and completes each caller's future. While one group is being synced the next one queues up, so the
group size grows with the load and no caller waits for a timer.

Every promise of the ledger still holds: a future completes only after its entries are fsynced; a failed
write fails every operation of its group and acknowledges none of them.

**Deferred operations.** An operation nobody is waiting on (the gateway's settlement of a call whose
response has already gone out) may be submitted with ``defer=seconds``: it waits at most that long for
another operation to share its fsync with, instead of costing one of its own. Under light load this halves
the syncs per gateway call (the settlement of one call rides with the hold of the next). Operations always
run in submission order, deferred or not.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from caracal.core.enforcement import Enforcer, Operation
from caracal.exceptions import ConfigurationError

T = TypeVar("T")
logger = logging.getLogger("caracal.group_commit")

_Item = tuple[Operation[Any], "Future[Any]", float]
"""An operation, its caller's future, and its deadline (0.0: not deferred)."""

GroupObserver = Callable[[int, float], None]
"""Called after each group with its size and the seconds it took (lock, decisions, write, fsync)."""


class GroupCommitter:
    """One thread that runs submitted operations in groups against ``enforcer``."""

    def __init__(self, enforcer: Enforcer, *, max_group: int = 1024, observer: GroupObserver | None = None):
        if isinstance(max_group, bool) or not isinstance(max_group, int) or max_group < 1:
            raise ConfigurationError(f"max_group must be a positive integer, got {max_group!r}")
        self.enforcer = enforcer
        self.max_group = max_group
        self._observer = observer
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="caracal-group-commit", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation[T], *, defer: float = 0.0) -> Future[T]:
        """Queue ``operation``; the future gets its result (or exception) once its group is durable.

        With ``defer`` (seconds), the operation may wait up to that long for company (see the module
        docstring)."""
        future: Future[T] = Future()
        deadline = time.monotonic() + defer if defer > 0 else 0.0
        with self._close_lock:
            if self._closed:
                raise ConfigurationError("the group committer is closed; no operation can be recorded")
            self._queue.put((operation, future, deadline))
        return future

    def run(self, operation: Operation[T]) -> T:
        """Submit and wait (for callers on ordinary threads)."""
        return self.submit(operation).result()

    def close(self) -> None:
        """Finish every operation already queued, then stop the thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        waiting: list[_Item] = []  # submitted and not yet run, in submission order
        stopping = False
        while waiting or not stopping:
            if not stopping:
                # Block for the next operation; while only deferred ones wait, until the first deadline.
                timeout = max(min(item[2] for item in waiting) - time.monotonic(), 0.0) if waiting else None
                stopping = self._collect(waiting, timeout)
            if stopping or self._due(waiting):
                group, waiting = waiting[: self.max_group], waiting[self.max_group :]
                if group:
                    self._run(group)

    def _collect(self, waiting: list[_Item], timeout: float | None) -> bool:
        """Move what is queued into ``waiting`` (waiting up to ``timeout`` for the first item, at most
        ``max_group`` in all); True once :meth:`close` was called (nothing can be queued after that)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        while item is not None:
            waiting.append(item)
            if len(waiting) >= self.max_group:
                return False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
        return True

    def _due(self, waiting: list[_Item]) -> bool:
        """Run now: the group is full, or an operation does not defer (deadline 0), or a deadline passed."""
        if len(waiting) >= self.max_group:
            return True
        now = time.monotonic()
        return any(deadline <= now for _, _, deadline in waiting)

    def _run(self, group: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            results = self.enforcer.run_group([item[0] for item in group])
        except BaseException as exc:  # a bug, not an outcome: fail every caller rather than hang them
            logger.exception("group commit failed unexpectedly")
            results = [exc] * len(group)
        for (_, future, _), result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._observer is not None:
            self._observer(len(group), time.perf_counter() - started)


__all__ = ["GroupCommitter", "GroupObserver"]
