"""The API key registry: hashes only, authentication, revocation, the admin key, concurrency."""

from __future__ import annotations

import json
import stat
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from caracal.core.apikeys import hash_token, parse_token
from caracal.exceptions import (
    ApiKeyNotFoundError,
    AuthenticationError,
    InvalidApiKeyError,
    RegistryError,
)
from caracal.storage.apikeys import ApiKeyRegistry, default_admin_key_path, default_apikeys_path

AGENT = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
OTHER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def registry(tmp_path: Path) -> ApiKeyRegistry:
    return ApiKeyRegistry(tmp_path / "data" / "apikeys.json")


def test_default_paths(caracal_home: Path) -> None:
    assert default_apikeys_path() == caracal_home / "data" / "apikeys.json"
    assert default_admin_key_path() == caracal_home / "keys" / "admin.key"


def test_create_and_authenticate(registry: ApiKeyRegistry) -> None:
    key, token = registry.create("agent", AGENT, label="ci", clock=lambda: NOW)
    assert key.agent_id == AGENT and key.role == "agent" and key.label == "ci" and key.active
    assert key.created_at == NOW
    assert parse_token(token) == (key.key_id, token)
    principal = registry.authenticate(token)
    assert (principal.role, principal.key_id, principal.agent_id) == ("agent", key.key_id, AGENT)
    assert registry.get(key.key_id) == key
    _, admin_token = registry.create("admin")
    assert registry.authenticate(admin_token).role == "admin"
    assert registry.authenticate(admin_token).agent_id is None


def test_agent_id_is_canonicalized(registry: ApiKeyRegistry) -> None:
    key, _ = registry.create("agent", AGENT.upper())
    assert key.agent_id == AGENT


def test_only_the_hash_is_stored(registry: ApiKeyRegistry) -> None:
    key, token = registry.create("agent", AGENT)
    registry.create("admin")  # a second write: the first key is now in the backup too
    secret = token.split("_", 2)[2]
    for path in registry.path.parent.iterdir():
        data = path.read_bytes()
        assert token.encode() not in data and secret.encode() not in data, path
    record = json.loads(registry.path.read_text())["keys"][key.key_id]
    assert record["token_sha256"] == hash_token(token)
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600
    for backup in registry.path.parent.glob("apikeys.json.bak.*"):
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("role", "agent_id", "label"),
    [
        ("root", None, None),
        ("agent", None, None),
        ("agent", "research-bot", None),
        ("admin", AGENT, None),
        ("agent", AGENT, ""),
        ("agent", AGENT, "two\nlines"),
    ],
)
def test_bad_input_changes_nothing(
    registry: ApiKeyRegistry, role: str, agent_id: str | None, label: str | None
) -> None:
    with pytest.raises(InvalidApiKeyError):
        registry.create(role, agent_id, label)
    assert not registry.path.exists()


@pytest.mark.parametrize("token", [None, "", "   "])
def test_missing_token(registry: ApiKeyRegistry, token: str | None) -> None:
    registry.create("admin")
    with pytest.raises(AuthenticationError, match=r"^missing"):
        registry.authenticate(token)


@pytest.mark.parametrize(
    "token",
    ["nonsense", "Bearer x", "ck_" + "é" * 60, "ck_0123456789ab_" + "a" * 500, 42, b"ck_0123456789ab_x"],
)
def test_malformed_token(registry: ApiKeyRegistry, token: object) -> None:
    registry.create("admin")
    with pytest.raises(AuthenticationError, match=r"^invalid") as info:
        registry.authenticate(token)  # type: ignore[arg-type]
    assert "no API key exists" not in str(info.value)


def test_unknown_key_and_wrong_secret(registry: ApiKeyRegistry) -> None:
    key, token = registry.create("agent", AGENT)
    unknown = "ck_0123456789ab_" + token.split("_", 2)[2]
    with pytest.raises(AuthenticationError, match=r"^invalid"):
        registry.authenticate(unknown)
    secret = token.split("_", 2)[2]
    wrong = f"ck_{key.key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    with pytest.raises(AuthenticationError, match=r"^invalid") as info:
        registry.authenticate(wrong)
    assert secret[:-1] not in str(info.value)


def test_revoked_key_is_refused(registry: ApiKeyRegistry) -> None:
    key, token = registry.create("agent", AGENT)
    assert registry.authenticate(token).key_id == key.key_id  # cached now
    later = NOW + timedelta(hours=1)
    revoked = registry.revoke(key.key_id, clock=lambda: later)
    assert revoked.revoked_at == later and not revoked.active
    with pytest.raises(AuthenticationError, match=r"^revoked") as info:
        registry.authenticate(token)
    assert token not in str(info.value)
    again = registry.revoke(key.key_id, clock=lambda: later + timedelta(days=1))
    assert again == revoked  # revoking twice keeps the first revocation
    # another registry object (another process) sees it too
    with pytest.raises(AuthenticationError, match=r"^revoked"):
        ApiKeyRegistry(registry.path).authenticate(token)


def test_revoke_unknown(registry: ApiKeyRegistry) -> None:
    with pytest.raises(ApiKeyNotFoundError, match="no API keys exist"):
        registry.revoke("0123456789ab")
    registry.create("admin")
    for key_id in ("0123456789ab", "nonsense", ""):
        with pytest.raises(ApiKeyNotFoundError, match="no API key with id"):
            registry.revoke(key_id)


def test_empty_registry_says_how_to_create_a_key(registry: ApiKeyRegistry) -> None:
    for token in (None, "ck_0123456789ab_" + "a" * 43, "junk"):
        with pytest.raises(AuthenticationError, match="caracal init"):
            registry.authenticate(token)


def test_list(registry: ApiKeyRegistry) -> None:
    times = iter(NOW + timedelta(minutes=i) for i in range(10))
    a1, _ = registry.create("agent", AGENT, clock=lambda: next(times))
    b1, _ = registry.create("agent", OTHER, clock=lambda: next(times))
    a2, _ = registry.create("agent", AGENT, clock=lambda: next(times))
    admin, _ = registry.create("admin", clock=lambda: next(times))
    registry.revoke(a1.key_id)
    assert [k.key_id for k in registry.list()] == [b1.key_id, a2.key_id, admin.key_id]
    assert [k.key_id for k in registry.list(AGENT)] == [a2.key_id]
    assert [k.key_id for k in registry.list(AGENT, include_revoked=True)] == [a1.key_id, a2.key_id]
    assert len(registry.list(include_revoked=True)) == 4


def test_ensure_admin_key(tmp_path: Path, registry: ApiKeyRegistry) -> None:
    key_file = tmp_path / "keys" / "admin.key"
    token = registry.ensure_admin_key(key_file)
    assert token is not None
    assert key_file.read_text().strip() == token
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert registry.authenticate(token).role == "admin"
    assert registry.ensure_admin_key(key_file) is None
    assert key_file.read_text().strip() == token
    admins = [k for k in registry.list(include_revoked=True) if k.role == "admin"]
    assert len(admins) == 1
    # after a revocation, a new admin key replaces the (now useless) token
    registry.revoke(admins[0].key_id)
    second = registry.ensure_admin_key(key_file)
    assert second is not None and second != token
    assert key_file.read_text().strip() == second
    assert len([k for k in registry.list() if k.role == "admin"]) == 1


def test_ensure_admin_key_concurrently_makes_one(tmp_path: Path) -> None:
    path = tmp_path / "apikeys.json"
    key_file = tmp_path / "keys" / "admin.key"
    results: list[str | None] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(ApiKeyRegistry(path).ensure_admin_key(key_file))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = [token for token in results if token is not None]
    assert len(made) == 1
    assert key_file.read_text().strip() == made[0]
    assert len(ApiKeyRegistry(path).list()) == 1


def test_concurrent_creates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "apikeys.json"
    tokens: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        registry = ApiKeyRegistry(path)  # one object per thread, like separate processes
        barrier.wait()
        for _ in range(10):
            _, token = registry.create("agent", AGENT)
            with lock:
                tokens.append(token)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    registry = ApiKeyRegistry(path)
    assert len(registry.list()) == 80 == len(tokens)
    for token in tokens:
        assert registry.authenticate(token).agent_id == AGENT


def test_corrupt_file_fails_closed(registry: ApiKeyRegistry) -> None:
    _, token = registry.create("admin")
    document = json.loads(registry.path.read_text())
    record = next(iter(document["keys"].values()))
    record["role"] = "superuser"
    registry.path.write_text(json.dumps(document))
    with pytest.raises(RegistryError, match=r"bak\.1"):
        ApiKeyRegistry(registry.path).authenticate(token)
    registry.path.write_text("{not json")
    with pytest.raises(RegistryError):
        ApiKeyRegistry(registry.path).authenticate(token)
    with pytest.raises(RegistryError):
        ApiKeyRegistry(registry.path).create("admin")


def test_record_under_the_wrong_id_fails_closed(registry: ApiKeyRegistry) -> None:
    key, token = registry.create("admin")
    document = json.loads(registry.path.read_text())
    document["keys"]["ffffffffffff"] = document["keys"].pop(key.key_id)
    registry.path.write_text(json.dumps(document))
    with pytest.raises(RegistryError, match="ffffffffffff"):
        ApiKeyRegistry(registry.path).authenticate(token)


def test_unknown_fields_survive_other_changes(registry: ApiKeyRegistry) -> None:
    key, _ = registry.create("admin")
    document = json.loads(registry.path.read_text())
    document["keys"][key.key_id]["future"] = {"x": 1}
    registry.path.write_text(json.dumps(document))
    registry.create("agent", AGENT)
    assert json.loads(registry.path.read_text())["keys"][key.key_id]["future"] == {"x": 1}


def test_authenticate_is_cached(registry: ApiKeyRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    _, token = registry.create("agent", str(uuid.UUID(int=5)))
    registry.authenticate(token)
    calls = 0
    original = registry._parse

    def counting(document: dict[str, object]) -> object:
        nonlocal calls
        calls += 1
        return original(document)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "_parse", counting)
    fresh = ApiKeyRegistry(registry.path)
    fresh.authenticate(token)
    monkeypatch.setattr(fresh, "_parse", counting)
    for _ in range(100):
        fresh.authenticate(token)
    assert calls == 0  # unchanged bytes: never parsed again
