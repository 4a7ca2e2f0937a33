"""The connection to the MCP server behind the proxy: a stdio command Caracal starts, or a streamable-HTTP
URL. Either way one :class:`mcp.ClientSession`, initialized, open for the block of :func:`connect`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.session import MessageHandlerFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from caracal.exceptions import ConfigurationError

__all__ = ["connect", "upstream_environment"]

_PRIVATE_ENV_PREFIX = "CARACAL_"


def upstream_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stdio MCP server: this process's, without the ``CARACAL_*`` variables (the
    Caracal API key and home are the proxy's business, never the tool server's), plus ``extra``."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(_PRIVATE_ENV_PREFIX)}
    environment.update(extra or {})
    return environment


@asynccontextmanager
async def connect(
    command: Sequence[str] | None = None,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    message_handler: MessageHandlerFnT | None = None,
) -> AsyncIterator[tuple[ClientSession, types.InitializeResult]]:
    """An initialized session with the upstream server (``command``: started here and stopped when the block
    ends; or ``url``), and what it answered to ``initialize`` (its capabilities). ``message_handler``
    receives what the server sends on its own (notifications: progress, log messages, list changes)."""
    if (command is None) == (url is None):
        raise ConfigurationError("an MCP upstream needs either a command (stdio) or a url (streamable HTTP)")
    async with AsyncExitStack() as stack:
        if command is not None:
            if not command:
                raise ConfigurationError("the MCP server command is empty: give it after '--'")
            parameters = StdioServerParameters(
                command=command[0], args=list(command[1:]), env=upstream_environment(env)
            )
            read, write = await stack.enter_async_context(stdio_client(parameters))
        else:
            assert url is not None
            read, write, _session_id = await stack.enter_async_context(streamable_http_client(url))
        session = await stack.enter_async_context(ClientSession(read, write, message_handler=message_handler))
        initialized = await session.initialize()
        yield session, initialized
