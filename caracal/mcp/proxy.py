"""The proxy's MCP server: what the client talks to, in front of one upstream session.

:func:`build_server` makes a low-level :class:`mcp.server.lowlevel.Server` that offers what the upstream
offers (tools, resources, prompts, completions: its ``initialize`` capabilities) and forwards each request
as it came, returning the upstream's answer unchanged (cursors, ``_meta`` and errors included). The one
exception is ``tools/call``, which goes through :class:`~caracal.mcp.metering.ToolMeter`.

The same server runs over stdio (``caracal mcp proxy``) and behind ``caracal serve``'s streamable-HTTP
endpoint (:mod:`caracal.server.mcp`); ``agent_of`` says whose budget a call is held against.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import anyio
from mcp import ClientSession, types
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import McpError

from caracal import __version__
from caracal.config.mcp import McpServerConfig
from caracal.mcp.metering import Budget, NotForwarded, ToolMeter
from caracal.mcp.upstream import connect

__all__ = ["Relay", "build_server", "run_stdio_proxy"]

_PASSED: tuple[tuple[str, tuple[tuple[type, type], ...]], ...] = (
    ("tools", ((types.ListToolsRequest, types.ListToolsResult),)),
    (
        "resources",
        (
            (types.ListResourcesRequest, types.ListResourcesResult),
            (types.ListResourceTemplatesRequest, types.ListResourceTemplatesResult),
            (types.ReadResourceRequest, types.ReadResourceResult),
        ),
    ),
    (
        "prompts",
        (
            (types.ListPromptsRequest, types.ListPromptsResult),
            (types.GetPromptRequest, types.GetPromptResult),
        ),
    ),
    ("completions", ((types.CompleteRequest, types.CompleteResult),)),
)
"""Per upstream capability, the requests passed through unchanged and the result type of each."""


class Relay:
    """Passes the upstream's notifications (progress of a call, log messages, list changes) on to the one
    client of a stdio proxy. The client's session is learnt from its first request; progress tokens need
    no mapping, as requests are forwarded with their ``_meta`` (``progressToken``) unchanged."""

    def __init__(self) -> None:
        self.session: ServerSession | None = None

    def attach(self, server: Server[Any, Any]) -> None:
        if self.session is None:
            self.session = server.request_context.session

    async def __call__(self, message: Any) -> None:
        session = self.session
        if session is None or not isinstance(message, types.ServerNotification):
            return
        root: Any = message.root  # rebuilt without the envelope it was parsed with (see _send)
        clean = types.ServerNotification(type(root)(method=root.method, params=root.params))
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):  # the client is gone
            await session.send_notification(clean)


def _forwarder(
    server: Server[Any, Any], upstream: ClientSession, result_type: type, relay: Relay | None
) -> Callable[[Any], Awaitable[types.ServerResult]]:
    async def forward(request: Any) -> types.ServerResult:
        if relay is not None:
            relay.attach(server)
        result = await _send(upstream, request, result_type)
        return types.ServerResult(result)

    return forward


async def _send(
    upstream: ClientSession, request: Any, result_type: type, timeout: timedelta | None = None
) -> Any:
    """``request`` sent upstream as it came; a broken connection before sending is :class:`NotForwarded`;
    no answer within ``timeout`` raises :class:`McpError` (``REQUEST_TIMEOUT``)."""
    # Rebuilt from its method and params: the request as parsed also carries the envelope's jsonrpc and id
    # (its models keep extra fields), which belong to this hop, not to the next.
    clean = type(request)(method=request.method, params=request.params)
    try:
        return await upstream.send_request(types.ClientRequest(clean), result_type, timeout)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
        raise NotForwarded(f"the MCP server's connection is closed ({type(exc).__name__})") from exc


def build_server(
    name: str,
    upstream: ClientSession,
    initialized: types.InitializeResult,
    meter: ToolMeter,
    agent_of: Callable[[Server[Any, Any]], str],
    relay: Relay | None = None,
) -> Server[Any, Any]:
    """The proxy server (see the module docstring). ``agent_of(server)`` is called inside each
    ``tools/call`` (its request context is set) and returns the agent to hold against. ``relay`` (stdio:
    one client) is told the client's session, to pass the upstream's notifications on to it."""
    upstream_info = initialized.serverInfo
    server: Server[Any, Any] = Server(
        name,
        version=f"{upstream_info.version} (metered by Caracal {__version__})",
        instructions=initialized.instructions,
    )
    capabilities = initialized.capabilities
    for capability, requests in _PASSED:
        if getattr(capabilities, capability, None) is None:
            continue
        for request_type, result_type in requests:
            server.request_handlers[request_type] = _forwarder(server, upstream, result_type, relay)

    if capabilities.tools is not None:

        async def call_tool(request: types.CallToolRequest) -> types.ServerResult:
            if relay is not None:
                relay.attach(server)
            agent_id = agent_of(server)

            async def forward() -> types.CallToolResult:
                result: types.CallToolResult = await _send(
                    upstream, request, types.CallToolResult, meter.call_timeout
                )
                return result

            try:
                result = await meter.call(agent_id, request.params.name, forward)
            except NotForwarded as exc:
                raise McpError(
                    types.ErrorData(
                        code=types.INTERNAL_ERROR,
                        message=f"the MCP server {name!r} could not be reached ({exc}); nothing was "
                        f"forwarded or billed",
                    )
                ) from None
            return types.ServerResult(result)

        server.request_handlers[types.CallToolRequest] = call_tool
    return server


async def run_stdio_proxy(
    config: McpServerConfig,
    command: Sequence[str],
    budget: Budget,
    hold_ttl: float,
    agent_id: str,
) -> None:
    """``caracal mcp proxy``: start ``command``, serve the proxy on this process's stdin/stdout until the
    client closes it, then stop the upstream. Every tool call is held against ``agent_id``."""
    meter = ToolMeter(budget, config, hold_ttl)
    relay = Relay()
    async with connect(command=command, env=config.env, message_handler=relay) as (upstream, initialized):
        server = build_server(config.name, upstream, initialized, meter, lambda _server: agent_id, relay)
        async with stdio_server() as (read, write):
            with contextlib.redirect_stdout(sys.stderr):  # stdout is the protocol: stray prints go to stderr
                await server.run(read, write, server.create_initialization_options())
