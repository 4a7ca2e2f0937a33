"""Many writers at once: threads, writer objects and real OS processes appending to one ledger.

Whatever the interleaving, the ledger must hold ids exactly 1..N, every line valid JSON, every appended event
exactly once with the content its writer was given back, and it must verify.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from caracal.core.ledger import LedgerReader, LedgerWriter
from caracal.core.verify import default_public_key, verify_ledger

PROCESSES = 4
THREADS = 4
OPS = 60  # per thread; every third op is a batch of 1-4 events
DEADLINE = 120.0  # seconds; a bound so that nothing can hang CI, never a timing assertion

# Run by each worker process: opens its writer(s), says it is ready, waits for the go file, then has every
# thread append single events and small batches. Prints one JSON document: the events each thread got back.
WORKER = r"""
import json, sys, threading, time
from pathlib import Path
from caracal.core.ledger import LedgerWriter

ledger, worker, threads, ops, mode, ready, go = sys.argv[1:8]
worker, threads, ops = int(worker), int(threads), int(ops)
shared = LedgerWriter(ledger) if mode == "shared" else None
writers = [shared or LedgerWriter(ledger) for _ in range(threads)]
start = threading.Event()
results, errors = {}, []

def batch_size(op):
    return 1 + op % 4 if op % 3 == 2 else 0

def run(t):
    writer, out, seq = writers[t], [], 0
    try:
        if not start.wait(60):
            raise TimeoutError("no go signal")
        for op in range(ops):
            size = batch_size(op)
            if size:
                items = [
                    {"agent_id": f"agent-{worker}", "resource_type": "tokens", "quantity": str(k + 1),
                     "cost": f"0.{seq + k:04d}", "metadata": {"w": worker, "t": t, "seq": seq + k}}
                    for k in range(size)
                ]
                events = writer.append_events(items)
                seq += size
            else:
                events = [writer.append_event(f"agent-{worker}", "tokens", 1, "0.001",
                                              metadata={"w": worker, "t": t, "seq": seq})]
                seq += 1
            out.extend(event.to_dict() for event in events)
        results[t] = out
    except BaseException as exc:
        errors.append(f"thread {t}: {exc!r}")

pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for thread in pool:
    thread.start()
Path(ready).touch()
deadline = time.monotonic() + 60
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.005)
start.set()
for thread in pool:
    thread.join(90)
for writer in set(writers):
    writer.close()
print(json.dumps({"results": results, "errors": errors}))
"""


def expected_count(ops: int) -> int:
    """Events one worker thread appends: the schedule of the worker script, computed independently."""
    return sum(1 + op % 4 if op % 3 == 2 else 1 for op in range(ops))


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line as parsed JSON; the file must end with a newline (no torn or partial line)."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), "the ledger does not end with a complete line"
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def check_ledger(
    path: Path, returned: dict[tuple[int, int], list[dict[str, Any]]], per_thread: int, seeds: int = 0
) -> None:
    """The common assertions: contiguous ids, nothing lost or duplicated, returned content on disk, verify ok.

    ``seeds`` events without markers were appended before the concurrent part.
    """
    lines = read_lines(path)
    total = sum(len(events) for events in returned.values())
    assert total == per_thread * len(returned)
    assert [line["event_id"] for line in lines] == list(range(1, seeds + total + 1))

    marked = lines[seeds:]
    markers = Counter(
        (line["metadata"]["w"], line["metadata"]["t"], line["metadata"]["seq"]) for line in marked
    )
    duplicates = [marker for marker, count in markers.items() if count != 1]
    assert not duplicates, f"markers appended more than once: {duplicates[:10]}"
    wanted = {(w, t, seq) for (w, t) in returned for seq in range(per_thread)}
    assert set(markers) == wanted, f"lost: {sorted(wanted - set(markers))[:10]}"

    for (w, t), events in returned.items():
        for event in events:
            assert lines[event["event_id"] - 1] == event, f"worker {w} thread {t}: event {event['event_id']}"
        assert [event["metadata"]["seq"] for event in events] == list(range(per_thread))
        ids = [event["event_id"] for event in events]
        assert ids == sorted(ids), "a thread's later append got a smaller id"

    assert sum(1 for _ in LedgerReader(path).iter_events()) == seeds + total
    report = verify_ledger(path, public_key=default_public_key())
    assert report.ok, report.problems
    assert report.events == seeds + total
    assert report.signatures_checked and report.checkpoints_total >= 1
    # A writer opened now continues right after the last event, whoever wrote it.
    with LedgerWriter(path) as writer:
        assert writer.last_event_id == seeds + total
        assert writer.append_event("after", "tokens", 1, "1").event_id == seeds + total + 1


def run_workers(tmp_path: Path, ledger: Path, mode: str) -> dict[tuple[int, int], list[dict[str, Any]]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{w}" for w in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(ledger),
                str(w),
                str(THREADS),
                str(OPS),
                mode,
                str(ready[w]),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(path.exists() for path in ready):
            if time.monotonic() > deadline or any(proc.poll() is not None for proc in procs):
                break
            time.sleep(0.01)
        go.touch()  # every process starts appending at once (as far as the scheduler allows)
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{err}"
            outputs.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len({proc.pid for proc in procs}) == PROCESSES  # really separate OS processes
    returned: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for w, output in enumerate(outputs):
        assert output["errors"] == [], output["errors"]
        for t, events in output["results"].items():
            returned[(w, int(t))] = events
    assert len(returned) == PROCESSES * THREADS
    return returned


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["own", "shared"], ids=["writer-per-thread", "writer-per-process"])
def test_processes_and_threads_append_at_once(tmp_path: Path, ledger_path: Path, mode: str) -> None:
    # Some history first, so every writer opens an existing ledger (backups, catching up with the tail).
    with LedgerWriter(ledger_path) as writer:
        writer.append_events(
            [{"agent_id": "seed", "resource_type": "tokens", "quantity": 1, "cost": "0"}] * 3
        )
    returned = run_workers(tmp_path, ledger_path, mode)
    assert sum(len(events) for events in returned.values()) == PROCESSES * THREADS * expected_count(OPS)
    check_ledger(ledger_path, returned, expected_count(OPS), seeds=3)


def _append_from_threads(
    writers: list[LedgerWriter], threads: int, ops: int
) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """``threads`` threads, thread t using ``writers[t % len(writers)]``; returns what each got back."""
    returned: dict[tuple[int, int], list[dict[str, Any]]] = {}
    errors: list[str] = []
    barrier = threading.Barrier(threads)

    def run(t: int) -> None:
        writer, seq = writers[t % len(writers)], 0
        out: list[dict[str, Any]] = []
        try:
            barrier.wait(30)
            for op in range(ops):
                if op % 3 == 2:
                    size = 1 + op % 4
                    items = [
                        {
                            "agent_id": f"agent-{t}",
                            "resource_type": "tokens",
                            "quantity": k + 1,
                            "cost": f"0.{seq + k:03d}",
                            "metadata": {"w": 0, "t": t, "seq": seq + k},
                        }
                        for k in range(size)
                    ]
                    events = writer.append_events(items)
                    seq += size
                else:
                    events = [
                        writer.append_event(
                            f"agent-{t}", "tokens", 1, "0.5", metadata={"w": 0, "t": t, "seq": seq}
                        )
                    ]
                    seq += 1
                out.extend(event.to_dict() for event in events)
            returned[(0, t)] = out
        except BaseException as exc:
            errors.append(f"thread {t}: {exc!r}")

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in pool), "a thread is stuck"
    assert errors == []
    return returned


def test_threads_share_one_writer(ledger_path: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        returned = _append_from_threads([writer], threads=8, ops=30)
        assert writer.last_event_id == 8 * expected_count(30)
    check_ledger(ledger_path, returned, expected_count(30))


def test_two_writers_in_one_process_from_threads(ledger_path: Path) -> None:
    first = LedgerWriter(ledger_path)
    second = LedgerWriter(ledger_path)
    try:
        returned = _append_from_threads([first, second], threads=6, ops=24)
    finally:
        first.close()
        second.close()
    check_ledger(ledger_path, returned, expected_count(24))


def test_two_writers_take_turns_without_stale_ids(ledger_path: Path) -> None:
    """Each writer learns the last id from the file under the lock, never from its own counter."""
    first = LedgerWriter(ledger_path)
    second = LedgerWriter(ledger_path)
    try:
        ids: list[int] = []
        for turn in range(30):
            writer = (first, second)[turn % 2] if turn % 5 else second
            if turn % 4 == 3:
                events = writer.append_events(
                    [{"agent_id": "a", "resource_type": "r", "quantity": 1, "cost": "1"}] * 3
                )
            else:
                events = [writer.append_event("a", "r", 1, "1", metadata={"turn": turn})]
            ids.extend(event.event_id for event in events)
        assert ids == list(range(1, len(ids) + 1))
        # last_event_id is what the writer has seen: a writer that has not appended since may lag, but its
        # next append (or checkpoint) catches up with the file.
        assert max(first.last_event_id, second.last_event_id) == len(ids)
        first.checkpoint()
        assert first.last_event_id == len(ids)
    finally:
        first.close()
        second.close()
    lines = read_lines(ledger_path)
    assert [line["event_id"] for line in lines] == list(range(1, len(ids) + 1))
    report = verify_ledger(ledger_path, public_key=default_public_key())
    assert report.ok, report.problems
    assert report.signatures_checked


def test_process_writers_with_a_stale_writer_open(tmp_path: Path, ledger_path: Path) -> None:
    """A writer opened before other processes appended must continue from the file, not from its memory."""
    stale = LedgerWriter(ledger_path)
    try:
        assert stale.append_event("a", "r", 1, "1").event_id == 1
        script = tmp_path / "append.py"
        script.write_text(
            "import sys\nfrom caracal.core.ledger import LedgerWriter\n"
            "with LedgerWriter(sys.argv[1]) as w:\n"
            "    item = {'agent_id': 'b', 'resource_type': 'r', 'quantity': 1, 'cost': '2'}\n"
            "    print(w.append_events([item] * 5)[-1].event_id)\n"
        )
        for round_ in range(2):
            out = subprocess.run(
                [sys.executable, str(script), str(ledger_path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert int(out.stdout) == 1 + 5 * (round_ + 1)
        assert stale.append_event("a", "r", 1, "1").event_id == 12
    finally:
        stale.close()
    assert [line["event_id"] for line in read_lines(ledger_path)] == list(range(1, 13))
    assert verify_ledger(ledger_path, public_key=default_public_key()).ok
