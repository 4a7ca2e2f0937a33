"""Caracal Core v0.1's policy API (``caracal.core.policy.BudgetPolicy``, ``PolicyStore``, ``PolicyDecision``,
``PolicyEvaluator``), as a thin layer over our policy registry and our enforcer.

- :class:`PolicyStore` is our :class:`~caracal.storage.policies.PolicyRegistry` on v0.1's
  ``policies.json`` (:class:`~caracal.v01.documents.PolicyListCodec`): revisions, locking, backups are ours.
- :meth:`PolicyEvaluator.check_budget` is our :meth:`Enforcer.check <caracal.core.enforcement.Enforcer.check>`
  (the one decision rule, the incremental budget state, the agent's ancestors' policies too), its
  :class:`~caracal.core.decisions.Decision` told in v0.1's words: ``Within budget``, ``Budget exceeded:
  spent S >= limit L``, ``No active policy``. It never re-reads the ledger per check, as v0.1 did.

Where v0.1 differs, ours holds: any calendar window Caracal enforces is accepted (hourly, daily, weekly,
monthly, total), held money counts as spent, and an error while reading the ledger is raised as
:class:`PolicyEvaluationError` (v0.1's fail-closed signal) instead of being guessed around.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caracal.core.decisions import Decision
from caracal.core.policy import Policy
from caracal.core.validation import check_identifier, parse_amount, parse_timestamp
from caracal.core.windows import WINDOW_KINDS, parse_window
from caracal.exceptions import (
    AgentNotFoundError,
    CaracalError,
    InvalidAgentError,
    InvalidPolicyError,
    PolicyEvaluationError,
)
from caracal.storage.jsonfile import JsonDocument
from caracal.storage.policies import PolicyRegistry, empty_policies
from caracal.v01.documents import PolicyListCodec

if TYPE_CHECKING:
    from caracal.core.enforcement import Enforcer
    from caracal.core.identity import Agent
    from caracal.storage.agents import AgentRegistry as Registry
    from caracal.v01.identity import AgentRegistry

CALENDAR_WINDOWS = tuple(kind for kind in WINDOW_KINDS if kind != "rolling")


@dataclass(frozen=True)
class BudgetPolicy:
    """A policy as v0.1 showed it. ``limit_amount`` is the limit's exact text (``"100.00"``), as v0.1 stored
    it; :meth:`get_limit_decimal` (and :attr:`policy`'s ``limit``) is the Decimal."""

    policy_id: str
    agent_id: str
    limit_amount: str
    time_window: str
    currency: str
    created_at: str
    active: bool = True
    policy: Policy | None = None
    """Our policy (window time zone, revision, reason) when this one came from a store."""

    def get_limit_decimal(self) -> Decimal:
        return parse_amount(self.limit_amount, "limit_amount", InvalidPolicyError)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_id": self.policy_id,
            "agent_id": self.agent_id,
            "limit_amount": self.limit_amount,
            "time_window": self.time_window,
            "currency": self.currency,
            "created_at": self.created_at,
            "active": self.active,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetPolicy:
        try:
            return cls(
                policy_id=data["policy_id"],
                agent_id=data["agent_id"],
                limit_amount=str(data["limit_amount"]),
                time_window=data.get("time_window", "daily"),
                currency=data.get("currency", "USD"),
                created_at=data.get("created_at", ""),
                active=bool(data.get("active", True)),
            )
        except KeyError as exc:
            raise InvalidPolicyError(f"policy record is missing {exc.args[0]!r}") from None

    @classmethod
    def of(cls, policy: Policy, created_at: str = "") -> BudgetPolicy:
        return cls(
            policy.policy_id,
            policy.agent_id,
            str(policy.limit),
            policy.window.kind,
            policy.currency,
            created_at or policy.updated_at,
            policy.active,
            policy,
        )


class PolicyStore:
    """v0.1's ``PolicyStore(policy_path, agent_registry=None, backup_count=3)`` over our registry
    (:attr:`registry`). With an ``agent_registry``, a policy's agent must exist."""

    def __init__(
        self,
        policy_path: str | os.PathLike[str],
        agent_registry: AgentRegistry | None = None,
        backup_count: int = 3,
    ):
        self.policy_path = Path(policy_path)
        self.agent_registry = agent_registry
        self.backup_count = backup_count
        self.registry = PolicyRegistry(
            JsonDocument(
                self.policy_path, default=empty_policies, backup_count=backup_count, codec=PolicyListCodec()
            )
        )

    @property
    def agents(self) -> Registry | None:
        """Our agent registry behind :attr:`agent_registry` (None without one)."""
        return None if self.agent_registry is None else self.agent_registry.registry

    def create_policy(
        self,
        agent_id: str,
        limit_amount: Decimal | str | int,
        time_window: str = "daily",
        currency: str = "USD",
    ) -> BudgetPolicy:
        """A new active policy with a positive limit (v0.1 refused zero; so do we here)."""
        check_identifier(agent_id, "agent_id", InvalidPolicyError)
        if self.agents is not None:
            try:
                agent_id = self.agents.get(agent_id).agent_id
            except (AgentNotFoundError, InvalidAgentError):
                raise AgentNotFoundError(
                    f"Agent {agent_id} does not exist; register it first ('caracal agent register')"
                ) from None
        if isinstance(limit_amount, (Decimal, int, str)) and str(limit_amount).strip().startswith("-"):
            raise InvalidPolicyError(f"Limit amount must be positive, got {limit_amount}")
        limit = parse_amount(limit_amount, "limit_amount", InvalidPolicyError)
        if limit <= 0:
            raise InvalidPolicyError(f"Limit amount must be positive, got {limit_amount}")
        if time_window not in CALENDAR_WINDOWS:
            raise InvalidPolicyError(
                f"time_window must be one of {', '.join(CALENDAR_WINDOWS)} (v0.1 had only daily), "
                f"got {time_window!r}"
            )
        policy = self.registry.create(
            agent_id, limit, parse_window(time_window), currency, policy_id=str(uuid.uuid4())
        )
        return BudgetPolicy.of(policy)

    def get_policies(self, agent_id: str) -> list[BudgetPolicy]:
        """The agent's active policies (its own; its ancestors' also count when budgets are checked)."""
        return [BudgetPolicy.of(policy) for policy in self.registry.active_for(agent_id)]

    def list_all_policies(self) -> list[BudgetPolicy]:
        return [BudgetPolicy.of(policy) for policy in self.registry.list(include_inactive=True)]


@dataclass(frozen=True)
class PolicyDecision:
    """v0.1's decision: ``remaining_budget`` is exact (a Decimal), None when no policy applies."""

    allowed: bool
    reason: str
    remaining_budget: Decimal | None = None


def v01_decision(decision: Decision) -> PolicyDecision:
    """Our decision in v0.1's words (see the module docstring); our reason follows in parentheses."""
    if decision.allowed:
        return PolicyDecision(True, "Within budget", decision.remaining)
    if decision.limit is not None and decision.spent is not None:
        used = decision.spent + (decision.held or Decimal(0))
        # v0.1's words when the spend alone reached the limit; with an estimate that would cross it, say so
        # (not "spent 0.85 >= limit 1.00", which is false).
        over = (
            f">= limit {decision.limit}"
            if used >= decision.limit
            else (f"+ estimated {decision.amount} > limit {decision.limit}")
        )
        return PolicyDecision(
            False,
            f"Budget exceeded: spent {used} {over} ({decision.reason})",
            max(decision.remaining or Decimal(0), Decimal(0)),
        )
    if decision.policy_id is None and "no active policy" in decision.reason:
        return PolicyDecision(False, f"No active policy for agent {decision.agent_id} ({decision.reason})")
    return PolicyDecision(False, decision.reason)


class StoreDirectory:
    """The enforcement :class:`~caracal.core.decisions.Directory` of v0.1 objects: agents from the agent
    registry when there is one; as in v0.1, an id no registry knows is an agent of its own (no parent,
    active), so its policies still apply (and without any policy it is denied)."""

    def __init__(self, policies: PolicyRegistry, agents: Registry | None):
        self.policies_registry = policies
        self.agents = agents

    def _known(self, ref: str) -> Agent | None:
        if self.agents is None:
            return None
        try:
            return self.agents.get(ref)
        except (AgentNotFoundError, InvalidAgentError):
            return None

    def agent(self, ref: str) -> Any:
        known = self._known(ref)
        if known is None:
            raise AgentNotFoundError(f"no agent {ref!r} in the agent registry")
        return known

    def agent_id(self, ref: str) -> str:
        known = self._known(ref)
        return known.agent_id if known is not None else check_identifier(ref, "agent_id", InvalidAgentError)

    def chain(self, agent_id: str) -> tuple[str, ...]:
        if self._known(agent_id) is None or self.agents is None:
            return (agent_id,)
        return (agent_id, *(a.agent_id for a in self.agents.ancestors(agent_id)))

    def suspended(self, chain: tuple[str, ...]) -> str | None:
        for member in chain:
            known = self._known(member)
            if known is not None and known.status != "active":
                return member
        return None

    def policies(self, chain: tuple[str, ...]) -> Sequence[tuple[str, Sequence[Policy]]]:
        return self.policies_registry.active_for_chain(chain)


class PolicyEvaluator:
    """v0.1's ``PolicyEvaluator(policy_store, ledger_query)``: :meth:`check_budget` is our enforcer's check
    on the ledger ``ledger_query`` reads (an enforcer opened on first use and kept: later checks fold in
    only what was appended since)."""

    def __init__(self, policy_store: PolicyStore, ledger_query: Any):
        self.policy_store = policy_store
        self.ledger_query = ledger_query
        self._enforcer: Enforcer | None = None
        self._at: datetime | None = None
        self._lock = threading.Lock()

    def _now(self) -> datetime:
        return self._at if self._at is not None else datetime.now(timezone.utc)

    def enforcer(self) -> Enforcer:
        if self._enforcer is None:
            from caracal.core.enforcement import Enforcer
            from caracal.core.ledger import LedgerWriter
            from caracal.v01.keys import v01_signing_key_path

            ledger = getattr(self.ledger_query, "store", None) or self.ledger_query.ledger_path
            if not isinstance(ledger, (str, os.PathLike)) and not hasattr(ledger, "new_lines"):
                raise TypeError(f"{type(self.ledger_query).__name__} does not name a ledger")
            directory = StoreDirectory(self.policy_store.registry, self.policy_store.agents)
            key = v01_signing_key_path(Path(ledger)) if isinstance(ledger, (str, os.PathLike)) else None
            self._enforcer = Enforcer(LedgerWriter(ledger, signing_key_path=key), directory, clock=self._now)
        return self._enforcer

    def check_budget(self, agent_id: str, current_time: datetime | str | None = None) -> PolicyDecision:
        """May the agent spend now (or at ``current_time``; naive means UTC)? Raises
        :class:`PolicyEvaluationError` when the ledger or a registry cannot be read (fail closed)."""
        at = (
            None
            if current_time is None
            else parse_timestamp(current_time, "current_time", InvalidPolicyError)
        )
        with self._lock:
            self._at = at
            try:
                return v01_decision(self.enforcer().check(agent_id))
            except (InvalidAgentError, InvalidPolicyError):
                raise
            except CaracalError as exc:
                raise PolicyEvaluationError(f"Failed to query spending for agent {agent_id}: {exc}") from exc
            except Exception as exc:  # fail closed: whatever broke, no budget can be proven
                raise PolicyEvaluationError(f"Failed to query spending for agent {agent_id}: {exc}") from exc
            finally:
                self._at = None


__all__ = [
    "BudgetPolicy",
    "PolicyDecision",
    "PolicyEvaluator",
    "PolicyStore",
    "StoreDirectory",
    "v01_decision",
]
