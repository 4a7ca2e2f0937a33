"""Budget decisions (pure): whether an amount may be spent now, and each policy's standing.

Every decision follows one rule (:func:`evaluate`): for the agent and each of its ancestors, for each
active policy, ``spent in the window + live holds + amount <= limit``. Anything that stops Caracal from
proving that (a suspended agent, no active policy, a policy in another currency) is a denial with a reason
a person can act on. The state the rule reads (:class:`~caracal.core.budget.BudgetState`) and the clock are
passed in; :mod:`caracal.core.enforcement` makes deciding and recording one atomic step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any, Protocol

from caracal.core.budget import BudgetState
from caracal.core.money import add, subtract
from caracal.core.policy import Policy
from caracal.core.validation import format_timestamp, parse_timestamp
from caracal.core.windows import WindowSpec, window_bounds
from caracal.exceptions import CaracalError, InvalidAmountError


class AgentLike(Protocol):
    @property
    def agent_id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def name(self) -> str: ...


class Directory(Protocol):
    """What enforcement needs from identity and policies (the storage layer provides it)."""

    def agent(self, ref: str) -> AgentLike: ...

    def agent_id(self, ref: str) -> str:
        """The id of the agent with this id or name (AgentNotFoundError if none)."""
        ...

    def chain(self, agent_id: str) -> tuple[str, ...]:
        """The agent's id followed by its ancestors' ids, nearest first."""
        ...

    def suspended(self, chain: tuple[str, ...]) -> str | None:
        """The first suspended member of the chain (the agent, then its ancestors), or None."""
        ...

    def policies(self, chain: tuple[str, ...]) -> Sequence[tuple[str, Sequence[Policy]]]:
        """``(member, its active policies)`` for each member of the chain."""
        ...


@dataclass(frozen=True)
class Decision:
    """Why an action is allowed or denied. On a denial, ``policy_id`` names the policy that denied."""

    allowed: bool
    reason: str
    agent_id: str
    amount: Decimal
    currency: str
    policy_id: str | None = None
    policy_agent_id: str | None = None
    limit: Decimal | None = None
    spent: Decimal | None = None
    held: Decimal | None = None
    remaining: Decimal | None = None
    resets_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: amounts as exact strings, times as ISO 8601 UTC (None where unknown)."""
        data: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            data[name] = wire(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """The inverse of :meth:`to_dict` (the remote SDK rebuilds decisions the server sent)."""
        return cls(
            allowed=bool(data["allowed"]),
            reason=str(data["reason"]),
            agent_id=str(data["agent_id"]),
            amount=Decimal(data["amount"]),
            currency=str(data["currency"]),
            policy_id=data.get("policy_id"),
            policy_agent_id=data.get("policy_agent_id"),
            limit=decimal_or_none(data.get("limit")),
            spent=decimal_or_none(data.get("spent")),
            held=decimal_or_none(data.get("held")),
            remaining=decimal_or_none(data.get("remaining")),
            resets_at=time_or_none(data.get("resets_at")),
        )


@dataclass(frozen=True)
class PolicyStatus:
    """One policy's standing: its window, what is spent and held in it, and what remains."""

    policy: Policy
    spent: Decimal
    held: Decimal
    remaining: Decimal
    window_start: datetime | None
    resets_at: datetime | None

    @property
    def over_limit(self) -> bool:
        """Spent and held exceed the limit (``remaining`` is negative): usage beyond a hold's bound was
        recorded. Nothing more is allowed until the window resets or the limit is raised."""
        return self.remaining < 0

    def used(self, count_holds: bool = True) -> Decimal:
        """What counts as used of the limit: spent, plus held when ``count_holds``."""
        return add(self.spent, self.held) if count_holds else self.spent

    def used_share(self, count_holds: bool = True) -> Decimal | None:
        """:meth:`used` / the limit, to 28 significant digits (enough to compare with a threshold and to
        rank policies); None for a limit of 0, which any use is over."""
        if self.policy.limit == 0:
            return None
        with localcontext() as context:
            context.prec = 28
            return self.used(count_holds) / self.policy.limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_dict(),
            **{name: wire(getattr(self, name)) for name in ("spent", "held", "remaining", "window_start")},
            "resets_at": wire(self.resets_at),
            "over_limit": self.over_limit,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyStatus:
        return cls(
            Policy.from_dict(data["policy"]),
            Decimal(data["spent"]),
            Decimal(data["held"]),
            Decimal(data["remaining"]),
            time_or_none(data.get("window_start")),
            time_or_none(data.get("resets_at")),
        )


def describe_window(policy: Policy) -> str:
    """``daily (Europe/Berlin)``, ``rolling 24h``, ``total``: for messages and tables."""
    window = policy.window
    if window.kind == "rolling" and window.duration is not None:
        seconds = int(window.duration.total_seconds())
        parts = []
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if seconds >= size and not (unit == "d" and seconds % 86400):  # 36h reads better than 1d12h
                parts.append(f"{seconds // size}{unit}")
                seconds %= size
        return f"rolling {''.join(parts)}"
    if window.kind == "total" or window.timezone == "UTC":
        return window.kind
    return f"{window.kind} ({window.timezone})"


_current_windows: dict[WindowSpec, tuple[datetime, datetime]] = {}
"""The calendar window last computed for each spec: reused while ``now`` stays inside it, because window
arithmetic in a time zone costs far more than the rest of a budget check."""


def current_window(window: WindowSpec, now: datetime) -> tuple[datetime | None, datetime | None]:
    """``window_bounds``, cached per spec while ``now`` stays in the same calendar window."""
    cached = _current_windows.get(window)
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    start, end = window_bounds(window, now)
    if start is not None and end is not None:
        _current_windows[window] = (start, end)
    return start, end


def policy_status(policy: Policy, state: BudgetState, now: datetime) -> PolicyStatus:
    start, end = current_window(policy.window, now)
    spent = state.spent(
        policy.agent_id, policy.currency, start, inclusive_minute=policy.window.kind == "rolling"
    )
    held = state.held(policy.agent_id, policy.currency, now)
    resets_at = end if policy.window.kind != "rolling" else None
    return PolicyStatus(policy, spent, held, subtract(subtract(policy.limit, spent), held), start, resets_at)


def evaluate(
    directory: Directory,
    state: BudgetState,
    agent_id: str,
    amount: Decimal | None,
    currency: str,
    now: datetime,
) -> Decision:
    """Decide whether ``amount`` (None: "is any budget left?") may be spent by ``agent_id`` now."""
    value = amount if amount is not None else Decimal(0)

    def deny(reason: str, **details: Any) -> Decision:
        return Decision(False, reason, agent_id, value, currency, **details)

    chain = directory.chain(agent_id)
    suspended = directory.suspended(chain)
    if suspended is not None:
        who = "agent" if suspended == agent_id else "its ancestor"
        name = agent_name(directory, suspended)
        return deny(f"{who} {name} is suspended; activate it with 'caracal agent activate {name}'")
    tightest: PolicyStatus | None = None
    seen_any = False
    for member, policies in directory.policies(chain):
        for policy in policies:
            seen_any = True
            if policy.currency != currency:
                return deny(
                    f"policy {policy.policy_id} of agent {agent_name(directory, member)} is in "
                    f"{policy.currency} but the amount is in {currency}; Caracal does not convert "
                    f"currencies, so it cannot prove this is within budget",
                    policy_id=policy.policy_id,
                    policy_agent_id=member,
                )
            status = policy_status(policy, state, now)
            over = value > status.remaining if amount is not None else status.remaining <= 0
            if over:
                return deny(
                    f"policy {policy.policy_id} of agent {agent_name(directory, member)} "
                    f"({describe_window(policy)} limit {policy.limit} {currency}) has "
                    f"{max(status.remaining, Decimal(0))} {currency} left "
                    f"({status.spent} spent, {status.held} held)"
                    + (f"; {value} {currency} requested" if amount is not None else ""),
                    policy_id=policy.policy_id,
                    policy_agent_id=member,
                    limit=policy.limit,
                    spent=status.spent,
                    held=status.held,
                    remaining=status.remaining,
                    resets_at=status.resets_at,
                )
            if tightest is None or status.remaining < tightest.remaining:
                tightest = status
    if not seen_any or tightest is None:
        return deny(
            f"agent {agent_id} and its ancestors have no active policy, so no spend can be proven within "
            f"budget; create one with 'caracal policy create --agent-id {agent_id} --limit ... "
            f"--window daily'"
        )
    return Decision(
        True,
        "within budget",
        agent_id,
        value,
        currency,
        policy_id=tightest.policy.policy_id,
        policy_agent_id=tightest.policy.agent_id,
        limit=tightest.policy.limit,
        spent=tightest.spent,
        held=tightest.held,
        remaining=tightest.remaining,
        resets_at=tightest.resets_at,
    )


def wire(value: object) -> object:
    """A field as JSON carries it: Decimals as exact strings, datetimes as ISO 8601 UTC."""
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def decimal_or_none(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def time_or_none(value: object) -> datetime | None:
    return None if value is None else parse_timestamp(value, "timestamp", InvalidAmountError)


def agent_name(directory: Directory, agent_id: str) -> str:
    """The agent's name for a message (its id if the registry does not know it)."""
    try:
        return str(directory.agent(agent_id).name)
    except CaracalError:
        return agent_id


__all__ = [
    "AgentLike",
    "Decision",
    "Directory",
    "PolicyStatus",
    "agent_name",
    "current_window",
    "decimal_or_none",
    "describe_window",
    "evaluate",
    "policy_status",
    "time_or_none",
    "wire",
]
