"""Each framework's agent loop through a live gateway: framework -> Caracal gateway -> fake upstream.

The frameworks need no Caracal code at all: their OpenAI base URL is the gateway and their API key is the
agent's Caracal key. Every model call of the loop is held, forwarded, and settled from the fake's usage; a
budget that covers the first call but not the second stops the loop at the second with the framework's own
error carrying Caracal's refusal (HTTP 402, naming the policy), and the upstream never sees that call.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from caracal.core.verify import verify_ledger
from tests.integrations.ledger import INPUT_PRICE, OUTPUT_PRICE, assert_calls_billed
from tests.integrations.loops import FRAMEWORKS, MODEL, run_loop
from tests.pg import BACKEND_PARAMS, home_database
from tests.server.gateway_env import CHAT, GatewayEnv, nonce, start_gateway

BACKENDS_PER_MODULE = True


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[GatewayEnv]:
    home = tmp_path_factory.mktemp("gateway") / "home"
    with start_gateway(home, database_url=home_database(request)) as live:
        live.set_price("openai", MODEL, INPUT_PRICE, OUTPUT_PRICE)
        yield live


@pytest.fixture(autouse=True)
def _idle(env: GatewayEnv) -> Iterator[None]:
    yield
    env.wait_idle()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_agent_loop_through_the_gateway_is_held_and_billed_per_call(
    env: GatewayEnv, framework: str, stream: bool
) -> None:
    agent, marker = env.agent("100"), nonce()
    answer, ran = run_loop(framework, f"{env.base_url}/v1", agent.token, marker, stream=stream)
    assert ran == ["tok"], "the tool must run between the two model calls"
    assert answer.startswith("tok"), answer
    requests = env.upstream_requests(marker)
    assert len(requests) == 2
    assert [m["role"] for m in requests[1].body["messages"]][-2:] == ["assistant", "tool"]
    for request in requests:  # the provider's key, never the agent's
        assert request.headers["authorization"] == "Bearer sk-upstream-test"
        assert bool(request.body.get("stream")) is stream
    holds = assert_calls_billed(env.closed_entries(agent.agent_id, holds=2), requests, MODEL)
    for hold, request in zip(holds, requests, strict=True):
        # the hold is the gateway's worst case of what was forwarded (the cap it injected included)
        assert hold.cost == env.worst_case(CHAT, request.body)[2]
    report = verify_ledger(env.service.home.ledger)
    assert report.ok, report.problems


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_budget_too_small_for_the_second_call_stops_the_loop(
    env: GatewayEnv, framework: str, stream: bool
) -> None:
    # Learn the first call's worst case from a run with room, then give a second agent exactly that:
    # the first call fits, its charge leaves less than the (longer) second call's worst case.
    probe, probe_marker = env.agent("100"), nonce()
    run_loop(framework, f"{env.base_url}/v1", probe.token, probe_marker, stream=stream)
    first = env.upstream_requests(probe_marker)[0]
    first_hold = env.worst_case(CHAT, first.body)[2]
    agent, marker = env.agent(str(first_hold)), nonce()  # same length as probe_marker: same bound
    with pytest.raises(Exception) as refused:
        run_loop(framework, f"{env.base_url}/v1", agent.token, marker, stream=stream)
    message = str(refused.value)
    # Caracal's reason, as the framework tells it
    assert f"denied: policy {agent.policy_id} " in message, message
    assert getattr(refused.value, "status_code", 402) == 402
    requests = env.upstream_requests(marker)
    assert len(requests) == 1, "the refused second call must never reach the upstream"
    events = env.closed_entries(agent.agent_id, holds=1)
    assert_calls_billed(events, requests, MODEL)
    spent = sum((e.cost for e in events if e.is_charge), start=first_hold * 0)
    assert spent <= first_hold
    report = verify_ledger(env.service.home.ledger)
    assert report.ok, report.problems
