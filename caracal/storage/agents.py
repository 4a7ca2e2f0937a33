"""The agent registry of the embedded backend: one JSON document, ``{"agents": {agent_id: record}}``.

Invariants:

- **Atomic, serialized, backed up.** Every change is one :meth:`JsonDocument.transaction` (exclusive
  ``flock`` from the read to the atomic write, rolling ``.bak.N`` backups): two processes registering the
  same name at once end with exactly one agent of that name and a :class:`DuplicateAgentError` for the
  other; no registration is ever lost. Bad input is refused before anything is written.
- **Consistent or refused.** Every read checks the whole document: each record valid
  (:class:`~caracal.core.identity.Agent`), keyed by its own id, names unique, every parent present, no
  cycle. A registry that breaks any of these raises :class:`RegistryError` (fail closed), naming the file
  and its backups; it is never silently repaired or replaced. Registration also keeps names unique as
  :func:`~caracal.core.identity.name_key` compares them (case and Unicode compatibility forms ignored);
  records written before that rule may share a key and still load (see :meth:`AgentRegistry.get`).
- **A tree by construction.** A parent is set only at registration and must already exist, so the API
  cannot create a cycle; :func:`~caracal.core.identity.would_create_cycle` is still checked.
- **Cheap reads.** The parsed, checked document is cached per registry object, keyed by the file's
  ``(st_mtime_ns, st_ctime_ns, st_size, st_ino, st_dev)``: a ``get`` on an unchanged file costs one
  ``stat``. A file whose mtime is within :data:`RACY_WINDOW_NS` of when it was read is not trusted by its
  key alone (timestamps are coarse and inode numbers are reused, so a quick second change could keep the
  key): it is read again and compared byte for byte, and parsed again only if the bytes changed.
- **No shared state leaks.** Every :class:`Agent` returned is the caller's own (metadata is copied), so
  changing it never changes the cache.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import difflib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from caracal.config import caracal_home
from caracal.core.fileio import open_for_reading
from caracal.core.identity import (
    ACTIVE,
    SUSPENDED,
    Agent,
    AgentStatus,
    canonical_agent_id,
    check_agent_id,
    check_status,
    children_index,
    descendants,
    name_key,
    new_agent,
    would_create_cycle,
)
from caracal.core.validation import dumps
from caracal.exceptions import (
    AgentNotFoundError,
    AgentSuspendedError,
    DuplicateAgentError,
    IdentityError,
    InvalidAgentError,
    RegistryError,
)
from caracal.storage.interface import Document
from caracal.storage.jsonfile import JsonDocument

AGENTS_FILE_NAME = "agents.json"

RACY_WINDOW_NS = 2_000_000_000
"""A file modified less than this long (ns) before it was read is re-checked by content on the next read.
Two seconds covers the coarsest common timestamp granularity (FAT) with room for clock steps."""

Clock = Callable[[], datetime]
IdFactory = Callable[[], "uuid.UUID | str"]


def default_agents_path(home: Path | None = None) -> Path:
    """Where the default registry lives: ``$CARACAL_HOME/data/agents.json``."""
    return (home or caracal_home()) / "data" / AGENTS_FILE_NAME


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class _Snapshot:
    """One checked version of the document."""

    by_id: dict[str, Agent]
    by_name: dict[str, str]
    children: dict[str, builtins.list[str]] = field(default_factory=dict)
    by_key: dict[str, builtins.list[str]] = field(default_factory=dict)
    """:func:`name_key` -> the ids of the agents whose names have it (two only in homes that predate it)."""


_EMPTY = _Snapshot({}, {})

_StatKey = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class _Cached:
    key: _StatKey
    data: bytes
    snapshot: _Snapshot
    trusted: bool


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


def _detach(agent: Agent) -> Agent:
    """A copy whose metadata is not shared with the cache (the rest is immutable)."""
    if agent.metadata is None:
        return agent
    clone = copy.copy(agent)
    object.__setattr__(clone, "metadata", orjson.loads(dumps(agent.metadata)))
    return clone


def empty_agents() -> dict[str, Any]:
    """The agents document before the first registration."""
    return {"agents": {}}


class AgentRegistry:
    """The agents stored in ``path`` (a JSON file; created on the first registration).

    ``clock`` (returns the current time; naive means UTC) and ``id_factory`` (returns a UUID or its
    canonical string) are the defaults for the methods that take them; tests pass fixed ones. Safe to share
    between threads; any number of registry objects, in any number of processes, may use one file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Document,
        *,
        clock: Clock = _utc_now,
        id_factory: IdFactory = uuid.uuid4,
        backup_count: int = 3,
        lock_timeout: float = 10.0,
    ):
        self._document: Document = (
            JsonDocument(path, default=empty_agents, backup_count=backup_count, lock_timeout=lock_timeout)
            if isinstance(path, (str, os.PathLike))
            else path
        )
        self._file = self._document.path if isinstance(self._document, JsonDocument) else None
        self.path: Path | str = self._file if self._file is not None else self._document.label
        self._clock = clock
        self._id_factory = id_factory
        self._cache: _Cached | None = None

    def __repr__(self) -> str:
        return f"AgentRegistry({str(self.path)!r})"

    # ----------------------------------------------------------------------------------------------- writes

    def register(
        self,
        name: str,
        owner: str,
        parent: str | uuid.UUID | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        clock: Clock | None = None,
        id_factory: IdFactory | None = None,
    ) -> Agent:
        """Register a new, active agent and return it.

        ``parent`` is the id or name of an existing agent (None: a root). Raises :class:`InvalidAgentError`
        for a bad name, owner, metadata or parent reference, :class:`DuplicateAgentError` if the name (or the
        generated id) is taken, :class:`AgentNotFoundError` if the parent does not exist, and
        :class:`RegistryError` if the file cannot be read, locked or written. The check and the write are one
        transaction: of two processes registering one name at once, exactly one succeeds.
        """
        if parent is not None and not isinstance(parent, (str, uuid.UUID)):
            raise InvalidAgentError(f"parent must be an agent id or name, got {type(parent).__name__}")
        raw_id = (id_factory or self._id_factory)()
        agent_id = str(raw_id) if isinstance(raw_id, uuid.UUID) else raw_id
        check_agent_id(agent_id, "the id_factory's agent id")
        # Validate everything the caller gave before taking the lock; the parent is resolved under it.
        agent = new_agent(name, owner, agent_id=agent_id, now=(clock or self._clock)(), metadata=metadata)
        with self._transaction() as (agents, snapshot):
            clashing = snapshot.by_key.get(name_key(agent.name))
            if clashing:
                existing = snapshot.by_id[clashing[0]]
                same = "" if existing.name == agent.name else " (names ignore case and character width)"
                raise DuplicateAgentError(
                    f"an agent named {existing.name!r} already exists{same} (id {existing.agent_id}); "
                    f"choose another name"
                )
            if agent.agent_id in snapshot.by_id:
                raise DuplicateAgentError(
                    f"an agent with id {agent.agent_id} already exists; the id factory repeated an id"
                )
            if parent is not None:
                parent_agent = self._resolve(snapshot, parent, role="parent")
                if would_create_cycle(agent.agent_id, parent_agent.agent_id, snapshot.by_id):
                    raise IdentityError(  # unreachable through this API: kept as a guard
                        f"making {parent_agent.name!r} the parent of {agent.name!r} would create a cycle"
                    )
                agent = Agent(
                    agent_id=agent.agent_id,
                    name=agent.name,
                    owner=agent.owner,
                    parent_id=parent_agent.agent_id,
                    metadata=agent.metadata,
                    status=agent.status,
                    created_at=agent.created_at,
                    updated_at=agent.updated_at,
                )
            agents[agent.agent_id] = agent.to_dict()
        return _detach(agent)

    def suspend(self, id_or_name: str | uuid.UUID, *, clock: Clock | None = None) -> Agent:
        """Suspend the agent (its actions are denied) and return it. Idempotent: suspending a suspended
        agent changes nothing, not even ``updated_at``."""
        return self._set_status(id_or_name, SUSPENDED, clock)

    def activate(self, id_or_name: str | uuid.UUID, *, clock: Clock | None = None) -> Agent:
        """Make the agent active again and return it. Idempotent, like :meth:`suspend`."""
        return self._set_status(id_or_name, ACTIVE, clock)

    def _set_status(self, id_or_name: str | uuid.UUID, status: AgentStatus, clock: Clock | None) -> Agent:
        with self._transaction() as (agents, snapshot):
            agent = self._resolve(snapshot, id_or_name)
            if agent.status == status:
                return _detach(agent)
            changed = agent.with_status(status, (clock or self._clock)())
            record = agents[agent.agent_id]  # change the stored record in place: unknown fields survive
            record["status"] = changed.status
            record["updated_at"] = changed.updated_at
        return _detach(changed)

    # ------------------------------------------------------------------------------------------------ reads

    def get(self, id_or_name: str | uuid.UUID) -> Agent:
        """The agent with this id (any spelling of the UUID) or name.

        A name matches exactly, else as :func:`~caracal.core.identity.name_key` compares names (``C1``,
        ``c1`` and a full-width ``c1`` find the same agent). In a home registered before names were
        compared that way, two agents may share a key: each is still found by its exact name or id, and
        a lookup matching only by key is refused as ambiguous (:class:`AgentNotFoundError` naming the
        candidates) rather than guessed.

        Raises :class:`AgentNotFoundError` (with close names, if any) or :class:`InvalidAgentError` for a
        reference that is not a string or is empty.
        """
        return _detach(self._resolve(self._snapshot(), id_or_name))

    def require_active(self, id_or_name: str | uuid.UUID) -> Agent:
        """The agent, if it and every ancestor are active; else :class:`AgentSuspendedError` naming the
        suspended one. A suspended agent suspends its whole subtree: a child spends on its ancestors'
        budgets, so it is denied while any of them is suspended."""
        snapshot = self._snapshot()
        agent = self._resolve(snapshot, id_or_name)
        if agent.status == SUSPENDED:
            raise AgentSuspendedError(
                f"agent {agent.name!r} is suspended: its actions are denied until it is activated"
            )
        current = agent.parent_id
        while current is not None:
            ancestor = snapshot.by_id[current]
            if ancestor.status == SUSPENDED:
                raise AgentSuspendedError(
                    f"agent {agent.name!r} is denied: its ancestor {ancestor.name!r} is suspended"
                )
            current = ancestor.parent_id
        return _detach(agent)

    def list(
        self, status: AgentStatus | None = None, parent: str | uuid.UUID | None = None
    ) -> builtins.list[Agent]:
        """Agents sorted by name; only those with ``status`` if given, only the direct children of
        ``parent`` (an id or name) if given."""
        if status is not None:
            check_status(status)
        snapshot = self._snapshot()
        if parent is None:
            candidates: Iterable[Agent] = snapshot.by_id.values()
        else:
            parent_id = self._resolve(snapshot, parent, role="parent").agent_id
            candidates = [snapshot.by_id[child] for child in snapshot.children.get(parent_id, ())]
        chosen = [agent for agent in candidates if status is None or agent.status == status]
        chosen.sort(key=lambda agent: agent.name)
        return [_detach(agent) for agent in chosen]

    def ancestors(self, id_or_name: str | uuid.UUID) -> builtins.list[Agent]:
        """The agent's ancestors: its parent first, up to the root (empty for a root)."""
        snapshot = self._snapshot()
        chain = []
        current = self._resolve(snapshot, id_or_name).parent_id
        while current is not None:  # the snapshot was checked: parents exist and there is no cycle
            ancestor = snapshot.by_id[current]
            chain.append(_detach(ancestor))
            current = ancestor.parent_id
        return chain

    def descendants(self, id_or_name: str | uuid.UUID) -> builtins.list[Agent]:
        """Every agent below this one, depth-first: each right after its parent, siblings by name."""
        snapshot = self._snapshot()
        agent = self._resolve(snapshot, id_or_name)
        found = descendants(agent.agent_id, snapshot.by_id, snapshot.children)
        return [_detach(snapshot.by_id[agent_id]) for agent_id in found]

    # ------------------------------------------------------------------------------------------- internals

    def _resolve(self, snapshot: _Snapshot, ref: object, role: str = "agent") -> Agent:
        if type(ref) is str:  # the hot path: a canonical id or an exact name
            found = snapshot.by_id.get(ref)
            if found is not None:
                return found
            agent_id = snapshot.by_name.get(ref)
            if agent_id is not None:
                return snapshot.by_id[agent_id]
        canonical = canonical_agent_id(ref)
        if canonical is not None:  # names never parse as UUIDs, so this is an id
            found = snapshot.by_id.get(canonical)
            if found is not None:
                return found
            raise AgentNotFoundError(
                f"no {role} with id {canonical} in {self.path} ({self._count(snapshot)})"
            )
        if not isinstance(ref, str):
            raise InvalidAgentError(
                f"{role} must be an agent id or name (a string), got {type(ref).__name__}"
            )
        if not ref or ref.isspace():
            raise InvalidAgentError(f"{role} id or name must not be empty")
        matches = snapshot.by_key.get(name_key(ref), ())
        if len(matches) == 1:
            return snapshot.by_id[matches[0]]
        if matches:
            names = " and ".join(repr(snapshot.by_id[agent_id].name) for agent_id in matches)
            raise AgentNotFoundError(
                f"no {role} is named exactly {ref!r}, and it matches several agents registered before "
                f"names ignored case and character width ({names}): use the exact name or the id"
            )
        message = f"no {role} named {ref!r} in {self.path} ({self._count(snapshot)})"
        close = difflib.get_close_matches(ref, builtins.list(snapshot.by_name), n=3)
        if close:
            message += "; did you mean " + " or ".join(repr(name) for name in close) + "?"
        raise AgentNotFoundError(message)

    @staticmethod
    def _count(snapshot: _Snapshot) -> str:
        count = len(snapshot.by_id)
        return "no agents are registered" if not count else f"{count} agent{'s' * (count != 1)} registered"

    def _snapshot(self) -> _Snapshot:
        if self._file is None:  # another backend: its document caches by version
            return self._document.read_cached(self._index)
        cached = self._cache
        try:
            st = os.stat(self._file)
        except FileNotFoundError:
            return _EMPTY
        except OSError as exc:
            raise RegistryError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        if cached is not None and cached.trusted and cached.key == _stat_key(st):
            return cached.snapshot
        started_ns = time.time_ns()
        try:
            with open_for_reading(self._file) as file:
                st = os.fstat(file.fileno())  # the stat of exactly the bytes read (renames replace inodes)
                data = file.read()
        except FileNotFoundError:
            return _EMPTY
        except OSError as exc:
            raise RegistryError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        unchanged = cached is not None and cached.data == data
        snapshot = cached.snapshot if cached is not None and unchanged else self._parse(data)
        trusted = st.st_mtime_ns <= started_ns - RACY_WINDOW_NS
        self._cache = _Cached(_stat_key(st), data, snapshot, trusted)
        return snapshot

    def _parse(self, data: bytes) -> _Snapshot:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"{self.path} is not valid JSON ({exc}); {self._restore_hint()}") from None
        if not isinstance(document, dict):
            raise RegistryError(f"{self.path} must hold a JSON object, found {type(document).__name__}")
        return self._index(document)

    def _restore_hint(self) -> str:
        if self._file is None:
            return "restore it from a backup of the database"
        return f"restore it from {self._file.name}.bak.1 (or an older backup) beside it"

    def _index(self, document: dict[str, Any]) -> _Snapshot:
        """Check the whole document and index it; RegistryError (fail closed) on any inconsistency."""
        records = document.get("agents", {})
        if not isinstance(records, dict):
            raise RegistryError(
                f"{self.path}: 'agents' must be a JSON object, found {type(records).__name__}; "
                f"{self._restore_hint()}"
            )
        by_id: dict[str, Agent] = {}
        by_name: dict[str, str] = {}
        by_key: dict[str, builtins.list[str]] = {}
        for key, record in records.items():
            try:
                agent = Agent.from_dict(record)
            except InvalidAgentError as exc:
                raise RegistryError(
                    f"{self.path}: the record under {key!r} is invalid: {exc}; {self._restore_hint()}"
                ) from None
            if agent.agent_id != key:
                raise RegistryError(
                    f"{self.path}: the record under {key!r} has agent_id {agent.agent_id!r}; "
                    f"{self._restore_hint()}"
                )
            if agent.name in by_name:
                raise RegistryError(
                    f"{self.path}: the name {agent.name!r} is used by two agents ({by_name[agent.name]} and "
                    f"{key}); {self._restore_hint()}"
                )
            by_id[key] = agent
            by_name[agent.name] = key
            by_key.setdefault(name_key(agent.name), []).append(key)
        checked: set[str] = set()
        for agent in by_id.values():
            path: builtins.list[str] = []
            on_path: set[str] = set()
            current: str | None = agent.agent_id
            while current is not None and current not in checked:
                if current in on_path:
                    loop = " -> ".join(by_id[step].name for step in [*path, current])
                    raise RegistryError(
                        f"{self.path}: the delegation tree has a cycle ({loop}); {self._restore_hint()}"
                    )
                holder = by_id[current]
                if holder.parent_id is not None and holder.parent_id not in by_id:
                    raise RegistryError(
                        f"{self.path}: agent {holder.name!r} names a parent {holder.parent_id} that does not "
                        f"exist; {self._restore_hint()}"
                    )
                path.append(current)
                on_path.add(current)
                current = holder.parent_id
            checked.update(path)
        return _Snapshot(by_id, by_name, children_index(by_id), by_key)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[tuple[dict[str, Any], _Snapshot]]:
        """The locked document's ``agents`` object (change it in place) and its checked snapshot."""
        with self._document.transaction() as document:
            snapshot = self._index(document)
            agents = document.setdefault("agents", {})
            yield agents, snapshot
