"""A user's ``finally: client.close()`` on a ledger that was edited under the open client: the error the
script ends with is the verification failure (``close`` does not raise over it and still closes the
home), and closing saves no budget snapshot from the untrusted ledger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.bot_home import bot_home, charge_from_another_process

USER = """
import sys
from caracal.sdk.client import CaracalClient
client = CaracalClient(sys.argv[1])
try:
    client.check("bot", "1")
    print("ready", flush=True)
    sys.stdin.readline()  # meanwhile: another process charges, and someone edits what it wrote
    client.check("bot", "1")
finally:
    client.close()
"""


@pytest.mark.files_only("edits the ledger file")
def test_close_after_the_ledger_was_edited_does_not_hide_why(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ledger = bot_home(home, "10")

    user = subprocess.Popen(
        [sys.executable, "-c", USER, str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert user.stdout is not None and user.stdin is not None
    assert user.stdout.readline() == "ready\n"
    charge_from_another_process(home, "1", "2", "3")
    snapshot = Path(f"{ledger}.budget")
    saved = snapshot.read_bytes()  # the charging process's, over the three genuine charges
    data = ledger.read_bytes()
    assert data.count(b'"cost":"2"') == 1
    ledger.write_bytes(data.replace(b'"cost":"2"', b'"cost":"0"'))  # 2 units of spend forgotten
    _, stderr = user.communicate("go\n", timeout=120)

    assert user.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("caracal.exceptions.LedgerVerificationError: "), stderr
    assert "During handling of the above exception" not in stderr, stderr
    assert ", in close\n" not in stderr, stderr  # its traceback is the check's, not closing's
    assert "without saving the budget snapshot" in stderr
    assert snapshot.read_bytes() == saved
    verify = subprocess.run(
        [sys.executable, "-m", "caracal", "--home", str(home), "ledger", "verify"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode != 0, verify.stdout
