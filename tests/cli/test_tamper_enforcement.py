"""The attacks from outside, as a user with a shell on the home could run them: each must leave the budget
exactly as the genuine ledger says (a forged cache is ignored), or deny everything (a ledger that does not
verify is not trusted to decide), and ``caracal serve`` must refuse to start on such a ledger.

Every step runs as its own process (the CLI, the SDK in ``python -c``, ``caracal serve``), as a user's
processes would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from caracal.core.checkpoint import CheckpointStore
from caracal.core.merkle import leaf_hash
from tests.cli.test_cli_serve import reserved_port

RESOURCE = "tool.calls"
SPEND = """
import sys
from caracal.sdk.client import CaracalClient
client = CaracalClient()
for _ in range(int(sys.argv[1])):
    client.emit_event("worker", "tool.calls", 10)
client.close()
"""
RESERVE = """
import sys
from caracal.exceptions import BudgetExceededError, CaracalError
from caracal.sdk.client import CaracalClient
try:
    CaracalClient().reserve("worker", sys.argv[1])
except BudgetExceededError as exc:
    print("denied:", exc)
except CaracalError as exc:
    print("error:", type(exc).__name__, exc)
else:
    print("allowed")
"""


def run(*args: str, home: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CARACAL_HOME": str(home)},
    )
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    return done


def caracal(*args: str, home: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    return run("-m", "caracal", *args, home=home, code=code)


def make_home(home: Path, spent_calls: int) -> None:
    """A home whose agent ``worker`` has a 1.00 USD daily budget and has spent 0.10 per call."""
    caracal("init", home=home)
    caracal("agent", "register", "--name", "worker", "--owner", "o@example.com", home=home)
    caracal("policy", "create", "--agent-id", "worker", "--limit", "1.00", "--window", "daily", home=home)
    caracal("pricebook", "set", RESOURCE, "0.01", home=home)
    if spent_calls:
        run("-c", SPEND, str(spent_calls), home=home)


def spent(home: Path) -> Decimal:
    status = orjson.loads(caracal("budget", "status", "--agent-id", "worker", "--json", home=home).stdout)
    return Decimal(status[0]["spent"])


def reserve(home: Path, amount: str) -> str:
    return run("-c", RESERVE, amount, home=home).stdout.strip()


def ledger_lines(home: Path) -> list[bytes]:
    return (home / "data" / "ledger.jsonl").read_bytes().split(b"\n")[:-1]


def write_lines(home: Path, lines: list[bytes]) -> None:
    (home / "data" / "ledger.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["edited-seal-kept", "plain-json"])
def test_a_forged_budget_snapshot_does_not_give_budget_back(caracal_home: Path, how: str) -> None:
    make_home(caracal_home, spent_calls=9)
    assert spent(caracal_home) == Decimal("0.90")
    snapshot = caracal_home / "data" / "ledger.jsonl.budget"
    content = snapshot.read_bytes()
    header, _, payload = (
        content.partition(b"\n") if content.startswith(b"caracal-sealed") else (b"", b"", content)
    )
    data = orjson.loads(payload)
    data["state"]["spend"] = []  # spend totals to 0; offset and line hash kept
    forged = orjson.dumps(data)
    snapshot.write_bytes(header + b"\n" + forged if header and how == "edited-seal-kept" else forged)

    assert spent(caracal_home) == Decimal("0.90")
    assert reserve(caracal_home, "0.50").startswith("denied:")
    assert reserve(caracal_home, "0.10") == "allowed"
    caracal("ledger", "verify", home=caracal_home)  # the ledger itself is fine


def assert_refused(message: str) -> None:
    """A denial because the ledger does not check out: the enforcer's replay ("failed verification at
    event N") or the ledger writer's own checks on open (a broken chain, a tail shorter than a signed
    checkpoint, a ledger that no longer hashes to the writer's sealed state) got there first; either way
    nothing is decided on it and the person is sent to verify."""
    assert "error" in message and "caracal ledger verify" in message, message
    assert any(
        words in message
        for words in (
            "failed verification at event",
            "does not chain",
            "truncated",
            "no longer has the bytes",
        )
    ), message


def rechain(lines: list[bytes], start: int) -> list[bytes]:
    for index in range(start, len(lines)):
        data = orjson.loads(lines[index])
        data["prev_hash"] = leaf_hash(lines[index - 1]).hex()
        lines[index] = orjson.dumps(data)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("how", ["every-line", "every-line-rechained", "all-but-the-last"])
def test_costs_edited_to_zero_deny_everything(caracal_home: Path, how: str) -> None:
    make_home(caracal_home, spent_calls=9)  # closing the client signs a checkpoint over all 9
    lines = ledger_lines(caracal_home)
    edited = lines if how != "all-but-the-last" else lines[:-1]  # "0.10" -> "0.00": same length
    for index, line in enumerate(edited):
        data = orjson.loads(line)
        data["cost"] = "0.00"
        lines[index] = orjson.dumps(data)
    write_lines(caracal_home, rechain(lines, 1) if how == "every-line-rechained" else lines)
    (caracal_home / "data" / "ledger.jsonl.budget").unlink()

    denied = caracal("budget", "status", "--agent-id", "worker", home=caracal_home, code=1)
    assert_refused(denied.stderr.splitlines()[-1])
    assert_refused(reserve(caracal_home, "0.10"))
    assert caracal("ledger", "verify", home=caracal_home, code=3).returncode == 3
    assert len(ledger_lines(caracal_home)) == 9  # nothing was appended


@pytest.mark.slow
@pytest.mark.parametrize("with_checkpoints", [False, True])
def test_another_homes_ledger_dropped_in_denies(
    tmp_path: Path, caracal_home: Path, with_checkpoints: bool
) -> None:
    make_home(caracal_home, spent_calls=9)
    other = tmp_path / "other-home"
    make_home(other, spent_calls=1)
    data = caracal_home / "data"
    for name in ("ledger.jsonl", "ledger.jsonl.budget", "ledger.jsonl.merkle") + (
        ("ledger.jsonl.checkpoints",) if with_checkpoints else ()
    ):
        shutil.copy(other / "data" / name, data / name)
    # (agent ids differ between homes: the other ledger's spend belongs to an agent this home does not know)
    assert_refused(reserve(caracal_home, "0.50"))
    caracal("ledger", "verify", home=caracal_home, code=3)


@pytest.mark.slow
def test_caracal_serve_refuses_to_start_on_a_ledger_that_fails_verification(caracal_home: Path) -> None:
    make_home(caracal_home, spent_calls=3)
    lines = ledger_lines(caracal_home)
    data = orjson.loads(lines[0])
    data["cost"] = "0.00"
    lines[0] = orjson.dumps(data)
    write_lines(caracal_home, lines)
    (caracal_home / "data" / "ledger.jsonl.budget").unlink()
    with reserved_port() as port:
        done = caracal("serve", "--port", str(port), home=caracal_home, code=1)
    assert "failed verification at event 1" in done.stderr


@pytest.mark.slow
def test_a_tail_cut_with_the_checkpoints_deleted_is_caught_by_the_sealed_snapshot(caracal_home: Path) -> None:
    """The attacker cuts the last entries and deletes the checkpoint file that would have shown it: nothing
    signed is left to compare against, but the sealed budget snapshot saw the longer ledger."""
    make_home(caracal_home, spent_calls=9)  # the client's close sealed a snapshot at event 9
    lines = ledger_lines(caracal_home)
    write_lines(caracal_home, lines[:5])
    (caracal_home / "data" / "ledger.jsonl.checkpoints").unlink()
    (caracal_home / "data" / "ledger.jsonl.merkle").unlink()
    denied = caracal("budget", "status", "--agent-id", "worker", home=caracal_home, code=1)
    assert "its tail was removed" in denied.stderr and "ledger.jsonl.budget" in denied.stderr
    assert_refused(reserve(caracal_home, "0.50"))
    # An operator who restored an older ledger on purpose deletes the snapshot, as the message says.
    (caracal_home / "data" / "ledger.jsonl.budget").unlink()
    assert spent(caracal_home) == Decimal("0.50")


def test_an_edit_of_the_last_line_is_not_laundered_by_the_next_write(tmp_path: Path) -> None:
    """The ledger's last line: no later line's ``prev_hash`` covers it. A script that never closes its
    client (v0.1's pattern) still gets its lines signed when it exits; lowering the last line's cost
    afterwards (same id, valid JSON) must not become the record when the next process appends after it:
    every write is refused, and ``verify`` fails."""
    home = tmp_path / "home"
    make_home(home, spent_calls=3)
    run("-c", SPEND.replace("client.close()", ""), "1", home=home)  # never closes: signed at exit
    ledger = home / "data" / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    last = orjson.loads(lines[-1])
    assert (last["event_id"], last["cost"]) == (4, "0.10")
    assert max(c.size for c in CheckpointStore(ledger.with_name("ledger.jsonl.checkpoints"))) == 4
    edited = lines[-1].replace(b'"cost":"0.10"', b'"cost":"0.01"', 1)
    ledger.write_bytes(b"".join(lines[:-1]) + edited)

    refused = run("-c", SPEND, "1", home=home, code=1)
    assert "event 4 no longer has the bytes" in refused.stderr
    assert reserve(home, "0.05").startswith("error:")
    assert ledger.read_bytes().splitlines(keepends=True)[-1] == edited  # nothing chained onto it
    report = orjson.loads(caracal("ledger", "verify", "--json", home=home, code=3).stdout)
    assert {p["kind"] for p in report["problems"]} >= {"checkpoint", "writer-state"}, report["problems"]


@pytest.mark.slow
def test_an_edit_under_a_genuine_snapshot_changes_no_budget_and_stays_evident(caracal_home: Path) -> None:
    """An edit in the middle of the ledger (same length, valid JSON) that a genuine sealed snapshot already
    covers: the budget stays what the genuine ledger says, so decisions need no replay and stay exact
    (0.90 spent: 0.50 is denied, 0.10 allowed). Writing on does not launder the edit: the new entries
    chain onto the genuine state and the checkpoints signed after them are over the genuine bytes, so
    ``verify`` still fails at the edited event."""
    make_home(caracal_home, spent_calls=9)
    lines = ledger_lines(caracal_home)
    lines[3] = lines[3].replace(b'"cost":"0.10"', b'"cost":"0.01"', 1)
    write_lines(caracal_home, lines)

    assert spent(caracal_home) == Decimal("0.90")
    assert reserve(caracal_home, "0.50").startswith("denied:")
    assert reserve(caracal_home, "0.10") == "allowed"
    caracal("ledger", "checkpoint", home=caracal_home)
    report = orjson.loads(caracal("ledger", "verify", "--json", home=caracal_home, code=3).stdout)
    chain = [p for p in report["problems"] if p["kind"] == "chain"]
    assert [p["event_id"] for p in chain] == [4], report["problems"]
    assert {p["kind"] for p in report["problems"]} >= {"checkpoint", "writer-state"}, report["problems"]
