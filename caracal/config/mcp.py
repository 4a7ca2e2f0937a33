"""The ``[mcp]`` section of ``config.toml``: the MCP servers Caracal meters, and how each tool is billed.

::

    [mcp]
    hold_ttl = 300                      # seconds a tool call's hold lives (then billed at its bound)

    [mcp.servers.files]                 # served by ``caracal serve`` at /mcp/files
    command = ["python", "server.py"]   # a stdio MCP server (or: url = "http://host/mcp", streamable HTTP)
    env = { FILES_ROOT = "/srv" }       # optional, for command

    [mcp.servers.files.tools.list_dir]
    free = true                         # forwarded without a price, a hold or a charge

    [mcp.servers.files.tools.search]
    units = "rows"                      # billed per unit: the result's "rows" (a count, or a list's length)
    max_units = 100                     # the hold covers this many units

A tool with no table is billed per call at the pricebook price of ``mcp.<server>.<tool>.calls``; a tool
with ``units`` at the price of ``mcp.<server>.<tool>.<units>`` per unit. Prices live in the pricebook (one
versioned history for everything), never here. Stdlib only, like the rest of :mod:`caracal.config`; a
malformed table raises :class:`ConfigurationError` naming it (a typo must not turn a priced tool free).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from caracal.exceptions import ConfigurationError

__all__ = ["McpConfig", "McpServerConfig", "ToolBilling", "parse_mcp"]

DEFAULT_HOLD_TTL = 300.0
MAX_UNITS_LIMIT = 10**9
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Server names appear in a URL path (``/mcp/<name>``) and in resource names (``mcp.<name>.…``)."""
_UNIT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class ToolBilling:
    """How one tool is billed. ``free``: never priced, held or charged. ``units``: billed per unit of the
    result's field of that name, held at ``max_units``; otherwise billed per call."""

    free: bool = False
    units: str | None = None
    max_units: int | None = None


PER_CALL = ToolBilling()


@dataclass(frozen=True)
class McpServerConfig:
    """One ``[mcp.servers.NAME]`` table: where the server is (``command`` or ``url``; the CLI proxy gives
    its own command) and its tools' billing."""

    name: str
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    tools: Mapping[str, ToolBilling] = field(default_factory=dict)

    def billing(self, tool: str) -> ToolBilling:
        """The tool's billing; a tool not configured is billed per call."""
        return self.tools.get(tool, PER_CALL)


@dataclass(frozen=True)
class McpConfig:
    hold_ttl: float = DEFAULT_HOLD_TTL
    servers: Mapping[str, McpServerConfig] = field(default_factory=dict)

    def server(self, name: str) -> McpServerConfig:
        """The configured server, or an empty one (every tool billed per call) for a name not configured."""
        return self.servers.get(name) or McpServerConfig(check_server_name(name, "the MCP server name"))


def check_server_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{where} must be 1 to 64 letters, digits, '_' or '-' (starting with a letter or digit), "
            f"got {name!r}"
        )
    return name


def parse_mcp(path: Path | str, table: object) -> McpConfig:
    """The ``[mcp]`` table of the file at ``path`` (named in errors)."""
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: [mcp] must be a table")
    hold_ttl = DEFAULT_HOLD_TTL
    servers: dict[str, McpServerConfig] = {}
    for key, value in table.items():
        if key == "hold_ttl":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 7 * 86400:
                raise ConfigurationError(
                    f"{path}: mcp.hold_ttl must be a number of seconds above 0 and at most 604800, got "
                    f"{value!r}"
                )
            hold_ttl = float(value)
        elif key == "servers":
            if not isinstance(value, dict):
                raise ConfigurationError(f"{path}: mcp.servers must be a table of [mcp.servers.NAME] tables")
            for name, server in value.items():
                servers[name] = _server(path, name, server)
        else:
            raise ConfigurationError(f"{path}: unknown setting mcp.{key}; known: hold_ttl, servers")
    return McpConfig(hold_ttl, servers)


def _server(path: Path | str, name: str, table: object) -> McpServerConfig:
    where = f"{path}: mcp.servers.{name}"
    check_server_name(name, f"{where}: the server name")
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where} must be a table")
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: dict[str, str] = {}
    tools: dict[str, ToolBilling] = {}
    for key, value in table.items():
        if key == "command":
            parts = [value] if isinstance(value, str) else value
            if (
                not isinstance(parts, list)
                or not parts
                or not all(isinstance(part, str) and part for part in parts)
            ):
                raise ConfigurationError(f"{where}.command must be a non-empty list of strings")
            command = tuple(parts)
        elif key == "url":
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                raise ConfigurationError(f"{where}.url must start with http:// or https://, got {value!r}")
            url = value
        elif key == "env":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigurationError(f"{where}.env must be a table of strings")
            env = dict(value)
        elif key == "tools":
            if not isinstance(value, dict):
                raise ConfigurationError(f"{where}.tools must be a table of [{where}.tools.TOOL] tables")
            for tool, billing in value.items():
                tools[tool] = _tool(f"{where}.tools.{tool}", billing)
        else:
            raise ConfigurationError(f"{where}: unknown setting {key}; known: command, url, env, tools")
    if command is not None and url is not None:
        raise ConfigurationError(f"{where}: give either command (stdio) or url (streamable HTTP), not both")
    return McpServerConfig(name, command, url, env, tools)


def _tool(where: str, table: object) -> ToolBilling:
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where} must be a table")
    unknown = set(table) - {"free", "units", "max_units"}
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown setting {sorted(unknown)[0]}; known: free, units, max_units"
        )
    free = table.get("free", False)
    if not isinstance(free, bool):
        raise ConfigurationError(f"{where}.free must be true or false, got {free!r}")
    units = table.get("units")
    max_units = table.get("max_units")
    if free:
        if units is not None or max_units is not None:
            raise ConfigurationError(f"{where}: a free tool takes no units or max_units")
        return ToolBilling(free=True)
    if units is None:
        if max_units is not None:
            raise ConfigurationError(f"{where}: max_units needs units (the result's field to count)")
        return PER_CALL
    if not isinstance(units, str) or not _UNIT.match(units) or units == "calls":
        raise ConfigurationError(
            f"{where}.units must name a field of the result (letters, digits, '_'; not 'calls'), got "
            f"{units!r}"
        )
    if isinstance(max_units, bool) or not isinstance(max_units, int) or not 0 < max_units <= MAX_UNITS_LIMIT:
        raise ConfigurationError(
            f"{where}.max_units must be a whole number from 1 to {MAX_UNITS_LIMIT} (the hold covers that "
            f"many units), got {max_units!r}"
        )
    return ToolBilling(units=units, max_units=max_units)
