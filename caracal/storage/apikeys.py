"""The API key registry of the embedded backend: one JSON document, ``{"keys": {key_id: record}}``
(``$CARACAL_HOME/data/apikeys.json``).

Invariants:

- **Hashes only.** A record holds ``sha256(token)`` (:mod:`caracal.core.apikeys`); the plaintext token is
  returned once by :meth:`ApiKeyRegistry.create` and never written here. The file (and its backups) are
  written owner-only (0600) all the same: they say who has keys.
- **Atomic, serialized, backed up.** Every change is one :meth:`JsonDocument.transaction` (exclusive
  ``flock`` from the read to the atomic write, rolling ``.bak.N``): concurrent creates from threads or
  processes never lose a key, and :meth:`ApiKeyRegistry.ensure_admin_key` run twice at once makes exactly
  one admin key.
- **Fail closed.** Every read checks the whole document (each record valid, keyed by its own id); a
  damaged file raises :class:`RegistryError`, so authentication denies rather than guess.
- **Cheap authentication.** :meth:`ApiKeyRegistry.authenticate` runs on every HTTP request: it reads
  through :meth:`JsonDocument.read_cached` (one ``stat`` while the file is unchanged) into an index by key
  id, then hashes the token once and compares in constant time. A revocation is seen by the next request
  (the file's stat changes).
- **Errors say which, never the secret.** Authentication fails with "missing", "invalid" or "revoked"
  (and, when no key exists at all, how to create one); the token is never echoed.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from caracal.config import caracal_home
from caracal.core.apikeys import (
    ADMIN,
    AGENT,
    ROLES,
    ApiKey,
    Principal,
    check_label,
    generate_token,
    hash_token,
    is_key_id,
    parse_token,
    token_matches,
)
from caracal.core.fileio import write_atomically
from caracal.core.identity import canonical_agent_id
from caracal.exceptions import (
    ApiKeyNotFoundError,
    AuthenticationError,
    InvalidApiKeyError,
    RegistryError,
)
from caracal.storage.interface import Document
from caracal.storage.jsonfile import JsonDocument, restore_hint

APIKEYS_FILE_NAME = "apikeys.json"
ADMIN_KEY_FILE_NAME = "admin.key"

Clock = Callable[[], datetime]

_DUMMY_HASH = "0" * 64
"""Compared against when the key id is unknown, so that case costs the same as a wrong secret."""


def default_apikeys_path(home: Path | None = None) -> Path:
    """Where the default registry lives: ``$CARACAL_HOME/data/apikeys.json``."""
    return (home or caracal_home()) / "data" / APIKEYS_FILE_NAME


def default_admin_key_path(home: Path | None = None) -> Path:
    """Where ``caracal init`` writes the admin token: ``$CARACAL_HOME/keys/admin.key`` (0600)."""
    return (home or caracal_home()) / "keys" / ADMIN_KEY_FILE_NAME


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class _Index:
    by_id: dict[str, ApiKey]


def empty_keys() -> dict[str, Any]:
    """The API keys document before the first key."""
    return {"keys": {}}


class ApiKeyRegistry:
    """The API keys stored in ``path`` (a JSON file; created on the first key).

    ``clock`` (the current time) is the default for methods that take one. Safe to share between threads;
    any number of registry objects, in any number of processes, may use one file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Document,
        *,
        clock: Clock = _utc_now,
        backup_count: int = 3,
        lock_timeout: float = 10.0,
    ):
        self._document: Document = (
            JsonDocument(
                path,
                default=empty_keys,
                backup_count=backup_count,
                lock_timeout=lock_timeout,
                mode=0o600,  # written owner-only from the start, backups too
            )
            if isinstance(path, (str, os.PathLike))
            else path
        )
        self.path: Path | str = (
            self._document.path if isinstance(self._document, JsonDocument) else self._document.label
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"ApiKeyRegistry({str(self.path)!r})"

    # ----------------------------------------------------------------------------------------------- writes

    def create(
        self,
        role: str,
        agent_id: str | None = None,
        label: str | None = None,
        clock: Clock | None = None,
    ) -> tuple[ApiKey, str]:
        """Create an active key; return its record and the plaintext token (the only time it exists).

        ``role`` is ``"admin"`` (no ``agent_id``) or ``"agent"`` (``agent_id``: the agent's id; that the
        agent exists is the caller's to check, against its agent registry). :class:`InvalidApiKeyError` for
        bad input, before anything is written; :class:`RegistryError` if the file cannot be read or written.
        """
        with self._transaction() as keys:
            key, token = self._new_key(keys, role, agent_id, label, clock)
        return key, token

    def revoke(self, key_id: str, *, clock: Clock | None = None) -> ApiKey:
        """Revoke the key and return it; requests with it are refused from now on. Revoking a revoked key
        returns it unchanged (``revoked_at`` keeps the first revocation). :class:`ApiKeyNotFoundError` for
        an unknown id."""
        with self._transaction() as keys:
            key = self._find(keys, key_id)
            if not key.active:
                return key
            key = replace(key, revoked_at=(clock or self._clock)())
            keys[key.key_id] = key
        return key

    def ensure_admin_key(self, key_file: Path, *, clock: Clock | None = None) -> str | None:
        """Make sure an active admin key exists. If none does, create one, write its token to ``key_file``
        (owner-only, 0600, atomically) and return the token; otherwise change nothing and return None.

        The token file is written before the record is committed (both under the registry's lock): a crash
        between the two leaves a token that authenticates nothing, replaced by the next call, never an
        admin key whose token was lost.
        """
        with self._transaction() as keys:
            if any(key.role == ADMIN and key.active for key in keys.values()):
                return None
            _, token = self._new_key(keys, ADMIN, None, None, clock)
            key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                write_atomically(key_file, (token + "\n").encode("ascii"), mode=0o600)
            except OSError as exc:
                raise RegistryError(
                    f"cannot write the admin key to {key_file}: {exc.strerror or exc}"
                ) from exc
        return token

    # ------------------------------------------------------------------------------------------------ reads

    def get(self, key_id: str) -> ApiKey:
        """The key with this id (active or revoked); :class:`ApiKeyNotFoundError` if there is none."""
        return self._find(self._index().by_id, key_id)

    def list(self, agent_id: str | None = None, include_revoked: bool = False) -> builtins.list[ApiKey]:
        """Keys, oldest first: only ``agent_id``'s if given, only active ones unless ``include_revoked``."""
        keys = [
            key
            for key in self._index().by_id.values()
            if (agent_id is None or key.agent_id == agent_id) and (include_revoked or key.active)
        ]
        keys.sort(key=lambda key: (key.created_at, key.key_id))
        return keys

    def authenticate(self, token: str | None) -> Principal:
        """Who ``token`` (the bearer token of a request) is; :class:`AuthenticationError` if it is missing,
        malformed, unknown, wrong or revoked. Cheap: see the module invariants."""
        if token is None or (isinstance(token, str) and not token.strip()):
            raise AuthenticationError(self._with_hint("missing API key: send one as a bearer token"))
        parsed = parse_token(token)
        index = self._index()
        if parsed is None:
            raise AuthenticationError(
                self._with_hint(
                    "invalid API key: not a Caracal API key (expected ck_<key id>_<secret>)", index
                )
            )
        key_id, checked = parsed
        key = index.by_id.get(key_id)
        matches = token_matches(checked, key.token_sha256 if key is not None else _DUMMY_HASH)
        if key is None or not matches:
            raise AuthenticationError(self._with_hint(f"invalid API key: key {key_id} is not valid", index))
        if not key.active:
            raise AuthenticationError(f"revoked API key: key {key_id} was revoked; ask for a new one")
        return Principal(role=key.role, key_id=key.key_id, agent_id=key.agent_id)

    # ------------------------------------------------------------------------------------------- internals

    def _with_hint(self, message: str, index: _Index | None = None) -> str:
        if index is None:
            index = self._index()
        if not index.by_id:
            message += (
                f"; no API key exists yet in {self.path}: run `caracal init` to create the admin key "
                f"(written to keys/{ADMIN_KEY_FILE_NAME} in the home), or `caracal agent key create AGENT`"
            )
        return message

    def _new_key(
        self,
        keys: dict[str, ApiKey],
        role: str,
        agent_id: str | None,
        label: str | None,
        clock: Clock | None,
    ) -> tuple[ApiKey, str]:
        """Check the input, make a key with an unused id and add it to ``keys`` (the locked document)."""
        if role not in ROLES:
            raise InvalidApiKeyError(f"role must be 'admin' or 'agent', got {role!r}")
        if role == AGENT:
            canonical = canonical_agent_id(agent_id)
            if canonical is None:
                raise InvalidApiKeyError(f"an agent key needs an agent id (a UUID), got {agent_id!r}")
            agent_id = canonical
        elif agent_id is not None:
            raise InvalidApiKeyError("an admin key acts for every agent: give no agent_id")
        check_label(label)
        now = (clock or self._clock)()
        while True:
            key_id, token = generate_token()
            if key_id not in keys:  # 48 random bits: a repeat is unlikely, but must not replace a key
                break
        key = ApiKey(
            key_id=key_id,
            role=role,  # narrowed to ApiKeyRole by the check above
            agent_id=agent_id,
            label=label,
            created_at=now,
            revoked_at=None,
            token_sha256=hash_token(token),
        )
        keys[key_id] = key
        return key, token

    def _find(self, keys: dict[str, ApiKey], key_id: str) -> ApiKey:
        key = keys.get(key_id) if is_key_id(key_id) else None
        if key is None:
            count = len(keys)
            held = "no API keys exist" if not count else f"{count} key{'s' * (count != 1)} exist"
            raise ApiKeyNotFoundError(
                f"no API key with id {key_id!r} in {self.path} ({held}); list them with `caracal agent key "
                f"list --all`"
            )
        return key

    def _index(self) -> _Index:
        return self._document.read_cached(self._parse)

    def _parse(self, document: dict[str, Any]) -> _Index:
        """Check the whole document and index it; RegistryError (fail closed) on any inconsistency."""
        restore = f"restore it from {restore_hint(self._document)}"
        records = document.get("keys", {})
        if not isinstance(records, dict):
            raise RegistryError(
                f"{self.path}: 'keys' must be a JSON object, found {type(records).__name__}; {restore}"
            )
        by_id: dict[str, ApiKey] = {}
        for stored_id, record in records.items():
            try:
                key = ApiKey.from_dict(record)
            except RegistryError as exc:
                raise RegistryError(f"{self.path}: {exc}; {restore}") from None
            if key.key_id != stored_id:
                raise RegistryError(
                    f"{self.path}: the record under {stored_id!r} has key_id {key.key_id!r}; {restore}"
                )
            by_id[stored_id] = key
        return _Index(by_id)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, ApiKey]]:
        """The locked document's keys, checked, as a dict to change in place; written back on success."""
        with self._document.transaction() as document:
            before = self._parse(document).by_id
            keys = dict(before)
            yield keys
            records = document.setdefault("keys", {})
            for key_id, key in keys.items():  # only changed records are rewritten: unknown fields survive
                if before.get(key_id) is not key:
                    records[key_id] = key.to_dict()
