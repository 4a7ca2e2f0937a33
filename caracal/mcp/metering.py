"""Metering one MCP ``tools/call``: price it, hold its worst case, forward it, settle it from the result.

For each call to tool ``T`` of server ``S`` (:meth:`ToolMeter.call`), in this order:

1. **Billing.** A tool declared ``free`` in ``[mcp.servers.S.tools.T]`` is forwarded as it is: nothing is
   priced, held or charged. Otherwise the resource is ``mcp.S.T.calls`` (one unit per call), or
   ``mcp.S.T.<units>`` for a tool declared with ``units`` (billed per unit of the result, held at
   ``max_units``). Its unit price comes from the pricebook; **no price refuses the call** (fail closed: a
   tool is never free for lack of a price) with a message saying how to price it or declare it free.
2. **Hold** the worst case (the price x 1, or x ``max_units``) for the agent, *charge-on-expiry*: when
   nothing closes the hold before ``[mcp] hold_ttl`` (the proxy was killed mid-call), it is billed at its
   bound, marked estimated, as the gateway's holds are. A denied hold **is not forwarded**: the caller gets
   a ``CallToolResult`` with ``isError`` true, a text naming the policy and what remains, and
   ``_meta["caracal/denied"]`` with the same facts for programs (:data:`DENIED_META`).
3. **Forward** the call upstream, unchanged.
4. **Settle** from the result: one call, or the units the result declares (its ``structuredContent`` field,
   else the field of a JSON object in its first text block; a number, or a list's length). A result whose
   units cannot be read is billed at ``max_units``, marked estimated (fail closed). A tool that reports an
   error (``isError``) ran, so it is billed like any other call. The settlement uses the price the hold was
   priced with, so a call's charge never exceeds its hold unless its result declares more than
   ``max_units`` (then the charge is recorded, flagged over its hold: the work was done).
   **Release** instead when the call did not run: the upstream answered with a JSON-RPC error (unknown
   tool, bad parameters), or could not be reached at all (:class:`NotForwarded`). A call that failed after
   it was sent (the upstream's connection dropped, the caller cancelled it, or it ran past 90% of
   ``hold_ttl`` and was cut off, see :data:`CALL_TIMEOUT_SHARE`) is billed at its bound, marked
   estimated, because the tool may have run.

:class:`Budget` is where holds go: :class:`ClientBudget` over a :class:`~caracal.sdk.client.CaracalClient`
(embedded or remote: ``caracal mcp proxy``), or the server's own enforcer (``caracal serve``,
:mod:`caracal.server.mcp`). Money is exact Decimal throughout.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from http import HTTPStatus
from typing import Any, Protocol

import anyio
import orjson
from mcp import types
from mcp.shared.exceptions import McpError

from caracal.config.mcp import McpServerConfig, ToolBilling
from caracal.core.decisions import Decision
from caracal.core.enforcement import Hold
from caracal.core.pricebook import Price, multiply_exactly
from caracal.exceptions import BudgetExceededError, CaracalError, UnknownPriceError
from caracal.sdk.client import CaracalClient

__all__ = [
    "DENIED_META",
    "Budget",
    "ClientBudget",
    "NotForwarded",
    "ToolMeter",
    "count_units",
    "resource_of",
]

logger = logging.getLogger("caracal.mcp")

DENIED_META = "caracal/denied"
"""The ``_meta`` key of a refused call's result: ``{"reason": "budget_exceeded" | "unpriced" | "error",
"server", "tool", "resource_type", "message", ...}`` (with ``amount``, ``currency`` and the ``decision``
for a budget denial)."""


CALL_TIMEOUT_SHARE = 0.9
"""A tool call is given this share of ``[mcp] hold_ttl`` to answer."""

_MAY_HAVE_RUN = frozenset({types.CONNECTION_CLOSED, int(HTTPStatus.REQUEST_TIMEOUT)})
"""JSON-RPC error codes the client side raises for a call that was sent and got no answer: the connection
dropped, or the call ran out of time. The tool may have run: billed at its bound."""


class NotForwarded(Exception):
    """The call could not be sent upstream at all (nothing ran): its hold is released."""


class Budget(Protocol):
    """Where a tool call's price is looked up and its hold placed and closed (async: never blocks)."""

    async def price_of(self, resource_type: str) -> Price: ...

    async def reserve(
        self, agent: str, amount: Decimal, currency: str, ttl: float, metadata: Mapping[str, Any]
    ) -> Hold: ...

    async def settle(self, hold_id: str, charges: list[dict[str, Any]]) -> None: ...

    async def release(self, hold_id: str) -> None: ...


class ClientBudget:
    """:class:`Budget` over the SDK (embedded on a home, or remote over ``caracal serve``'s API); each
    blocking call runs in a worker thread."""

    def __init__(self, client: CaracalClient):
        self.client = client

    async def price_of(self, resource_type: str) -> Price:
        return await anyio.to_thread.run_sync(self.client.price_of, resource_type)

    async def reserve(
        self, agent: str, amount: Decimal, currency: str, ttl: float, metadata: Mapping[str, Any]
    ) -> Hold:
        def reserve() -> Hold:
            return self.client.reserve(agent, amount, ttl, currency, on_expiry="charge", metadata=metadata)

        return await anyio.to_thread.run_sync(reserve)

    async def settle(self, hold_id: str, charges: list[dict[str, Any]]) -> None:
        def settle() -> None:
            self.client.settle(hold_id, list(charges))

        await anyio.to_thread.run_sync(settle)

    async def release(self, hold_id: str) -> None:
        await anyio.to_thread.run_sync(self.client.release, hold_id)


def resource_of(server: str, tool: str, billing: ToolBilling) -> str:
    """The pricebook resource a tool is billed at: ``mcp.<server>.<tool>.calls`` or ``...<units>``."""
    return f"mcp.{server}.{tool}.{billing.units or 'calls'}"


def count_units(result: types.CallToolResult, field: str) -> int | None:
    """The units ``result`` declares in ``field``: its structured content's field, else that field of a JSON
    object in its first text block; a non-negative integer, or a list (its length). None when unreadable."""
    sources: list[object] = [result.structuredContent]
    for block in result.content:
        if isinstance(block, types.TextContent):
            with contextlib.suppress(orjson.JSONDecodeError):
                sources.append(orjson.loads(block.text))
            break
    for source in sources:
        if not isinstance(source, dict) or field not in source:
            continue
        value = source[field]
        if isinstance(value, list):
            return len(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return None
    return None


@dataclass(frozen=True)
class _Plan:
    resource_type: str
    price: Price
    bound_units: int
    billing: ToolBilling

    @property
    def amount(self) -> Decimal:
        return multiply_exactly(Decimal(self.bound_units), self.price.unit_price)


def refusal(server: str, tool: str, reason: str, message: str, **details: Any) -> types.CallToolResult:
    """The MCP result of a call Caracal refused (nothing was forwarded)."""
    meta = {"reason": reason, "server": server, "tool": tool, "message": message, **details}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)],
        isError=True,
        _meta={DENIED_META: meta},
    )


class ToolMeter:
    """The metering of one MCP server's tool calls (see the module docstring)."""

    def __init__(self, budget: Budget, server: McpServerConfig, hold_ttl: float):
        self.budget = budget
        self.server = server
        self.hold_ttl = hold_ttl
        self.call_timeout = timedelta(seconds=hold_ttl * CALL_TIMEOUT_SHARE)
        """How long a call may run upstream: less than its hold lives, so a call that runs too long is cut
        off and billed at its bound by this process rather than left to the hold's expiry."""

    async def call(
        self,
        agent_id: str,
        tool: str,
        forward: Callable[[], Awaitable[types.CallToolResult]],
    ) -> types.CallToolResult:
        """Run ``forward`` (the upstream call) under a hold for ``agent_id``, or refuse it without running."""
        name = self.server.name
        billing = self.server.billing(tool)
        if billing.free:
            return await forward()
        resource_type = resource_of(name, tool, billing)
        try:
            price = await self.budget.price_of(resource_type)
        except UnknownPriceError:
            how = "per unit of the result's " + repr(billing.units) if billing.units else "per call"
            return refusal(
                name,
                tool,
                "unpriced",
                f"Caracal refused {name}.{tool}: it has no price ({resource_type}, {how}); nothing was "
                f"forwarded. An operator can price it with 'caracal pricebook set {resource_type} 0.01', "
                f"or declare it free in config.toml: [mcp.servers.{name}.tools.{tool}] free = true",
                resource_type=resource_type,
            )
        except CaracalError as exc:
            return self._failed(tool, resource_type, exc)
        plan = _Plan(resource_type, price, billing.max_units or 1, billing)
        try:
            hold = await self.budget.reserve(
                agent_id,
                plan.amount,
                price.currency,
                self.hold_ttl,
                {"mcp_server": name, "tool": tool, "units_bound": plan.bound_units},
            )
        except BudgetExceededError as exc:
            return self._denied(tool, plan, exc)
        except CaracalError as exc:
            return self._failed(tool, resource_type, exc)
        return await self._run(hold, tool, plan, forward)

    async def _run(
        self,
        hold: Hold,
        tool: str,
        plan: _Plan,
        forward: Callable[[], Awaitable[types.CallToolResult]],
    ) -> types.CallToolResult:
        try:
            result = await forward()
        except NotForwarded:
            await self._close(hold, None)
            raise
        except McpError as exc:
            if exc.error.code in _MAY_HAVE_RUN:
                await self._close(hold, self._charges(tool, plan, None, estimated=True))
            else:  # the upstream answered with an error: the call did not run
                await self._close(hold, None)
            raise
        except BaseException:  # cancelled or failed after it was sent: the tool may have run
            await self._close(hold, self._charges(tool, plan, None, estimated=True))
            raise
        units: int | None = 1
        if plan.billing.units is not None:
            units = count_units(result, plan.billing.units)
        await self._close(
            hold,
            self._charges(tool, plan, units, estimated=units is None, is_error=bool(result.isError)),
        )
        return result

    def _charges(
        self, tool: str, plan: _Plan, units: int | None, *, estimated: bool, is_error: bool = False
    ) -> list[dict[str, Any]]:
        quantity = Decimal(plan.bound_units if units is None else units)
        metadata: dict[str, Any] = {"mcp_server": self.server.name, "tool": tool}
        if estimated:
            metadata["estimated"] = True
        if is_error:
            metadata["tool_error"] = True
        return [
            {
                "resource_type": plan.resource_type,
                "quantity": quantity,
                "cost": multiply_exactly(quantity, plan.price.unit_price),
                "metadata": metadata,
            }
        ]

    async def _close(self, hold: Hold, charges: Sequence[dict[str, Any]] | None) -> None:
        """Settle (``charges``) or release (None) the hold, shielded from cancellation. A failure is logged:
        the hold then expires and is billed at its bound, so the call never ends unbilled."""
        with anyio.CancelScope(shield=True):
            try:
                if charges is None:
                    await self.budget.release(hold.hold_id)
                else:
                    await self.budget.settle(hold.hold_id, list(charges))
            except Exception as exc:
                logger.error(
                    "could not %s MCP hold %s (%s); it will be billed at its bound when it expires",
                    "release" if charges is None else "settle",
                    hold.hold_id,
                    exc,
                )

    def _denied(self, tool: str, plan: _Plan, exc: BudgetExceededError) -> types.CallToolResult:
        decision = exc.decision if isinstance(exc.decision, Decision) else None
        name = self.server.name
        why = decision.reason if decision is not None else str(exc)
        return refusal(
            name,
            tool,
            "budget_exceeded",
            f"Caracal denied {name}.{tool} ({plan.amount} {plan.price.currency} at most): {why}; nothing "
            "was forwarded",
            resource_type=plan.resource_type,
            amount=str(plan.amount),
            currency=plan.price.currency,
            policy_id=decision.policy_id if decision else None,
            remaining=None if decision is None or decision.remaining is None else str(decision.remaining),
            decision=decision.to_dict() if decision else None,
        )

    def _failed(self, tool: str, resource_type: str, exc: CaracalError) -> types.CallToolResult:
        name = self.server.name
        return refusal(
            name,
            tool,
            "error",
            f"Caracal refused {name}.{tool} because it could not prove the call is within budget "
            f"({type(exc).__name__}: {exc}); nothing was forwarded",
            resource_type=resource_type,
        )
