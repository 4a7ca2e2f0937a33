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

One client, pluggable transports (as httpx does). ``CaracalClient`` holds every public method once; its
:class:`~caracal.sdk.transport.Transport` does the work. ``CaracalClient()`` or
``CaracalClient(home=...)`` works on a local home (:class:`caracal.sdk.embedded.EmbeddedTransport`);
``CaracalClient(base_url=..., api_key=...)`` talks to ``caracal serve``
(:class:`caracal.sdk.remote.HttpTransport`); ``CaracalClient(transport=...)`` runs on any other (tests).
The methods, return types and exceptions are the same on every transport. A remote client that cannot
reach the server or read its answer raises :class:`~caracal.exceptions.ServerUnreachableError`, so a
``budget_check`` block never runs when its budget cannot be proven (fail closed).

Caracal Core v0.1's ``check_budget(agent_id) -> bool`` and ``get_remaining_budget(agent_id) -> Decimal |
None`` work as they did there: over :meth:`CaracalClient.check`, failing closed (False / None) on any error.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
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
from caracal.sdk.context import BudgetCheckContext
from caracal.sdk.transport import Transport, Usage

if TYPE_CHECKING:
    from caracal.core.enforcement import Enforcer
    from caracal.core.ledger import LedgerQuery, LedgerWriter
    from caracal.core.metering import Meter
    from caracal.sdk.embedded import EmbeddedTransport
    from caracal.storage.home import EmbeddedHome
    from caracal.v01.home import V01Home
    from caracal.v01.identity import AgentRegistry as V01AgentRegistry
    from caracal.v01.metering import MeteringCollector
    from caracal.v01.policy import PolicyEvaluator, PolicyStore
    from caracal.v01.pricebook import CsvPricebook

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("caracal.sdk")


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
      ``$CARACAL_HOME`` or ``~/.caracal``); ``clock`` (the current time) is for tests and tools.
    - ``CaracalClient(base_url="http://127.0.0.1:8787", api_key="ck_...", timeout=30.0)``: remote, over
      the HTTP API of ``caracal serve``; ``timeout`` is in seconds (connecting waits at most 5 of them).
    - ``CaracalClient(transport=...)``: on any :class:`~caracal.sdk.transport.Transport`.

    Giving both a home and a ``base_url``, a ``base_url`` without an ``api_key``, or a ``transport`` with
    anything else, is a :class:`ConfigurationError`.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        clock: Callable[[], datetime] | None = None,
        timeout: float | None = None,
        transport: Transport | None = None,
        config_path: str | os.PathLike[str] | None = None,
    ):
        self._v01_home: V01Home | None = None
        if config_path is not None:
            if any(given is not None for given in (home, base_url, api_key, timeout, transport)):
                raise ConfigurationError(
                    "config_path (a Caracal Core v0.1 configuration) takes no home, base_url, api_key, "
                    "timeout or transport"
                )
            from caracal.config.settings import load_config
            from caracal.sdk.embedded import EmbeddedTransport
            from caracal.v01.home import V01Home

            self._v01_home = V01Home(load_config(config_path))
            transport = EmbeddedTransport.on(self._v01_home, clock)
        elif transport is not None:
            if any(given is not None for given in (home, base_url, api_key, clock, timeout)):
                raise ConfigurationError(
                    "a client given its transport takes no home, base_url, api_key, clock or timeout"
                )
        elif base_url is not None or api_key is not None:
            if home is not None:
                raise ConfigurationError(
                    "give either home (the embedded client) or base_url and api_key (the remote client), "
                    "not both"
                )
            if clock is not None:
                raise ConfigurationError(
                    "clock is for the embedded client; a remote client uses the server's"
                )
            from caracal.sdk.remote import HttpTransport  # here: only remote clients import httpx

            transport = HttpTransport(base_url, api_key, timeout)
        else:
            if timeout is not None:
                raise ConfigurationError(
                    "timeout is for the remote client; the embedded client's lock timeout is [ledger] "
                    "lock_timeout in the home's config.toml"
                )
            from caracal.sdk.embedded import EmbeddedTransport  # here: as before, the home loads on use

            transport = EmbeddedTransport(home, clock)
        self._transport: Transport = transport

    @property
    def transport(self) -> Transport:
        """Where this client's calls are carried out."""
        return self._transport

    def __repr__(self) -> str:
        base_url = getattr(self._transport, "base_url", None)
        if isinstance(base_url, str):
            return f"CaracalClient(base_url={base_url!r})"
        return f"CaracalClient(transport={self._transport!r})"

    # ------------------------------------------------------------------ the local home (embedded only)

    def _embedded(self, what: str) -> EmbeddedTransport:
        from caracal.sdk.embedded import EmbeddedTransport

        transport = self._transport
        if isinstance(transport, EmbeddedTransport):
            return transport
        raise ConfigurationError(
            f"this CaracalClient has no local {what}: it talks to a Caracal server; use the client's "
            f"methods, or an embedded client (CaracalClient(home=...)) on the server's home"
        )

    @property
    def home(self) -> EmbeddedHome:
        """The local home (embedded client only)."""
        return self._embedded("home").home

    @property
    def enforcer(self) -> Enforcer:
        """The local enforcer (embedded client only)."""
        return self._embedded("enforcer").enforcer

    @property
    def meter(self) -> Meter:
        """The local meter (embedded client only)."""
        return self._embedded("meter").meter

    # ------------------------------------------------------------------ the v0.1 objects (config_path only)

    def _v01(self, what: str) -> V01Home:
        if self._v01_home is None:
            raise ConfigurationError(
                f"this CaracalClient has no {what}: it was not opened on a Caracal Core v0.1 configuration "
                f"(CaracalClient(config_path=...)); use the client's methods instead"
            )
        return self._v01_home

    @property
    def agent_registry(self) -> V01AgentRegistry:
        """v0.1's agent registry on the configuration's file."""
        return self._v01("agent_registry").agent_registry

    @property
    def policy_store(self) -> PolicyStore:
        return self._v01("policy_store").policy_store

    @property
    def pricebook(self) -> CsvPricebook:
        return self._v01("pricebook").pricebook

    @property
    def ledger_writer(self) -> LedgerWriter:
        return self._v01("ledger_writer").ledger_writer

    @property
    def ledger_query(self) -> LedgerQuery:
        return self._v01("ledger_query").ledger_query

    @property
    def policy_evaluator(self) -> PolicyEvaluator:
        return self._v01("policy_evaluator").policy_evaluator

    @property
    def metering_collector(self) -> MeteringCollector:
        return self._v01("metering_collector").metering_collector

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the transport's files or connections (they are opened again if the client is used again)."""
        self._transport.close()

    def __enter__(self) -> CaracalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ identity, policies, prices

    def register_agent(
        self, name: str, owner: str, parent: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Agent:
        """Register an agent (a unique ``name``, its ``owner``, optionally a ``parent`` name or id whose
        budgets it also counts against, and ``metadata``)."""
        return self._transport.register_agent(name, owner, parent, metadata)

    def get_agent(self, agent: str) -> Agent:
        """The agent with this name or id (:class:`AgentNotFoundError` if none)."""
        return self._transport.get_agent(agent)

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
        return self._transport.create_policy(agent_id, limit, window, rolling, currency, timezone)

    def set_price(self, resource_type: str, unit_price: object, currency: str = "USD") -> Price:
        """Price one unit of ``resource_type`` from now on (a new version; earlier charges keep theirs)."""
        return self._transport.set_price(resource_type, unit_price, currency)

    def price_of(self, resource_type: str) -> Price:
        """The price of one unit of ``resource_type`` in effect now (the server's pricebook, remote);
        :class:`~caracal.exceptions.UnknownPriceError` when there is none (nothing is priced at zero)."""
        return self._transport.price_of(resource_type)

    # ------------------------------------------------------------------ enforcement

    def check(self, agent_id: str, amount: object | None = None, currency: str = "USD") -> Decision:
        """Would ``amount`` (or anything, without one) be allowed now? Reserves nothing."""
        return self._transport.check(agent_id, amount, currency)

    def reserve(
        self,
        agent_id: str,
        amount: object,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
        *,
        on_expiry: str = "release",
        metadata: Mapping[str, Any] | None = None,
    ) -> Hold:
        """Set ``amount`` aside for the agent (:class:`BudgetExceededError` if that could overspend).

        ``ttl`` (seconds or a ``timedelta``) defaults to the home's ``[holds] default_ttl`` (the server's
        home, remote). ``on_expiry``: what the hold's expiry means. ``release`` (default) frees the money;
        ``charge`` keeps it counting after the TTL until the hold is closed, then bills what is left of it
        (estimated): for work that may have spent money even if this process dies before settling.
        ``metadata`` (a small JSON object) is recorded on the hold entry, e.g. what the amount bounds."""
        if metadata is None:  # a transport written before metadata keeps working
            return self._transport.reserve(agent_id, amount, ttl, currency, on_expiry)
        return self._transport.reserve(agent_id, amount, ttl, currency, on_expiry, metadata)

    def settle(self, hold: Hold | str, charges: list[Mapping[str, Any]] | None = None) -> Settlement:
        """Close a hold (a :class:`Hold` or its id) and record ``charges`` against it."""
        return self._transport.settle(_hold_id(hold), charges or [])

    def release(self, hold: Hold | str) -> bool:
        """Free a hold without charging; False if it was already closed."""
        return self._transport.release(_hold_id(hold))

    def budget_status(self, agent_id: str) -> list[PolicyStatus]:
        """Each active policy of the agent and its ancestors: limit, spent, held, remaining, reset time."""
        return self._transport.budget_status(agent_id)

    # ------------------------------------------------------------------ the v0.1 API (Caracal Core v0.1)

    def check_budget(self, agent_id: str, *, currency: str = "USD") -> bool:
        """The v0.1 API: may the agent (a name or an id) spend now? True when :meth:`check` allows it (every
        policy of the agent and its ancestors has budget left), False otherwise.

        As in v0.1 it fails closed and never raises: an unknown agent, no policy, an exhausted or suspended
        budget, an unreachable server, a corrupt ledger or any other error all give False (logged on the
        ``caracal.sdk`` logger). It reserves nothing, so concurrent workers can overspend together: use
        :meth:`budget_check` with an ``estimated_cost`` (or :meth:`reserve`) for a cap that holds, and
        :meth:`check` for the reason of a denial. ``currency`` (not in v0.1) is that of the policies."""
        return self._allowed("check_budget", agent_id, currency) is not None

    def get_remaining_budget(self, agent_id: str, *, currency: str = "USD") -> Decimal | None:
        """The v0.1 API: what the agent (a name or an id) may still spend under its tightest policy (its own
        and its ancestors'; what is held counts as spent), an exact ``Decimal``.

        As in v0.1, None whenever :meth:`check_budget` would be False: no budget left, unknown agent, no
        policy, an unreachable server, a corrupt ledger or any other error (never raises; errors are logged
        on the ``caracal.sdk`` logger). So a number is always above zero, and None means "do not spend";
        :meth:`budget_status` gives every policy's figures, also when exhausted. ``currency`` (not in v0.1)
        is that of the policies."""
        decision = self._allowed("get_remaining_budget", agent_id, currency)
        return None if decision is None else decision.remaining

    def _allowed(self, what: str, agent_id: str, currency: str) -> Decision | None:
        """:meth:`check`'s allowing decision, or None (logged) when it denies or fails in any way: the v0.1
        methods fail closed and never raise."""
        try:
            decision = self.check(agent_id, None, currency)
        except Exception as error:  # fail closed: whatever went wrong, the agent may not spend
            logger.warning("%s(%r) denied: %s", what, agent_id, error)
            return None
        if not decision.allowed:
            logger.info("%s(%r) denied: %s", what, agent_id, decision.reason)
            return None
        return decision

    # ------------------------------------------------------------------ budget blocks (shared)

    def budget_check(
        self,
        agent_id: str,
        estimated_cost: object | None = None,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
    ) -> BudgetCheckContext:
        """Reserve ``estimated_cost`` (or, without one, check that budget remains) before the block runs;
        settle or release when it ends. See the module docstring. The block is a
        :class:`~caracal.sdk.context.BudgetCheckContext` (as in v0.1); ``with`` gives its
        :class:`BudgetScope`."""
        return BudgetCheckContext(self, agent_id, estimated_cost, ttl, currency)

    @contextlib.contextmanager
    def budget_block(
        self,
        agent_id: str,
        estimated_cost: object | None = None,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
    ) -> Iterator[BudgetScope]:
        """The budget block behind :meth:`budget_check` (its denial worded as ours: ``denied: <reason>``)."""
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
                with self.budget_block(agent_id, estimated_cost, ttl):
                    return function(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate

    def _open_scope(
        self, agent_id: str, estimated: object | None, ttl: timedelta | float | None, currency: str
    ) -> BudgetScope:
        if estimated is None:
            estimated = self._transport.default_estimate()
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
                or self._transport.agent_id_of(agent_id) == scope.agent_id
            )
        ):
            hold_id = scope.hold.hold_id
        usage = Usage(agent_id, resource_type, quantity, metadata, idempotency_key, timestamp, hold_id)
        event = self._transport.emit(usage)
        if scope is not None and hold_id is not None:
            scope.charges.append(event)
        return event


def _hold_id(hold: Hold | str) -> str:
    return hold.hold_id if isinstance(hold, Hold) else hold


__all__ = ["BudgetScope", "CaracalClient", "Transport", "Usage"]
