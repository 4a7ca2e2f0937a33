""":class:`ToolMeter` on a real home through the SDK, with the upstream's outcomes an MCP server can give
that the test tool server cannot be made to give on demand: an error answer (the call did not run: the
hold is released), a dropped connection after sending (it may have run: billed at its bound), no
connection at all (released), a result whose units cannot be read or exceed the bound. And the config."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from mcp import types
from mcp.shared.exceptions import McpError

from caracal.config import load_settings
from caracal.config.mcp import McpServerConfig, ToolBilling, parse_mcp
from caracal.core.pricebook import multiply_exactly
from caracal.exceptions import ConfigurationError
from caracal.mcp.metering import ClientBudget, NotForwarded, ToolMeter, count_units
from caracal.sdk.client import CaracalClient
from tests.mcp.env import MAX_ROWS, ROW_PRICE, SERVER, McpHome, make_home

CONFIG = McpServerConfig(SERVER, tools={"search": ToolBilling(units="rows", max_units=MAX_ROWS)})


def run_call(env: McpHome, tool: str, outcome: object) -> types.CallToolResult | BaseException:
    """One metered call whose upstream returns ``outcome`` (or raises it); what the caller gets."""
    calls: list[str] = []

    async def forward() -> types.CallToolResult:
        calls.append(tool)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, types.CallToolResult)
        return outcome

    async def scenario() -> types.CallToolResult:
        with CaracalClient(env.home) as client:
            meter = ToolMeter(ClientBudget(client), CONFIG, 30.0)
            return await meter.call(env.agent_id, tool, forward)

    try:
        result: types.CallToolResult | BaseException = anyio.run(scenario)
    except BaseException as exc:
        result = exc
    assert calls == [tool]
    return result


def rows(count: int) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text="{}")], structuredContent={"rows": list(range(count))}
    )


def test_an_error_answer_from_the_server_releases_the_hold(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")
    error = McpError(types.ErrorData(code=types.INVALID_PARAMS, message="bad arguments"))
    assert run_call(env, "lookup", error) is error
    assert env.charges() == [] and len(env.holds()) == 1
    env.assert_sound()


def test_a_call_with_no_connection_is_released(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")
    assert isinstance(run_call(env, "lookup", NotForwarded("closed")), NotForwarded)
    assert env.charges() == [] and len(env.holds()) == 1
    env.assert_sound()


def test_a_connection_dropped_after_sending_is_billed_at_the_bound(caracal_home: Path) -> None:
    env = make_home(caracal_home, "10")
    dropped = McpError(types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed"))
    assert run_call(env, "search", dropped) is dropped
    (charge,) = env.charges()
    assert charge.quantity == MAX_ROWS and charge.cost == multiply_exactly(Decimal(MAX_ROWS), ROW_PRICE)
    assert charge.metadata is not None and charge.metadata["estimated"] is True
    env.assert_sound()


def test_units_that_cannot_be_read_are_billed_at_the_bound_and_more_than_the_bound_is_flagged(
    caracal_home: Path,
) -> None:
    env = make_home(caracal_home, "10")
    unreadable = types.CallToolResult(content=[types.TextContent(type="text", text="no json here")])
    run_call(env, "search", unreadable)
    run_call(env, "search", rows(MAX_ROWS + 5))
    run_call(env, "search", rows(0))
    estimated, over, zero = env.charges()
    assert estimated.quantity == MAX_ROWS
    assert estimated.metadata is not None and estimated.metadata["estimated"] is True
    assert over.quantity == MAX_ROWS + 5  # the work was done: recorded, flagged beyond its hold
    assert over.cost == multiply_exactly(Decimal(MAX_ROWS + 5), ROW_PRICE)
    assert over.metadata is not None and over.metadata.get("over_hold") is True
    assert zero.quantity == 0 and zero.cost == 0  # on record, for nothing
    env.assert_sound()


def test_an_unreachable_remote_server_refuses_the_call_without_forwarding(closed_port: int) -> None:
    calls: list[str] = []

    async def forward() -> types.CallToolResult:
        calls.append("lookup")
        return rows(1)

    async def scenario() -> types.CallToolResult:
        with CaracalClient(base_url=f"http://127.0.0.1:{closed_port}", api_key="ck_x") as client:
            return await ToolMeter(ClientBudget(client), CONFIG, 30.0).call("agent", "lookup", forward)

    result = anyio.run(scenario)
    assert calls == [] and result.isError is True
    assert result.meta is not None and result.meta["caracal/denied"]["reason"] == "error"


def test_count_units_reads_structured_content_then_json_text() -> None:
    assert count_units(rows(3), "rows") == 3
    text = types.CallToolResult(content=[types.TextContent(type="text", text='{"rows": 4}')])
    assert count_units(text, "rows") == 4
    for bad in ('{"rows": -1}', '{"rows": true}', '{"rows": "4"}', '{"other": 1}', "[1, 2]"):
        result = types.CallToolResult(content=[types.TextContent(type="text", text=bad)])
        assert count_units(result, "rows") is None, bad


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"servers": {"s": {"tools": {"t": {"fre": True}}}}}, "unknown setting fre"),
        ({"servers": {"s": {"tools": {"t": {"units": "rows"}}}}}, "max_units"),
        ({"servers": {"s": {"tools": {"t": {"free": True, "units": "rows"}}}}}, "free tool takes no units"),
        ({"servers": {"s": {"tools": {"t": {"units": "rows", "max_units": 0}}}}}, "max_units"),
        ({"servers": {"s": {"command": ["x"], "url": "http://h"}}}, "not both"),
        ({"servers": {"bad name": {}}}, "server name"),
        ({"servers": {"s": {"url": "ftp://h"}}}, "http://"),
        ({"hold_ttl": 0}, "hold_ttl"),
        ({"holdttl": 5}, "unknown setting mcp.holdttl"),
    ],
)
def test_a_malformed_mcp_table_is_refused_naming_it(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_mcp("config.toml", table)


def test_config_toml_mcp_section_is_read(caracal_home: Path) -> None:
    make_home(caracal_home, "1", hold_ttl=45)
    config = load_settings(caracal_home).mcp
    assert config.hold_ttl == 45.0
    server = config.server(SERVER)
    assert server.billing("ping").free is True
    assert server.billing("search") == ToolBilling(units="rows", max_units=MAX_ROWS)
    assert server.billing("lookup") == ToolBilling()  # not configured: per call
    assert server.command is not None and server.command[-1].endswith("tool_server.py")
