"""Ledger benchmarks: prints figures, asserts nothing. Run: ``python bench/bench_ledger.py``.

All measurements run in one process, on the same disk (``--dir``, default ``bench/.data``):

(a) raw ``os.write`` + ``fdatasync`` of pre-serialized lines, one line at a time: the disk's floor;
(b) ``LedgerWriter.append_event`` one at a time (validation, lock, hash chain, Merkle, fsync), and its
    ratio to (a); also with INFO logging to a file, to show what per-write logging costs;
(c) ``append_events`` in batches of 1,000 (group commit), median of 5 runs;
(d) ``verify_ledger`` over the large ledger, events/s, median of 3 runs (two processes by default, and one);
(e) opening a ``LedgerWriter`` on a 1,000,000-event ledger vs a 1,000-event one (median of several opens).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from caracal.core.ledger import LedgerWriter
from caracal.core.verify import default_public_key, verify_ledger

LINE = (
    b'{"event_id":1,"agent_id":"agent-0001","timestamp":"2026-11-25T19:24:52.123456Z",'
    b'"resource_type":"openai.gpt-4o.input_tokens","quantity":"1000","cost":"0.0025","currency":"USD",'
    b'"prev_hash":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}\n'
)


def item(n: int) -> dict[str, object]:
    return {
        "agent_id": f"agent-{n % 16:04d}",
        "resource_type": "openai.gpt-4o.input_tokens",
        "quantity": Decimal(1000),
        "cost": Decimal("0.0025"),
    }


def single_appends(folder: Path, count: int, rounds: int = 10) -> tuple[float, float, float]:
    """(a), (b) and (b) with INFO logging, interleaved in rounds so that drift in the disk's speed (large
    on shared virtual disks) affects all three alike. Returns events/s for each."""
    raw_path = folder / "raw.jsonl"
    fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    logger = logging.getLogger("caracal.ledger")
    handler = logging.FileHandler(folder / "ledger.log")
    plain = LedgerWriter(folder / "single" / "ledger.jsonl")
    logged = LedgerWriter(folder / "logged" / "ledger.jsonl")
    spent = [0.0, 0.0, 0.0]
    per_round = max(1, count // rounds)

    # Arguments are built once, as (a)'s lines are serialized once: both loops time only the ledger's work.
    agents = [f"agent-{n:04d}" for n in range(16)]
    quantity, cost = Decimal(1000), Decimal("0.0025")

    def appends(writer: LedgerWriter) -> None:
        for n in range(per_round):
            writer.append_event(agents[n % 16], "openai.gpt-4o.input_tokens", quantity, cost)

    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(per_round):
                os.write(fd, LINE)
                os.fdatasync(fd)
            spent[0] += time.perf_counter() - started
            started = time.perf_counter()
            appends(plain)
            spent[1] += time.perf_counter() - started
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            started = time.perf_counter()
            appends(logged)
            spent[2] += time.perf_counter() - started
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
    finally:
        os.close(fd)
        raw_path.unlink()
        handler.close()
        plain.close()
        logged.close()
    total = per_round * rounds
    a, b, b_log = (total / t for t in spent)
    return a, b, b_log


def build(path: Path, events: int, batch: int = 1000) -> float:
    """Append ``events`` events in batches; return events/s."""
    items = [item(n) for n in range(batch)]
    with LedgerWriter(path) as writer:
        started = time.perf_counter()
        done = 0
        while done < events:
            size = min(batch, events - done)
            writer.append_events(items[:size])
            done += size
            if done % 100_000 == 0:
                print(f"   ... {done:,} events", file=sys.stderr)
        return events / (time.perf_counter() - started)


def spread(rates: list[float]) -> str:
    """``median events/s (min-max of N runs)``."""
    return (
        f"{statistics.median(rates):12,.0f} events/s  (median of {len(rates)} runs; "
        f"{min(rates):,.0f}-{max(rates):,.0f})"
    )


def median_open_seconds(path: Path, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        writer = LedgerWriter(path)
        times.append(time.perf_counter() - started)
        writer.close()  # everything is checkpointed already: closing writes nothing
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / ".data")
    parser.add_argument("--single", type=int, default=3000, help="events for (a) and (b)")
    parser.add_argument(
        "--large", type=int, default=1_000_000, help="events in the large ledger for (d), (e)"
    )
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-", dir=args.dir))
    home = Path(tempfile.mkdtemp(prefix="bench-home-", dir=args.dir))
    os.environ["CARACAL_HOME"] = str(home)
    try:
        print(
            f"Caracal ledger benchmark on {folder} ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})"
        )
        a, b, b_log = single_appends(folder, args.single)
        print(f"(a) raw write+fdatasync, one line at a time:   {a:12,.0f} events/s")
        print(f"(b) append_event, one at a time:               {b:12,.0f} events/s  ({b / a:.2f} of raw)")
        print(
            f"    ... with INFO logging to a file:           {b_log:12,.0f} events/s  "
            f"({b_log / a:.2f} of raw)"
        )
        # (c) and (d) repeat: this machine's speed drifts by tens of percent between runs, so the median
        # and the range say more than one figure would.
        rates = [build(folder / f"batch{n}" / "ledger.jsonl", 100_000) for n in range(5)]
        print(f"(c) append_events, batches of 1,000:           {spread(rates)}")

        large = folder / "large" / "ledger.jsonl"
        small = folder / "small" / "ledger.jsonl"
        print(f"    building a {args.large:,}-event ledger ...", file=sys.stderr)
        build(large, args.large)
        build(small, 1000)
        key = default_public_key()
        for parallel, label in ((None, "(d) verify"), (False, "    ... in one process")):
            rates = []
            for _ in range(3):
                started = time.perf_counter()
                report = verify_ledger(large, public_key=key, parallel=parallel)
                rates.append(report.events / (time.perf_counter() - started))
                assert report.ok, report.problems
            print(f"{label + ':':<47}{spread(rates)}")
        print(
            f"    ({report.events:,} events, {report.bytes_checked / 1e6:.0f} MB, "
            f"{report.checkpoints_total} signed checkpoints checked)"
        )
        t_large = median_open_seconds(large)
        t_small = median_open_seconds(small)
        print(
            f"(e) open writer: {args.large:,} events {t_large * 1000:.2f} ms, 1,000 events "
            f"{t_small * 1000:.2f} ms (ratio {t_large / t_small:.2f})"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
