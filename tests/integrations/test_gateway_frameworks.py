"""Each framework's agent loop through a live gateway: framework -> Caracal gateway -> fake upstream.

The frameworks need no Caracal code at all: their OpenAI base URL is the gateway and their API key is the
agent's Caracal key. Every model call of the loop is held, forwarded, and settled from the fake's usage; a
budget that covers the first call but not the second stops the loop at the second with the framework's own
error carrying Caracal's refusal (HTTP 402, naming the policy), and the upstream never sees that call.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest

from caracal.core.events import LedgerEvent
from caracal.core.pricebook import multiply_exactly
from caracal.core.verify import verify_ledger
from tests.integrations.ledger import INPUT_PRICE, OUTPUT_PRICE, assert_calls_billed
from tests.integrations.loops import FRAMEWORKS, MODEL, agents_responses_loop, run_loop
from tests.pg import BACKEND_PARAMS, home_database
from tests.server.fake_upstream import FakeRequest, responses_prompt_tokens
from tests.server.gateway_env import CHAT, RESPONSES, GatewayEnv, nonce, start_gateway

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
    marker = nonce()
    # The same first call with this test's marker: its bound (tokens are counted, so the marker's own
    # tokens matter, not only its length).
    first_body = orjson.loads(orjson.dumps(first.body).replace(probe_marker.encode(), marker.encode()))
    first_hold = env.worst_case(CHAT, first_body)[2]
    agent = env.agent(str(first_hold))
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


# ------------------------------------------------------------- the Agents SDK on its default Responses API


def _assert_responses_billed(env: GatewayEnv, events: list[LedgerEvent], requests: list[FakeRequest]) -> None:
    """One hold per Responses call, each the gateway's worst case of what was forwarded, settled with input
    and output charges of exactly the fake's usage (no earlier response continued: nothing cached)."""
    holds = [e for e in events if e.kind == "hold"]
    settled = {
        e.hold_id for e in events if e.kind == "release" and (e.metadata or {}).get("reason") == "settled"
    }
    assert len(holds) == len(requests)
    for hold, request in zip(holds, requests, strict=True):
        assert request.path == RESPONSES
        assert hold.hold_id in settled, f"hold {hold.hold_id} is not settled"
        assert hold.cost == env.worst_case(RESPONSES, request.body)[2]
        charges = {e.resource_type: e for e in events if e.is_charge and e.hold_id == hold.hold_id}
        prompt, completion = responses_prompt_tokens(request.body), min(request.body["max_output_tokens"], 20)
        assert {kind: c.quantity for kind, c in charges.items()} == {
            f"openai.{MODEL}.input_tokens": Decimal(prompt),
            f"openai.{MODEL}.output_tokens": Decimal(completion),
        }
        assert charges[f"openai.{MODEL}.input_tokens"].cost == multiply_exactly(Decimal(prompt), INPUT_PRICE)
        assert charges[f"openai.{MODEL}.output_tokens"].cost == multiply_exactly(
            Decimal(completion), OUTPUT_PRICE
        )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_agents_sdk_on_its_default_responses_model_is_held_and_billed_per_call(
    env: GatewayEnv, stream: bool
) -> None:
    agent, marker = env.agent("100"), nonce()
    answer, ran = agents_responses_loop(f"{env.base_url}/v1", agent.token, marker, stream=stream)
    assert ran == ["tok"], "the tool must run between the two model calls"
    assert answer.startswith("tok"), answer
    requests = env.upstream_requests(marker)
    assert len(requests) == 2
    # the second call carries the tool's output back, as a Responses API input item
    assert requests[1].body["input"][-1]["type"] == "function_call_output"
    for request in requests:
        assert request.headers["authorization"] == "Bearer sk-upstream-test"
        assert bool(request.body.get("stream")) is stream
    _assert_responses_billed(env, env.closed_entries(agent.agent_id, holds=2), requests)
    report = verify_ledger(env.service.home.ledger)
    assert report.ok, report.problems


def test_a_budget_too_small_for_the_second_responses_call_stops_the_agents_sdk_loop(env: GatewayEnv) -> None:
    probe, probe_marker = env.agent("100"), nonce()
    agents_responses_loop(f"{env.base_url}/v1", probe.token, probe_marker, stream=False)
    first = env.upstream_requests(probe_marker)[0]
    marker = nonce()
    first_body = orjson.loads(orjson.dumps(first.body).replace(probe_marker.encode(), marker.encode()))
    first_hold = env.worst_case(RESPONSES, first_body)[2]
    agent = env.agent(str(first_hold))
    with pytest.raises(Exception) as refused:
        agents_responses_loop(f"{env.base_url}/v1", agent.token, marker, stream=False)
    message = str(refused.value)
    assert f"denied: policy {agent.policy_id} " in message, message
    assert getattr(refused.value, "status_code", None) == 402
    requests = env.upstream_requests(marker)
    assert len(requests) == 1, "the refused second call must never reach the upstream"
    events = env.closed_entries(agent.agent_id, holds=1)
    _assert_responses_billed(env, events, requests)
    assert sum((e.cost for e in events if e.is_charge), start=Decimal(0)) <= first_hold
    report = verify_ledger(env.service.home.ledger)
    assert report.ok, report.problems
