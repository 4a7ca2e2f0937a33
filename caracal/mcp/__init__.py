"""Caracal's metering MCP proxy: every ``tools/call`` to an MCP server is priced, held before it is
forwarded and settled after (:mod:`caracal.mcp.metering`); everything else passes through
(:mod:`caracal.mcp.proxy`). Needs the ``mcp`` extra (``pip install 'caracal-core[mcp]'``)."""

from __future__ import annotations

import importlib.util

from caracal.exceptions import ConfigurationError


def require_mcp() -> None:
    """Raise :class:`ConfigurationError` saying how to install the ``mcp`` SDK when it is missing."""
    if importlib.util.find_spec("mcp") is None:
        raise ConfigurationError("MCP needs the official mcp SDK: pip install 'caracal-core[mcp]'")
