"""``caracal init``'s admin key and ``caracal agent key create | revoke | list``, run as a user would."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from caracal.cli.main import main
from caracal.exceptions import AuthenticationError
from caracal.storage.apikeys import ApiKeyRegistry


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.stdout, result.stderr)
    return result


def run_json(*args: str, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code).stdout)


def registry(home: Path) -> ApiKeyRegistry:
    return ApiKeyRegistry(home / "data" / "apikeys.json")


@pytest.fixture
def agents(caracal_home: Path) -> dict[str, str]:
    run("init")
    bot = run_json("agent", "register", "--name", "bot", "--owner", "me@example.com")
    other = run_json("agent", "register", "--name", "other", "--owner", "me@example.com")
    return {"bot": bot["agent_id"], "other": other["agent_id"]}


def test_init_creates_one_admin_key(caracal_home: Path) -> None:
    result = run("init")
    key_file = caracal_home / "keys" / "admin.key"
    token = key_file.read_text().strip()
    assert token not in result.stdout + result.stderr  # the path is printed, never the token
    assert str(key_file) in result.stdout
    assert "admin API key" in result.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((caracal_home / "data" / "apikeys.json").stat().st_mode) == 0o600
    assert token.encode() not in (caracal_home / "data" / "apikeys.json").read_bytes()
    assert registry(caracal_home).authenticate(token).role == "admin"

    again = run_json("init")
    item = next(i for i in again["items"] if i["item"] == "admin API key")
    assert item["status"] == "exists" and item["path"] == str(key_file)
    assert token not in json.dumps(again)
    assert key_file.read_text().strip() == token
    keys = registry(caracal_home).list(include_revoked=True)
    assert [k.role for k in keys] == ["admin"]
    assert "nothing was changed" in run("init").stdout


def test_init_warns_when_the_admin_key_file_is_gone(caracal_home: Path) -> None:
    run("init")
    (caracal_home / "keys" / "admin.key").unlink()
    result = run_json("init")
    item = next(i for i in result["items"] if i["item"] == "admin API key")
    assert item["status"] == "exists" and "missing" in item["detail"]
    assert len(registry(caracal_home).list()) == 1


def test_create_list_revoke(caracal_home: Path, agents: dict[str, str]) -> None:
    result = run("agent", "key", "create", "bot", "--label", "ci runner")
    token = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("token: "))
    assert "cannot be shown again" in result.stderr
    principal = registry(caracal_home).authenticate(token)
    assert principal.agent_id == agents["bot"] and principal.role == "agent"

    created = run_json("agent", "key", "create", agents["bot"])
    assert created["agent_id"] == agents["bot"] and created["agent_name"] == "bot"
    assert created["token"].startswith(f"ck_{created['key_id']}_")
    assert "cannot be shown again" in created["warning"]
    assert "token_sha256" not in created

    listed = run_json("agent", "key", "list", "bot")
    assert len(listed) == 2 and all(k["agent_id"] == agents["bot"] for k in listed)
    everything = run_json("agent", "key", "list")
    assert sorted(k["role"] for k in everything) == ["admin", "agent", "agent"]
    assert run_json("agent", "key", "list", "other") == []
    text = run("agent", "key", "list").stdout
    assert "ci runner" in text and "bot" in text and "(admin)" in text
    hashes = [k.token_sha256 for k in registry(caracal_home).list()]
    for output in (json.dumps(listed), json.dumps(everything), text):
        assert token not in output and created["token"] not in output
        assert not any(h in output for h in hashes)

    revoked = run_json("agent", "key", "revoke", created["key_id"])
    assert revoked["active"] is False and revoked["revoked_at"]
    with pytest.raises(AuthenticationError, match="revoked"):
        registry(caracal_home).authenticate(created["token"])
    assert "already revoked" in run("agent", "key", "revoke", created["key_id"]).stdout
    assert len(run_json("agent", "key", "list", "bot")) == 1
    assert len(run_json("agent", "key", "list", "bot", "--all")) == 2
    assert "revoked API key" in run("agent", "key", "revoke", principal.key_id).stdout
    assert "no active API keys" in run("agent", "key", "list", "bot").stdout


def test_unknown_agent(caracal_home: Path, agents: dict[str, str]) -> None:
    result = run("agent", "key", "create", "nobody", code=1)
    assert "error: no agent named 'nobody'" in result.stderr
    result = run("agent", "key", "create", "00000000-0000-4000-8000-000000000000", code=1)
    assert "no agent with id" in result.stderr
    assert "error:" in run("agent", "key", "list", "nobody", code=1).stderr
    assert [k.role for k in registry(caracal_home).list()] == ["admin"]


@pytest.mark.parametrize("key_id", ["0123456789ab", "not-a-key"])
def test_unknown_key_id(caracal_home: Path, agents: dict[str, str], key_id: str) -> None:
    result = run("agent", "key", "revoke", key_id, code=1)
    assert f"error: no API key with id {key_id!r}" in result.stderr


def test_bad_label(caracal_home: Path, agents: dict[str, str]) -> None:
    result = run("agent", "key", "create", "bot", "--label", "a\tb", code=1)
    assert "label" in result.stderr
    assert len(registry(caracal_home).list()) == 1  # the admin key only


def test_keys_without_init(caracal_home: Path) -> None:
    bot = run_json("agent", "register", "--name", "bot", "--owner", "me@example.com")
    assert run("agent", "key", "list").stdout.startswith("no active API keys")
    created = run_json("agent", "key", "create", "bot")
    assert created["agent_id"] == bot["agent_id"]
