"""PostgreSQL ledger store benchmarks: prints figures, asserts nothing.

Run: ``python bench/bench_pg_store.py [--url postgresql://postgres@127.0.0.1:5432/test]`` (default:
``$CARACAL_TEST_DATABASE_URL``, else the local test server). Works in a fresh schema, dropped at the end.

- raw append steps (``begin``/``write``/``finish``) per second, of 1 line and of 100 lines, one writer;
- the same with 4 processes appending at once (the head row serializes them);
- ``LedgerWriter.append_event`` (the ledger's logic on top: ids, chain, timestamps) per second;
- ``end()`` calls per second with the listener fresh (no query) and without it (one query each);
- ``iter_lines`` lines per second over the ledger written.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caracal.core.ledger import LedgerWriter
from caracal.storage.postgres import PostgresBackend
from tests.pg import DEFAULT, with_schema

LINE = (
    b'{"event_id":%d,"agent_id":"agent-%d","timestamp":"2026-01-01T00:00:00.000000Z","resource_type":'
    b'"llm.tokens","quantity":"1200","cost":"0.0036","currency":"USD","prev_hash":"%s"}'
)


def steps(url: str, lines_per_step: int, seconds: float) -> tuple[int, float, list[float]]:
    """Append steps for ``seconds``: (steps, elapsed, per-step latencies)."""
    backend = PostgresBackend(url)
    store = backend.ledger_store(lock_timeout=60)
    store.end()
    count, latencies = 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        store.begin()
        try:
            head = store.end()
            store.write([LINE % (head + k + 1, k, b"0" * 64) for k in range(lines_per_step)], head + 1)
        finally:
            store.finish()
        latencies.append(time.perf_counter() - t0)
        count += 1
    elapsed = time.perf_counter() - start
    backend.close()
    return count, elapsed, latencies


def _worker(args: tuple[str, int, float]) -> int:
    return steps(*args)[0]


def report(label: str, count: int, elapsed: float, lines: int, latencies: list[float] | None = None) -> None:
    extra = ""
    if latencies:
        ordered = sorted(latencies)
        extra = (
            f", p50 {statistics.median(ordered) * 1e3:.2f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99)] * 1e3:.2f} ms"
        )
    print(f"{label:<48} {count / elapsed:>9.0f} steps/s {count * lines / elapsed:>10.0f} lines/s{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CARACAL_TEST_DATABASE_URL") or DEFAULT)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    import psycopg

    schema = f"caracal_bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    url = with_schema(args.url, schema)
    print(f"PostgreSQL at {args.url} (synchronous_commit={sync[0] if sync else '?'}), schema {schema}")
    try:
        for size in (1, 100):
            count, elapsed, latencies = steps(url, size, args.seconds)
            report(f"append step of {size} line(s), 1 process", count, elapsed, size, latencies)
        for size in (1, 100):
            with multiprocessing.get_context("spawn").Pool(4) as pool:
                start = time.perf_counter()
                total = sum(pool.map(_worker, [(url, size, args.seconds)] * 4))
                elapsed = time.perf_counter() - start
            report(f"append step of {size} line(s), 4 processes", total, elapsed, size)

        fresh = with_schema(args.url, schema + "_w")
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}_w"')
        backend = PostgresBackend(fresh)
        with (
            tempfile.TemporaryDirectory() as keys,
            LedgerWriter(
                backend.ledger_store(lock_timeout=60), signing_key_path=Path(keys) / "key"
            ) as writer,
        ):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                writer.append_event("agent", "llm.tokens", "1200", "0.0036")
                count += 1
            report("LedgerWriter.append_event, 1 process", count, time.perf_counter() - start, 1)
            batch = [{"agent_id": "a", "resource_type": "r", "quantity": "1", "cost": "0.01"}] * 100
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                writer.append_events(batch)
                count += 1
            report("LedgerWriter.append_events of 100, 1 process", count, time.perf_counter() - start, 100)
        backend.close()

        backend = PostgresBackend(url)
        store = backend.ledger_store(lock_timeout=60)
        store.end()
        while not store._listener.fresh():
            time.sleep(0.01)
        n, start = 100_000, time.perf_counter()
        for _ in range(n):
            store.end()
        listened = n / (time.perf_counter() - start)
        store._listener.close()
        while store._listener.fresh():
            time.sleep(0.01)
        n, start = 2_000, time.perf_counter()
        for _ in range(n):
            store.end()
        queried = n / (time.perf_counter() - start)
        print(f"{'end() with the listener fresh (no query)':<48} {listened:>9.0f} calls/s")
        print(f"{'end() without a listener (one query each)':<48} {queried:>9.0f} calls/s")
        total, start = 0, time.perf_counter()
        for _ in store.iter_lines(0):
            total += 1
        print(f"{f'iter_lines over {total} lines':<48} {total / (time.perf_counter() - start):>9.0f} lines/s")
        backend.close()
    finally:
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_w" CASCADE')


if __name__ == "__main__":
    main()
