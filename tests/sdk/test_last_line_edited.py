"""The ledger's last line is edited before another process reads it: the other process takes the edit for
the record and chains its own entries onto it, so the ledger's chain holds together again. Only the
writer that recorded the line can tell. It refuses to go on and signs a checkpoint of the ledger as it
recorded it, so ``caracal ledger verify`` reports the rewrite (before, it said the ledger was intact)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.bot_home import bot_home, charge_from_another_process

WRITER = """
import sys
from caracal.sdk.client import CaracalClient
client = CaracalClient(sys.argv[1])
try:
    client.emit_event("bot", "tool.calls", "7")  # the ledger's last line, recorded by this process
    print("ready", flush=True)
    sys.stdin.readline()  # meanwhile: the line is edited, and another process appends after it
    client.emit_event("bot", "tool.calls", "1")
finally:
    client.close()
"""


def verify(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caracal", "--home", str(home), "ledger", "verify"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.files_only("edits the ledger file")
def test_the_writer_of_an_edited_last_line_leaves_evidence_verify_reports(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ledger = bot_home(home, "100")
    charge_from_another_process(home, "1", "2")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    data = ledger.read_bytes()
    assert data.count(b'"cost":"7"') == 1 and data.rstrip(b"\n").endswith(b"}")
    ledger.write_bytes(data.replace(b'"cost":"7"', b'"cost":"0"'))  # the last line: 7 units forgotten
    charge_from_another_process(home, "5")  # reads the edited line, chains onto it
    events = len(ledger.read_bytes().splitlines())
    _, stderr = writer.communicate("go\n", timeout=120)

    assert writer.returncode == 1
    assert "does not chain to event 3" in stderr and "signed a checkpoint of the first 3 events" in stderr
    assert len(ledger.read_bytes().splitlines()) == events  # it appended nothing onto the edit
    report = verify(home)
    assert report.returncode == 3, report.stdout
    assert "first bad event: 3\n" in report.stderr and "event 3 was rewritten" in report.stderr, report.stderr
