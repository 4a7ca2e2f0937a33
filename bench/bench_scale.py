"""Scale benchmark: a home whose ledger holds many events. Prints figures, asserts nothing.

Run: ``python bench/bench_scale.py`` (ten million events, about 2.7 GB on disk under ``--dir``; use
``--events 1000000`` for a quicker look). ``--database postgresql://...`` runs the same on PostgreSQL (a
fresh schema on that server, dropped at the end; the ledger's rows take about as much as the file).
The ledger is built with batch appends on an embedded home with ten agents, each with a daily policy.
Then, each step in a fresh process so that its peak resident memory is its own; a step that runs a helper
process (a long replay's reader and hasher, verify's second half) prints the helper's peak beside it:

- cold open: open the home with no budget snapshot (a full, checked replay) and answer one check;
- warm open: the same with the snapshot the cold open saved;
- budget checks: p50 and p99 of 2,000 in-process checks after a warm open;
- verify: ``caracal ledger verify`` over the whole ledger.
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

from bench_schema import fresh_schema

AGENTS = 10

_PEAKS = """
import atexit, resource, sys
def _peaks():  # this process's peak resident set and its helper's (the largest child it waited for), MB
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    helper = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    sys.stdout.write(f"\\npeaks {own:.1f} {helper:.1f}\\n")
    sys.stdout.flush()
atexit.register(_peaks)
"""
_VERIFY = (
    _PEAKS
    + """
import runpy
sys.argv = ["caracal", "ledger", "verify"]
runpy.run_module("caracal", run_name="__main__", alter_sys=True)
"""
)
_OPEN = (
    _PEAKS
    + """
import statistics, sys, time
from caracal.sdk.client import CaracalClient
started = time.perf_counter()
client = CaracalClient()
client.check("agent-0")
opened = time.perf_counter() - started
samples = []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    client.check(f"agent-{i % 10}")
    samples.append(time.perf_counter() - t)
client.close()
samples.sort()
p50 = samples[len(samples) // 2] * 1e6 if samples else 0.0
p99 = samples[int(len(samples) * 0.99)] * 1e6 if samples else 0.0
print(f"{opened:.3f} {p50:.1f} {p99:.1f}")
"""
)


def gateway_batch(agent: str, expires: str) -> list[dict[str, object]]:
    """1,000 entries (333 calls and a plain charge) as the gateway writes them: a hold, the charge against it
    with the call's usage, and its release."""
    import uuid

    items: list[dict[str, object]] = []
    for _ in range(333):
        hold = f"hold-{uuid.uuid4()}"
        call = str(uuid.uuid4())
        usage = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 234, "request_id": call}
        items += [
            {"agent_id": agent, "resource_type": "caracal.hold", "quantity": "0", "cost": "0.0039",
             "kind": "hold", "hold_id": hold, "expires_at": expires, "on_expiry": "charge"},
            {"agent_id": agent, "resource_type": "openai.gpt-4o.tokens", "quantity": "1234",
             "cost": "0.00175", "hold_id": hold, "metadata": usage},
            {"agent_id": agent, "resource_type": "caracal.hold", "quantity": "0", "cost": "0",
             "kind": "release", "hold_id": hold, "metadata": {"reason": "settled"}},
        ]  # fmt: skip
    return [*items, {"agent_id": agent, "resource_type": "tool.calls", "quantity": "1", "cost": "0.005"}]


def build(home: Path, events: int, url: str | None, shape: str = "charges") -> None:
    """A home with ten agents and policies, and ``events`` entries appended in batches of 1,000: plain
    charges, or (``shape="gateway"``) what the gateway writes, each call a hold, a charge and a release."""
    os.environ["CARACAL_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    if url is not None:
        (home / "config.toml").write_text(f'[storage]\nurl = "{url}"\n')
    from caracal.core.ledger import LedgerWriter
    from caracal.sdk.client import CaracalClient

    with CaracalClient(home) as client:
        ids = [client.register_agent(f"agent-{n}", "bench@example.com").agent_id for n in range(AGENTS)]
        for n in range(AGENTS):
            client.create_policy(f"agent-{n}", "1000000000", "daily")
        backend = client.home.backend
        store = backend.ledger_store(lock_timeout=30, backup_count=0, backup_min_interval=0)
    if shape == "gateway":
        from datetime import datetime, timedelta, timezone

        expires = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        batches = [gateway_batch(agent, expires) for agent in ids]
    else:
        batches = [
            [{"agent_id": agent, "resource_type": "tool.calls", "quantity": "1", "cost": "0.005"}] * 1000
            for agent in ids
        ]
    started = time.perf_counter()
    with LedgerWriter(
        store, signing_key_path=home / "keys" / "checkpoint.key", checkpoint_interval=0
    ) as writer:
        for index in range(events // 1000):
            writer.append_events(batches[index % AGENTS])
            if index % 1000 == 999:
                print(f"    {(index + 1) * 1000:,} events appended", file=sys.stderr)
    took = time.perf_counter() - started
    where = f"{(home / 'data' / 'ledger.jsonl').stat().st_size / 1e9:.2f} GB" if url is None else "PostgreSQL"
    print(f"built {events:,} events ({where}) in {took:.0f} s ({events / took:,.0f} events/s)")


def forget_snapshot(home: Path, url: str | None) -> None:
    """Delete the sealed budget snapshot, so that the next open replays the whole ledger."""
    if url is None:
        (home / "data" / "ledger.jsonl.budget").unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM caracal_caches WHERE name = 'budget'")


def settle_database(url: str) -> None:
    """``VACUUM (ANALYZE)`` the freshly loaded ledger table and report how long it took.

    Right after a bulk load every row still lacks its hint bits and the table its visibility map and
    statistics: the first reads of each page also write it, and autovacuum starts working through the
    whole table at the same time as the measurements (measured here: a cold replay of 10,000,000 rows at
    36,000 rows/s and verify at 58,000 without this step; 97,000 and 158,000 after it). A ledger built over
    weeks has long been vacuumed; the figures are for that state, and the time this step takes is printed."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) caracal_ledger")
    print(f"VACUUM (ANALYZE) of the fresh ledger table: {time.perf_counter() - started:.0f} s")


def measured(args: list[str], home: Path) -> tuple[float, str, str]:
    """Run ``args`` (a script that prints its peaks, see ``_PEAKS``) as a child: its wall time (s), its peak
    resident memory as text (MB; and its helper's, if it ran one) and the rest of its stdout."""
    started = time.perf_counter()
    child = subprocess.Popen(
        args, stdout=subprocess.PIPE, env={**os.environ, "CARACAL_HOME": str(home)}, text=True
    )
    assert child.stdout is not None
    output = child.stdout.read()
    status = child.wait()
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{args} failed with status {status}")
    rest, _, last = output.rstrip("\n").rpartition("\n")
    _word, own, helper = last.split()
    peak = f"peak {float(own):,.0f} MB" + (f" (helper {float(helper):,.0f} MB)" if float(helper) else "")
    return wall, peak, rest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / ".data")
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument(
        "--shape",
        choices=["charges", "gateway"],
        default="charges",
        help="the entries: plain charges (default), or the gateway's hold, charge with usage, release",
    )
    parser.add_argument(
        "--database", default=None, help="a PostgreSQL server: run on a fresh schema there (default: files)"
    )
    options = parser.parse_args()
    options.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=options.dir))
    home = root / "home"
    with fresh_schema(options.database) as (schema, url):
        try:
            measure(options, home, schema, url)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def measure(options: argparse.Namespace, home: Path, schema: str | None, url: str | None) -> None:
    """Build the home, then each step in a fresh process (see the module docstring)."""
    backend = "files" if url is None else f"PostgreSQL ({options.database}, schema {schema})"
    print(f"Caracal scale benchmark on {backend}, home {home} ({os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]})")  # fmt: skip
    build(home, options.events, url, options.shape)
    if url is not None:
        settle_database(url)
    forget_snapshot(home, url)
    cold, cold_peak, _ = measured([sys.executable, "-c", _OPEN, "0"], home)
    rate = options.events / cold
    print(f"{'cold open (checked replay), first check':42}{cold:8.1f} s  {rate:>9,.0f} events/s", end="")
    print(f"  {cold_peak}")
    warm, warm_peak, out = measured([sys.executable, "-c", _OPEN, str(options.checks)], home)
    opened, p50, p99 = (float(x) for x in out.split())
    print(f"{'warm open (snapshot), first check':42}{opened:8.3f} s  (process {warm:.2f} s)", end="")
    print(f"  {warm_peak}")
    print(f"{'budget check':42}p50 {p50:.1f} us  p99 {p99:.1f} us")
    took, verify_peak, _ = measured([sys.executable, "-c", _VERIFY], home)
    print(f"{'caracal ledger verify':42}{took:8.1f} s  {options.events / took:>9,.0f} events/s", end="")
    print(f"  {verify_peak}")


if __name__ == "__main__":
    main()
