"""``caracal migrate --to`` and ``caracal ledger export``, as a user runs them: the CLI as a subprocess, on a
real embedded home, into a real PostgreSQL schema.

A home is built with the CLI (agents, a policy, prices, charges, holds), migrated, and then every answer
must be the same from the database as it was from the files: budget status, the ledger's events, its
verification, and an export that is byte for byte the file the home had. A source that fails verification
is not carried over; a target that holds another ledger is refused; a migration that stopped part-way
resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caracal.config import Settings
from caracal.storage.backends import open_backend
from tests.pg import database_url_or_skip


def caracal(
    home: Path, *args: str, check: bool = True, database: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARACAL_HOME": str(home)}
    env.pop("CARACAL_DATABASE_URL", None)
    if database is not None:
        env["CARACAL_DATABASE_URL"] = database
    result = subprocess.run(
        [sys.executable, "-m", "caracal", *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return database_url_or_skip(request)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home on files with a team, a policy, prices and a few hundred entries (charges, holds)."""
    home = tmp_path / "home"
    caracal(home, "init")
    caracal(home, "agent", "register", "--name", "team", "--owner", "ops@example.com")
    caracal(home, "agent", "register", "--name", "worker", "--owner", "ops@example.com", "--parent", "team")
    caracal(home, "policy", "create", "--agent-id", "team", "--limit", "500.00", "--window", "total")
    caracal(home, "pricebook", "set", "tool.search", "0.25")
    script = (
        "from caracal.sdk.client import CaracalClient\n"
        "with CaracalClient() as c:\n"
        "    for i in range(120):\n"
        "        h = c.reserve('worker', '0.50')\n"
        "        c.settle(h, [{'resource_type': 'tool.search', 'quantity': '1', 'cost': '0.25'}])\n"
        "    c.reserve('worker', '1.00', ttl=3600)\n"
    )
    subprocess.run([sys.executable, "-c", script], env={**os.environ, "CARACAL_HOME": str(home)}, check=True)
    caracal(home, "ledger", "checkpoint")
    return home


def status(home: Path, database: str | None = None) -> object:
    return json.loads(caracal(home, "budget", "status", "--json", database=database).stdout)


def test_a_migrated_home_answers_exactly_as_it_did_on_files(home: Path, url: str, tmp_path: Path) -> None:
    before = status(home)
    events_before = json.loads(caracal(home, "ledger", "query", "--all", "--json").stdout)
    original = (home / "data" / "ledger.jsonl").read_bytes()

    moved = json.loads(caracal(home, "migrate", "--to", url, "--json").stdout)
    assert moved["events"] == len(original.splitlines()) == moved["copied"]
    assert moved["verified"] is True and moved["config_updated"] is True
    assert set(moved["registries"]) >= {"agents", "policies", "prices", "apikeys"}
    assert f'url = "{url}"' in (home / "config.toml").read_text()

    # Every command now reads the database: same answers.
    assert status(home) == before
    assert json.loads(caracal(home, "ledger", "query", "--all", "--json").stdout) == events_before
    verified = json.loads(caracal(home, "ledger", "verify", "--json").stdout)
    assert verified["ok"] is True and verified["events"] == len(original.splitlines())
    assert verified["ledger"].startswith("postgresql://") and verified["bytes"] is None  # no file here
    told = caracal(home, "ledger", "verify").stdout
    assert "ledger:      postgresql://" in told and "bytes" not in told and "OK" in told
    exported = tmp_path / "export.jsonl"
    caracal(home, "ledger", "export", str(exported))
    assert exported.read_bytes() == original  # the same bytes the file backend wrote
    assert caracal(home, "ledger", "verify", "--ledger", str(exported)).returncode == 0

    # And it goes on from there: the next charge continues the chain, on the database.
    caracal(home, "ledger", "append", "--agent-id", "worker", "--resource-type", "tool.search",
            "--quantity", "1", "--cost", "0.25")  # fmt: skip
    assert (home / "data" / "ledger.jsonl").read_bytes() == original  # the files are left as they were
    after = json.loads(caracal(home, "ledger", "verify", "--json").stdout)
    assert after["ok"] is True and after["events"] == len(original.splitlines()) + 1


def test_a_ledger_that_fails_verification_is_not_migrated(home: Path, url: str) -> None:
    ledger = home / "data" / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"cost":"0.25"' in line)
    lines[index] = lines[index].replace(b'"cost":"0.25"', b'"cost":"0.00"')  # a charge made free
    ledger.write_bytes(b"".join(lines))
    result = caracal(home, "migrate", "--to", url, check=False)
    assert result.returncode != 0
    assert "fails verification" in result.stderr and "nothing was copied" in result.stderr
    assert "[storage]\nurl" not in (home / "config.toml").read_text().replace("# url", "")
    backend = open_backend(home, Settings(), url)
    try:
        store = backend.ledger_store(lock_timeout=5, backup_count=0, backup_min_interval=0)
        assert store.end() == 0
        store.close()
    finally:
        backend.close()


def test_a_target_holding_another_ledger_is_refused_and_a_prefix_is_resumed(
    home: Path, url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    other = tmp_path / "other"
    caracal(other, "init")
    caracal(other, "agent", "register", "--name", "x", "--owner", "ops@example.com")
    caracal(other, "ledger", "append", "--agent-id", "x", "--resource-type", "r", "--quantity", "1",
            "--cost", "1")  # fmt: skip
    assert caracal(other, "migrate", "--to", url, "--keep-config").returncode == 0
    refused = caracal(home, "migrate", "--to", url, check=False)
    assert refused.returncode != 0 and "migrate into an empty database" in refused.stderr

    # A prefix of this very ledger (a migration that stopped part-way) is continued, not refused.
    fresh = database_url_or_skip(request)  # a second schema
    backend = open_backend(home, Settings(), fresh)
    backend.initialize()
    store = backend.ledger_store(lock_timeout=5, backup_count=0, backup_min_interval=0)
    first = (home / "data" / "ledger.jsonl").read_bytes().splitlines()[:40]
    store.begin()
    store.write(first, 1)
    store.finish()
    store.close()
    backend.close()
    moved = json.loads(caracal(home, "migrate", "--to", fresh, "--json").stdout)
    assert moved["resumed_from"] == 40 and moved["copied"] == moved["events"] - 40
