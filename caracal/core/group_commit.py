"""Group commit: many callers' ledger operations share one lock hold, one write and one fsync.

A server has many requests in flight; run one at a time, each hold, charge and release pays its own
fdatasync and the disk's sync rate caps throughput. :class:`GroupCommitter` puts operations on a queue that
one thread drains: it takes *everything* queued, runs it with :meth:`Enforcer.run_group` (in order, each
seeing the entries of the ones before it, so the no-overspend rule holds inside a group exactly as across
groups) and completes each caller's future. While one group is being synced the next one queues up, so the
group size grows with the load and no caller waits for a timer.

Every promise of the ledger still holds: a future completes only after its entries are fsynced; a failed
write fails every operation of its group and acknowledges none of them.
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
        self._queue: queue.SimpleQueue[tuple[Operation[Any], Future[Any]] | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="caracal-group-commit", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation[T]) -> Future[T]:
        """Queue ``operation``; the future gets its result (or exception) once its group is durable."""
        future: Future[T] = Future()
        with self._close_lock:
            if self._closed:
                raise ConfigurationError("the group committer is closed; no operation can be recorded")
            self._queue.put((operation, future))
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
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < self.max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._run(group)

    def _run(self, group: list[tuple[Operation[Any], Future[Any]]]) -> None:
        started = time.perf_counter()
        try:
            results = self.enforcer.run_group([operation for operation, _ in group])
        except BaseException as exc:  # a bug, not an outcome: fail every caller rather than hang them
            logger.exception("group commit failed unexpectedly")
            results = [exc] * len(group)
        for (_, future), result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._observer is not None:
            self._observer(len(group), time.perf_counter() - started)


__all__ = ["GroupCommitter", "GroupObserver"]
