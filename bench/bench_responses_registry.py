"""The Responses API registry at its bound: prints figures, asserts nothing.
Run: ``python bench/bench_responses_registry.py [--database URL]``.

The gateway writes the registry once per ``POST /v1/responses`` (twice for a stream), and the call waits
for that write; a record rewrites the one shard (of 16 documents) its id hashes to, and concurrent records
in one shard share one write. This measures, with the registry full (20,000 records), on files and on
PostgreSQL (a fresh schema, dropped at the end):

- one record (one write): the latency a lone call adds;
- a batch of 32 records in one write: what 32 concurrent calls share;
- a look-up (``previous_response_id``, ``GET /v1/responses/{id}``) right after a write (a re-read) and
  with the document unchanged (cached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from caracal.storage.files import FileBackend
from caracal.storage.interface import Backend
from caracal.storage.responses import MAX_ENTRIES, SHARD_NAMES, ResponseRegistry, empty_responses

AGENT = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def median_ms(action: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def run(backend: Backend, label: str) -> None:
    documents = [backend.document(name, empty_responses) for name in SHARD_NAMES]
    registry = ResponseRegistry(documents, lambda: datetime.now(timezone.utc), lambda: b"bench-key" * 4)
    for start in range(0, MAX_ENTRIES, 2000):  # full: sealed records, as the gateway writes them
        registry.record_many([(f"resp_{index:040x}", AGENT, 1234) for index in range(start, start + 2000)])
    counter = iter(range(10**9))
    one = median_ms(lambda: registry.record(f"resp_new{next(counter)}", AGENT, 10), 20)
    batch = median_ms(
        lambda: registry.record_many([(f"resp_new{next(counter)}", AGENT, 10) for _ in range(32)]), 10
    )

    def after_write() -> None:
        key = f"resp_new{next(counter)}"
        registry.record(key, AGENT, 10)
        started = time.perf_counter()
        registry.get(key, AGENT)
        reread.append(time.perf_counter() - started)

    reread: list[float] = []
    for _ in range(10):
        after_write()
    cached = median_ms(lambda: registry.get("resp_new0", AGENT), 1000)
    size = sum(len(str(document.read())) for document in documents)
    print(
        f"{label:>10}: {MAX_ENTRIES} records (~{size // 1024} KiB, {len(documents)} shards): one record "
        f"{one:.1f} ms, 32 in one call "
        f"{batch:.1f} ms, look-up after a write {statistics.median(reread) * 1000:.1f} ms, cached "
        f"{cached * 1000:.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", help="A PostgreSQL server where this user may create a schema.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        run(FileBackend(Path(root)), "files")
    if not args.database:
        return
    os.environ["CARACAL_TEST_DATABASE_URL"] = args.database
    from caracal.config import Settings
    from caracal.storage.postgres import PostgresBackend

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pg import create_schema, drop_schema  # the tests' schema helpers

    schema, url = create_schema()
    try:
        backend = PostgresBackend(url, Settings())
        try:
            backend.initialize()
            run(backend, "postgresql")
        finally:
            backend.close()
    finally:
        drop_schema(schema)


if __name__ == "__main__":
    main()
