"""The policy registry: every revision of every budget policy, in one JSON document (embedded backend).

``{"policies": {policy_id: [revision 1, revision 2, ...]}}``: a create adds revision 1, an update or a
deactivation appends the next revision with its time and reason, so the history of a limit is its audit
trail. Reads are cached by the file's identity and size, so a budget check re-parses nothing unless the
file changed (another process's write changes the inode through the atomic rename).
"""

from __future__ import annotations

import builtins
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from caracal.core.policy import Policy, check_limit
from caracal.core.validation import check_currency, check_identifier, format_timestamp
from caracal.core.windows import WindowSpec
from caracal.exceptions import InvalidPolicyError, PolicyNotFoundError
from caracal.storage.interface import Document
from caracal.storage.jsonfile import JsonDocument

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def empty_policies() -> dict[str, Any]:
    """The policies document before the first policy."""
    return {"policies": {}}


class PolicyRegistry:
    """Create, update, deactivate and look up budget policies; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str] | Document, *, clock: Clock = _utc_now):
        self.document: Document = (
            JsonDocument(path, default=empty_policies) if isinstance(path, (str, os.PathLike)) else path
        )
        self._clock = clock
        self._latest: dict[str, Policy] = {}
        self._active_by_agent: dict[str, list[Policy]] = {}

    @property
    def path(self) -> Path | str:
        """The document's file (on the file backend), else its label."""
        return self.document.path if isinstance(self.document, JsonDocument) else self.document.label

    def create(
        self,
        agent_id: str,
        limit: object,
        window: WindowSpec,
        currency: str = "USD",
        *,
        reason: str | None = None,
        policy_id: str | None = None,
    ) -> Policy:
        """A new active policy for ``agent_id`` (the caller checks that the agent exists). ``policy_id``
        (default ``pol-`` and 12 hex digits) must be new: Caracal Core v0.1 named policies by UUID."""
        check_identifier(agent_id, "agent_id", InvalidPolicyError)
        if policy_id is not None:
            check_identifier(policy_id, "policy_id", InvalidPolicyError)
        if not isinstance(window, WindowSpec):
            raise InvalidPolicyError(f"window must be a WindowSpec, got {type(window).__name__}")
        policy = Policy(
            policy_id=policy_id or f"pol-{uuid.uuid4().hex[:12]}",
            agent_id=agent_id,
            limit=check_limit(limit),
            currency=check_currency(currency, InvalidPolicyError),
            window=window,
            updated_at=format_timestamp(self._clock()),
            reason=reason or "created",
        )
        with self.document.transaction() as document:
            if policy.policy_id in document.setdefault("policies", {}):
                raise InvalidPolicyError(f"a policy with id {policy.policy_id!r} already exists")
            document["policies"][policy.policy_id] = [policy.to_dict()]
        return policy

    def update(self, policy_id: str, *, limit: object = None, reason: str | None = None) -> Policy:
        """The next revision with a new limit (the window and currency of a policy do not change)."""
        if limit is None:
            raise InvalidPolicyError("nothing to update: give a new limit")
        return self._revise(policy_id, reason or "limit changed", limit=check_limit(limit))

    def deactivate(self, policy_id: str, *, reason: str | None = None) -> Policy:
        """The next revision, inactive; a policy already inactive is returned as it is (no revision)."""
        return self._revise(policy_id, reason or "deactivated", unless_already=True, active=False)

    def activate(self, policy_id: str, *, reason: str | None = None) -> Policy:
        """The next revision, active; a policy already active is returned as it is (no revision)."""
        return self._revise(policy_id, reason or "activated", unless_already=True, active=True)

    def _revise(self, policy_id: str, reason: str, *, unless_already: bool = False, **changes: Any) -> Policy:
        """Append a revision with ``changes``; with ``unless_already``, a policy that already has them is
        returned as it is (idempotent)."""
        with self.document.transaction() as document:
            revisions = document.setdefault("policies", {}).get(policy_id)
            if not revisions:
                raise PolicyNotFoundError(f"no policy {policy_id!r}; list them with 'caracal policy list'")
            current = Policy.from_dict(revisions[-1])
            if unless_already and all(getattr(current, name) == value for name, value in changes.items()):
                return current
            revised = current.revised(format_timestamp(self._clock()), reason, **changes)
            revisions.append(revised.to_dict())
        return revised

    def get(self, policy_id: str) -> Policy:
        self._refresh()
        try:
            return self._latest[policy_id]
        except KeyError:
            raise PolicyNotFoundError(
                f"no policy {policy_id!r}; list them with 'caracal policy list'"
            ) from None

    def history(self, policy_id: str) -> list[Policy]:
        revisions = self.document.read().get("policies", {}).get(policy_id)
        if not revisions:
            raise PolicyNotFoundError(f"no policy {policy_id!r}")
        return [Policy.from_dict(revision) for revision in revisions]

    def list(self, agent_id: str | None = None, *, include_inactive: bool = False) -> builtins.list[Policy]:
        self._refresh()
        return sorted(
            (
                p
                for p in self._latest.values()
                if (agent_id is None or p.agent_id == agent_id) and (include_inactive or p.active)
            ),
            key=lambda p: (p.agent_id, p.policy_id),
        )

    def active_for(self, agent_id: str) -> builtins.list[Policy]:
        """The agent's active policies (its own, not its ancestors'). Cheap when nothing changed."""
        self._refresh()
        return self._active_by_agent.get(agent_id, [])

    def active_for_chain(self, chain: tuple[str, ...]) -> builtins.list[tuple[str, builtins.list[Policy]]]:
        """``(member, its active policies)`` for each member of a chain, from one look at the file."""
        self._refresh()
        active = self._active_by_agent
        return [(member, active.get(member, [])) for member in chain]

    def _refresh(self) -> None:
        self._latest, self._active_by_agent = self.document.read_cached(_index)


def _index(document: dict[str, Any]) -> tuple[dict[str, Policy], dict[str, builtins.list[Policy]]]:
    """The latest revision of every policy, and the active ones per agent."""
    latest = {pid: Policy.from_dict(revs[-1]) for pid, revs in document.get("policies", {}).items()}
    active: dict[str, builtins.list[Policy]] = {}
    for policy in latest.values():
        if policy.active:
            active.setdefault(policy.agent_id, []).append(policy)
    return latest, active
