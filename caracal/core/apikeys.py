"""API keys for the HTTP API: the token format, its hash, the stored record and the authenticated principal.
Pure: no I/O; clocks and randomness come from the caller or :mod:`secrets`.

A token is ``ck_<key_id>_<secret>``:

- ``key_id`` is 12 lower-case hex digits (``secrets.token_hex(6)``). It is not secret: it names the key in
  listings and in ``revoke``, and lets the server find the one record to compare against.
- ``secret`` is ``secrets.token_urlsafe(32)`` (256 random bits, URL-safe base64, 43 characters).

Invariants:

- **Only the hash is stored.** A record keeps ``sha256(token)`` as hex, never the token: whoever reads the
  key file cannot act with it. A fast hash is right here (unlike passwords): the token has 256 random
  bits, so brute force is hopeless anyway, and it is checked on every request.
- **Constant-time comparison.** :func:`token_matches` compares digests with :func:`hmac.compare_digest`,
  so the time taken says nothing about how much of a guess was right.
- **Parsing never raises.** :func:`parse_token` accepts only the exact format, at most
  :data:`MAX_TOKEN_LENGTH` printable ASCII characters, and returns None for anything else (None, ints,
  empty, non-ASCII, oversized...): a request header is untrusted input.
- **A record that exists is valid.** :class:`ApiKey` checks its fields on construction
  (:class:`InvalidApiKeyError`); :meth:`ApiKey.from_dict` turns any malformed stored record into a
  :class:`RegistryError` (fail closed: a damaged key file denies, it is never read leniently).
- **Scope.** An ``admin`` key acts for everyone. An ``agent`` key acts only for its own agent and may read
  its descendants (:class:`Principal`); the tree itself comes from the agent registry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from caracal.core.identity import canonical_agent_id
from caracal.core.validation import format_timestamp, parse_timestamp
from caracal.exceptions import InvalidApiKeyError, PermissionDeniedError, RegistryError

ApiKeyRole = Literal["admin", "agent"]

ADMIN: Final = "admin"
AGENT: Final = "agent"
ROLES: Final[tuple[ApiKeyRole, ...]] = ("admin", "agent")

TOKEN_PREFIX: Final = "ck_"
MAX_TOKEN_LENGTH: Final = 200
"""The longest string :func:`parse_token` looks at; a generated token is 59 characters."""
MAX_LABEL_LENGTH: Final = 256

_KEY_ID = re.compile(r"[0-9a-f]{12}")
_TOKEN = re.compile(r"ck_([0-9a-f]{12})_([A-Za-z0-9_-]{16,184})")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# ------------------------------------------------------------------------------------------------ tokens

TOKEN_WARNING = "store this token now: it cannot be shown again (only its hash is kept)"
"""Said wherever a new token is shown (CLI, API): it is the only time anyone sees it."""


def generate_token() -> tuple[str, str]:
    """A new random ``(key_id, token)``; the token is shown to its owner once and never stored."""
    key_id = secrets.token_hex(6)
    return key_id, f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def parse_token(token: object) -> tuple[str, str] | None:
    """``(key_id, token)`` if ``token`` has the exact token format, else None (never raises)."""
    if type(token) is not str or len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _TOKEN.fullmatch(token)  # ASCII-only character classes: no non-ASCII or control characters
    if match is None:
        return None
    return match.group(1), token


def is_key_id(value: object) -> bool:
    """True if ``value`` has the form of a key id (12 lower-case hex digits)."""
    return type(value) is str and _KEY_ID.fullmatch(value) is not None


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256`` of its UTF-8 bytes, as 64 lower-case hex digits."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """True if ``token`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(
        hash_token(token).encode("ascii"), stored_hash.encode("utf-8", "surrogatepass")
    )


# ------------------------------------------------------------------------------------------------ records


def check_label(label: object) -> str | None:
    """``label`` if None or a non-empty printable string of at most :data:`MAX_LABEL_LENGTH` characters."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidApiKeyError(f"label must be a string, got {type(label).__name__}")
    if not label or label.isspace():
        raise InvalidApiKeyError("label must not be empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidApiKeyError(f"label must be at most {MAX_LABEL_LENGTH} characters, got {len(label)}")
    if not label.isprintable():
        raise InvalidApiKeyError("label must not contain newlines or other control characters")
    return label


@dataclass(frozen=True)
class ApiKey:
    """One stored API key: who it is for and the hash of its token (never the token).

    ``agent_id`` is None exactly for admin keys, and a canonical agent UUID for agent keys. ``created_at``
    and ``revoked_at`` are aware UTC datetimes; a key with ``revoked_at`` set is refused forever.
    """

    key_id: str
    role: ApiKeyRole
    agent_id: str | None
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    token_sha256: str

    def __post_init__(self) -> None:
        if not is_key_id(self.key_id):
            raise InvalidApiKeyError(f"key_id must be 12 lower-case hex digits, got {self.key_id!r}")
        if self.role not in ROLES:
            raise InvalidApiKeyError(f"role must be 'admin' or 'agent', got {self.role!r}")
        if self.role == ADMIN and self.agent_id is not None:
            raise InvalidApiKeyError("an admin key has no agent_id")
        if self.role == AGENT:
            if self.agent_id is None:
                raise InvalidApiKeyError("an agent key needs the agent_id of its agent")
            if canonical_agent_id(self.agent_id) != self.agent_id:
                raise InvalidApiKeyError(f"agent_id must be a canonical agent UUID, got {self.agent_id!r}")
        check_label(self.label)
        created = parse_timestamp(self.created_at, "created_at", InvalidApiKeyError)
        object.__setattr__(self, "created_at", created)
        if self.revoked_at is not None:
            revoked = parse_timestamp(self.revoked_at, "revoked_at", InvalidApiKeyError)
            object.__setattr__(self, "revoked_at", revoked)
        if type(self.token_sha256) is not str or not _SHA256_HEX.fullmatch(self.token_sha256):
            raise InvalidApiKeyError("token_sha256 must be 64 lower-case hex digits")

    @property
    def active(self) -> bool:
        """True until the key is revoked."""
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        """The stored record (with the hash; see :meth:`public_dict` for output)."""
        return {
            "key_id": self.key_id,
            "role": self.role,
            "agent_id": self.agent_id,
            "label": self.label,
            "created_at": format_timestamp(self.created_at),
            "revoked_at": format_timestamp(self.revoked_at) if self.revoked_at is not None else None,
            "token_sha256": self.token_sha256,
        }

    def public_dict(self) -> dict[str, Any]:
        """What may be shown (CLI ``--json``, HTTP listings): the record without the hash, plus ``active``."""
        record = self.to_dict()
        del record["token_sha256"]
        record["active"] = self.active
        return record

    @classmethod
    def from_dict(cls, record: object) -> ApiKey:
        """A record read back; :class:`RegistryError` if anything is missing or malformed. Unknown fields
        are ignored (a newer version may add some)."""
        if not isinstance(record, Mapping):
            raise RegistryError(f"an API key record must be a JSON object, got {type(record).__name__}")
        for name in ("key_id", "role", "created_at", "token_sha256"):
            if type(record.get(name)) is not str:
                raise RegistryError(f"API key record: {name!r} must be a string")
        for name in ("agent_id", "label", "revoked_at"):
            if record.get(name) is not None and type(record.get(name)) is not str:
                raise RegistryError(f"API key record: {name!r} must be a string or null")
        try:
            return cls(
                key_id=record["key_id"],
                role=record["role"],
                agent_id=record.get("agent_id"),
                label=record.get("label"),
                created_at=record["created_at"],
                revoked_at=record.get("revoked_at"),
                token_sha256=record["token_sha256"],
            )
        except InvalidApiKeyError as exc:
            raise RegistryError(f"API key record {record.get('key_id')!r}: {exc}") from None


# ------------------------------------------------------------------------------------------- principal


@dataclass(frozen=True)
class Principal:
    """Who an authenticated request is: the server's answer to "which key, acting for whom".

    ``agent_id`` is None exactly for the admin. An agent principal acts only for its own agent and may read
    that agent's descendants; the admin may do anything.
    """

    role: ApiKeyRole
    key_id: str
    agent_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def can_act_for(self, agent_id: str) -> bool:
        """True if this principal may spend, reserve or change things as ``agent_id`` (a canonical id)."""
        return self.is_admin or self.agent_id == agent_id

    def can_read(self, chain: Sequence[str]) -> bool:
        """True if this principal may read the agent whose ``chain`` (its id, then its ancestors' ids,
        nearest first, as :meth:`caracal.storage.home.RegistryDirectory.chain` gives) is given: the admin,
        the agent itself, or one of its ancestors."""
        return self.is_admin or (self.agent_id is not None and self.agent_id in chain)

    def require_act_for(self, agent_id: str) -> None:
        """:class:`PermissionDeniedError` unless :meth:`can_act_for`."""
        if not self.can_act_for(agent_id):
            raise PermissionDeniedError(self.out_of_scope())

    def require_read(self, chain: Sequence[str]) -> None:
        """:class:`PermissionDeniedError` unless :meth:`can_read`."""
        if not self.can_read(chain):
            raise PermissionDeniedError(self.out_of_scope())

    def out_of_scope(self) -> str:
        """The one refusal an agent key gets for a request about an agent outside its scope. It names only
        the key and its own agent, and reads the same whether the other agent exists or not (the server
        gives it for an unknown agent too), so an agent key learns nothing about the rest of the home."""
        return (
            f"API key {self.key_id} belongs to agent {self.agent_id}: it cannot act for any other agent and "
            f"may read only that agent and its descendants; the agent this request names is not one of them"
        )
