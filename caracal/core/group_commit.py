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
_TIMED_OUT: Any = object()

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
        waiting: list[_Item] = []  # in submission order
        earliest = 0.0  # the first deadline among waiting deferred items (0: nothing deferred waits)
        stop = False
        while not stop:
            urgent = False
            timeout = max(earliest - time.monotonic(), 0.0) if waiting else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _TIMED_OUT
            while True:
                if item is None:
                    stop = True
                elif item is not _TIMED_OUT:
                    waiting.append(item)
                    if item[2] == 0.0:
                        urgent = True
                    elif earliest == 0.0 or item[2] < earliest:
                        earliest = item[2]
                if stop or len(waiting) >= self.max_group:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if waiting and (urgent or stop or len(waiting) >= self.max_group or time.monotonic() >= earliest):
                group, waiting, earliest = waiting[: self.max_group], waiting[self.max_group :], 0.0
                for _, _, deadline in waiting:
                    if deadline and (earliest == 0.0 or deadline < earliest):
                        earliest = deadline
                self._run(group)
        if waiting:
            self._run(waiting)

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
