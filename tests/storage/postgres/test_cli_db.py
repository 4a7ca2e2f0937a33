"""``caracal db upgrade`` and ``caracal db status``, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

CARACAL = [sys.executable, "-m", "caracal"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CARACAL, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def with_password(url: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def test_status_then_upgrade_then_status(pg_url: str) -> None:
    url = with_password(pg_url, "hunter2")  # trust auth ignores it; messages must never show it
    before = run("db", "status", "--database", url)
    assert before.returncode == 1 and "version:  0" in before.stdout and "caracal db upgrade" in before.stdout
    upgraded = run("db", "upgrade", "--database", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "from version 0 to 1" in upgraded.stdout
    again = run("db", "upgrade", "--database", url, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["previous_version"] == 1
    status = run("db", "status", "--json", env={"CARACAL_DATABASE_URL": url})
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["version"] == found["known"] == 1 and found["state"] == "current"
    assert found["schema"].startswith("caracal_t_")
    for result in (before, upgraded, again, status):
        assert "hunter2" not in result.stdout + result.stderr


def test_the_url_comes_from_the_home_config(pg_url: str, caracal_home: Path) -> None:
    (caracal_home / "config.toml").write_text(f'[storage]\nurl = "{pg_url}"\n')
    env = {"CARACAL_DATABASE_URL": ""}
    assert run("db", "upgrade", env=env).returncode == 0
    assert json.loads(run("db", "status", "--json", env=env).stdout)["version"] == 1


def test_a_home_on_files_has_no_database(caracal_home: Path) -> None:
    result = run("db", "status", env={"CARACAL_DATABASE_URL": ""})
    assert result.returncode == 1 and "keeps its data in files" in result.stderr


def test_an_unreachable_database_is_a_one_line_error(closed_port: int) -> None:
    result = run("db", "upgrade", "--database", f"postgresql://u:pw@127.0.0.1:{closed_port}/db")
    assert result.returncode == 1
    assert (
        result.stderr.startswith("error: ")
        and "pw@" not in result.stderr
        and "Traceback" not in result.stderr
    )


def test_init_on_a_database_names_where_things_are(pg_url: str, tmp_path: Path) -> None:
    """``caracal init --database`` shows the database's URL as it is (not folded into a path) and no
    ledger file: on a database home the ledger and registries are rows."""
    home = tmp_path / "home"
    env = {**os.environ, "CARACAL_HOME": str(home)}
    env.pop("CARACAL_DATABASE_URL", None)
    done = run("init", "--database", pg_url, "--json", env=env)
    items = {item["item"]: item for item in json.loads(done.stdout)["items"]}
    for name in ("database", "ledger", "agents", "policies", "prices"):
        assert items[name]["path"].startswith("postgresql://"), items[name]
    assert not (home / "data").exists()
    # a fresh schema: everything is new, nothing "exists"; run again, everything exists
    assert {items[name]["status"] for name in ("database", "agents", "policies", "prices")} == {"created"}
    again = run("init", "--database", pg_url, "--json", env=env)
    items = {item["item"]: item for item in json.loads(again.stdout)["items"]}
    assert {items[name]["status"] for name in ("database", "agents", "policies", "prices")} == {"exists"}
