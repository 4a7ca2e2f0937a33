"""Caracal's metering MCP proxy: every ``tools/call`` to an MCP server is priced, held before it is
forwarded and settled after (:mod:`caracal.mcp.metering`); everything else passes through
(:mod:`caracal.mcp.proxy`). Needs the ``mcp`` extra (``pip install 'caracal-core[mcp]'``)."""
