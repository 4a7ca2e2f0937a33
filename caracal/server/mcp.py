"""``caracal serve``'s MCP endpoints: ``/mcp/<name>`` (streamable HTTP, stateless) in front of each server
configured in ``[mcp.servers.<name>]`` (a stdio ``command`` the server starts, or an upstream ``url``).

Each request is authenticated like the rest of the API: an agent key acts for its agent (a suspended one
may not call tools: 403); the admin key must name the agent in ``X-Caracal-Agent``. Tool calls are metered
by :class:`~caracal.mcp.metering.ToolMeter` against the server's own enforcer, through the group committer
(the same holds, charge-on-expiry, and sweeps as the gateway's); listing, resources and prompts pass
through (:mod:`caracal.mcp.proxy`). A configured server whose upstream cannot be started is logged and
answers 502 (the rest of ``caracal serve`` still runs). Needs the ``mcp`` extra when any server is
configured; without ``[mcp.servers]`` nothing here is imported or started.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from caracal.core.apikeys import Principal
from caracal.core.enforcement import Hold
from caracal.core.pricebook import Price
from caracal.exceptions import CaracalError, GatewayRequestError
from caracal.server.auth import acting_agent, authenticate
from caracal.server.errors import error_response, http_error_response
from caracal.server.service import Service

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["PREFIX", "McpEndpoints", "ServiceBudget"]

logger = logging.getLogger("caracal.mcp")

PREFIX = "/mcp/"
_AGENT_KEY = "caracal.agent_id"
"""Where the authenticated agent is left in the ASGI scope for the tool-call handler."""
CLOSE_DEFER = 0.005


class ServiceBudget:
    """:class:`~caracal.mcp.metering.Budget` on the server's enforcer: holds, settlements and releases go
    through the group committer (they share fsyncs with every other request)."""

    def __init__(self, service: Service):
        self.service = service

    async def price_of(self, resource_type: str) -> Price:
        service = self.service
        return service.home.prices.pricebook().price_of(resource_type, service.enforcer.now())

    async def reserve(
        self, agent: str, amount: Decimal, currency: str, ttl: float, metadata: Mapping[str, Any]
    ) -> Hold:
        service = self.service
        try:
            hold = await service.run(
                service.enforcer.reserve_op(
                    agent, amount, currency, ttl, on_expiry="charge", metadata=dict(metadata)
                )
            )
        except CaracalError:
            service.metrics.decisions.labels("mcp", "denied").inc()
            raise
        service.metrics.decisions.labels("mcp", "allowed").inc()
        service.metrics.holds.labels("placed").inc()
        return hold

    async def settle(self, hold_id: str, charges: list[dict[str, Any]]) -> None:
        service = self.service
        await service.run(service.enforcer.settle_op(hold_id, charges))
        service.metrics.holds.labels("settled").inc()

    async def release(self, hold_id: str) -> None:
        service = self.service
        await service.run(service.enforcer.release_op(hold_id))
        service.metrics.holds.labels("released").inc()


class McpEndpoints:
    """The ``/mcp/<name>`` endpoints of one server process; :meth:`running` starts them (in the app's
    lifespan) and stops them."""

    def __init__(self, service: Service):
        self.service = service
        self.config = service.home.settings.mcp
        self._managers: dict[str, StreamableHTTPSessionManager] = {}
        self._failed: dict[str, str] = {}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if not self.config.servers:
            yield
            return
        from caracal.mcp import require_mcp

        require_mcp()  # [mcp.servers] without the SDK: the server refuses to start, saying what to install
        from caracal.mcp.metering import ToolMeter
        from caracal.mcp.proxy import build_server
        from caracal.mcp.upstream import connect

        async with AsyncExitStack() as stack:
            for name, server_config in self.config.servers.items():
                if server_config.command is None and server_config.url is None:
                    self._failed[name] = "it has neither a command nor a url in config.toml"
                    continue
                try:
                    upstream, initialized = await stack.enter_async_context(
                        connect(server_config.command, server_config.url, server_config.env)
                    )
                except Exception as exc:  # one broken upstream must not stop the server
                    logger.error("MCP server %s could not be started: %s", name, exc)
                    self._failed[name] = f"its upstream could not be started ({type(exc).__name__})"
                    continue
                meter = ToolMeter(ServiceBudget(self.service), server_config, self.config.hold_ttl)
                server = build_server(name, upstream, initialized, meter, _agent_of_request)
                self._managers[name] = manager = _manager(server)
                await stack.enter_async_context(manager.run())
            yield
        self._managers.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path"][len(PREFIX) :].rstrip("/")
        manager = self._managers.get(name)
        if manager is None:
            failed = self._failed.get(name)
            if failed is None:
                response = http_error_response(404, f"no MCP server {name!r} is configured ([mcp.servers])")
            else:
                response = http_error_response(502, f"the MCP server {name!r} is unavailable: {failed}")
            await response(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        principal: Principal | None = None
        try:
            principal = authenticate(self.service, connection)
            scope[_AGENT_KEY] = acting_agent(self.service, principal, connection)
        except CaracalError as exc:
            self.service.metrics.errors.labels(type(exc).__name__).inc()
            await error_response(exc, principal)(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)


def _manager(server: Server[Any, Any]) -> StreamableHTTPSessionManager:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    return StreamableHTTPSessionManager(app=server, stateless=True, json_response=True)


def _agent_of_request(server: Server[Any, Any]) -> str:
    """The agent :meth:`McpEndpoints.__call__` authenticated for the HTTP request of this tool call."""
    request = server.request_context.request
    scope = getattr(request, "scope", None)
    agent_id = scope.get(_AGENT_KEY) if isinstance(scope, dict) else None
    if not isinstance(agent_id, str):  # never: every request is authenticated before it reaches the server
        raise GatewayRequestError("this MCP request carries no authenticated agent")
    return agent_id
