"""The responses the gateway created on the OpenAI Responses API: one registry document, on every backend.

``responses``: ``{"version": 1, "responses": {response_id: {"agent_id", "tokens", "created_at"}}}``.

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
- **Fail closed.** A document in a shape this module never writes raises :class:`RegistryError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from caracal.core.validation import format_timestamp
from caracal.exceptions import GatewayRequestError, RegistryError, ResponseNotFoundError
from caracal.storage.interface import Document

__all__ = [
    "MAX_ENTRIES",
    "RETENTION",
    "ResponseRecord",
    "ResponseRegistry",
    "check_response_id",
    "empty_responses",
]

VERSION = 1
MAX_ENTRIES = 20_000
"""Records kept; past it the oldest are dropped."""
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


def _records(label: str) -> Callable[[dict[str, Any]], dict[str, ResponseRecord]]:
    def parse(document: dict[str, Any]) -> dict[str, ResponseRecord]:
        responses = document.get("responses", {})
        if not isinstance(responses, dict):
            raise RegistryError(f"{label}: 'responses' must be an object (it is written by Caracal)")
        parsed: dict[str, ResponseRecord] = {}
        for key, entry in responses.items():
            tokens = entry.get("tokens") if isinstance(entry, dict) else None
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("agent_id"), str)
                or not isinstance(entry.get("created_at"), str)
                or not isinstance(tokens, int)
                or isinstance(tokens, bool)
                or tokens < 0
            ):
                raise RegistryError(
                    f"{label}: response {key!r} is not an object with agent_id, tokens and created_at; "
                    f"fix or remove it (the responses registry is written by Caracal)"
                )
            parsed[key] = ResponseRecord(key, entry["agent_id"], tokens, entry["created_at"])
        return parsed

    return parse


class ResponseRegistry:
    """The responses registry in ``document``; ``clock`` is the home's clock. Safe to share between threads;
    any number of processes and hosts may use one document (its transactions are serialized)."""

    def __init__(
        self,
        document: Document,
        clock: Callable[[], datetime],
        *,
        max_entries: int = MAX_ENTRIES,
        retention: timedelta = RETENTION,
    ):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.document = document
        self.clock = clock
        self.max_entries = max_entries
        self.retention = retention
        self._parse = _records(document.label)

    def record(self, response_id: str, agent_id: str, tokens: int) -> None:
        """Record the response ``response_id`` created for ``agent_id`` with ``tokens`` (or set the tokens of
        its record); drop expired and surplus records. A response recorded for another agent is left as it
        is."""
        check_response_id(response_id)
        if not isinstance(agent_id, str) or not agent_id:
            raise GatewayRequestError("agent_id must be a non-empty string")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise GatewayRequestError(f"tokens must be a non-negative integer, got {tokens!r}")
        now = self.clock()
        with self.document.transaction() as document:
            self._parse(document)  # refuse a damaged document before changing it
            document.setdefault("version", VERSION)
            responses: dict[str, Any] = document.setdefault("responses", {})
            entry = responses.get(response_id)
            if entry is None:
                responses[response_id] = {
                    "agent_id": agent_id,
                    "tokens": tokens,
                    "created_at": format_timestamp(now),
                }
            elif entry["agent_id"] == agent_id:
                entry["tokens"] = tokens
            self._prune(responses, now)

    def _prune(self, responses: dict[str, Any], now: datetime) -> None:
        oldest = format_timestamp(now - self.retention)
        for key in [key for key, entry in responses.items() if entry["created_at"] < oldest]:
            del responses[key]
        surplus = len(responses) - self.max_entries
        if surplus > 0:
            for key in sorted(responses, key=lambda k: responses[k]["created_at"])[:surplus]:
                del responses[key]

    def get(self, response_id: str, agent_id: str) -> ResponseRecord:
        """The record of ``response_id`` if it was created for ``agent_id`` and has not expired; else
        :class:`ResponseNotFoundError` (the same for an unknown id and another agent's)."""
        if not isinstance(response_id, str) or not _RESPONSE_ID.fullmatch(response_id):
            raise ResponseNotFoundError(f"no response {str(response_id)[:40]!r} was created for this agent")
        found = self.document.read_cached(self._parse).get(response_id)
        oldest = format_timestamp(self.clock() - self.retention)
        if found is None or found.agent_id != agent_id or found.created_at < oldest:
            raise ResponseNotFoundError(
                f"no response {response_id!r} was created through the gateway for this agent (or it is "
                f"older than {self.retention.days} days); a previous_response_id must name a response this "
                f"agent created through the gateway"
            )
        return found

    def forget(self, response_id: str) -> None:
        """Drop the record of ``response_id`` (deleted upstream); nothing if there is none."""
        with self.document.transaction() as document:
            responses = document.get("responses")
            if isinstance(responses, dict):
                responses.pop(response_id, None)
