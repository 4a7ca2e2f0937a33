"""The ``caracal ledger`` commands, run as a user would: real files, real exit codes, real output."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from caracal.cli.main import main
from tests.bot_home import bot_home, charge_from_another_process


def run(*args: str, ok: bool = True) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (result.output, result.stderr)
    return result.exit_code, result.stdout, result.stderr


def append(ledger: Path, agent: str, cost: str, *extra: str) -> dict:
    _, out, _ = run(
        "ledger", "append", "--ledger", str(ledger), "--json", "--agent-id", agent,
        "--resource-type", "openai.gpt-4o.input_tokens", "--quantity", "1000", "--cost", cost, *extra,
    )  # fmt: skip
    (event,) = json.loads(out)
    return event


def test_append_prints_the_durable_event_and_keeps_the_exact_decimal(ledger_path: Path) -> None:
    first = append(ledger_path, "agent-1", "0.030")
    second = append(ledger_path, "agent-2", "0.0025", "--metadata", '{"run": 7}')
    assert (first["event_id"], second["event_id"]) == (1, 2)
    assert first["cost"] == "0.030"
    assert second["metadata"] == {"run": 7}
    assert '"cost":"0.030"' in ledger_path.read_text().splitlines()[0]


@pytest.mark.parametrize(
    "bad",
    [
        ["--cost", "-1"],
        ["--cost", "abc"],
        ["--cost", "nan"],
        ["--currency", "usd"],
        ["--metadata", "[1, 2]"],
        ["--metadata", "{not json"],
        ["--timestamp", "yesterday"],
    ],
)
def test_bad_append_input_exits_1_with_a_message_and_writes_nothing(
    ledger_path: Path, bad: list[str]
) -> None:
    append(ledger_path, "agent-1", "0.5")
    before = ledger_path.read_bytes()
    args = ["ledger", "append", "--ledger", str(ledger_path), "--agent-id", "a", "--resource-type", "r"]
    args += ["--quantity", "1", "--cost", "0.1"]
    args += bad
    code, _, err = run(*args, ok=False)
    assert code == 1
    assert err.startswith("error: ")
    assert ledger_path.read_bytes() == before


def test_the_default_ledger_lives_in_caracal_home(caracal_home: Path) -> None:
    run("ledger", "append", "--agent-id", "a", "--resource-type", "r", "--quantity", "1", "--cost", "1")
    assert (caracal_home / "data" / "ledger.jsonl").exists()
    assert (caracal_home / "keys" / "checkpoint.key").exists()
    _, out, _ = run("ledger", "query", "--json")
    assert [e["agent_id"] for e in json.loads(out)] == ["a"]


def test_query_filters_and_date_end_covers_the_whole_day(ledger_path: Path) -> None:
    for day, agent in [
        ("2024-01-01T00:00:00Z", "a"),
        ("2024-01-31T23:59:59Z", "a"),
        ("2024-02-01T00:00:00Z", "b"),
    ]:
        append(ledger_path, agent, "1", "--timestamp", day)
    window = ["--start", "2024-01-01", "--end", "2024-01-31"]
    _, out, _ = run("ledger", "query", "--ledger", str(ledger_path), *window, "--json")
    assert [e["event_id"] for e in json.loads(out)] == [1, 2]
    _, out, _ = run("ledger", "query", "--ledger", str(ledger_path), "--agent-id", "b", "--json")
    assert [e["event_id"] for e in json.loads(out)] == [3]
    _, table, _ = run("ledger", "query", "--ledger", str(ledger_path))
    assert table.splitlines()[0].split()[:3] == ["ID", "TIMESTAMP", "AGENT"]
    assert len(table.splitlines()) == 2 + 3
    backwards = ["--start", "2024-02-01", "--end", "2024-01-01"]
    code, _, err = run("ledger", "query", "--ledger", str(ledger_path), *backwards, ok=False)
    assert code == 1 and "after" in err


def test_summary_groups_exactly(ledger_path: Path) -> None:
    append(ledger_path, "a", "0.1")
    append(ledger_path, "a", "0.2")
    append(ledger_path, "b", "0.3")
    _, out, _ = run("ledger", "summary", "--ledger", str(ledger_path), "--by", "agent", "--json")
    rows = {row["agent"]: row for row in json.loads(out)}
    assert rows["a"]["cost"] == "0.3" and rows["a"]["events"] == 2
    assert rows["b"]["cost"] == "0.3"
    _, table, _ = run("ledger", "summary", "--ledger", str(ledger_path))
    assert "TOTAL" in table and "0.6" in table


def test_verify_passes_then_fails_with_exit_3_naming_the_first_bad_event(ledger_path: Path) -> None:
    for n in range(5):
        append(ledger_path, "a", f"0.{n + 1}")
    run("ledger", "checkpoint", "--ledger", str(ledger_path))
    _, out, _ = run("ledger", "verify", "--ledger", str(ledger_path))
    assert "OK" in out
    lines = ledger_path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"cost":"0.3"', b'"cost":"0.0"')
    ledger_path.write_bytes(b"\n".join(lines))
    code, out, err = run("ledger", "verify", "--ledger", str(ledger_path), ok=False)
    assert code == 3
    assert "first bad event: 3" in err
    code, out, _ = run("ledger", "verify", "--ledger", str(ledger_path), "--json", ok=False)
    report = json.loads(out)
    assert code == 3 and report["ok"] is False and report["first_bad_event_id"] == 3


def test_verify_says_when_it_knows_only_a_range(tmp_path: Path) -> None:
    """A rewrite that recomputed the chain is caught by a signed checkpoint, which says that some event up
    to its size changed, not which: the output must not name the range's start as the bad event."""
    home = tmp_path / "home"
    ledger = bot_home(home, "100")
    charge_from_another_process(home, "1", "2", "3", "4", "5")  # one writer: one checkpoint, at 5
    lines = ledger.read_bytes().rstrip(b"\n").split(b"\n")
    lines[2] = lines[2].replace(b'"cost":"3"', b'"cost":"0"')
    for index in range(3, len(lines)):
        event = json.loads(lines[index])
        event["prev_hash"] = hashlib.sha256(b"\x00" + lines[index - 1]).hexdigest()
        lines[index] = json.dumps(event, separators=(",", ":")).encode()
    ledger.write_bytes(b"\n".join(lines) + b"\n")
    code, _, err = run("--home", str(home), "ledger", "verify", ok=False)
    assert code == 3
    assert "first bad event: not known exactly, event 1 or a later one" in err, err
    assert "some event from 1 to 5 was rewritten" in err
    assert "first bad event: 1\n" not in err


def test_verify_of_a_missing_ledger_is_an_error(tmp_path: Path) -> None:
    code, _, err = run("ledger", "verify", "--ledger", str(tmp_path / "nope.jsonl"), ok=False)
    assert code == 1 and "no ledger" in err


def test_checkpoint_and_proofs_verify(ledger_path: Path) -> None:
    for n in range(9):
        append(ledger_path, "a", str(n))
    _, out, _ = run("ledger", "checkpoint", "--ledger", str(ledger_path), "--json")
    checkpoint = json.loads(out)
    assert checkpoint["size"] == 9
    _, out, _ = run("ledger", "proof", "--ledger", str(ledger_path), "--event-id", "4", "--json")
    proof = json.loads(out)
    assert proof["treeSize"] == 9 and proof["root"] == checkpoint["root"]
    assert proof["matches_signed_checkpoint"] is True
    _, out, _ = run("ledger", "proof", "--ledger", str(ledger_path), "--from-size", "3", "--json")
    assert json.loads(out)["size2"] == 9
    code, _, err = run("ledger", "proof", "--ledger", str(ledger_path), "--event-id", "10", ok=False)
    assert code == 1 and "not within" in err
    code, _, err = run("ledger", "proof", "--ledger", str(ledger_path), ok=False)
    assert code == 1 and "--event-id" in err


def test_tail_shows_the_last_events(ledger_path: Path) -> None:
    for n in range(12):
        append(ledger_path, "a", str(n))
    _, out, _ = run("ledger", "tail", "--ledger", str(ledger_path), "-n", "3", "--json")
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == [10, 11, 12]


def test_tail_follow_prints_events_appended_by_another_process(ledger_path: Path) -> None:
    append(ledger_path, "a", "1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "caracal", "ledger", "tail", "--ledger", str(ledger_path), "-n", "1", "-f",
         "--json", "--interval", "0.05"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        # The follower prints the last event before it starts following; once it has, anything appended is
        # after its starting point.
        assert select.select([follower.stdout], [], [], 60)[0], "tail printed nothing"
        assert json.loads(follower.stdout.readline())["agent_id"] == "a"
        append(ledger_path, "b", "2")
        assert select.select([follower.stdout], [], [], 60)[0], "tail did not follow the new event"
        assert json.loads(follower.stdout.readline())["agent_id"] == "b"
    finally:
        follower.kill()
        follower.wait(timeout=10)


def test_demo_runs_end_to_end_and_catches_the_tampered_copy(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "caracal",
            "ledger",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--batch",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "OK: the ledger is intact" in result.stdout
    assert "verify of the tampered copy: FAILED; first bad event: 2" in result.stdout
    assert (tmp_path / "demo" / "data" / "ledger.jsonl").exists()


def caracal(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a fresh process on the test's home ($CARACAL_HOME is inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "caracal", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_append_in_a_home_records_the_registered_agent_and_refuses_unknown_ones(tmp_path: Path) -> None:
    """In an initialized home, `ledger append --agent-id c1` charges the registered agent c1 (by its id), so
    the charge counts against c1's own policy as well as its parent's; an unknown agent is refused and
    nothing is written. A ledger outside the home still records ids as given."""
    assert caracal("init").returncode == 0
    assert caracal("agent", "register", "--name", "team", "--owner", "ops").returncode == 0
    registered = caracal("agent", "register", "--name", "c1", "--owner", "ops", "--parent", "team", "--json")
    c1 = json.loads(registered.stdout)["agent_id"]
    for agent in ("team", "c1"):
        assert caracal("policy", "create", "--agent-id", agent, "--limit", "10").returncode == 0

    charge = ["--resource-type", "tool.search.calls", "--quantity", "1", "--cost", "0.25"]
    for ref in ("c1", "C1", c1):
        appended = caracal("ledger", "append", "--agent-id", ref, *charge, "--json")
        assert appended.returncode == 0, appended.stderr
        assert json.loads(appended.stdout)[0]["agent_id"] == c1
    status = caracal("budget", "status", "--agent-id", "c1", "--json")
    assert status.returncode == 0, status.stderr
    assert [s["spent"] for s in json.loads(status.stdout)] == ["0.75", "0.75"]  # c1's policy and team's

    ledger = Path(os.environ["CARACAL_HOME"]) / "data" / "ledger.jsonl"
    before = ledger.read_bytes()
    unknown = caracal("ledger", "append", "--agent-id", "nobody", *charge)
    assert unknown.returncode == 1
    assert "no agent named 'nobody'" in unknown.stderr and "caracal agent register" in unknown.stderr
    assert ledger.read_bytes() == before

    elsewhere = tmp_path / "plain" / "ledger.jsonl"
    plain = caracal("ledger", "append", "--ledger", str(elsewhere), "--agent-id", "nobody", *charge, "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)[0]["agent_id"] == "nobody"
