"""The OpenAI Responses API through the gateway, end to end over real HTTP with the official ``openai`` SDK:
client -> Caracal gateway -> fake upstream (:mod:`tests.server.fake_upstream`).

What a user depends on: the worst case is held before the call (including the conversation a
``previous_response_id`` makes the provider re-read), the call is settled from the reported usage (cached
input at the cached price, reasoning as output), a stream that ends without usage is billed at its bound,
what cannot be bounded is refused with 400 before anything is held or sent, and a response can be read,
listed, cancelled or deleted only by the agent that created it (any other agent gets 404).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from caracal.core.verify import verify_ledger
from caracal.core.windows import parse_window
from caracal.server.gateway.estimate import Bound, bound_openai_responses
from caracal.server.gateway.pricing import hold_amount
from caracal.server.gateway.tokens import counter_for_model
from tests.pg import BACKEND_PARAMS, home_database
from tests.server.gateway_env import (
    GPT,
    IMAGE_TOKENS,
    MAX_OUTPUT_TOKENS,
    AgentInfo,
    GatewayEnv,
    behaviour_model,
    cost_of,
    nonce,
    release_reason,
    split,
    start_gateway,
)

openai = pytest.importorskip("openai")

BACKENDS_PER_MODULE = True

RESPONSES = "/v1/responses"
FAKE_COMPLETION = 20  # the fake's completion_tokens: 5 of them reported as reasoning
INSTRUCTIONS = "Be terse."  # 2 words for the fake
INPUT_PRICE = Decimal("0.001")
CACHED_PRICE = Decimal("0.00025")
OUTPUT_PRICE = Decimal("0.002")
BEHAVIOURS = ("ok", "slow", "error500", "midstream-fail", "no-usage", "incomplete", "failed")
REASONING = "gpt-5"


def model(behaviour: str = "ok", base: str = GPT) -> str:
    return behaviour_model(base, behaviour)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[GatewayEnv]:
    home = tmp_path_factory.mktemp("gateway-responses") / "home"
    with start_gateway(home, database_url=home_database(request)) as live:
        prices = live.service.home.prices
        for base in (GPT, REASONING):
            for behaviour in BEHAVIOURS:
                name = model(behaviour, base)
                prices.set(f"openai.{name}.input_tokens", str(INPUT_PRICE), "USD")
                prices.set(f"openai.{name}.cache_read_tokens", str(CACHED_PRICE), "USD")
                prices.set(f"openai.{name}.output_tokens", str(OUTPUT_PRICE), "USD")
        yield live


@pytest.fixture(autouse=True)
def _fresh_knobs(env: GatewayEnv) -> Iterator[None]:
    yield
    assert env.fake is not None
    env.fake.chunk_delay_ms = 0
    env.fake.delay_ms = 200
    env.wait_idle()


# ------------------------------------------------------------------------------------------------ helpers


def client(env: GatewayEnv, agent: AgentInfo) -> Any:
    return openai.OpenAI(base_url=f"{env.base_url}/v1", api_key=agent.token, max_retries=0)


def request(marker: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Responses request whose input is 4 words for the fake (the marker is one)."""
    return {
        "model": name or model(),
        "input": f"Say hello {marker} please",
        "instructions": INSTRUCTIONS,
        **extra,
    }


def worst_case(
    env: GatewayEnv, body: dict[str, Any], previous: int = 0
) -> tuple[Bound, dict[str, Any], Decimal]:
    bound, forward = bound_openai_responses(
        body,
        max_output_tokens=MAX_OUTPUT_TOKENS,
        image_tokens=IMAGE_TOKENS,
        previous_tokens=previous,
        counter=counter_for_model(body["model"]),  # as the gateway bounds it
    )
    amount, _currency = hold_amount(
        env.service.home.prices.pricebook(), "openai", body["model"], bound, env.service.enforcer.now()
    )
    return bound, forward, amount


PRICES = {"input_tokens": INPUT_PRICE, "cache_read_tokens": CACHED_PRICE, "output_tokens": OUTPUT_PRICE}


def assert_settled(
    env: GatewayEnv,
    agent: AgentInfo,
    name: str,
    *,
    hold: Decimal,
    quantities: dict[str, int],
    estimated: bool = False,
    holds: int = 1,
) -> None:
    """The agent's last call is hold -> one charge per token kind at its price -> release(settled)."""
    events = env.closed_entries(agent.agent_id, holds=holds)
    all_holds, _charges, _releases = split(events)
    last = all_holds[-1].hold_id
    mine = [e for e in events if e.hold_id == last]
    [held], charges, [released] = split(mine)
    assert held.cost == hold
    assert release_reason(released) == "settled"
    got = {c.resource_type: c for c in charges}
    expected = {f"openai.{name}.{kind}": quantity for kind, quantity in quantities.items()}
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for resource, quantity in expected.items():
        charge = got[resource]
        kind = resource.rsplit(".", 1)[1]
        assert charge.quantity == Decimal(quantity), (resource, charge.quantity)
        assert charge.cost == cost_of(Decimal(quantity), PRICES[kind]), resource
        assert charge.currency == "USD"
        assert bool((charge.metadata or {}).get("estimated")) is estimated, charge.metadata
        assert "over_hold" not in (charge.metadata or {})
    assert sum((c.cost for c in charges), Decimal(0)) <= hold
    report = verify_ledger(env.service.home.ledger)
    assert report.ok, report.problems


def assert_refused_untouched(env: GatewayEnv, agent: AgentInfo, marker: str) -> None:
    assert env.entries(agent.agent_id) == []
    assert env.upstream_requests(marker) == []


# ------------------------------------------------------------------------------------------ happy paths


def test_a_response_is_held_forwarded_and_settled_from_its_usage(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = request(marker)
    bound, forward, hold = worst_case(env, body)
    response = client(env, agent).responses.create(**body)

    assert response.output_text == " ".join(["tok"] * (FAKE_COMPLETION - 5))
    assert response.usage.input_tokens == 6 and response.usage.output_tokens == FAKE_COMPLETION
    assert response.usage.output_tokens_details.reasoning_tokens == 5
    [seen] = env.upstream_requests(marker)
    assert seen.path == "/v1/responses"
    assert seen.body == forward and seen.body["max_output_tokens"] == MAX_OUTPUT_TOKENS  # the cap, injected
    assert seen.headers["authorization"] == "Bearer sk-upstream-test"
    assert agent.token not in json.dumps(seen.headers)
    assert bound.output_tokens == MAX_OUTPUT_TOKENS
    # Reasoning tokens are inside output_tokens: billed once, as output.
    assert_settled(
        env, agent, body["model"], hold=hold, quantities={"input_tokens": 6, "output_tokens": FAKE_COMPLETION}
    )
    assert env.service.home.responses.get(response.id, agent.agent_id).tokens == 6 + FAKE_COMPLETION


def test_the_requests_own_output_cap_bounds_the_hold(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = request(marker, max_output_tokens=8)
    bound, forward, hold = worst_case(env, body)
    assert bound.output_tokens == 8 and forward["max_output_tokens"] == 8
    response = client(env, agent).responses.create(**body)
    assert response.usage.output_tokens == 8
    assert_settled(env, agent, body["model"], hold=hold, quantities={"input_tokens": 6, "output_tokens": 8})


def test_previous_response_id_raises_the_hold_and_cached_input_is_billed_at_the_cached_price(
    env: GatewayEnv,
) -> None:
    agent, marker = env.agent(), nonce()
    sdk = client(env, agent)
    first = sdk.responses.create(**request(marker))
    env.closed_entries(agent.agent_id)
    earlier = 6 + FAKE_COMPLETION  # what the first response was billed: the second re-reads it
    body = request(marker, previous_response_id=first.id)
    bound, _forward, hold = worst_case(env, body, previous=earlier)
    assert hold > worst_case(env, body)[2]
    second = sdk.responses.create(**body)

    assert second.previous_response_id == first.id
    assert second.usage.input_tokens_details.cached_tokens == earlier
    holds = [e for e in env.entries(agent.agent_id) if e.kind == "hold"]
    assert holds[-1].metadata is not None
    assert holds[-1].metadata["input_tokens_bound"] == bound.input_tokens
    assert_settled(
        env,
        agent,
        body["model"],
        hold=hold,
        quantities={"input_tokens": 6, "cache_read_tokens": earlier, "output_tokens": FAKE_COMPLETION},
        holds=2,
    )
    # The chain goes on: the second response's record includes the first (its input re-read it).
    recorded = env.service.home.responses.get(second.id, agent.agent_id).tokens
    assert recorded == 6 + earlier + FAKE_COMPLETION


def test_an_unknown_or_foreign_previous_response_id_is_404_and_never_forwarded(env: GatewayEnv) -> None:
    owner, other, marker = env.agent(), env.agent(), nonce()
    first = client(env, owner).responses.create(**request(marker))
    env.closed_entries(owner.agent_id)
    for previous in (first.id, "resp_never_created_here"):
        body = request(f"{marker}-{previous}", previous_response_id=previous)
        with pytest.raises(openai.NotFoundError) as raised:
            client(env, other).responses.create(**body)
        assert raised.value.body["type"] == "ResponseNotFoundError"
        assert "previous_response_id" in raised.value.body["message"]
        assert env.upstream_requests(f"{marker}-{previous}") == []
    assert env.entries(other.agent_id) == []


def test_incomplete_and_failed_responses_are_settled_from_their_usage(env: GatewayEnv) -> None:
    for behaviour in ("incomplete", "failed"):
        agent, marker = env.agent(), nonce()
        body = request(marker, model(behaviour))
        _bound, _forward, hold = worst_case(env, body)
        response = client(env, agent).responses.create(**body)
        assert response.status == behaviour
        assert_settled(
            env,
            agent,
            body["model"],
            hold=hold,
            quantities={"input_tokens": 6, "output_tokens": FAKE_COMPLETION},
        )


def test_a_response_without_usage_is_billed_at_its_worst_case(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = request(marker, model("no-usage"))
    bound, _forward, hold = worst_case(env, body)
    response = client(env, agent).responses.create(**body)
    assert response.usage is None
    assert_settled(
        env,
        agent,
        body["model"],
        hold=hold,
        quantities={"input_tokens": bound.input_tokens, "output_tokens": bound.output_tokens},
        estimated=True,
    )
    assert env.service.home.responses.get(response.id, agent.agent_id).tokens == (
        bound.input_tokens + bound.output_tokens
    )


def test_an_upstream_error_releases_the_hold_and_records_nothing(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    with pytest.raises(openai.InternalServerError):
        client(env, agent).responses.create(**request(marker, model("error500")))
    events = env.closed_entries(agent.agent_id)
    _holds, charges, [released] = split(events)
    assert charges == [] and release_reason(released) == "released"


# ------------------------------------------------------------------------------------------ streams


def test_a_stream_passes_the_events_through_and_is_settled_from_response_completed(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = request(marker)
    _bound, _forward, hold = worst_case(env, {**body, "stream": True})
    with client(env, agent).responses.stream(**body) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == FAKE_COMPLETION - 5
    assert final.output_text == " ".join(["tok"] * (FAKE_COMPLETION - 5))
    assert_settled(
        env, agent, body["model"], hold=hold, quantities={"input_tokens": 6, "output_tokens": FAKE_COMPLETION}
    )
    # Recorded at the worst case when the id went by, then lowered to the reported usage.
    deadline = time.monotonic() + 10
    while env.service.home.responses.get(final.id, agent.agent_id).tokens != 6 + FAKE_COMPLETION:
        assert time.monotonic() < deadline, "the stream's record was not lowered to its usage"
        time.sleep(0.02)


@pytest.mark.parametrize("behaviour", ["incomplete", "failed"])
def test_a_stream_ending_incomplete_or_failed_is_settled_from_its_usage(
    env: GatewayEnv, behaviour: str
) -> None:
    agent, marker = env.agent(), nonce()
    body = request(marker, model(behaviour), stream=True)
    _bound, _forward, hold = worst_case(env, body)
    events = list(client(env, agent).responses.create(**body))
    assert events[-1].type == f"response.{behaviour}"
    assert events[-1].response.usage.output_tokens == FAKE_COMPLETION
    assert_settled(
        env, agent, body["model"], hold=hold, quantities={"input_tokens": 6, "output_tokens": FAKE_COMPLETION}
    )


def test_a_stream_without_usage_is_billed_at_the_bound(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = request(marker, model("no-usage"), stream=True)
    bound, _forward, hold = worst_case(env, body)
    events = list(client(env, agent).responses.create(**body))
    assert events[-1].type == "response.completed" and events[-1].response.usage is None
    entries = env.closed_entries(agent.agent_id)
    _holds, charges, [released] = split(entries)
    assert release_reason(released) == "settled"
    by_kind = {c.resource_type.rsplit(".", 1)[1]: c for c in charges}
    # Hidden reasoning is never streamed, so the output seen does not bound it: the whole cap is billed.
    assert by_kind["input_tokens"].quantity == bound.input_tokens
    assert by_kind["output_tokens"].quantity == bound.output_tokens
    for charge in charges:
        assert (charge.metadata or {}).get("estimated") is True
        assert charge.cost == cost_of(charge.quantity, PRICES[charge.resource_type.rsplit(".", 1)[1]])
    assert sum(c.cost for c in charges) <= hold
    # Without a report the record keeps the worst case: a continuation holds for all of it.
    assert env.service.home.responses.get(events[0].response.id, agent.agent_id).tokens == (
        bound.input_tokens + bound.output_tokens
    )


def _created_id(received: bytes) -> str:
    for line in received.split(b"\n"):
        if line.startswith(b"data: ") and b'"response.created"' in line:
            return str(json.loads(line[6:])["response"]["id"])
    raise AssertionError(f"no response.created in {received[:300]!r}")


@pytest.mark.parametrize("base", [GPT, REASONING])
def test_a_stream_the_client_leaves_is_billed_at_the_bound(env: GatewayEnv, base: str) -> None:
    """Hidden reasoning tokens are not in the stream (and a Responses API model may reason whatever its
    name): what the client left is billed at the whole bound (input bound and output cap), estimated."""
    assert env.fake is not None
    env.fake.chunk_delay_ms = 30
    agent, marker = env.agent(), nonce()
    body = request(marker, model("ok", base), stream=True)
    bound, _forward, hold = worst_case(env, body)
    received: list[bytes] = []
    with env.client.stream("POST", RESPONSES, json=body, headers=agent.auth()) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received.append(chunk)
            if b"response.output_text.delta" in b"".join(received):
                break
    assert b"response.completed" not in b"".join(received)
    assert_settled(
        env,
        agent,
        body["model"],
        hold=hold,
        quantities={"input_tokens": bound.input_tokens, "output_tokens": bound.output_tokens},
        estimated=True,
    )
    recorded = env.service.home.responses.get(_created_id(b"".join(received)), agent.agent_id)
    assert recorded.tokens == bound.input_tokens + bound.output_tokens


def test_a_stream_the_upstream_drops_is_billed_at_the_bound(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = request(marker, model("midstream-fail", REASONING), stream=True)
    bound, _forward, hold = worst_case(env, body)
    with (
        pytest.raises(httpx.HTTPError),  # the client sees the failure, not a clean end
        env.client.stream("POST", RESPONSES, json=body, headers=agent.auth()) as response,
    ):
        for _chunk in response.iter_raw():
            pass
    assert_settled(
        env,
        agent,
        body["model"],
        hold=hold,
        quantities={"input_tokens": bound.input_tokens, "output_tokens": bound.output_tokens},
        estimated=True,
    )


# ------------------------------------------------------------------------------------------ budgets


def test_a_budget_for_one_worst_case_refuses_a_second_call_before_the_upstream_sees_it(
    env: GatewayEnv,
) -> None:
    assert env.fake is not None
    env.fake.delay_ms = 3000  # the first call is still open (held) while the second is asked for
    slow = request(nonce(), model("slow"))
    _bound, _forward, hold = worst_case(env, slow)
    agent = env.agent(str(hold + hold / 2))
    first_done: list[Any] = []
    worker = threading.Thread(target=lambda: first_done.append(client(env, agent).responses.create(**slow)))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not any(e.kind == "hold" for e in env.entries(agent.agent_id)):
            assert time.monotonic() < deadline, "the first call was never held"
            time.sleep(0.01)
        second = nonce()
        with pytest.raises(openai.APIStatusError) as raised:
            client(env, agent).responses.create(**request(second))
        assert raised.value.status_code == 402
        assert env.upstream_requests(second) == []
    finally:
        worker.join(timeout=30)
    assert first_done and first_done[0].status == "completed"
    assert len([e for e in env.closed_entries(agent.agent_id) if e.kind == "hold"]) == 1


def test_a_continuation_whose_conversation_exceeds_the_budget_is_refused(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    sdk = client(env, agent)
    long_input = " ".join(["word"] * 400)
    first = sdk.responses.create(**request(marker, input=f"{long_input} {marker}"))
    spent = sum((c.cost for c in split(env.closed_entries(agent.agent_id))[1]), Decimal(0))
    continuation = nonce()
    body = request(continuation, previous_response_id=first.id)
    fresh = {key: value for key, value in body.items() if key != "previous_response_id"}
    _bound, _forward, fresh_hold = worst_case(env, fresh)
    # A second budget with room for the request alone, not for re-reading the 400-word conversation.
    env.service.home.policies.create(
        agent.agent_id, str(spent + fresh_hold + Decimal("0.01")), parse_window("total"), "USD"
    )
    with pytest.raises(openai.APIStatusError) as raised:
        sdk.responses.create(**body)
    assert raised.value.status_code == 402
    assert env.upstream_requests(continuation) == []
    sdk.responses.create(**fresh)  # the same request without the conversation fits


# ------------------------------------------------------------------------------------------ refusals

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("web_search", {"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ("file_search", {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    (
        "code_interpreter",
        {"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
        "tools[0]",
    ),
    ("mcp", {"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]}, "tools[0].type"),
    ("image_generation", {"tools": [{"type": "image_generation"}]}, "tools[0].type"),
    ("prompt", {"prompt": {"id": "pmpt_1"}}, "prompt"),
    ("conversation", {"conversation": "conv_1"}, "conversation"),
    ("background", {"background": True}, "background"),
    ("priority", {"service_tier": "priority"}, "service_tier"),
    ("item_reference", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
    (
        "input_file",
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        "input_file",
    ),
    (
        "input_audio",
        {"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA"}}]}]},
        "input_audio",
    ),
]


@pytest.mark.parametrize(("case", "extra", "named"), REFUSED, ids=[case for case, _e, _n in REFUSED])
def test_what_cannot_be_bounded_is_refused_with_400_and_nothing_held_or_sent(
    env: GatewayEnv, case: str, extra: dict[str, Any], named: str
) -> None:
    agent, marker = env.agent(), nonce()
    body = {**request(marker), **extra, "metadata": {"marker": marker}}
    response = env.post(RESPONSES, body, agent=agent)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "GatewayRequestError"
    assert named in error["message"], error["message"]
    assert_refused_untouched(env, agent, marker)


def test_function_tools_and_images_are_accepted_and_images_held_at_the_image_bound(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    image = {"type": "input_image", "image_url": "https://example.com/cat.png"}
    content = [{"type": "input_text", "text": f"what is this {marker}"}, image]
    body = request(marker, input=[{"role": "user", "content": content}], tools=[tool])
    bound, _forward, hold = worst_case(env, body)
    assert bound.input_tokens >= IMAGE_TOKENS
    client(env, agent).responses.create(**body)
    holds = [e for e in env.closed_entries(agent.agent_id) if e.kind == "hold"]
    assert holds[0].cost == hold


# ------------------------------------------------------------------------------- reading a response


def test_the_creator_reads_lists_cancels_and_deletes_its_response_uncharged(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    sdk = client(env, agent)
    created = sdk.responses.create(**request(marker))
    before = len(env.closed_entries(agent.agent_id))

    fetched = sdk.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    items = sdk.responses.input_items.list(created.id)
    assert [item.content[0].text for item in items.data] == [f"Say hello {marker} please"]
    assert sdk.responses.cancel(created.id).status == "cancelled"
    sdk.responses.delete(created.id)
    assert env.fake is not None and created.id not in env.fake.responses
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)

    assert len(env.entries(agent.agent_id)) == before  # nothing held or charged for these


def test_another_agent_gets_404_and_the_response_is_untouched(env: GatewayEnv) -> None:
    owner, other, marker = env.agent(), env.agent(), nonce()
    created = client(env, owner).responses.create(**request(marker))
    intruder = client(env, other)
    unknown = intruder.responses.retrieve
    with pytest.raises(openai.NotFoundError) as foreign:
        intruder.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as missing:
        unknown("resp_does_not_exist")
    # Not 403: the answer does not reveal that the id exists.
    assert foreign.value.body["type"] == missing.value.body["type"] == "ResponseNotFoundError"
    for attempt in (
        lambda: intruder.responses.delete(created.id),
        lambda: intruder.responses.cancel(created.id),
        lambda: intruder.responses.input_items.list(created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert env.fake is not None and created.id in env.fake.responses  # never reached the upstream
    assert client(env, owner).responses.retrieve(created.id).id == created.id
    assert env.entries(other.agent_id) == []


def test_response_paths_refuse_other_methods_and_need_a_key(env: GatewayEnv) -> None:
    agent = env.agent()
    created = client(env, agent).responses.create(**request(nonce()))
    assert env.client.put(f"{RESPONSES}/{created.id}", headers=agent.auth()).status_code == 405
    assert env.client.get(f"{RESPONSES}/{created.id}/other", headers=agent.auth()).status_code == 404
    assert env.client.get(f"{RESPONSES}/{created.id}").status_code == 401
    assert env.client.get(RESPONSES, headers=agent.auth()).status_code == 405


def test_concurrent_responses_are_each_recorded_before_they_are_answered(env: GatewayEnv) -> None:
    """Records written together (one document write for the calls that arrive during a write) are each
    stored before their call is answered: every response can be continued at once."""
    agents = [env.agent() for _ in range(8)]
    failures: list[BaseException] = []

    def create_and_continue(agent: AgentInfo) -> None:
        try:
            sdk = client(env, agent)
            first = sdk.responses.create(**request(nonce(), max_output_tokens=3))
            second = sdk.responses.create(
                **request(nonce(), max_output_tokens=3, previous_response_id=first.id)
            )
            assert second.previous_response_id == first.id
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=create_and_continue, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    for agent in agents:
        assert len([e for e in env.closed_entries(agent.agent_id, holds=2) if e.kind == "hold"]) == 2


def test_response_paths_are_documented_and_measured_without_their_ids(env: GatewayEnv) -> None:
    agent = env.agent()
    created = client(env, agent).responses.create(**request(nonce()))
    client(env, agent).responses.retrieve(created.id)
    paths = env.client.get("/openapi.json").json()["paths"]
    assert set(paths[RESPONSES]) == {"post"}
    assert set(paths[f"{RESPONSES}/{{response_id}}"]) == {"get", "delete"}
    assert set(paths[f"{RESPONSES}/{{response_id}}/input_items"]) == {"get"}
    assert set(paths[f"{RESPONSES}/{{response_id}}/cancel"]) == {"post"}
    metrics = env.client.get("/metrics", headers={"Authorization": f"Bearer {env.admin_token}"}).text
    assert '"/v1/responses/{id}"' in metrics  # one label for every response id
    assert created.id not in metrics


def test_the_admin_key_reads_a_response_as_the_agent_it_names(env: GatewayEnv) -> None:
    owner, other = env.agent(), env.agent()
    created = client(env, owner).responses.create(**request(nonce()))
    admin = {"Authorization": f"Bearer {env.admin_token}"}
    as_owner = env.client.get(f"{RESPONSES}/{created.id}", headers={**admin, "x-caracal-agent": owner.name})
    assert as_owner.status_code == 200 and as_owner.json()["id"] == created.id
    as_other = env.client.get(f"{RESPONSES}/{created.id}", headers={**admin, "x-caracal-agent": other.name})
    assert as_other.status_code == 404
    assert env.client.get(f"{RESPONSES}/{created.id}", headers=admin).status_code == 400  # names no agent


# ------------------------------------------------------------------ an edited registry (the data folder)


@pytest.mark.parametrize("edit", ["owner", "tokens", "time"])
def test_an_edited_record_is_never_used_to_read_or_continue_a_response(env: GatewayEnv, edit: str) -> None:
    """Whoever can edit the data folder could give a response to another agent, lower the tokens a
    continuation holds for, or keep a record past its retention: the record's seal no longer verifies, so
    every agent is refused and nothing is forwarded."""
    owner, other, marker = env.agent(), env.agent(), nonce()
    first = client(env, owner).responses.create(**request(marker))
    env.closed_entries(owner.agent_id)
    registry = env.service.home.responses
    document = registry.documents[registry.shard_of(first.id)]
    with document.transaction() as stored:
        entry = stored["responses"][first.id]
        if edit == "owner":
            entry[0] = other.agent_id
        elif edit == "tokens":
            entry[1] = 0
        else:
            entry[2] = "2999-01-01T00:00:00.000000Z"
    for agent in (owner, other):
        with pytest.raises(openai.APIStatusError) as read:
            client(env, agent).responses.retrieve(first.id)
        assert read.value.status_code == 503  # RegistryError: the record does not verify
        continued = f"{marker}-{agent.agent_id}"
        with pytest.raises(openai.APIStatusError) as refused:
            client(env, agent).responses.create(**request(continued, previous_response_id=first.id))
        assert refused.value.status_code == 503
        assert env.upstream_requests(continued) == []
    assert [r.path for r in env.upstream_requests(marker)] == ["/v1/responses"]  # the first call only
    # A new record of the id (the provider answered it again) replaces the forged one.
    registry.record(first.id, owner.agent_id, 7)
    assert registry.get(first.id, owner.agent_id).tokens == 7
