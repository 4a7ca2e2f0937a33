"""The responses the gateway created on the OpenAI Responses API: :data:`SHARDS` registry documents, on every
backend.

``responses.<shard>`` (:data:`SHARD_NAMES`): ``{"version": 1, "responses": {response_id: [agent_id,
tokens, created_at, seal]}}`` (a list per response rather than an object: a document is rewritten whole on
every record, and at full size the field names alone would be a third of it). A response lives in the shard
its id hashes to (CRC-32), so a record rewrites a sixteenth of the registry: a full registry (20,000
records, about 3 MiB) cost 20-50 ms per call as one document, a few ms as sixteen.

Why it exists: a request with ``previous_response_id`` makes the provider re-read the earlier conversation,
so its worst case includes tokens that are not in the request. The gateway records, for every response it
created, the agent it was created for and the tokens billed for it (input + output: the input already
includes the response's own predecessors), and adds them to the bound of a request that continues it
(:func:`caracal.server.gateway.estimate.bound_openai_responses`). The same record decides who may read,
delete or cancel the response through the gateway.

Invariants:

- **Owned.** A response belongs to the agent it was first recorded for; a later record for another agent
  never changes the owner. :meth:`ResponseRegistry.get` answers an unknown id, an expired one and another
  agent's the same way (:class:`ResponseNotFoundError`), so an agent cannot learn which ids exist.
- **Never below what can be billed.** A streamed response is recorded at its worst case (its hold's bound)
  as soon as its id is seen, before the client can continue it, and lowered to the billed usage when the
  stream ends with the provider's report; a stream that ends without one keeps the worst case.
- **Bounded.** Records older than :data:`RETENTION` are dropped, and past :data:`MAX_ENTRIES` the oldest
  are dropped, on every write; a dropped response can no longer be continued through the gateway (its
  ``previous_response_id`` is refused, never forwarded unbounded).
- **Sealed.** The documents live in the data folder, which whoever can edit the ledger can edit too, and a
  record decides who may read a response and how much a continuation holds. So each record carries an
  HMAC of its id, owner, tokens and time under the home's ``responses`` cache key (derived from the
  checkpoint signing key in ``keys/``, shared by every host of a ledger: see
  :meth:`caracal.core.checkpoint.CheckpointSigner.cache_key`). A record whose seal does not verify (an owner
  changed, tokens lowered, a time moved) is never used: :meth:`ResponseRegistry.get` refuses it with
  :class:`RegistryError`, and a new record of that id replaces it.
- **Fail closed.** A document in a shape this module never writes raises :class:`RegistryError` naming it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from caracal.core.validation import format_timestamp
from caracal.exceptions import GatewayRequestError, RegistryError, ResponseNotFoundError
from caracal.storage.interface import Document

__all__ = [
    "MAX_ENTRIES",
    "RETENTION",
    "SHARDS",
    "SHARD_NAMES",
    "ResponseRecord",
    "ResponseRegistry",
    "check_response_id",
    "empty_responses",
]

VERSION = 1
MAX_ENTRIES = 20_000
"""Records kept, spread over the shards (``MAX_ENTRIES / SHARDS`` each); past a shard's share its oldest are
dropped."""
SHARDS = 16
SHARD_NAMES = tuple(f"responses.{shard:x}" for shard in range(SHARDS))
"""The registry documents of the responses, in shard order (all in
:data:`caracal.storage.interface.REGISTRIES`)."""
RETENTION = timedelta(days=30)
"""How long a record is kept (OpenAI keeps stored responses for 30 days)."""

_RESPONSE_ID = re.compile(r"[A-Za-z0-9_\-]{1,200}")


def empty_responses() -> dict[str, Any]:
    """The document before the first record."""
    return {"version": VERSION, "responses": {}}


def check_response_id(response_id: object) -> str:
    """``response_id`` if it looks like a provider's response id (letters, digits, ``_``, ``-``; at most 200
    characters: it is put into upstream URLs), else :class:`GatewayRequestError`."""
    if not isinstance(response_id, str) or not _RESPONSE_ID.fullmatch(response_id):
        raise GatewayRequestError(
            f"a response id is 1 to 200 letters, digits, '_' or '-', got {str(response_id)[:40]!r}"
        )
    return response_id


@dataclass(frozen=True)
class ResponseRecord:
    """One response the gateway created: for whom, the tokens billed for it, and when."""

    response_id: str
    agent_id: str
    tokens: int
    created_at: str


def _checked(responses: object, label: str, expired_before: str = "") -> list[str]:
    """The ids of the records of ``responses`` created before ``expired_before``, after checking that every
    record has the shape this module writes (else :class:`RegistryError`). One pass: it runs on every
    write and every re-read of a document of up to :data:`MAX_ENTRIES` records."""
    if not isinstance(responses, dict):
        raise RegistryError(f"{label}: 'responses' must be an object (it is written by Caracal)")
    expired = []
    for key, entry in responses.items():
        if type(entry) is not list or len(entry) != 4:
            raise _damaged(label, key)
        agent, tokens, created, mac = entry
        if (
            type(agent) is not str
            or type(tokens) is not int
            or tokens < 0
            or type(created) is not str
            or type(mac) is not str
        ):
            raise _damaged(label, key)
        if created < expired_before:
            expired.append(key)
    return expired


def _damaged(label: str, key: str) -> RegistryError:
    return RegistryError(
        f"{label}: response {key!r} is not [agent_id, tokens, created_at, seal]; fix or remove it (the "
        f"responses registry is written by Caracal)"
    )


def _seal(key: bytes, response_id: str, agent_id: str, tokens: int, created: str) -> str:
    """The seal of one record: HMAC-SHA256 of its fields (128 bits, hex; a third of a record's size)."""
    message = f"{response_id}\n{agent_id}\n{tokens}\n{created}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def _sealed(key: bytes, response_id: str, entry: list[Any]) -> bool:
    agent, tokens, created, mac = entry
    return hmac.compare_digest(mac, _seal(key, response_id, agent, tokens, created))


def _records(label: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def parse(document: dict[str, Any]) -> dict[str, Any]:
        responses: dict[str, Any] = document.get("responses", {})
        _checked(responses, label)
        return responses

    return parse


class ResponseRegistry:
    """The responses registry in ``documents`` (its shards: a response lives in the one its id hashes to);
    ``clock`` is the home's clock. Safe to share between threads; any number of processes and hosts may use
    the same documents (each one's transactions are serialized)."""

    def __init__(
        self,
        documents: Sequence[Document],
        clock: Callable[[], datetime],
        key: Callable[[], bytes],
        *,
        max_entries: int = MAX_ENTRIES,
        retention: timedelta = RETENTION,
    ):
        if not documents:
            raise ValueError("a responses registry needs at least one document")
        if max_entries < len(documents):
            raise ValueError(
                f"max_entries must be at least one per shard ({len(documents)}), got {max_entries}"
            )
        self.documents = tuple(documents)
        self.clock = clock
        self._key = key
        """The sealing key (asked for at the first record or look-up: it opens the home's signing key)."""
        self.max_entries = max_entries
        self.shard_entries = math.ceil(max_entries / len(documents))
        """Records kept per shard: the ids hash evenly, so the whole keeps about ``max_entries``."""
        self.retention = retention
        self._parsers = tuple(_records(document.label) for document in self.documents)

    def shard_of(self, response_id: str) -> int:
        """The index of the document that holds ``response_id``'s record."""
        return zlib.crc32(response_id.encode()) % len(self.documents)

    def record(self, response_id: str, agent_id: str, tokens: int) -> None:
        """Record the response ``response_id`` created for ``agent_id`` with ``tokens`` (or set the tokens of
        its record); drop expired and surplus records. A response recorded for another agent is left as it
        is."""
        self.record_many([(response_id, agent_id, tokens)])

    def record_many(self, records: Sequence[tuple[str, str, int]]) -> None:
        """:meth:`record` each ``(response_id, agent_id, tokens)`` in order, one transaction per shard they
        fall in (a shard is rewritten whole, so concurrent records share its write). Nothing is written if
        one is invalid."""
        shards: dict[int, list[tuple[str, str, int]]] = {}
        for response_id, agent_id, tokens in records:
            check_response_id(response_id)
            if not isinstance(agent_id, str) or not agent_id:
                raise GatewayRequestError("agent_id must be a non-empty string")
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise GatewayRequestError(f"tokens must be a non-negative integer, got {tokens!r}")
            shards.setdefault(self.shard_of(response_id), []).append((response_id, agent_id, tokens))
        now = self.clock()
        created = format_timestamp(now)
        expired_before = format_timestamp(now - self.retention)
        secret = self._key()
        for shard, mine in shards.items():
            document = self.documents[shard]
            with document.transaction() as content:
                content.setdefault("version", VERSION)
                responses: dict[str, Any] = content.setdefault("responses", {})
                # A damaged document is refused before it is changed; expired records are dropped.
                for key in _checked(responses, document.label, expired_before):
                    del responses[key]
                for response_id, agent_id, tokens in mine:
                    entry = responses.get(response_id)
                    if entry is None or not _sealed(secret, response_id, entry):  # a forged one is replaced
                        seal = _seal(secret, response_id, agent_id, tokens, created)
                        responses[response_id] = [agent_id, tokens, created, seal]
                    elif entry[0] == agent_id:
                        entry[1] = tokens
                        entry[3] = _seal(secret, response_id, agent_id, tokens, entry[2])
                surplus = len(responses) - self.shard_entries
                if surplus > 0:  # usually one: a partial selection, not a sort of the whole shard
                    for key in heapq.nsmallest(surplus, responses, key=lambda k: responses[k][2]):
                        del responses[key]

    def get(self, response_id: str, agent_id: str) -> ResponseRecord:
        """The record of ``response_id`` if it was created for ``agent_id`` and has not expired; else
        :class:`ResponseNotFoundError` (the same for an unknown id and another agent's). A record another
        process wrote is found as soon as its write is committed. Reads a document: call it off the
        event loop."""
        if not isinstance(response_id, str) or not _RESPONSE_ID.fullmatch(response_id):
            raise ResponseNotFoundError(f"no response {str(response_id)[:40]!r} was created for this agent")
        shard = self.shard_of(response_id)
        document, parse = self.documents[shard], self._parsers[shard]
        entry = document.read_cached(parse).get(response_id)
        if entry is None:
            # Not in this process's copy: it may have been written by another process a moment ago (on
            # PostgreSQL a cached copy is renewed when the change's notification arrives), so read it once.
            entry = parse(document.read()).get(response_id)
        if entry is not None and not _sealed(self._key(), response_id, entry):
            raise RegistryError(
                f"{document.label}: the record of response {response_id!r} does not verify: it was edited "
                f"(its owner, tokens or time changed), so it is not used; the response cannot be continued "
                f"or read through the gateway"
            )
        oldest = format_timestamp(self.clock() - self.retention)
        if entry is None or entry[0] != agent_id or entry[2] < oldest:
            raise ResponseNotFoundError(
                f"no response {response_id!r} was created through the gateway for this agent (or it is "
                f"older than {self.retention.days} days); a previous_response_id must name a response this "
                f"agent created through the gateway"
            )
        return ResponseRecord(response_id, entry[0], entry[1], entry[2])

    def forget(self, response_id: str) -> None:
        """Drop the record of ``response_id`` (deleted upstream); nothing if there is none."""
        if not isinstance(response_id, str) or not _RESPONSE_ID.fullmatch(response_id):
            return
        with self.documents[self.shard_of(response_id)].transaction() as content:
            responses = content.get("responses")
            if isinstance(responses, dict):
                responses.pop(response_id, None)
