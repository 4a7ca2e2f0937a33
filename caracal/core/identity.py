"""Agent identity: who spends. Pure: no I/O; clocks and ids are passed in.

An agent has an id (a UUID), a unique name, an owner, an optional parent, metadata and a status. Parents
form a delegation tree: a child's spend counts against every ancestor's budgets, so the tree must be a
tree (no cycles), and lookups must be unambiguous.

Invariants every :class:`Agent` keeps (checked on construction, so an ``Agent`` that exists is valid):

- ``agent_id`` is a UUID in its canonical form (36 lower-case hex digits and hyphens), the form
  ``str(uuid.uuid4())`` gives; ids therefore compare exactly as strings.
- ``name`` follows :func:`~caracal.core.validation.check_identifier` (non-empty, at most 256 printable
  characters), has no leading or trailing whitespace, is in Unicode NFC form and is never something
  :class:`uuid.UUID` would accept. "Look up by id or name" is therefore never ambiguous: a string that
  parses as a UUID is an id, anything else is a name.
- **One name, one agent.** Names are compared by :func:`name_key` (Unicode NFKC, then case-folded), so
  ``C1``, ``c1`` and a full-width ``c1`` are one name: registering a second is refused and looking any of
  them up finds the one agent. A new name (:func:`new_agent_name`) is stored NFKC-normalized and may not
  contain ``/`` or ``\\`` nor be ``.`` or ``..`` (names appear in REST paths and file-like references).
  Agents registered before these rules keep their names: a stored record is checked only by the rules
  above, so an old home whose names now clash or are now refused still loads (an exact name or the id
  still finds each agent; a lookup that only matches by :func:`name_key` must then be unambiguous).
- ``owner`` is a non-empty printable string of at most 256 characters (an email, a team, a user name);
  nothing more is asked of it.
- ``parent_id`` is None or a canonical UUID other than the agent's own id.
- ``metadata`` is None or a JSON object within :data:`~caracal.core.validation.MAX_METADATA_BYTES`; it is
  stored as plain JSON values (a ``Decimal`` inside becomes its exact string, a tuple a list) and is the
  agent's own copy, never shared with the caller's object.
- ``status`` is ``"active"`` or ``"suspended"``; a suspended agent is denied.
- ``created_at`` and ``updated_at`` are UTC timestamps in the stored form
  (``YYYY-MM-DDTHH:MM:SS.ffffffZ``); any ISO 8601 string given is normalized to it.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal, NoReturn, cast

import orjson

from caracal.core.validation import check_identifier, check_metadata, dumps, format_timestamp, parse_timestamp
from caracal.exceptions import AgentNotFoundError, IdentityError, InvalidAgentError

AgentStatus = Literal["active", "suspended"]

ACTIVE: Final = "active"
SUSPENDED: Final = "suspended"
AGENT_STATUSES: Final[tuple[AgentStatus, ...]] = ("active", "suspended")

AGENT_FIELDS: Final = (
    "agent_id",
    "name",
    "owner",
    "parent_id",
    "metadata",
    "status",
    "created_at",
    "updated_at",
)
"""The fields of a stored agent record, in the order :meth:`Agent.to_dict` writes them."""

_REQUIRED_FIELDS: Final = ("agent_id", "name", "owner", "status", "created_at", "updated_at")

# Fast paths for what the registry stores (every record is checked on every read of a changed file).
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STORED_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def _fail(message: str) -> NoReturn:
    raise InvalidAgentError(message)


def is_uuid_like(value: object) -> bool:
    """True if :class:`uuid.UUID` accepts ``value`` in any spelling (with or without hyphens, braces...)."""
    if type(value) is not str or len(value) < 32:  # uuid.UUID only removes characters, then wants 32 digits
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def canonical_agent_id(value: object) -> str | None:
    """``value`` as a canonical id string if it is a UUID (a :class:`uuid.UUID` or any spelling of one), else
    None. Used to tell an id from a name: names never parse as UUIDs."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if type(value) is not str:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def check_agent_id(value: object, field: str = "agent_id") -> str:
    """Return ``value`` if it is a canonical UUID string, else raise :class:`InvalidAgentError`."""
    if type(value) is str and _CANONICAL_ID.fullmatch(value):
        return value
    if not isinstance(value, str):
        _fail(f"{field} must be a UUID string, got {type(value).__name__}")
    canonical = canonical_agent_id(value)
    if canonical is None:
        _fail(f"{field} must be a UUID such as '{uuid.UUID(int=0)}', got {value!r}")
    _fail(f"{field} must be a UUID in canonical form ({canonical!r}), got {value!r}")


def check_agent_name(value: object) -> str:
    """Return ``value`` if it is a valid agent name (see the module invariants), else raise
    :class:`InvalidAgentError`."""
    name = check_identifier(value, "agent name", InvalidAgentError)
    if name != name.strip():
        _fail(f"agent name must not start or end with whitespace, got {name!r}")
    if not name.isascii() and not unicodedata.is_normalized("NFC", name):
        _fail(
            f"agent name must be in Unicode NFC form (as typed on most keyboards), got {name!r}; "
            f"use {unicodedata.normalize('NFC', name)!r}"
        )
    if is_uuid_like(name):
        _fail(
            f"agent name must not look like a UUID ({name!r}): ids are UUIDs, so a lookup by id or name "
            f"would be ambiguous; choose a descriptive name such as 'research-bot'"
        )
    return name


def name_key(name: str) -> str:
    """The form in which two agent names are compared: NFKC-normalized and case-folded (then NFKC again,
    since case folding can leave a string that is not NFKC). Names with the same key are the same name."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def new_agent_name(value: object) -> str:
    """The name a new agent is registered under: ``value`` NFKC-normalized (full-width and other
    compatibility forms become their plain characters) and checked by :func:`check_agent_name` plus the
    rules for new names: no ``/`` or ``\\`` and not ``.`` or ``..``. Raises :class:`InvalidAgentError`."""
    name = check_identifier(value, "agent name", InvalidAgentError)
    if not name.isascii():
        name = unicodedata.normalize("NFKC", name)
    for separator in ("/", "\\"):
        if separator in name:
            _fail(
                f"agent name must not contain {separator!r} (got {value!r}): names appear in REST paths "
                f"such as /api/v1/agents/NAME; use '-' or '.' instead, e.g. {name.replace(separator, '-')!r}"
            )
    if name in (".", ".."):
        _fail(f"agent name must not be {name!r}: it reads as a path; choose a descriptive name")
    return check_agent_name(name)


def check_owner(value: object) -> str:
    """Return ``value`` if it is a usable owner (non-empty, printable, at most 256 characters)."""
    return check_identifier(value, "owner", InvalidAgentError)


def check_status(value: object) -> AgentStatus:
    """Return ``value`` if it is ``"active"`` or ``"suspended"``, else raise :class:`InvalidAgentError`."""
    if type(value) is str and value in AGENT_STATUSES:
        return value
    _fail(f"status must be 'active' or 'suspended', got {value!r}")


def _normalize_metadata(value: object) -> dict[str, Any] | None:
    checked = check_metadata(value, InvalidAgentError)
    if checked is None:
        return None
    # A deep copy in plain JSON types: what is stored, and what a later read gives back.
    return cast(dict[str, Any], orjson.loads(dumps(checked)))


def _normalize_timestamp(value: object, field: str) -> str:
    if type(value) is str and _STORED_STAMP.fullmatch(value):
        try:
            datetime.fromisoformat(value[:26])  # a real date and time: then the text is already canonical
            return value
        except ValueError:
            pass  # the full path below says what is wrong
    if not isinstance(value, str):
        _fail(f"{field} must be an ISO 8601 string such as 2026-01-31T12:00:00Z, got {type(value).__name__}")
    return format_timestamp(parse_timestamp(value, field, InvalidAgentError))


@dataclass(frozen=True)
class Agent:
    """One agent. Immutable; build changed copies with :meth:`with_status` (or :func:`dataclasses.replace`).

    Construction validates every field (see the module invariants) and raises :class:`InvalidAgentError`
    naming the bad field.
    """

    agent_id: str
    name: str
    owner: str
    parent_id: str | None
    metadata: dict[str, Any] | None
    status: AgentStatus
    created_at: str
    updated_at: str

    def __post_init__(self) -> None:
        check_agent_id(self.agent_id, "agent_id")
        check_agent_name(self.name)
        check_owner(self.owner)
        if self.parent_id is not None:
            check_agent_id(self.parent_id, "parent_id")
            if self.parent_id == self.agent_id:
                _fail(f"agent {self.name!r} cannot be its own parent")
        object.__setattr__(self, "metadata", _normalize_metadata(self.metadata))
        check_status(self.status)
        object.__setattr__(self, "created_at", _normalize_timestamp(self.created_at, "created_at"))
        object.__setattr__(self, "updated_at", _normalize_timestamp(self.updated_at, "updated_at"))

    def __hash__(self) -> int:  # metadata is a dict: hash by identity of the agent, consistent with ==
        return hash(self.agent_id)

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE

    @property
    def is_suspended(self) -> bool:
        return self.status == SUSPENDED

    def with_status(self, status: AgentStatus, now: datetime) -> Agent:
        """This agent with ``status``; ``self`` unchanged (same ``updated_at``) if it already has it."""
        check_status(status)
        if status == self.status:
            return self
        return replace(self, status=status, updated_at=format_timestamp(now))

    def to_dict(self) -> dict[str, Any]:
        """The stored record: every field of :data:`AGENT_FIELDS`, JSON types only (a fresh copy)."""
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "owner": self.owner,
            "parent_id": self.parent_id,
            "metadata": None if self.metadata is None else orjson.loads(dumps(self.metadata)),
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Agent:
        """An agent from a stored record, validated strictly.

        Every field of :data:`AGENT_FIELDS` except ``parent_id`` and ``metadata`` (which default to None) is
        required; values are checked exactly as on construction (no coercion: an id must be a string, not a
        UUID object). Unknown fields are ignored, so a record written by a newer Caracal still reads.
        Raises :class:`InvalidAgentError` naming the field.
        """
        if not isinstance(data, Mapping):
            _fail(f"an agent record must be a JSON object, got {type(data).__name__}")
        missing = [field for field in _REQUIRED_FIELDS if field not in data]
        if missing:
            label = data.get("name") or data.get("agent_id")
            where = f" for agent {label!r}" if isinstance(label, str) else ""
            _fail(f"agent record{where} is missing {', '.join(repr(field) for field in missing)}")
        try:
            return cls(
                agent_id=data["agent_id"],
                name=data["name"],
                owner=data["owner"],
                parent_id=data.get("parent_id"),
                metadata=data.get("metadata"),
                status=data["status"],
                created_at=data["created_at"],
                updated_at=data["updated_at"],
            )
        except InvalidAgentError as exc:
            label = data.get("name") if isinstance(data.get("name"), str) else data.get("agent_id")
            if isinstance(label, str) and label:
                raise InvalidAgentError(f"agent {label!r}: {exc}") from None
            raise


def new_agent(
    name: str,
    owner: str,
    *,
    agent_id: str | uuid.UUID,
    now: datetime,
    parent_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Agent:
    """A freshly registered, active agent whose ``created_at`` and ``updated_at`` are ``now``; its name is
    ``name`` as :func:`new_agent_name` normalizes it (refused if it breaks the rules for new names)."""
    name = new_agent_name(name)
    if isinstance(agent_id, uuid.UUID):
        agent_id = str(agent_id)
    stamp = format_timestamp(now)
    return Agent(
        agent_id=agent_id,
        name=name,
        owner=owner,
        parent_id=parent_id,
        metadata=cast("dict[str, Any] | None", metadata),
        status=ACTIVE,
        created_at=stamp,
        updated_at=stamp,
    )


def ancestors(agent_id: str, agents_by_id: Mapping[str, Agent]) -> list[str]:
    """The ids of ``agent_id``'s ancestors: its parent first, then the parent's parent, up to the root.

    Raises :class:`AgentNotFoundError` if ``agent_id`` is unknown, and :class:`IdentityError` if the chain
    reaches an id that is not in ``agents_by_id`` (a dangling parent) or loops back on itself (a cycle):
    budgets cannot be checked against a broken tree, so it is refused, never truncated.
    """
    if agent_id not in agents_by_id:
        raise AgentNotFoundError(f"no agent with id {agent_id!r}")
    chain: list[str] = []
    seen = {agent_id}
    current = agents_by_id[agent_id].parent_id
    while current is not None:
        if current in seen:
            loop = " -> ".join([agent_id, *chain, current])
            raise IdentityError(f"the delegation tree has a cycle: {loop}")
        if current not in agents_by_id:
            holder = chain[-1] if chain else agent_id
            raise IdentityError(f"agent {holder!r} names a parent {current!r} that does not exist")
        seen.add(current)
        chain.append(current)
        current = agents_by_id[current].parent_id
    return chain


def would_create_cycle(agent_id: str, new_parent_id: str | None, agents_by_id: Mapping[str, Agent]) -> bool:
    """True if giving ``agent_id`` the parent ``new_parent_id`` would put a cycle in the tree: the parent is
    the agent itself or one of its descendants. ``agent_id`` need not be in ``agents_by_id`` yet (a new
    agent); ``new_parent_id`` must be (else :class:`AgentNotFoundError`)."""
    if new_parent_id is None:
        return False
    if new_parent_id == agent_id:
        return True
    if new_parent_id not in agents_by_id:
        raise AgentNotFoundError(f"no agent with id {new_parent_id!r}")
    try:
        chain = ancestors(new_parent_id, agents_by_id)
    except IdentityError as exc:
        if isinstance(exc, AgentNotFoundError):
            raise
        return True  # the existing chain is already broken or cyclic: adding to it is refused
    return agent_id in chain


def children_index(agents_by_id: Mapping[str, Agent]) -> dict[str, list[str]]:
    """``parent id -> [child ids]``, the children of each parent sorted by name."""
    index: dict[str, list[str]] = {}
    for agent in sorted(agents_by_id.values(), key=lambda agent: agent.name):
        if agent.parent_id is not None:
            index.setdefault(agent.parent_id, []).append(agent.agent_id)
    return index


def descendants(
    agent_id: str,
    agents_by_id: Mapping[str, Agent],
    children: Mapping[str, list[str]] | None = None,
) -> list[str]:
    """The ids of every agent below ``agent_id`` in depth-first pre-order (each agent right after its parent,
    siblings by name). ``children`` is a prebuilt :func:`children_index` to reuse across calls.

    Raises :class:`AgentNotFoundError` if ``agent_id`` is unknown and :class:`IdentityError` on a cycle.
    """
    if agent_id not in agents_by_id:
        raise AgentNotFoundError(f"no agent with id {agent_id!r}")
    if children is None:
        children = children_index(agents_by_id)
    found: list[str] = []
    seen = {agent_id}
    stack = list(reversed(children.get(agent_id, ())))
    while stack:
        current = stack.pop()
        if current in seen:
            raise IdentityError(f"the delegation tree has a cycle through {current!r}")
        seen.add(current)
        found.append(current)
        stack.extend(reversed(children.get(current, ())))
    return found


def __getattr__(name: str) -> object:
    """Caracal Core v0.1's names for this module, loaded from :mod:`caracal.v01` on first use (they are
    adapters over the storage layer, which this module never imports)."""
    from caracal.v01 import load

    return load(__name__, name)
