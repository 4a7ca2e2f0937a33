"""kill -9 a writer at random moments, over and over: nothing it acknowledged may be lost.

A child process appends in a loop (single events, small batches and, in some rounds, very large batches
so that a kill can land inside a write) and prints "<event_id> <sha256 of the line>" for each event right
after the append returns. After each SIGKILL the ledger must hold every acknowledged event byte for byte,
verify (a torn last line is not a problem), open for a new writer (which repairs a torn tail) and continue
with the next id.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caracal.core.ledger import LedgerReader, LedgerWriter
from caracal.core.verify import default_public_key, verify_ledger

ROUNDS = 30
BIG_LEDGER_CAP = 16 << 20  # big batches stop once the ledger is this large (keeps the test quick)

CHILD = r"""
import hashlib, os, random, sys, time
from caracal.core.ledger import LedgerWriter

ledger, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
writer = LedgerWriter(
    ledger,
    checkpoint_every=rng.choice([5, 40, 1000]),
    backup_min_interval=0 if seed % 4 == 0 else 600,  # some rounds rotate backups (kills land there too)
)
out = sys.stdout
out.write("ready\n")
out.flush()
pad = "x" * 16000  # ~16 KB of metadata per event: a big batch is one write of hundreds of KB
deadline = time.monotonic() + 30  # never outlive a broken test
big = mode == "big"
n = 0
while time.monotonic() < deadline:
    roll = rng.random()
    if big and roll < 0.7:
        items = [
            {"agent_id": "crash", "resource_type": "blob", "quantity": 1, "cost": "0.01",
             "metadata": {"n": n + k, "pad": pad}}
            for k in range(rng.randint(8, 32))
        ]
        events = writer.append_events(items)
        big = os.path.getsize(ledger) < int(sys.argv[4])
    elif roll < 0.85:
        events = [writer.append_event("crash", "tokens", n + 1, "0.001", metadata={"n": n})]
    else:
        items = [
            {"agent_id": "crash", "resource_type": "tokens", "quantity": 1, "cost": "0.002",
             "metadata": {"n": n + k}}
            for k in range(rng.randint(2, 8))
        ]
        events = writer.append_events(items)
    n += len(events)
    # Acknowledge only after the append returned (its bytes are fsynced).
    out.write("".join(f"{e.event_id} {hashlib.sha256(e.to_bytes()).hexdigest()}\n" for e in events))
    out.flush()
"""


def complete_lines(path: Path) -> tuple[list[bytes], bytes]:
    """The complete lines of the ledger and the bytes after the last newline (a torn tail, if any)."""
    data = path.read_bytes() if path.exists() else b""
    head, newline, tail = data.rpartition(b"\n")
    return (head.split(b"\n") if newline else []), tail


def read_acks(path: Path) -> list[tuple[int, str]]:
    """The child's acknowledgements: complete "<id> <sha>" lines (a line cut by the kill is not one)."""
    acks = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        if line == b"ready":
            continue
        event_id, digest = line.decode().split()
        acks.append((int(event_id), digest))
    return acks


def check_acknowledged(lines: list[bytes], acked: dict[int, str]) -> None:
    for event_id, digest in acked.items():
        assert event_id <= len(lines), (
            f"acknowledged event {event_id} is gone (ledger has {len(lines)} lines)"
        )
        assert hashlib.sha256(lines[event_id - 1]).hexdigest() == digest, f"event {event_id} was altered"


def kill_when_writing(proc: subprocess.Popen[bytes], ledger: Path, limit: float) -> bool:
    """SIGKILL ``proc`` as soon as the ledger visibly holds a write in progress (its last byte is not a
    newline), or after ``limit`` seconds. Returns whether a write in progress was seen."""
    fd = os.open(ledger, os.O_RDONLY)
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and proc.poll() is None:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                proc.send_signal(signal.SIGKILL)
                return True
        proc.send_signal(signal.SIGKILL)
        return False
    finally:
        os.close(fd)


def wait_ready(proc: subprocess.Popen[bytes], acks: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not acks.read_bytes().startswith(b"ready\n"):
        assert proc.poll() is None, (
            f"the writer died before it was ready: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
        assert time.monotonic() < deadline, "the writer never got ready"
        time.sleep(0.002)


def reopen_and_append(ledger: Path, expected_last: int, tail: bytes, acked: dict[int, str]) -> None:
    """A new writer repairs a torn tail, continues at ``expected_last + 1``; the ledger then verifies."""
    torn_file = ledger.with_name(ledger.name + ".torn")
    torn_before = torn_file.read_bytes() if torn_file.exists() else b""
    with LedgerWriter(ledger) as writer:
        assert writer.last_event_id == expected_last
        event = writer.append_event("parent", "tokens", 1, "0.5", metadata={"after": expected_last})
        assert event.event_id == expected_last + 1
        acked[event.event_id] = hashlib.sha256(event.to_bytes()).hexdigest()
    if tail:
        # The torn bytes were kept aside (not silently dropped) and cut from the ledger.
        assert torn_file.read_bytes() == torn_before + tail + b"\n"
    lines, rest = complete_lines(ledger)
    assert rest == b"" and len(lines) == expected_last + 1
    report = verify_ledger(ledger, public_key=default_public_key())
    assert report.ok, report.problems
    assert report.torn_tail_bytes == 0 and report.events == expected_last + 1 and report.signatures_checked


@pytest.mark.slow
def test_sigkill_loop_loses_nothing_acknowledged(tmp_path: Path, ledger_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(20260101)
    with LedgerWriter(ledger_path) as writer:  # creates the signing key and the ledger
        writer.append_event("parent", "tokens", 1, "0.5")
    acked = {1: hashlib.sha256(ledger_path.read_bytes()[:-1]).hexdigest()}
    torn_rounds = 0
    known = 1  # complete lines after the previous round
    for round_ in range(ROUNDS):
        # Round kinds: small appends killed after a random delay; big batches killed after a random delay;
        # big batches killed the moment a write is seen in progress; a kill soon after start (during open
        # and maybe during the repair of the previous round's torn tail).
        kind = ("small", "big", "big-watch", "small", "big-watch", "early")[round_ % 6]
        ack_path = tmp_path / f"acks-{round_}"
        with open(ack_path, "wb") as ack_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    str(ledger_path),
                    "small" if kind in ("small", "early") else "big",
                    str(round_),
                    str(BIG_LEDGER_CAP),
                ],
                stdout=ack_file,
                stderr=subprocess.PIPE,
            )
        try:
            if kind == "early":
                time.sleep(rng.uniform(0.0, 0.4))
                proc.send_signal(signal.SIGKILL)
            else:
                wait_ready(proc, ack_path)
                if kind == "big-watch":
                    kill_when_writing(proc, ledger_path, rng.uniform(0.05, 0.5))
                else:
                    time.sleep(rng.uniform(0.01, 0.3))
                    proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()

        acks = read_acks(ack_path)
        ids = [event_id for event_id, _ in acks]
        assert ids == list(range(known + 1, known + 1 + len(ids))), (
            "acknowledged ids do not continue the file"
        )
        for event_id, digest in acks:
            assert event_id not in acked, f"event id {event_id} acknowledged twice"
            acked[event_id] = digest

        lines, tail = complete_lines(ledger_path)
        torn_rounds += bool(tail)
        check_acknowledged(lines, acked)  # every round re-checks everything acknowledged so far
        # Before any repair: the complete lines verify; the torn tail is reported but is not a problem.
        report = verify_ledger(ledger_path, public_key=default_public_key())
        assert report.ok, (round_, kind, report.problems)
        assert report.events == len(lines) and report.torn_tail_bytes == len(tail)
        assert [event.event_id for event in LedgerReader(ledger_path).last_events(3)] == list(
            range(len(lines) - min(3, len(lines)) + 1, len(lines) + 1)
        )
        known = len(lines)
        if round_ % 5 == 4 and tail:
            continue  # leave this torn tail for the next child to repair (and maybe be killed repairing it)
        reopen_and_append(ledger_path, len(lines), tail, acked)
        known += 1

    lines, tail = complete_lines(ledger_path)
    reopen_and_append(ledger_path, len(lines), tail, acked)
    lines, _ = complete_lines(ledger_path)
    check_acknowledged(lines, acked)
    print(f"{ROUNDS} kills, {torn_rounds} torn tails, {len(acked)} events acknowledged, {len(lines)} in all")


def test_hand_written_torn_tail_is_repaired(ledger_path: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        events = writer.append_events(
            [{"agent_id": "a", "resource_type": "r", "quantity": 1, "cost": str(i)} for i in range(1, 11)]
        )
    intact = ledger_path.read_bytes()
    # What a write cut by a crash leaves: the start of the next line, without its newline.
    partial = intact.split(b"\n")[4][:37]
    with open(ledger_path, "ab") as handle:
        handle.write(partial)

    report = verify_ledger(ledger_path, public_key=default_public_key())
    assert report.ok, report.problems
    assert report.events == 10 and report.torn_tail_bytes == len(partial)
    assert [event.event_id for event in LedgerReader(ledger_path)] == list(range(1, 11))

    with LedgerWriter(ledger_path) as writer:
        assert writer.last_event_id == 10
        assert ledger_path.read_bytes() == intact  # repaired on open, under the lock
        assert writer.append_event("a", "r", 1, "1").event_id == 11
    assert ledger_path.with_name(ledger_path.name + ".torn").read_bytes() == partial + b"\n"
    lines, tail = complete_lines(ledger_path)
    assert tail == b"" and lines[:10] == intact.split(b"\n")[:10]
    assert [line for line in lines[:10]] == [event.to_bytes() for event in events]
    report = verify_ledger(ledger_path, public_key=default_public_key())
    assert report.ok and report.events == 11 and report.torn_tail_bytes == 0


# The child appends a few events (acknowledged), then the named OS call of the next append kills the process
# at that exact point: half way through the write, after the write but before the sync, or (for "repair")
# half way through repairing a torn tail.
KILLER = r"""
import hashlib, os, signal, sys
import caracal.core.filestore as ledger_module
from caracal.core.ledger import LedgerWriter

ledger, where = sys.argv[1], sys.argv[2]
real_write = ledger_module._os_write

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def half_write(fd, data):
    real_write(fd, bytes(data[: len(data) // 2]))
    die()

if where == "repair":
    ledger_module._os_ftruncate = lambda fd, size: die()
    LedgerWriter(ledger)
    raise SystemExit("not killed")
writer = LedgerWriter(ledger)
for i in range(5):
    event = writer.append_event("a", "r", 1, str(i), metadata={"i": i})
    print(event.event_id, hashlib.sha256(event.to_bytes()).hexdigest(), flush=True)
if where == "write":
    ledger_module._os_write = half_write
else:
    ledger_module._os_fdatasync = lambda fd: die()
items = [{"agent_id": "a", "resource_type": "r", "quantity": 1, "cost": "9", "metadata": {"pad": "y" * 3000}}]
writer.append_events(items * int(sys.argv[3]))
raise SystemExit("not killed")
"""


def run_killer(tmp_path: Path, ledger: Path, where: str, batch: int = 1) -> dict[int, str]:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), str(ledger), where, str(batch)], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    acks = {}
    for line in proc.stdout.decode().splitlines():
        event_id, digest = line.split()
        acks[int(event_id)] = digest
    return acks


@pytest.mark.parametrize("batch", [1, 3], ids=["single", "batch"])
def test_kill_in_the_middle_of_a_write(tmp_path: Path, ledger_path: Path, batch: int) -> None:
    acked = run_killer(tmp_path, ledger_path, "write", batch)
    assert sorted(acked) == [1, 2, 3, 4, 5]
    lines, tail = complete_lines(ledger_path)
    assert tail, "half a write must leave a torn last line"
    check_acknowledged(lines, acked)
    # Half of a batch of 3 (lines of equal length) holds one complete line: never acknowledged, but
    # well-formed and chained, so it is kept; only the torn last line goes.
    assert len(lines) == 5 + batch // 2
    report = verify_ledger(ledger_path, public_key=default_public_key())
    assert report.ok, report.problems
    assert report.torn_tail_bytes == len(tail)
    reopen_and_append(ledger_path, len(lines), tail, acked)
    check_acknowledged(complete_lines(ledger_path)[0], acked)


def test_kill_after_the_write_before_the_sync(tmp_path: Path, ledger_path: Path) -> None:
    acked = run_killer(tmp_path, ledger_path, "sync", 3)
    lines, tail = complete_lines(ledger_path)
    # The page cache survives a process kill: the unacknowledged batch is complete, and it is kept.
    assert tail == b"" and len(lines) == 8
    check_acknowledged(lines, acked)
    reopen_and_append(ledger_path, 8, b"", acked)


def test_kill_while_repairing_a_torn_tail(tmp_path: Path, ledger_path: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        writer.append_events([{"agent_id": "a", "resource_type": "r", "quantity": 1, "cost": "1"}] * 4)
    intact = ledger_path.read_bytes()
    with open(ledger_path, "ab") as handle:
        handle.write(b'{"event_id":5,"agent_id":"a","timest')
    run_killer(tmp_path, ledger_path, "repair")  # dies after saving the torn bytes, before cutting them
    torn_file = ledger_path.with_name(ledger_path.name + ".torn")
    lines, tail = complete_lines(ledger_path)
    assert tail == b'{"event_id":5,"agent_id":"a","timest' and len(lines) == 4
    assert torn_file.read_bytes() == tail + b"\n"
    assert verify_ledger(ledger_path, public_key=default_public_key()).ok
    acked = {i + 1: hashlib.sha256(line).hexdigest() for i, line in enumerate(lines)}
    reopen_and_append(ledger_path, 4, tail, acked)  # the second repair finishes the job
    assert ledger_path.read_bytes().startswith(intact)
    assert torn_file.read_bytes() == (tail + b"\n") * 2


def test_torn_checkpoint_record_does_not_brick_the_ledger(ledger_path: Path) -> None:
    """A crash in the middle of appending a checkpoint record leaves a torn last line in the sidecar.

    The next checkpoint must not be glued to it (that line would make the file unreadable, the ledger
    unverifiable and every later writer fail to open).
    """
    with LedgerWriter(ledger_path) as writer:
        writer.append_events([{"agent_id": "a", "resource_type": "r", "quantity": 1, "cost": "1"}] * 5)
    checkpoints = ledger_path.with_name(ledger_path.name + ".checkpoints")
    record = checkpoints.read_bytes()
    with open(checkpoints, "ab") as handle:
        handle.write(record[: len(record) // 3])
    report = verify_ledger(ledger_path, public_key=default_public_key())
    assert report.ok, report.problems  # the torn record was never acknowledged: ignored
    with LedgerWriter(ledger_path) as writer:
        writer.append_event("a", "r", 1, "1")
        writer.checkpoint()
    assert checkpoints.read_bytes().startswith(record) and checkpoints.read_bytes().endswith(b"\n")
    report = verify_ledger(ledger_path, public_key=default_public_key())
    assert report.ok, report.problems
    assert report.checkpoints_total == 2 and report.checkpoints_matched == 2
    with LedgerWriter(ledger_path) as writer:
        assert writer.append_event("a", "r", 1, "1").event_id == 7
