"""Where the ledger lock's time goes when several processes reserve and settle on one home (files or
``--database``): prints figures, asserts nothing. Run: ``python bench/bench_lock_hold.py``.

Each process reserves and settles ``--pairs`` times against its own agent of one parent (the home of
``bench_backends.py``) while every append is timed inside it, at p50: waiting for the ledger's lock, holding
it, and within the hold the writer reading other processes' new lines, the budget state reading them again,
and the write with its sync. With one process the lock is held for little more than the write; with
several, each append first reads and checks what the others appended, and they take turns on the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_backends import build_home  # the same home as bench_backends.py: a parent, four children
from bench_schema import fresh_schema

STEPS = (
    ("caracal.core.ledger", "LedgerWriter", "_sync", "writer reads"),
    ("caracal.core.live", "LiveBudget", "catch_up", "budget reads"),
    ("caracal.core.filestore", "FileLedgerStore", "write", "write"),
    ("caracal.storage.postgres.ledger", "PostgresLedgerStore", "write", "write"),
)
"""Steps timed inside the lock: (module, class, method, the name printed)."""
STORES = (
    ("caracal.core.filestore", "FileLedgerStore"),
    ("caracal.storage.postgres.ledger", "PostgresLedgerStore"),
)
ORDER = ("waiting for the lock", "lock held", "writer reads", "budget reads", "write")


def _timed(samples: dict[str, list[float]], owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            samples.setdefault(label, []).append(time.perf_counter() - started)

    setattr(owner, name, timed)


def _hold_timed(samples: dict[str, list[float]], store: Any) -> None:
    """Time the wait for the lock (``begin``) and the hold (from ``begin`` returning to ``finish``)."""
    begin, finish = store.begin, store.finish
    taken: list[float] = []

    def timed_begin(self: Any) -> None:
        started = time.perf_counter()
        begin(self)
        now = time.perf_counter()
        samples.setdefault("waiting for the lock", []).append(now - started)
        taken.append(now)

    def timed_finish(self: Any) -> None:
        finish(self)
        if taken:
            samples.setdefault("lock held", []).append(time.perf_counter() - taken.pop())

    store.begin, store.finish = timed_begin, timed_finish


def _worker(home: str, agent: str, pairs: int, queue: Any) -> None:
    import importlib

    from caracal.sdk.client import CaracalClient

    samples: dict[str, list[float]] = {}
    for module, owner in STORES:
        with contextlib.suppress(ImportError):  # PostgreSQL's driver not installed: files only
            _hold_timed(samples, getattr(importlib.import_module(module), owner))
    for module, owner, name, label in STEPS:
        with contextlib.suppress(ImportError):
            _timed(samples, getattr(importlib.import_module(module), owner), name, label)
    client = CaracalClient(home)
    client.check(agent, "0.01")  # the state is built before timing
    samples.clear()
    started = time.perf_counter()
    for _ in range(pairs):
        hold = client.reserve(agent, "0.01")
        client.settle(hold, [{"resource_type": "tool.search.calls", "quantity": "1", "cost": "0.005"}])
    queue.put((started, time.perf_counter(), {k: statistics.median(v) * 1e6 for k, v in samples.items()}))
    client.close()


def run(home: Path, processes: int, pairs: int) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_worker, args=(str(home), f"worker-{n % 4}", pairs, queue))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    wall = max(end for _, end, _ in results) - max(start for start, _, _ in results)
    rate = processes * pairs / wall
    print(f"{processes} process(es): {rate:,.0f} reserve+settle pairs/s; p50 of each step:")
    for name in ORDER:
        values = [steps[name] for _, _, steps in results if name in steps]
        if values:
            print(f"    {name:22} {statistics.median(values):8.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / ".data")
    parser.add_argument("--pairs", type=int, default=300, help="reserve+settle pairs per process")
    parser.add_argument("--database", default=None, help="a PostgreSQL server: a fresh schema there")
    options = parser.parse_args()
    options.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-lock-", dir=options.dir))
    try:
        with fresh_schema(options.database) as (_schema, url):
            home = root / "home"
            build_home(home, url)
            for processes in (1, 4):
                run(home, processes, options.pairs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
