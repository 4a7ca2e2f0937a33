"""API key tokens, hashes, records and principals (pure)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

import pytest

from caracal.core.apikeys import (
    MAX_TOKEN_LENGTH,
    ApiKey,
    Principal,
    generate_token,
    hash_token,
    parse_token,
    token_matches,
)
from caracal.exceptions import InvalidApiKeyError, PermissionDeniedError, RegistryError

NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
AGENT_ID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def test_generated_token_round_trips() -> None:
    key_id, token = generate_token()
    assert len(key_id) == 12 and all(c in "0123456789abcdef" for c in key_id)
    assert token.startswith(f"ck_{key_id}_")
    assert len(token) <= MAX_TOKEN_LENGTH
    assert parse_token(token) == (key_id, token)
    assert token_matches(token, hash_token(token))


def test_tokens_are_unique() -> None:
    tokens = {generate_token()[1] for _ in range(200)}
    assert len(tokens) == 200


def test_hash_is_sha256_hex() -> None:
    _, token = generate_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize(
    "bad",
    [
        None,
        0,
        12345,
        b"ck_0123456789ab_" + b"a" * 43,
        "",
        " ",
        "ck_",
        "ck_0123456789ab",
        "ck_0123456789ab_",
        "ck_0123456789ab_short",
        "xx_0123456789ab_" + "a" * 43,
        "CK_0123456789ab_" + "a" * 43,
        "ck_0123456789AB_" + "a" * 43,
        "ck_0123456789a_" + "a" * 43,
        "ck_0123456789ab-" + "a" * 43,
        "ck_0123456789ab_" + "é" * 43,
        "ck_0123456789ab_" + "a" * 42 + "\n",
        "ck_0123456789ab_" + "a" * 20 + " " + "a" * 22,
        " ck_0123456789ab_" + "a" * 43,
        "ck_0123456789ab_" + "a" * 1000,
        "ck_0123456789ab_" + "a" * (MAX_TOKEN_LENGTH - 15),
        "ck_0123456789ab_" + "a" * 43 + "\x00",
        ["ck_0123456789ab_" + "a" * 43],
    ],
)
def test_malformed_tokens_parse_to_none(bad: object) -> None:
    assert parse_token(bad) is None


def test_longest_accepted_token() -> None:
    token = "ck_0123456789ab_" + "a" * (MAX_TOKEN_LENGTH - 16)
    assert len(token) == MAX_TOKEN_LENGTH
    assert parse_token(token) == ("0123456789ab", token)


def test_wrong_token_does_not_match() -> None:
    key_id, token = generate_token()
    other = f"ck_{key_id}_{generate_token()[1].split('_', 2)[2]}"
    assert not token_matches(other, hash_token(token))
    assert not token_matches(token, "0" * 64)
    assert not token_matches(token, "")
    assert not token_matches(token, "é")


def make_key(**changes: object) -> ApiKey:
    fields: dict[str, object] = {
        "key_id": "0123456789ab",
        "role": "agent",
        "agent_id": AGENT_ID,
        "label": "ci",
        "created_at": NOW,
        "revoked_at": None,
        "token_sha256": "a" * 64,
    }
    fields.update(changes)
    return ApiKey(**fields)  # type: ignore[arg-type]


def test_record_round_trip() -> None:
    key = make_key()
    assert key.active
    record = key.to_dict()
    assert record["created_at"] == "2025-01-02T03:04:05.678901Z"
    assert ApiKey.from_dict(record) == key
    revoked = make_key(revoked_at=NOW)
    assert not revoked.active
    assert ApiKey.from_dict(revoked.to_dict()) == revoked
    admin = make_key(role="admin", agent_id=None, label=None)
    assert ApiKey.from_dict(admin.to_dict()) == admin


def test_public_dict_has_no_hash() -> None:
    public = make_key().public_dict()
    assert "token_sha256" not in public
    assert "a" * 64 not in str(public)
    assert public["active"] is True


def test_from_dict_ignores_unknown_fields() -> None:
    record = {**make_key().to_dict(), "future": 1}
    assert ApiKey.from_dict(record) == make_key()


@pytest.mark.parametrize(
    "changes",
    [
        {"key_id": "XYZ"},
        {"key_id": None},
        {"role": "root"},
        {"role": "admin"},  # an admin key with an agent id
        {"agent_id": None},  # an agent key without one
        {"agent_id": "not-a-uuid"},
        {"agent_id": AGENT_ID.upper()},
        {"agent_id": 5},
        {"label": ""},
        {"label": "a\nb"},
        {"label": 3},
        {"created_at": "yesterday"},
        {"created_at": None},
        {"revoked_at": "nope"},
        {"revoked_at": 1},
        {"token_sha256": "abc"},
        {"token_sha256": "A" * 64},
    ],
)
def test_from_dict_is_strict(changes: dict[str, object]) -> None:
    record = {**make_key().to_dict(), **changes}
    with pytest.raises(RegistryError):
        ApiKey.from_dict(record)


@pytest.mark.parametrize("record", [None, [], "x", 1])
def test_from_dict_refuses_non_objects(record: object) -> None:
    with pytest.raises(RegistryError):
        ApiKey.from_dict(record)


def test_from_dict_refuses_missing_fields() -> None:
    for name in ("key_id", "role", "created_at", "token_sha256"):
        record = make_key().to_dict()
        del record[name]
        with pytest.raises(RegistryError):
            ApiKey.from_dict(record)


def test_construction_checks_fields() -> None:
    with pytest.raises(InvalidApiKeyError):
        make_key(role="owner")
    with pytest.raises(InvalidApiKeyError):
        make_key(label="x" * 257)
    assert isinstance(InvalidApiKeyError("x"), ValueError)


def test_principal_scope() -> None:
    child = str(uuid.UUID(int=2))
    other = str(uuid.UUID(int=3))
    admin = Principal("admin", "0123456789ab", None)
    agent = Principal("agent", "0123456789ac", AGENT_ID)
    assert admin.can_act_for(other) and admin.can_read([other])
    assert agent.can_act_for(AGENT_ID)
    assert not agent.can_act_for(child)  # may read a descendant, not act for it
    assert agent.can_read([AGENT_ID]) and agent.can_read([child, AGENT_ID])
    assert not agent.can_read([other]) and not agent.can_read([])
    agent.require_act_for(AGENT_ID)
    agent.require_read([child, AGENT_ID])
    with pytest.raises(PermissionDeniedError, match="cannot act for") as acting:
        agent.require_act_for(other)
    with pytest.raises(PermissionDeniedError, match="may read only") as reading:
        agent.require_read([other])
    assert other not in str(acting.value) + str(reading.value)  # the other agent is never named
