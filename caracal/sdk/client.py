"""``CaracalClient``: the library API a team uses from agent code (embedded transport: the local home).

The original quick start works as written::

    from caracal.sdk.client import CaracalClient
    client = CaracalClient()
    with client.budget_check(agent_id="my-agent"):          # a name or an id
        ...
    client.emit_event(agent_id="my-agent", resource_type="openai.gpt4.input_tokens", quantity=1000)

``budget_check`` with an ``estimated_cost`` reserves it before the block runs (raising
:class:`BudgetExceededError` with the reason, so the block never runs); without one it only checks that
budget remains. ``emit_event`` inside the block is charged against the block's hold. On exit, also on an
exception, the hold is settled (if anything was charged) or released. Every error is a ``CaracalError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from caracal.core.enforcement import (
    Decision,
    Enforcer,
    Hold,
    PolicyStatus,
    Settlement,
    policy_status,
)
from caracal.core.identity import Agent
from caracal.core.ledger import LedgerEvent
from caracal.core.metering import Meter
from caracal.core.policy import Policy
from caracal.core.pricebook import Price
from caracal.core.windows import parse_window
from caracal.exceptions import BudgetExceededError, ConfigurationError
from caracal.storage.home import EmbeddedHome

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class BudgetScope:
    """The block of one ``budget_check``: its agent, its hold (None without an estimate) and the charges
    recorded in it."""

    agent_id: str
    decision: Decision
    hold: Hold | None = None
    charges: list[LedgerEvent] = field(default_factory=list)
    settlement: Settlement | None = None

    @property
    def spent(self) -> Decimal:
        return sum((event.cost for event in self.charges), Decimal(0))


_current_scope: contextvars.ContextVar[BudgetScope | None] = contextvars.ContextVar(
    "caracal_scope", default=None
)


class CaracalClient:
    """One client per process is enough; it is safe to share between threads.

    ``home`` is the Caracal home folder (default ``$CARACAL_HOME`` or ``~/.caracal``). ``base_url`` and
    ``api_key`` select the remote transport, which arrives with ``caracal serve``.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        if base_url is not None or api_key is not None:
            raise ConfigurationError(
                "the remote transport (base_url, api_key) arrives with 'caracal serve'; use the embedded "
                "client (no arguments, or home=...) for now"
            )
        self.home = EmbeddedHome(Path(home) if home is not None else None)
        self._clock = clock
        self._enforcer: Enforcer | None = None
        self._meter: Meter | None = None

    # ------------------------------------------------------------------ wiring

    @property
    def enforcer(self) -> Enforcer:
        if self._enforcer is None:
            self._enforcer = Enforcer(self.home.writer(), self.home.directory, clock=self._clock)
        return self._enforcer

    @property
    def meter(self) -> Meter:
        if self._meter is None:
            self._meter = Meter(self.enforcer, self.home.prices.pricebook)
        return self._meter

    def close(self) -> None:
        if self._enforcer is not None:
            self._enforcer.close()
        self.home.close()
        self._enforcer = None
        self._meter = None

    def __enter__(self) -> CaracalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ identity, policies, prices

    def register_agent(
        self, name: str, owner: str, parent: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Agent:
        return self.home.agents.register(name, owner, parent, metadata)

    def get_agent(self, agent: str) -> Agent:
        return self.home.agents.get(agent)

    def create_policy(
        self,
        agent_id: str,
        limit: object,
        window: str | None = None,
        *,
        currency: str = "USD",
        timezone: str = "UTC",
        rolling: str | None = None,
    ) -> Policy:
        """A budget policy for an agent (name or id): ``window`` is hourly, daily, weekly, monthly or total,
        calendar-aligned in ``timezone`` (default daily); or ``rolling="24h"`` for a sliding window."""
        agent = self.home.agents.get(agent_id)
        kind = window if window is not None else ("rolling" if rolling is not None else "daily")
        return self.home.policies.create(
            agent.agent_id, limit, parse_window(kind, rolling, timezone), currency
        )

    def set_price(self, resource_type: str, unit_price: object, currency: str = "USD") -> Price:
        return self.home.prices.set(resource_type, unit_price, currency)

    # ------------------------------------------------------------------ enforcement

    def check(self, agent_id: str, amount: object | None = None, currency: str = "USD") -> Decision:
        return self.enforcer.check(agent_id, amount, currency)

    def reserve(
        self, agent_id: str, amount: object, ttl: timedelta | float | None = None, currency: str = "USD"
    ) -> Hold:
        return self.enforcer.reserve(agent_id, amount, currency, self._ttl(ttl))

    def settle(self, hold: Hold | str, charges: list[Mapping[str, Any]] | None = None) -> Settlement:
        return self.enforcer.settle(hold.hold_id if isinstance(hold, Hold) else hold, charges or [])

    def release(self, hold: Hold | str) -> bool:
        return self.enforcer.release(hold.hold_id if isinstance(hold, Hold) else hold)

    def budget_status(self, agent_id: str) -> list[PolicyStatus]:
        """Each active policy of the agent and its ancestors: limit, spent, held, remaining, reset time."""
        enforcer = self.enforcer
        agent = self.home.agents.get(agent_id)
        state = enforcer.catch_up()
        now = enforcer.now()
        chain = self.home.directory.chain(agent.agent_id)
        return [
            policy_status(policy, state, now)
            for _member, policies in self.home.directory.policies(chain)
            for policy in policies
        ]

    @contextlib.contextmanager
    def budget_check(
        self,
        agent_id: str,
        estimated_cost: object | None = None,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
    ) -> Iterator[BudgetScope]:
        """Reserve ``estimated_cost`` (or, without one, check that budget remains) before the block runs;
        settle or release when it ends. See the module docstring."""
        scope = self._open_scope(agent_id, estimated_cost, ttl, currency)
        token = _current_scope.set(scope)
        try:
            yield scope
        finally:
            _current_scope.reset(token)
            self._close_scope(scope)

    @contextlib.asynccontextmanager
    async def abudget_check(
        self,
        agent_id: str,
        estimated_cost: object | None = None,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
    ) -> AsyncIterator[BudgetScope]:
        """``budget_check`` for async code: the blocking steps (lock, fsync) run in a worker thread."""
        scope = await asyncio.to_thread(self._open_scope, agent_id, estimated_cost, ttl, currency)
        token = _current_scope.set(scope)
        try:
            yield scope
        finally:
            _current_scope.reset(token)
            await asyncio.to_thread(self._close_scope, scope)

    def guard(
        self, agent_id: str, estimated_cost: object | None = None, ttl: timedelta | float | None = None
    ) -> Callable[[F], F]:
        """Decorator: run the function inside ``budget_check`` (``abudget_check`` for coroutines)."""

        def decorate(function: F) -> F:
            if inspect.iscoroutinefunction(function):

                @functools.wraps(function)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    async with self.abudget_check(agent_id, estimated_cost, ttl):
                        return await function(*args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.budget_check(agent_id, estimated_cost, ttl):
                    return function(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate

    def _ttl(self, ttl: timedelta | float | None) -> timedelta | float:
        """The hold TTL: as given, else ``holds.default_ttl`` from the home's ``config.toml``."""
        return self.home.settings.default_ttl if ttl is None else ttl

    def _open_scope(
        self, agent_id: str, estimated: object | None, ttl: timedelta | float | None, currency: str
    ) -> BudgetScope:
        if estimated is None:
            decision = self.enforcer.check(agent_id, None, currency)
            if not decision.allowed:
                raise BudgetExceededError(f"denied: {decision.reason}", decision=decision)
            return BudgetScope(decision.agent_id, decision)
        hold = self.enforcer.reserve(agent_id, estimated, currency, self._ttl(ttl))
        return BudgetScope(hold.agent_id, hold.decision, hold)

    def _close_scope(self, scope: BudgetScope) -> None:
        if scope.hold is None:
            return
        if scope.charges:
            scope.settlement = self.enforcer.settle(scope.hold.hold_id, [])
        else:
            self.enforcer.release(scope.hold.hold_id)

    # ------------------------------------------------------------------ metering

    def emit_event(
        self,
        agent_id: str,
        resource_type: str,
        quantity: object,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timestamp: datetime | str | None = None,
    ) -> LedgerEvent:
        """Price and record usage; inside a ``budget_check`` block of the same agent, against its hold."""
        scope = _current_scope.get()
        hold_id = None
        if (
            scope is not None
            and scope.hold is not None
            and self.home.agents.get(agent_id).agent_id == scope.agent_id
        ):
            hold_id = scope.hold.hold_id
        event = self.meter.emit(
            agent_id, resource_type, quantity, metadata, idempotency_key, timestamp, hold_id
        )
        if scope is not None and hold_id is not None:
            scope.charges.append(event)
        return event
