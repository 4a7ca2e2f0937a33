"""A replay that must run happens once per home, not once per process.

Several processes open a home whose long ledger has no budget snapshot at the same moment: one replays the
ledger (under ``ledger.jsonl.replay.lock``) and saves the snapshot; the others wait for it and resume from
that snapshot, reading only what came after it. Real processes on a real home; what a process read is
measured by the kernel (``/proc/self/io`` ``rchar``: bytes read by its read calls), not by our code.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from caracal.core.enforcement import Enforcer
from caracal.core.ledger import LedgerWriter
from caracal.core.live import REPLAY_LOCK_BYTES
from caracal.core.windows import WindowSpec
from caracal.storage.home import EmbeddedHome

pytestmark = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads /proc/self/io (Linux)")

PROCESSES = 4
ENTRIES = 100_000

OPEN_AND_REPORT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from caracal.core.enforcement import Enforcer
    from caracal.storage.home import EmbeddedHome

    def rchar():
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])

    home = EmbeddedHome(Path(sys.argv[1]))
    agent = home.agents.get("worker").agent_id
    go = Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():  # every process starts opening the home at the same moment
        time.sleep(0.001)
    before = rchar()
    enforcer = Enforcer(home.writer(), home.directory)
    state = enforcer.catch_up()
    read = rchar() - before
    print(json.dumps({
        "read": read,
        "last_event_id": state.last_event_id,
        "spent": str(state.spent(agent, "USD", None, inclusive_minute=False)),
        "remaining": str(enforcer.check(agent).remaining),
    }), flush=True)
    home.close()
    """
)


def long_home(home_path: Path, entries: int) -> Path:
    """A home whose agent ``worker`` has ``entries`` charges of 0.01 written straight to the ledger (no
    client, so no budget snapshot); returns the ledger's path."""
    home = EmbeddedHome(home_path)
    agent = home.agents.register("worker", "ops@example.com").agent_id
    home.policies.create(agent, "100000", WindowSpec("total", "UTC"), "USD")
    writer = home.writer()
    item = {"agent_id": agent, "resource_type": "tool.calls", "quantity": "1", "cost": "0.01"}
    for _ in range(0, entries, 10_000):
        writer.append_events([item] * min(10_000, entries))
    home.close()
    snapshot = home.ledger_path.with_name(home.ledger_path.name + ".budget")
    assert not snapshot.exists()
    return home.ledger_path


def test_processes_opening_a_home_without_a_snapshot_replay_it_once(
    caracal_home: Path, tmp_path: Path
) -> None:
    ledger = long_home(caracal_home, ENTRIES)
    size = ledger.stat().st_size
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_REPORT, str(caracal_home), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        reports = []
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    print("ledger bytes", size, "read per process", [r["read"] for r in reports])
    replayed = [r for r in reports if r["read"] >= size]
    assert len(replayed) == 1, [r["read"] for r in reports]  # one process read the whole ledger
    assert all(r["read"] < size // 10 for r in reports if r not in replayed), [r["read"] for r in reports]
    assert {(r["last_event_id"], r["spent"], r["remaining"]) for r in reports} == {
        (ENTRIES, "1000.00", "99000.00")
    }


def test_a_replay_lock_held_too_long_is_waited_out_then_replayed_here(
    caracal_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that waits longer than the ledger's lock_timeout for another one's replay (stuck, or very
    slow) says so and replays itself: the right state, never a denial for want of a snapshot."""
    ledger = long_home(caracal_home, 5_000)
    assert ledger.stat().st_size >= REPLAY_LOCK_BYTES
    lock = ledger.with_name(ledger.name + ".replay.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "another process is replaying"
        writer = LedgerWriter(ledger, lock_timeout=0.2, checkpoint_interval=0)
        home = EmbeddedHome(caracal_home)
        with caplog.at_level(logging.WARNING, logger="caracal.enforcement"):
            waited = Enforcer(writer, home.directory)
        assert any("replaying here too" in r.getMessage() for r in caplog.records)
        assert waited.live.replayed == 5_000 and waited.catch_up().last_event_id == 5_000
        # The ledger's own append lock is not involved: other writers append meanwhile.
        writer.append_event(agent_id="someone", resource_type="r", quantity="1", cost="0")
        writer.close()
    finally:
        os.close(fd)
    # It saved its snapshot: the next process reads only the entry appended after it.
    home = EmbeddedHome(caracal_home)
    enforcer = Enforcer(home.writer(), home.directory)
    assert enforcer.catch_up().last_event_id == 5_001 and enforcer.live.replayed == 1
    home.close()
