"""Both backends side by side: prints figures, asserts nothing. Run: ``python bench/bench_backends.py``.

For the file backend (a home folder) and PostgreSQL (``--database``, default the local test server; a fresh
schema is made and dropped), in the same run and on the same machine:

- budget check latency, p50 and p99, in-process (``CaracalClient.check`` on an embedded client): on
  PostgreSQL the aggregates live in the process, fed from the table, so a check should cost about what it
  costs on files;
- reserve + settle latency, p50 and p99;
- reserve + settle throughput with 1 and with 4 processes on one home (each process its own agent of one
  parent, as a team's workers would be);
- gateway calls/s through ``caracal serve --workers 1`` and ``--workers 2`` (see ``bench_gateway.py``).

Every home is built the same way: a parent with four children, policies on all, a price.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_budget import percentiles, throughput  # the same measures as bench_budget.py, on both backends

from caracal.sdk.client import CaracalClient

SETTLE = [{"resource_type": "tool.search.calls", "quantity": "1", "cost": "0.005"}]


def build_home(home: Path, url: str | None) -> None:
    home.mkdir(parents=True)
    if url is not None:
        (home / "config.toml").write_text(f'[storage]\nurl = "{url}"\n')
    client = CaracalClient(home)
    client.register_agent("lead", "bench@example.com")
    for n in range(4):
        client.register_agent(f"worker-{n}", "bench@example.com", parent="lead")
        client.create_policy(f"worker-{n}", "1000000000", "daily")
    client.create_policy("lead", "1000000000", "monthly")
    client.set_price("tool.search.calls", "0.005")
    client.close()


def latencies(home: Path, label: str) -> None:
    client = CaracalClient(home)
    for _ in range(300):
        client.check("worker-0", "0.01")
    samples = []
    for _ in range(3000):
        t0 = time.perf_counter()
        client.check("worker-0", "0.01")
        samples.append(time.perf_counter() - t0)
    print(f"{label:<11} check           {percentiles(samples)}")
    samples = []
    for _ in range(300):
        t0 = time.perf_counter()
        hold = client.reserve("worker-1", "0.01")
        client.settle(hold, SETTLE)
        samples.append(time.perf_counter() - t0)
    print(f"{label:<11} reserve+settle  {percentiles(samples)}")
    client.close()


def gateway(server: str | None, workers: str) -> None:
    """``bench_gateway.py --workers`` on this backend (``--database``: each home in a fresh schema)."""
    script = Path(__file__).with_name("bench_gateway.py")
    extra = ["--database", server] if server is not None else []
    subprocess.run([sys.executable, str(script), "--workers", workers, *extra], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / ".data")
    parser.add_argument(
        "--database",
        default=os.environ.get("CARACAL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="A PostgreSQL server where this user may create a schema (dropped at the end).",
    )
    parser.add_argument("--per-process", type=int, default=300)
    parser.add_argument("--no-gateway", action="store_true", help="Skip the gateway figures.")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-backends-", dir=args.dir))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pg import ENV, create_schema, drop_schema  # the tests' schema helpers

    os.environ.setdefault(ENV, args.database)
    schema, url = create_schema()
    try:
        print(f"Caracal backends benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        print(f"files: {root}; postgresql: {args.database} (schema {schema})")
        homes = {"files": (root / "files", None), "postgresql": (root / "pg", url)}
        for home, database in homes.values():
            build_home(home, database)
        for name, (home, _database) in homes.items():
            latencies(home, name)
        for processes in (1, 4):
            for name, (home, _database) in homes.items():
                rate = throughput(home, processes, args.per_process)
                plural = "es" if processes > 1 else "  "
                print(f"{name:<11} reserve+settle, {processes} process{plural}: {rate:8,.0f} /s")
        if not args.no_gateway:
            for name in homes:
                print(f"--- gateway on {name}")
                sys.stdout.flush()
                gateway(args.database if name == "postgresql" else None, "1,2")
    finally:
        drop_schema(schema)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
