"""Caracal Core v0.1's agent API (``caracal.core.identity.AgentIdentity`` and ``AgentRegistry``), as a thin
layer over our agent registry (:class:`caracal.storage.agents.AgentRegistry`).

The file is v0.1's ``agents.json`` (a JSON list; :class:`~caracal.v01.documents.AgentListCodec`); names,
ids, validation, locking, atomic writes and ``.bak.N`` backups are our registry's. An agent is an
:class:`AgentIdentity`, which *is* our :class:`~caracal.core.identity.Agent` (every field, every check),
built the v0.1 way (``AgentIdentity(agent_id, name, owner, created_at, metadata)``) and with v0.1's
``metadata`` of ``{}`` when there is none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caracal.core.identity import Agent
from caracal.exceptions import AgentNotFoundError, InvalidAgentError
from caracal.storage.agents import AgentRegistry as Registry
from caracal.storage.agents import empty_agents
from caracal.storage.jsonfile import JsonDocument
from caracal.v01.documents import AgentListCodec


class AgentIdentity(Agent):
    """An agent, built as v0.1 built it; every rule of :class:`Agent` holds (bad input raises
    :class:`InvalidAgentError`). ``metadata`` is ``{}`` rather than None when empty, as in v0.1."""

    def __init__(
        self,
        agent_id: str,
        name: str,
        owner: str,
        created_at: str,
        metadata: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
        status: str = "active",
        updated_at: str | None = None,
    ):
        super().__init__(
            agent_id, name, owner, parent_id, dict(metadata or {}) or None, status,  # type: ignore[arg-type]
            created_at, updated_at or created_at,
        )  # fmt: skip
        object.__setattr__(self, "metadata", dict(self.metadata or {}))
        if updated_at is None:  # v0.1 kept the time as it was written (validated above)
            object.__setattr__(self, "created_at", created_at)
            object.__setattr__(self, "updated_at", created_at)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentIdentity:
        """A v0.1 record (or one of ours); missing ``status``/``updated_at`` default as in v0.1."""
        if not isinstance(data, Mapping):
            raise InvalidAgentError(f"an agent record must be a JSON object, got {type(data).__name__}")
        try:
            return cls(
                agent_id=data["agent_id"],
                name=data["name"],
                owner=data["owner"],
                created_at=data["created_at"],
                metadata=data.get("metadata"),
                parent_id=data.get("parent_id"),
                status=data.get("status", "active"),
                updated_at=data.get("updated_at"),
            )
        except KeyError as exc:
            raise InvalidAgentError(f"agent record is missing {exc.args[0]!r}") from None

    @classmethod
    def of(cls, agent: Agent) -> AgentIdentity:
        return cls.from_dict(agent.to_dict())


class AgentRegistry:
    """v0.1's ``AgentRegistry(registry_path, backup_count=3)`` over our registry (:attr:`registry`)."""

    def __init__(self, registry_path: str | os.PathLike[str], backup_count: int = 3):
        if type(backup_count) is not int or backup_count < 0:
            raise InvalidAgentError(f"backup_count must be a non-negative integer, got {backup_count!r}")
        self.registry_path = Path(registry_path)
        self.backup_count = backup_count
        document = JsonDocument(
            self.registry_path, default=empty_agents, backup_count=backup_count, codec=AgentListCodec()
        )
        self.registry = Registry(_Opaque(document))

    def register_agent(
        self, name: str, owner: str, metadata: dict[str, Any] | None = None, parent_id: str | None = None
    ) -> AgentIdentity:
        """Register an agent (``DuplicateAgentNameError``, i.e. our DuplicateAgentError, if the name is
        taken); ``parent_id`` (not in v0.1) makes it a child whose spend also counts against the parent."""
        return AgentIdentity.of(self.registry.register(name, owner, parent_id, metadata or None))

    def get_agent(self, agent_id: str) -> AgentIdentity | None:
        """The agent with this id (or name); None when there is none, as in v0.1."""
        try:
            return AgentIdentity.of(self.registry.get(agent_id))
        except (AgentNotFoundError, InvalidAgentError):
            return None

    def list_agents(self) -> list[AgentIdentity]:
        return [AgentIdentity.of(agent) for agent in self.registry.list()]


class _Opaque:
    """A document that is not a :class:`JsonDocument` to its registry, so the registry reads it through
    :meth:`read_cached` (which applies the codec) rather than parsing the file itself."""

    def __init__(self, document: JsonDocument):
        self.document = document
        self.read_cached = document.read_cached
        self.read = document.read
        self.transaction = document.transaction

    @property
    def label(self) -> str:
        return self.document.label


__all__ = ["AgentIdentity", "AgentRegistry"]
