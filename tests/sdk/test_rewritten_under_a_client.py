"""Someone rewrites the ledger file under open clients, recomputing the chain, and the edit changes a
line's length. Clients in other processes fail closed (nothing is recorded on top of the rewrite) and
say what happened: the file changed under them. Before, they read on from their old byte offsets, in the
middle of a line, and named a line past the ledger's end as "not valid JSON"."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.bot_home import bot_home, charge_from_another_process

USER = """
import sys
from caracal.sdk.client import CaracalClient
client = CaracalClient(sys.argv[1])
try:
    client.emit_event("bot", "tool.calls", "1")  # its writer and its budget state now stand at a byte offset
    print("ready", flush=True)
    sys.stdin.readline()  # meanwhile: another process charges, and the file is rewritten
    if sys.argv[2] == "check":
        client.check("bot", "1")
    else:
        client.emit_event("bot", "tool.calls", "1")
finally:
    client.close()
"""


def rewrite_with_longer_cost(ledger: Path, event_id: int) -> None:
    """Event ``event_id``'s cost gets more digits (the same amount: 1 -> 1.00); every later prev_hash is
    recomputed, so the chain alone does not show it."""
    lines = ledger.read_bytes().splitlines()
    for index in range(event_id - 1, len(lines)):
        event = orjson.loads(lines[index])
        if index == event_id - 1:
            event["cost"] = f"{event['cost']}.00" if "." not in event["cost"] else f"{event['cost']}00"
        else:
            event["prev_hash"] = hashlib.sha256(b"\x00" + lines[index - 1]).hexdigest()
        lines[index] = orjson.dumps(event)
    ledger.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.files_only("rewrites the ledger file")
@pytest.mark.parametrize("action", ["check", "charge"])
def test_a_client_names_a_ledger_rewritten_under_it(tmp_path: Path, action: str) -> None:
    home = tmp_path / "home"
    ledger = bot_home(home, "100")
    charge_from_another_process(home, "1", "2")

    user = subprocess.Popen(
        [sys.executable, "-c", USER, str(home), action],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert user.stdout is not None
    assert user.stdout.readline() == "ready\n"
    charge_from_another_process(home, "3", "4")
    rewrite_with_longer_cost(ledger, 2)
    events = len(ledger.read_bytes().splitlines())
    _, stderr = user.communicate("go\n", timeout=120)

    assert user.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert "changed under this process" in last, stderr
    assert "not valid JSON" not in stderr
    # a check's budget state distrusts the ledger for good; a charge's writer refuses to append to it
    kind = "LedgerVerificationError" if action == "check" else "LedgerCorruptError"
    assert last.startswith(f"caracal.exceptions.{kind}: "), stderr
    assert len(ledger.read_bytes().splitlines()) == events  # nothing recorded on top of the rewrite
    if action == "charge":  # its writer had the first 3 events (2 of them as they were): it signed them
        assert "it signed a checkpoint of the first 3 events as it had them" in last, stderr
        checkpoints = Path(f"{ledger}.checkpoints").read_bytes().splitlines()
        assert orjson.loads(checkpoints[-1])["size"] == 3
