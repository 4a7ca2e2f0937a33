"""No overspend through the gateway: 200 concurrent LLM calls of one agent (or of two agents under one
parent budget) against a limit that covers 50 worst-case holds.

Prices are user prices, so the arithmetic is exact, and output-dominated (output 10 000x input): each call
asks for ``max_tokens = 10`` and the fake answers exactly 10 tokens, so a settled call costs nearly its whole
hold. That makes the outcome independent of timing: a call is only denied once the granted ones
(in flight: their hold; settled: nearly as much) leave less than one hold, i.e. after 50 grants, and a 51st
can never fit since 50 settled calls plus one hold exceed the limit. So exactly 50 calls are granted however
the 200 interleave. A last variant asks for no cap (the gateway's worst case is far above the fake's usage);
then only the invariants hold, and at least 50 are granted.

The upstream is ``slow`` (every answer waits), so many holds are open at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from caracal.core.events import LedgerEvent
from caracal.core.ledger import LedgerReader
from caracal.core.verify import verify_ledger
from tests.pg import BACKEND_PARAMS, home_database
from tests.server.gateway_env import (
    CHAT,
    MESSAGES,
    AgentInfo,
    GatewayEnv,
    behaviour_model,
    nonce,
    open_holds,
    release_reason,
    split,
    start_gateway,
)

CALLS = 200
HOLDS_COVERED = 50
OPENAI_MODEL = behaviour_model("gpt-4o-mini", "slow")
ANTHROPIC_MODEL = behaviour_model("claude-3-haiku-20240307", "slow")
BYTES_MODEL = behaviour_model("local-llama", "slow")
"""An OpenAI-compatible model without a known tokenizer: bounded by bytes like the Anthropic model, so a
mix of both has one worst-case hold (gpt-4o-mini's input is counted with its tokenizer instead)."""
INPUT = Decimal("0.000001")
OUTPUT = Decimal("0.01")
CAP = 10


BACKENDS_PER_MODULE = True


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[GatewayEnv]:
    home = tmp_path_factory.mktemp("overspend") / "home"
    with start_gateway(home, delay_ms=150, database_url=home_database(request)) as live:
        live.set_price("openai", OPENAI_MODEL, INPUT, OUTPUT)
        live.set_price("anthropic", ANTHROPIC_MODEL, INPUT, OUTPUT)
        live.set_price("openai", BYTES_MODEL, INPUT, OUTPUT)
        yield live


def body_of(
    marker: str,
    index: int,
    *,
    path: str = CHAT,
    stream: bool = False,
    cap: int | None = CAP,
    chat_model: str = OPENAI_MODEL,
) -> Any:
    # A fixed-width index: every call has the same byte length (and tokens), so the same worst-case hold.
    body: dict[str, Any] = {
        "model": chat_model if path == CHAT else ANTHROPIC_MODEL,
        "messages": [{"role": "user", "content": f"burst {marker} {index:04d}"}],
    }
    if cap is not None:
        body["max_tokens"] = cap
    if stream:
        body["stream"] = True
    return body


async def _one(client: httpx.AsyncClient, path: str, body: Any, agent: AgentInfo) -> tuple[int, Any]:
    async with client.stream("POST", path, json=body, headers=agent.auth()) as response:
        content = await response.aread()
    if response.status_code == 200:
        if body.get("stream"):
            end = b"[DONE]" if path == CHAT else b"message_stop"
            assert end in content, content[-200:]
        return 200, None
    return response.status_code, response.json()


def burst(env: GatewayEnv, calls: list[tuple[str, Any, AgentInfo]]) -> list[tuple[int, Any]]:
    """All ``calls`` at once, each on its own connection, over real HTTP."""

    async def run() -> list[tuple[int, Any]]:
        limits = httpx.Limits(max_connections=len(calls) + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=env.base_url, timeout=60.0, limits=limits) as client:
            return await asyncio.gather(*(_one(client, path, body, agent) for path, body, agent in calls))

    return asyncio.run(run())


def check_outcome(
    env: GatewayEnv,
    marker: str,
    outcomes: list[tuple[int, Any]],
    agents: list[AgentInfo],
    limit: Decimal,
    policy_id: str | None,
) -> tuple[int, list[LedgerEvent]]:
    """The invariants of a burst; returns the number granted and the entries of ``agents``."""
    granted = sum(1 for status, _ in outcomes if status == 200)
    denied = [error for status, error in outcomes if status != 200]
    assert granted + len(denied) == CALLS
    assert {status for status, _ in outcomes} <= {200, 402}, {status for status, _ in outcomes}
    for error in denied:
        assert error["error"]["type"] == "BudgetExceededError"
        assert error["error"]["decision"]["policy_id"] == policy_id
    # Denied calls never reached the upstream; every granted one did, once.
    assert len(env.upstream_requests(marker)) == granted

    ids = {agent.agent_id for agent in agents}
    events: list[LedgerEvent] = []
    for agent in agents:
        events += env.closed_entries(agent.agent_id, holds=0)
    events.sort(key=lambda event: event.event_id)
    holds, charges, releases = split(events)
    assert len(holds) == granted
    assert len(releases) == granted
    assert {release_reason(release) for release in releases} == {"settled"}
    assert {hold.hold_id for hold in holds} == {release.hold_id for release in releases}
    assert not open_holds(events)
    assert {event.agent_id for event in events} <= ids
    for charge in charges:
        assert not (charge.metadata or {}).get("over_hold"), charge.metadata
    spent = sum((charge.cost for charge in charges), Decimal(0))
    assert spent <= limit, (spent, limit)

    # Nothing of anyone is left open, and the whole ledger is intact (hash chain, ids, checkpoints).
    assert not open_holds(list(LedgerReader(env.service.home.ledger)))
    report = verify_ledger(env.service.home.ledger)
    assert report.ok, report.problems
    return granted, events


def hold_of(env: GatewayEnv, body: Any, path: str = CHAT) -> Decimal:
    _bound, _forward, amount = env.worst_case(path, body)
    return amount


def test_one_agent_200_concurrent_calls_never_overspend(env: GatewayEnv) -> None:
    marker = nonce()
    bodies = [body_of(marker, index) for index in range(CALLS)]
    hold = hold_of(env, bodies[0])
    assert {hold_of(env, body) for body in bodies} == {hold}
    limit = hold * HOLDS_COVERED
    agent = env.agent(str(limit))
    outcomes = burst(env, [(CHAT, body, agent) for body in bodies])
    granted, events = check_outcome(env, marker, outcomes, [agent], limit, agent.policy_id)
    assert granted == HOLDS_COVERED
    _holds, charges, _releases = split(events)
    assert {c.quantity for c in charges if c.resource_type.endswith(".output_tokens")} == {Decimal(CAP)}


def test_mixed_streams_and_plain_calls_never_overspend(env: GatewayEnv) -> None:
    marker = nonce()
    calls_spec = [
        (CHAT, body_of(marker, index, stream=index % 2 == 0, chat_model=BYTES_MODEL))
        if index % 4 < 2
        else (MESSAGES, body_of(marker, index, path=MESSAGES, stream=index % 2 == 0))
        for index in range(CALLS)
    ]
    hold = hold_of(env, calls_spec[0][1])
    assert {hold_of(env, body, path) for path, body in calls_spec} == {hold}  # same bytes, same prices
    limit = hold * HOLDS_COVERED
    agent = env.agent(str(limit))
    outcomes = burst(env, [(path, body, agent) for path, body in calls_spec])
    granted, events = check_outcome(env, marker, outcomes, [agent], limit, agent.policy_id)
    assert granted == HOLDS_COVERED
    _holds, charges, _releases = split(events)
    assert not any((c.metadata or {}).get("estimated") for c in charges)  # streams carried their usage
    assert {c.resource_type.split(".")[0] for c in charges} == {"openai", "anthropic"}


def test_two_agents_under_one_parent_budget_never_overspend_it(env: GatewayEnv) -> None:
    marker = nonce()
    bodies = [body_of(marker, index) for index in range(CALLS)]
    hold = hold_of(env, bodies[0])
    limit = hold * HOLDS_COVERED
    parent = env.agent(str(limit), prefix="parent")
    children = [env.agent("1000000", parent=parent.agent_id, prefix="child") for _ in range(2)]
    outcomes = burst(env, [(CHAT, body, children[index % 2]) for index, body in enumerate(bodies)])
    granted, events = check_outcome(env, marker, outcomes, children, limit, parent.policy_id)
    assert granted == HOLDS_COVERED
    assert env.entries(parent.agent_id) == []  # the children spent; the parent's budget counted it
    assert {event.agent_id for event in events} == {child.agent_id for child in children}
    status = env.service.enforcer.check(parent.agent_id, hold)
    assert not status.allowed and status.policy_id == parent.policy_id


def test_worst_case_far_above_usage_still_never_overspends(env: GatewayEnv) -> None:
    """No cap in the requests: each is held at the gateway's cap (64) but uses 20 output tokens, so more
    than 50 may be granted over time, depending on how the calls interleave, and never too many."""
    marker = nonce()
    bodies = [body_of(marker, index, cap=None, stream=index % 3 == 0) for index in range(CALLS)]
    hold = hold_of(env, bodies[1])
    limit = hold * HOLDS_COVERED
    agent = env.agent(str(limit))
    outcomes = burst(env, [(CHAT, body, agent) for body in bodies])
    granted, _events = check_outcome(env, marker, outcomes, [agent], limit, agent.policy_id)
    assert granted >= HOLDS_COVERED
