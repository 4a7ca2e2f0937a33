"""``CaracalClient``: the library API a team uses from agent code, embedded (local files) or remote (HTTP).

The original quick start works as written::

    from caracal.sdk.client import CaracalClient
    client = CaracalClient()
    with client.budget_check(agent_id="my-agent"):          # a name or an id
        ...
    client.emit_event(agent_id="my-agent", resource_type="openai.gpt4.input_tokens", quantity=1000)

``budget_check`` with an ``estimated_cost`` reserves it before the block runs (raising
:class:`BudgetExceededError` with the reason, so the block never runs); without one it reserves the home's
``[sdk] default_estimate`` if set (embedded client), else it only *checks* that budget remains: nothing is
reserved, so concurrent workers can overspend together and a block may charge more than was left.
``emit_event`` inside the block is charged against the block's hold. On exit, also on an exception, the
hold is settled (if anything was charged) or released. Every error is a ``CaracalError``.

One interface, two transports. ``CaracalClient()`` or ``CaracalClient(home=...)`` works on a local home
(:class:`caracal.sdk.embedded.EmbeddedClient`); ``CaracalClient(base_url=..., api_key=...)`` talks to
``caracal serve`` (:class:`caracal.sdk.remote.RemoteClient`). Both are ``CaracalClient`` instances with
the same methods, return types and exceptions; this class holds what they share (``budget_check``,
``abudget_check``, ``guard`` and how ``emit_event`` finds its block), built on the transport's
``check``/``reserve``/``settle``/``release``. A remote client that cannot reach the server or read its
answer raises :class:`~caracal.exceptions.ServerUnreachableError`, so a ``budget_check`` block never runs
when its budget cannot be proven (fail closed).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from caracal.core.enforcement import Decision, Hold, PolicyStatus, Settlement
from caracal.core.identity import Agent
from caracal.core.ledger import LedgerEvent
from caracal.core.money import total
from caracal.core.policy import Policy
from caracal.core.pricebook import Price
from caracal.exceptions import BudgetExceededError, ConfigurationError

if TYPE_CHECKING:
    from caracal.core.enforcement import Enforcer
    from caracal.core.metering import Meter
    from caracal.storage.home import EmbeddedHome

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class BudgetScope:
    """The block of one ``budget_check``: its agent, its hold (None without an estimate) and the charges
    recorded in it. ``opened_as`` is the agent reference (name or id) the block was opened with."""

    agent_id: str
    decision: Decision
    hold: Hold | None = None
    charges: list[LedgerEvent] = field(default_factory=list)
    settlement: Settlement | None = None
    opened_as: str | None = field(default=None, repr=False, compare=False)

    @property
    def spent(self) -> Decimal:
        return total(event.cost for event in self.charges)


_current_scope: contextvars.ContextVar[BudgetScope | None] = contextvars.ContextVar(
    "caracal_scope", default=None
)


class CaracalClient:
    """One client per process is enough; it is safe to share between threads.

    - ``CaracalClient(home=None, clock=None)``: embedded, on the Caracal home folder (default
      ``$CARACAL_HOME`` or ``~/.caracal``).
    - ``CaracalClient(base_url="http://127.0.0.1:8787", api_key="ck_...", timeout=30.0)``: remote, over
      the HTTP API of ``caracal serve``; ``timeout`` is in seconds (connecting waits at most 5 of them).

    Giving both a home and a ``base_url``, or a ``base_url`` without an ``api_key``, is a
    :class:`ConfigurationError`. Constructing ``CaracalClient`` returns an instance of the transport's
    subclass; use it as a ``CaracalClient``.
    """

    def __new__(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        clock: Callable[[], datetime] | None = None,
        timeout: float | None = None,
    ) -> CaracalClient:
        kind: type[CaracalClient] = cls
        if cls is CaracalClient:
            if base_url is not None or api_key is not None:
                from caracal.sdk.remote import RemoteClient

                kind = RemoteClient
            else:
                from caracal.sdk.embedded import EmbeddedClient

                kind = EmbeddedClient
        return object.__new__(kind)

    # ------------------------------------------------------------------ the local home (embedded only)

    @property
    def home(self) -> EmbeddedHome:
        """The local home (embedded client only)."""
        raise ConfigurationError(self._no_local_home("home"))

    @property
    def enforcer(self) -> Enforcer:
        """The local enforcer (embedded client only)."""
        raise ConfigurationError(self._no_local_home("enforcer"))

    @property
    def meter(self) -> Meter:
        """The local meter (embedded client only)."""
        raise ConfigurationError(self._no_local_home("meter"))

    def _no_local_home(self, what: str) -> str:
        return (
            f"this {type(self).__name__} has no local {what}: it talks to a Caracal server; use the "
            f"client's methods, or an embedded client (CaracalClient(home=...)) on the server's home"
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> CaracalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the transport's methods

    def register_agent(
        self, name: str, owner: str, parent: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Agent:
        raise NotImplementedError

    def get_agent(self, agent: str) -> Agent:
        raise NotImplementedError

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
        raise NotImplementedError

    def set_price(self, resource_type: str, unit_price: object, currency: str = "USD") -> Price:
        raise NotImplementedError

    def check(self, agent_id: str, amount: object | None = None, currency: str = "USD") -> Decision:
        """Would ``amount`` (or anything, without one) be allowed now? Reserves nothing."""
        raise NotImplementedError

    def reserve(
        self,
        agent_id: str,
        amount: object,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
        *,
        on_expiry: str = "release",
    ) -> Hold:
        """Set ``amount`` aside for the agent (:class:`BudgetExceededError` if that could overspend).

        ``on_expiry``: what the hold's expiry means. ``release`` (default) frees the money; ``charge`` keeps
        it counting after the TTL until the hold is closed, then bills what is left of it (estimated): for
        work that may have spent money even if this process dies before settling."""
        raise NotImplementedError

    def settle(self, hold: Hold | str, charges: list[Mapping[str, Any]] | None = None) -> Settlement:
        raise NotImplementedError

    def release(self, hold: Hold | str) -> bool:
        raise NotImplementedError

    def budget_status(self, agent_id: str) -> list[PolicyStatus]:
        """Each active policy of the agent and its ancestors: limit, spent, held, remaining, reset time."""
        raise NotImplementedError

    def _emit(
        self,
        agent_id: str,
        resource_type: str,
        quantity: object,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
        timestamp: datetime | str | None,
        hold_id: str | None,
    ) -> LedgerEvent:
        raise NotImplementedError

    def _agent_id_of(self, agent: str) -> str | None:
        """The id of ``agent`` (a name or an id), for matching it with an open block; None if unknown."""
        raise NotImplementedError

    # ------------------------------------------------------------------ budget blocks (shared)

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
        """``budget_check`` for async code: the blocking steps (lock and fsync, or the HTTP round trip) run
        in a worker thread."""
        import asyncio  # here, not at the top: only async callers need it, and it is slow to import

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

    def _default_estimate(self) -> Decimal | None:
        """What ``budget_check`` reserves when given no estimate (None: it only checks)."""
        return None

    def _open_scope(
        self, agent_id: str, estimated: object | None, ttl: timedelta | float | None, currency: str
    ) -> BudgetScope:
        if estimated is None:
            estimated = self._default_estimate()
        if estimated is None:
            decision = self.check(agent_id, None, currency)
            if not decision.allowed:
                raise BudgetExceededError(f"denied: {decision.reason}", decision=decision)
            return BudgetScope(decision.agent_id, decision, opened_as=agent_id)
        hold = self.reserve(agent_id, estimated, ttl, currency)
        return BudgetScope(hold.agent_id, hold.decision, hold, opened_as=agent_id)

    def _close_scope(self, scope: BudgetScope) -> None:
        if scope.hold is None:
            return
        if scope.charges:
            scope.settlement = self.settle(scope.hold.hold_id, [])
        else:
            self.release(scope.hold.hold_id)

    # ------------------------------------------------------------------ metering (shared)

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
            and (
                agent_id == scope.agent_id
                or agent_id == scope.opened_as
                or self._agent_id_of(agent_id) == scope.agent_id
            )
        ):
            hold_id = scope.hold.hold_id
        event = self._emit(agent_id, resource_type, quantity, metadata, idempotency_key, timestamp, hold_id)
        if scope is not None and hold_id is not None:
            scope.charges.append(event)
        return event


__all__ = ["BudgetScope", "CaracalClient"]
