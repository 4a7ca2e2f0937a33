"""Drafts: appends validated and serialized before the ledger's lock is taken.

A draft is an event without its id and chain hash (known only under the lock). Everything else (checking
every field, formatting the timestamp, serializing the line's middle) is done here, outside the lock, so
that the work under it is only splicing in the id and the hash (:func:`encode`): the lock is held for as
little as possible, which is what bounds how many appends a ledger takes per second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from caracal.core.events import LedgerEvent, check_extensions, line_body
from caracal.core.validation import (
    check_currency,
    check_identifier,
    check_metadata,
    format_timestamp,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import InvalidLedgerEventError

__all__ = ["APPEND_FIELDS", "Draft", "Drafter", "encode"]

APPEND_FIELDS = frozenset(
    {
        "agent_id",
        "resource_type",
        "quantity",
        "cost",
        "currency",
        "metadata",
        "timestamp",
        "kind",
        "hold_id",
        "idempotency_key",
        "expires_at",
        "on_expiry",
    }
)
_NO_EXTENSIONS: tuple[None, None, None, None, None] = (None, None, None, None, None)

_Fields = tuple[str, str, str, Decimal, Decimal, str, "dict[str, Any] | None"]
_Extensions = tuple["str | None", "str | None", "str | None", "str | None", "str | None"]
Draft = tuple[_Fields, _Extensions, bytes]
"""A validated event without its id and chain hash (known only under the lock): its fields (agent_id,
timestamp, resource_type, quantity, cost, currency, metadata), its control-plane extensions (kind, hold_id,
idempotency_key, expires_at, on_expiry) and all of them already serialized as the middle of its JSON line,
so that the work done under the lock is only splicing in the id and the hash."""


class Drafter:
    """Turns append items into drafts, reading ``clock`` once per batch (the events of a group commit share
    their moment, and their timestamp is formatted once)."""

    def __init__(self, clock: Callable[[], datetime]):
        self._clock = clock
        self._stamp: tuple[datetime | None, str] = (None, "")  # last (moment, text): a batch shares one

    def drafts(self, items: Iterable[Mapping[str, Any]]) -> list[Draft]:
        """Validate items (all or nothing) into drafts; errors name the item's index."""
        drafts = []
        now = self._clock()  # one clock reading per batch: the events of a group commit share their moment
        prepare = self.prepare
        for index, item in enumerate(items):
            try:
                drafts.append(prepare(now, **item))
            except InvalidLedgerEventError as exc:
                raise InvalidLedgerEventError(f"item {index}: {exc}") from None
            except TypeError:
                if not isinstance(item, Mapping):
                    raise InvalidLedgerEventError(
                        f"item {index} must be a mapping, got {type(item).__name__}"
                    ) from None
                unknown = sorted(map(repr, set(item) - APPEND_FIELDS))
                if unknown:
                    raise InvalidLedgerEventError(f"item {index} has unknown fields: {unknown}") from None
                raise
        return drafts

    def prepare(
        self,
        now: datetime | None,
        agent_id: object = None,
        resource_type: object = None,
        quantity: object = None,
        cost: object = None,
        currency: object = "USD",
        metadata: object = None,
        timestamp: object = None,
        kind: object = None,
        hold_id: object = None,
        idempotency_key: object = None,
        expires_at: object = None,
        on_expiry: object = None,
    ) -> Draft:
        """Validate one event's fields (``now`` stands in for a missing timestamp; None: read the clock)."""
        error = InvalidLedgerEventError
        if timestamp is None:
            timestamp = now or self._clock()
        if type(timestamp) is datetime and (timestamp.tzinfo is None or timestamp.tzinfo is timezone.utc):
            moment = timestamp  # fast path; other zones go through parse_timestamp, which reports overflow
        else:
            moment = parse_timestamp(timestamp, "timestamp", error)
        stamp = self._stamp
        if stamp[0] is not moment:
            stamp = self._stamp = (moment, format_timestamp(moment))
        fields = (
            check_identifier(agent_id, "agent_id", error),
            stamp[1],
            check_identifier(resource_type, "resource_type", error),
            parse_amount(quantity, "quantity", error),
            parse_amount(cost, "cost", error),
            check_currency(currency, error),
            None if metadata is None else check_metadata(metadata, error),
        )
        if (
            kind is None
            and hold_id is None
            and idempotency_key is None
            and expires_at is None
            and on_expiry is None
        ):
            extensions: _Extensions = _NO_EXTENSIONS
            return fields, extensions, line_body(*fields)
        else:
            if isinstance(expires_at, datetime):
                expires_at = format_timestamp(parse_timestamp(expires_at, "expires_at", error))
            extensions = check_extensions(
                None if kind == "charge" else kind, hold_id, idempotency_key, expires_at, on_expiry
            )
        # The event's line is '{"event_id":N,' + body + ',"prev_hash":"H"}', in LedgerEvent.to_dict order.
        return fields, extensions, line_body(*fields, extensions)


def encode(
    drafts: list[Draft],
    next_id: int,
    prev: bytes,
    leaves: list[bytes],
    lines: list[bytes],
    floor: str,
) -> list[LedgerEvent]:
    """Give drafts their ids and chain hashes from ``next_id`` / ``prev``; their leaf hashes and line
    bytes are appended to ``leaves`` and ``lines``.

    **Timestamps never go backwards.** ``floor`` is the stored-form timestamp of the entry before the
    first draft (the last line of the ledger, read under the lock after catching up on other writers); a
    draft stamped earlier (a clock behind another process's, or one that was set back) is stamped with
    the time of the entry before it instead. So after an entry written by a clock that was ahead (say a
    day), every later entry carries that later time until the clocks meet again: the spend counts at
    the later time, which is also where the budget state counts it (its minutes never go backwards
    either, see :mod:`caracal.core.budget`), so the ledger's days and the budgets' windows agree.
    Explicit timestamps are held to the same rule: an entry is never dated before one already
    recorded."""
    events = []
    sha256 = hashlib.sha256  # leaf_hash, inlined: this loop runs once per event of a batch
    for fields, extensions, body in drafts:
        if fields[1] < floor:  # fixed-width stored forms: string order is time order
            fields = (fields[0], floor, *fields[2:])
            body = line_body(*fields, extensions)
        else:
            floor = fields[1]
        prev_hex = prev.hex()
        line = b'{"event_id":%d,%s,"prev_hash":"%s"}' % (next_id, body, prev_hex.encode())
        prev = sha256(b"\x00" + line).digest()
        events.append(LedgerEvent(next_id, *fields, prev_hex, *extensions))
        leaves.append(prev)
        lines.append(line)
        next_id += 1
    return events
