"""The ledger's event model and its line format.

One event is one line of ``ledger.jsonl``: compact JSON, UTF-8, ``\\n``-terminated, keys in this order::

    {"event_id":1,"agent_id":"a","timestamp":"2026-01-01T00:00:00.000000Z","resource_type":"r",
     "quantity":"1000","cost":"0.030","currency":"USD","metadata":{...},"prev_hash":"<hex>"}

- ``quantity`` and ``cost`` are Decimal strings, kept exactly ("0.030" stays "0.030").
- ``metadata`` is omitted when there is none.
- ``prev_hash`` chains each line to the one before it: the hex RFC 9162 leaf hash of the previous line's
  exact bytes; for event 1, SHA-256 of the empty string (the RFC 9162 empty-tree root). A modified
  line is named exactly by the next line's chain; the signed Merkle checkpoints cover the rest. Lines
  written before the chain existed may lack it.
- The control plane adds optional fields, omitted when unset: ``kind`` (``charge`` when absent; ``hold``
  reserves ``cost`` for an agent until ``expires_at``; ``release`` closes ``hold_id``), ``hold_id`` (on a
  hold, a release, or a charge made against a hold), ``idempotency_key`` (one charge per key) and, on a
  hold, ``on_expiry``: what its expiry means, ``release`` (the default, and how a hold without the field
  reads) or ``charge`` (the hold keeps counting after its expiry until it is closed, and expiring it
  charges what is left of it, marked estimated: used where the money may have been spent, e.g. a gateway
  call that may have reached the provider). Only charges are spend: holds and releases never count in sums.
- Readers ignore fields they do not know, so later versions may add fields.

Parsing is strict: a complete line that is not a valid event is corruption, never skipped, because a
skipped line would make money vanish from a sum.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, BinaryIO

import orjson

from caracal.core.validation import (
    ISO_4217_CODES,
    MAX_IDENTIFIER_LENGTH,
    check_currency,
    check_identifier,
    check_metadata,
    dumps,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import InvalidLedgerEventError, LedgerCorruptError, LedgerReadError

READ_CHUNK = 1 << 20

ENTRY_KINDS = frozenset({"charge", "hold", "release"})
EXPIRY_MEANINGS = frozenset({"release", "charge"})
"""What a hold's expiry means (its ``on_expiry`` field; absent reads as ``release``)."""
_EXTENSIONS = ("kind", "hold_id", "idempotency_key", "expires_at", "on_expiry")
"""The control plane's optional fields, in line order (after ``metadata``, before ``prev_hash``)."""


@dataclass(slots=True)
class LedgerEvent:
    """One charge in the ledger.

    Not a frozen dataclass only because freezing triples the cost of building one on the append and read
    paths; changing an event object changes nothing on disk (the file is the record).
    """

    event_id: int
    agent_id: str
    timestamp: str
    resource_type: str
    quantity: Decimal
    cost: Decimal
    currency: str = "USD"
    metadata: dict[str, Any] | None = None
    prev_hash: str | None = None
    kind: str | None = None
    hold_id: str | None = None
    idempotency_key: str | None = None
    expires_at: str | None = None
    on_expiry: str | None = None

    @property
    def is_charge(self) -> bool:
        """Whether this entry is spend (holds and releases are not)."""
        return self.kind is None or self.kind == "charge"

    @property
    def time(self) -> datetime:
        """The timestamp as an aware UTC datetime."""
        return parse_timestamp(self.timestamp, "timestamp", InvalidLedgerEventError)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in line order; amounts as exact strings; ``metadata`` omitted when None."""
        data: dict[str, Any] = {
            "event_id": self.event_id,
            "agent_id": self.agent_id,
            "timestamp": self.timestamp,
            "resource_type": self.resource_type,
            "quantity": str(self.quantity),
            "cost": str(self.cost),
            "currency": self.currency,
        }
        if self.metadata is not None:
            data["metadata"] = self.metadata
        for name in _EXTENSIONS:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.prev_hash is not None:
            data["prev_hash"] = self.prev_hash
        return data

    @classmethod
    def from_dict(cls, data: Any) -> LedgerEvent:
        """Build an event from a parsed line, validating every field; unknown fields are ignored.

        Raises :class:`InvalidLedgerEventError` naming the bad field.
        """
        return cls(*validate_event_dict(data))

    def to_json_line(self) -> str:
        """The event as one compact JSON line, without the trailing newline."""
        return self.to_bytes().decode()

    def to_bytes(self) -> bytes:
        return dumps(self.to_dict())


def line_body(
    agent_id: str,
    timestamp: str,
    resource_type: str,
    quantity: Decimal,
    cost: Decimal,
    currency: str,
    metadata: dict[str, Any] | None,
    extensions: tuple[str | None, ...] | None = None,
) -> bytes:
    """The middle of an event's line: what :meth:`LedgerEvent.to_bytes` gives between ``{"event_id":N,``
    and ``,"prev_hash":...}`` (a test holds the two equal). The writer splices in the id and chain hash
    under its lock; building the bytes directly is several times cheaper than building a dict and encoding
    it, and this runs once per append."""
    template = (
        b'"agent_id":%b,"timestamp":"%b","resource_type":%b,"quantity":"%b","cost":"%b","currency":"%b"'
    )
    body = template % (
        orjson.dumps(agent_id),
        timestamp.encode(),
        orjson.dumps(resource_type),
        str(quantity).encode(),
        str(cost).encode(),
        currency.encode(),
    )
    if metadata is not None:
        body += b',"metadata":' + dumps(metadata)
    if extensions is not None:  # None: a plain charge (the common case; skips the loop)
        for name, value in zip(_EXTENSIONS, extensions, strict=True):
            if value is not None:
                body += b',"%b":%b' % (name.encode(), orjson.dumps(value))
    return body


def validate_event_dict(data: Any) -> tuple[Any, ...]:
    """Check a parsed line and return its fields in :class:`LedgerEvent` order (amounts as Decimals).

    Kept separate from :meth:`LedgerEvent.from_dict` so ``verify`` can check millions of lines without
    building objects it would throw away. It runs once per line read (a replay, a follower, verify), so the
    common case is inlined: each check is the one :mod:`caracal.core.validation` makes (called for anything
    unusual, which raises the precise error), and amount strings and the last timestamp already found valid
    are remembered (:func:`stored_amount`, :data:`_valid_stamp`). The checks run, and fail, in the same order
    as the validators': a missing field is reported before a bad later one.
    """
    error = InvalidLedgerEventError
    if type(data) is not dict:
        raise error(f"an event must be a JSON object, got {type(data).__name__}")
    try:
        event_id = data["event_id"]
        timestamp = data["timestamp"]
        agent_id = data["agent_id"]
        if not (
            type(agent_id) is str
            and 0 < len(agent_id) <= MAX_IDENTIFIER_LENGTH
            and agent_id.isprintable()
            and not agent_id.isspace()
        ):
            check_identifier(agent_id, "agent_id", error)
        resource_type = data["resource_type"]
        if not (
            type(resource_type) is str
            and 0 < len(resource_type) <= MAX_IDENTIFIER_LENGTH
            and resource_type.isprintable()
            and not resource_type.isspace()
        ):
            check_identifier(resource_type, "resource_type", error)
        value = data["quantity"]
        quantity = _AMOUNTS.get(value) if type(value) is str else None
        if quantity is None:
            quantity = stored_amount(value, "quantity")
        value = data["cost"]
        cost = _AMOUNTS.get(value) if type(value) is str else None
        if cost is None:
            cost = stored_amount(value, "cost")
        currency = data["currency"]
        if type(currency) is not str or currency not in ISO_4217_CODES:
            check_currency(currency, error)
    except KeyError as exc:
        raise error(f"event is missing the field {exc.args[0]!r}") from None
    if type(event_id) is not int or event_id < 1:
        raise error(f"event_id must be a positive integer, got {event_id!r}")
    if timestamp is not _valid_stamp[0]:  # lines of one batch share their timestamp: check it once
        if type(timestamp) is not str:
            raise error(f"timestamp must be an ISO 8601 string, got {timestamp!r}")
        if timestamp != _valid_stamp[0]:
            parse_timestamp(timestamp, "timestamp", error)
        _valid_stamp[0] = timestamp
    prev_hash = data.get("prev_hash")
    if type(prev_hash) is str and len(data) == 8:  # the seven fields above and prev_hash, nothing else
        if len(prev_hash) != 64:
            raise error(f"prev_hash must be 64 hex digits, got {prev_hash!r}")
        return (event_id, agent_id, timestamp, resource_type, quantity, cost, currency, None, prev_hash,
                None, None, None, None, None)  # fmt: skip
    metadata = data.get("metadata")
    if metadata is not None:
        check_metadata(metadata, error)
    if prev_hash is not None and (type(prev_hash) is not str or len(prev_hash) != 64):
        raise error(f"prev_hash must be 64 hex digits, got {prev_hash!r}")
    kind = data.get("kind")
    hold_id = data.get("hold_id")
    idempotency_key = data.get("idempotency_key")
    expires_at = data.get("expires_at")
    on_expiry = data.get("on_expiry")
    if (
        kind is None
        and hold_id is None
        and idempotency_key is None
        and expires_at is None
        and on_expiry is None
    ):
        return (event_id, agent_id, timestamp, resource_type, quantity, cost, currency, metadata, prev_hash,
                None, None, None, None, None)  # fmt: skip
    extensions = check_extensions(kind, hold_id, idempotency_key, expires_at, on_expiry)
    return (event_id, agent_id, timestamp, resource_type, quantity, cost, currency, metadata, prev_hash,
            *extensions)  # fmt: skip


_AMOUNTS: dict[str, Decimal] = {}
"""Amount strings of ledger lines already found valid, and their Decimals (a pure function of the string;
Decimals are immutable, so events may share them). Bounded: cleared when it reaches :data:`_AMOUNTS_MAX`."""
_AMOUNTS_MAX = 4096
_valid_stamp: list[str | None] = [None]
"""The last timestamp string (as in a line) found valid: the lines of one batch share it."""
_valid_expiry: list[str | None] = [None]
"""The last ``expires_at`` string found valid: the holds of one batch share it."""


def stored_amount(value: object, name: str) -> Decimal:
    """``parse_amount(value, name, InvalidLedgerEventError, stored=True)``, remembering valid strings."""
    amount = parse_amount(value, name, InvalidLedgerEventError, stored=True)
    if type(value) is str:
        if len(_AMOUNTS) >= _AMOUNTS_MAX:
            _AMOUNTS.clear()
        _AMOUNTS[value] = amount
    return amount


def check_extensions(
    kind: object, hold_id: object, idempotency_key: object, expires_at: object, on_expiry: object = None
) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """Validate the control plane's optional fields (see the module docstring); raise
    :class:`InvalidLedgerEventError` naming the bad one."""
    error = InvalidLedgerEventError
    if kind is not None and kind not in ENTRY_KINDS:
        raise error(f"kind must be one of {sorted(ENTRY_KINDS)}, got {kind!r}")
    if hold_id is not None:
        check_identifier(hold_id, "hold_id", error)
    if idempotency_key is not None:
        check_identifier(idempotency_key, "idempotency_key", error)
    if expires_at is not None and expires_at is not _valid_expiry[0]:
        if type(expires_at) is not str:
            raise error(f"expires_at must be an ISO 8601 string, got {expires_at!r}")
        if expires_at != _valid_expiry[0]:  # the holds of one batch share their expiry: check it once
            parse_timestamp(expires_at, "expires_at", error)
            _valid_expiry[0] = expires_at
    if kind in ("hold", "release") and hold_id is None:
        raise error(f"a {kind} entry needs a hold_id")
    if on_expiry is not None:
        if on_expiry not in EXPIRY_MEANINGS:
            raise error(f"on_expiry must be one of {sorted(EXPIRY_MEANINGS)}, got {on_expiry!r}")
        if kind != "hold":
            raise error("on_expiry is only for hold entries")
    return kind, hold_id, idempotency_key, expires_at, on_expiry  # type: ignore[return-value]


# The exact shape of a line as LedgerWriter writes it when it carries no metadata and only plain printable
# ASCII identifiers (the overwhelming majority). Every field the pattern accepts is valid by construction
# except the calendar date and the currency list, which canonical_line_fields checks. Used by verify to
# check millions of lines several times faster than parsing and validating each one; anything else
# (metadata, escapes, exponents, leading spaces) takes the full path, and a test asserts both paths agree.
_IDENT = r"[!#-\[\]-~][ !#-\[\]-~]{0,255}"
_AMOUNT = r"(?:0|[1-9][0-9]{0,40})(?:\.[0-9]{1,40})?"
_CANONICAL_LINE = re.compile(
    rb'\{"event_id":([1-9][0-9]{0,18}),"agent_id":"' + _IDENT.encode() + rb'",'
    rb'"timestamp":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6})Z",'
    rb'"resource_type":"' + _IDENT.encode() + rb'",'
    rb'"quantity":"' + _AMOUNT.encode() + rb'","cost":"' + _AMOUNT.encode() + rb'",'
    rb'"currency":"([A-Z]{3})","prev_hash":"([0-9a-f]{64})"\}'
)
_CURRENCY_BYTES = frozenset(code.encode() for code in ISO_4217_CODES)
_valid_moment = b""
"""The last timestamp (as in a line) that :func:`canonical_line_fields` found to be a real moment."""


def canonical_line_fields(line: bytes) -> tuple[int, str] | None:
    """``(event_id, prev_hash)`` if ``line`` is a valid event in the writer's plain canonical form, else
    None (which means "use the full path", not "invalid")."""
    match = _CANONICAL_LINE.fullmatch(line)
    if match is None:
        return None
    global _valid_moment
    event_id, moment, currency, prev_hash = match.groups()
    if currency not in _CURRENCY_BYTES:
        return None
    if moment != _valid_moment:  # lines of one batch share their moment: check the calendar once
        try:
            datetime.fromisoformat(moment.decode())
        except ValueError:
            return None
        _valid_moment = moment
    return int(event_id), prev_hash.decode()


def parse_line(line: bytes, line_number: int) -> LedgerEvent:
    """Parse one complete line (without its newline); raise :class:`LedgerCorruptError` naming it.

    Every line is parsed once and fully validated (:func:`validate_event_dict`, whose common case is
    inlined); the error paths build their messages only when they are taken."""
    try:
        return LedgerEvent(*validate_event_dict(orjson.loads(line)))
    except orjson.JSONDecodeError as exc:
        raise LedgerCorruptError(
            f"{_where(line_number)} is not valid JSON ({exc}); the ledger is corrupt, run "
            f"'caracal ledger verify' and restore the line from a backup",
            line_number=line_number,
        ) from None
    except InvalidLedgerEventError as exc:
        data = orjson.loads(line)
        event_id = data.get("event_id") if isinstance(data, dict) else None
        raise LedgerCorruptError(
            f"{_where(line_number)} is not a valid event: {exc}",
            line_number=line_number,
            event_id=event_id if isinstance(event_id, int) else None,
        ) from None


def _where(line_number: int) -> str:
    return f"ledger line {line_number}" if line_number else "a ledger line near the end of the file"


def iter_lines(handle: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, line)`` for each complete line in ``[start, end)``, without the newline.

    Reads in large chunks. Bytes after the last newline (a write in progress, or a torn tail left by a
    crash) are not yielded: they were never acknowledged.
    """
    if end is None:
        end = os.fstat(handle.fileno()).st_size
    handle.seek(start)
    position = start
    pending = b""
    while position < end:
        chunk = handle.read(min(READ_CHUNK, end - position))
        if not chunk:
            break
        position += len(chunk)
        data = pending + chunk if pending else chunk
        lines = data.split(b"\n")
        pending = lines.pop()
        offset = position - len(data)
        for line in lines:
            yield offset, line
            offset += len(line) + 1


def complete_end(handle: BinaryIO, size: int) -> int:
    """Offset just past the last newline at or before ``size`` (0 if none): where complete lines end."""
    position = size
    while position > 0:
        step = min(65536, position)
        handle.seek(position - step)
        block = handle.read(step)
        index = block.rfind(b"\n")
        if index >= 0:
            return position - step + index + 1
        position -= step
    return 0


def ledger_size(path: os.PathLike[str] | str) -> int:
    """The ledger file's size in bytes (0 when it does not exist yet): followers compare it with how far
    they have read, one ``stat`` per budget check."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise LedgerReadError(f"cannot read the ledger {path}: {exc.strerror}") from exc


def line_ending_at(path: os.PathLike[str] | str, offset: int) -> bytes | None:
    """The complete line (without its newline) that ends exactly at byte ``offset``, or None if there is no
    such line. Caches saved beside the ledger (the Merkle frontier, the budget snapshot) record the offset
    they cover; this is how they check that it still matches the file before resuming from it."""
    try:
        with open(path, "rb") as handle:
            if (
                offset <= 0
                or offset > os.fstat(handle.fileno()).st_size
                or complete_end(handle, offset) != offset
            ):
                return None
            last = read_last_lines(handle, offset, 1)
    except OSError:
        return None
    return last[0][1] if last else None


def line_event_id(line: bytes) -> int | None:
    """The ``event_id`` of a line, or None if it has none (no validation beyond that)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    event_id = data.get("event_id") if isinstance(data, dict) else None
    return event_id if type(event_id) is int else None


def read_last_lines(handle: BinaryIO, end: int, count: int) -> list[tuple[int, bytes]]:
    """The last ``count`` complete lines before ``end`` (a line boundary), as ``(offset, line)``.

    Reads backwards in blocks, so the cost depends on ``count``, not on the size of the file.
    """
    if count <= 0 or end <= 0:
        return []
    position = end
    buffer = b""
    while position > 0 and buffer.count(b"\n") <= count:
        step = min(65536, position)
        position -= step
        handle.seek(position)
        buffer = handle.read(step) + buffer
    pieces = buffer[:-1].split(b"\n")
    offset = position
    if position > 0:  # the first piece may be the end of a longer line
        offset += len(pieces[0]) + 1
        pieces = pieces[1:]
    result = []
    for piece in pieces:
        result.append((offset, piece))
        offset += len(piece) + 1
    return result[-count:]
