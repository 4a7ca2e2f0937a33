"""Budget benchmarks: prints figures, asserts nothing. Run: ``python bench/bench_budget.py``.

On homes whose ledgers hold 10,000 and 1,000,000 charges (same disk, ``--dir``, default ``bench/.data``):

- budget check latency, p50 and p99, in-process (``CaracalClient.check``: catch up with the ledger, read
  the registries, evaluate every policy of the agent and its ancestors);
- reserve + settle latency, p50 and p99 (two atomic ledger appends, each fsynced);
- reserve + settle throughput with 1 and with 4 processes on one home;
- time to open the home and answer the first check: once replaying the whole ledger (a home whose
  ledger was written without a client), once resuming from the budget snapshot clients save.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from caracal.core.ledger import LedgerWriter
from caracal.sdk.client import CaracalClient


def build_home(home: Path, events: int) -> None:
    """A parent with four children, policies on all, and ``events`` charges spread over the children."""
    client = CaracalClient(home)
    client.register_agent("lead", "bench@example.com")
    children = [client.register_agent(f"worker-{n}", "bench@example.com", parent="lead") for n in range(4)]
    client.create_policy("lead", "1000000000", "monthly")
    for child in children:
        client.create_policy(child.name, "1000000000", "daily")
        client.create_policy(child.name, "1000000000", "total")
    client.set_price("tool.search.calls", "0.005")
    client.close()
    items = [
        {
            "agent_id": children[n % 4].agent_id,
            "resource_type": "tool.search.calls",
            "quantity": Decimal(1),
            "cost": Decimal("0.005"),
        }
        for n in range(1000)
    ]
    with LedgerWriter(home / "data" / "ledger.jsonl", signing_key_path=home / "keys" / "checkpoint.key") as w:
        done = 0
        while done < events:
            size = min(1000, events - done)
            w.append_events(items[:size])
            done += size


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6
    return f"p50 {p50:8.1f} us   p99 {p99:8.1f} us"


def open_seconds(home: Path) -> float:
    started = time.perf_counter()
    client = CaracalClient(home)
    client.check("worker-0", "0.01")
    elapsed = time.perf_counter() - started
    client.close()  # saves the budget snapshot
    return elapsed


def latencies(home: Path, label: str) -> None:
    replay = open_seconds(home)  # the ledger was written without a client: no snapshot yet
    resumed = open_seconds(home)
    print(
        f"{label}: open + first check {replay:7.3f} s replaying the ledger, "
        f"{resumed:7.3f} s from the snapshot"
    )
    client = CaracalClient(home)
    for _ in range(200):  # warm up caches and the window arithmetic
        client.check("worker-0", "0.01")
    samples = []
    for _ in range(3000):
        t0 = time.perf_counter()
        client.check("worker-0", "0.01")
        samples.append(time.perf_counter() - t0)
    print(f"{label}: check           {percentiles(samples)}")
    samples = []
    for _ in range(300):
        t0 = time.perf_counter()
        hold = client.reserve("worker-1", "0.01")
        client.settle(hold, [{"resource_type": "tool.search.calls", "quantity": "1", "cost": "0.005"}])
        samples.append(time.perf_counter() - t0)
    print(f"{label}: reserve+settle  {percentiles(samples)}")
    client.close()


def _worker(home: str, agent: str, count: int, queue: multiprocessing.Queue[float]) -> None:
    client = CaracalClient(home)
    client.check(agent, "0.01")  # build the state before timing
    queue.put(time.perf_counter())
    for _ in range(count):
        hold = client.reserve(agent, "0.01")
        client.settle(hold, [{"resource_type": "tool.search.calls", "quantity": "1", "cost": "0.005"}])
    queue.put(time.perf_counter())
    client.close()


def throughput(home: Path, processes: int, per_process: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[float] = context.Queue()
    workers = [
        context.Process(target=_worker, args=(str(home), f"worker-{n % 4}", per_process, queue))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    stamps = [queue.get(timeout=600) for _ in range(2 * processes)]
    for worker in workers:
        worker.join()
    starts, ends = sorted(stamps)[:processes], sorted(stamps)[processes:]
    return processes * per_process / (max(ends) - max(starts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / ".data")
    parser.add_argument("--large", type=int, default=1_000_000)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-budget-", dir=args.dir))
    try:
        print(f"Caracal budget benchmark on {root} ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        small, large = root / "small", root / "large"
        build_home(small, 10_000)
        print(f"    building a {args.large:,}-charge home ...", file=sys.stderr)
        build_home(large, args.large)
        latencies(small, f"{10_000:>9,} charges")
        latencies(large, f"{args.large:>9,} charges")
        for processes in (1, 4):
            rate = throughput(small, processes, 150)
            plural = "es" if processes > 1 else "  "
            print(f"reserve+settle throughput, {processes} process{plural}: {rate:8,.0f} /s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
