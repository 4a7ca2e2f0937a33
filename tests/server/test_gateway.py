"""The gateway end to end over real HTTP: client -> Caracal gateway -> fake OpenAI/Anthropic upstream.

Every test uses its own agent (ledger entries are found by agent) and a nonce in its request body (upstream
requests are found by nonce), over one gateway per module. Settlement is queued after the response, so
ledger assertions first wait until the agent's holds are closed (:meth:`GatewayEnv.closed_entries`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from caracal.core.events import LedgerEvent
from tests.pg import BACKEND_PARAMS, home_database
from tests.server.fake_upstream import prompt_tokens
from tests.server.gateway_env import (
    CHAT,
    CLAUDE,
    EMBEDDING,
    EMBEDDINGS,
    GPT,
    INPUT_PRICE,
    MAX_OUTPUT_TOKENS,
    MESSAGES,
    OUTPUT_PRICE,
    PROVIDER_KEY,
    AgentInfo,
    GatewayEnv,
    behaviour_model,
    cost_of,
    nonce,
    release_reason,
    split,
    start_gateway,
)

FAKE_COMPLETION = 20  # the fake's default completion_tokens


BACKENDS_PER_MODULE = True


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[GatewayEnv]:
    home = tmp_path_factory.mktemp("gateway") / "home"
    with start_gateway(home, database_url=home_database(request)) as live:
        yield live


@pytest.fixture(autouse=True)
def _fresh_knobs(env: GatewayEnv) -> Iterator[None]:
    """Tests that turn a knob of the shared fake get it back to its default, and leave no hold open."""
    yield
    assert env.fake is not None
    env.fake.chunk_delay_ms = 0
    env.fake.delay_ms = 200
    env.wait_idle()


# ------------------------------------------------------------------------------------------------ helpers


def chat(marker: str, model: str = GPT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"Say hello {marker} please"}], **extra}


def anthropic(marker: str, model: str = CLAUDE, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": f"Say hello {marker} please"}],
        **extra,
    }


def anthropic_auth(agent: AgentInfo) -> dict[str, str]:
    """What the Anthropic SDK sends: the (Caracal) key as ``x-api-key``."""
    return {"x-api-key": agent.token, "anthropic-version": "2023-06-01"}


def provider_of(path: str) -> str:
    return "anthropic" if path == MESSAGES else "openai"


def without_created(data: bytes) -> bytes:
    """The fake stamps ``created`` with the wall clock: blank it before comparing two answers."""
    return re.sub(rb'"created":\d+', b'"created":0', data)


def direct(env: GatewayEnv, path: str, body: Any) -> httpx.Response:
    """The same body sent straight to the fake (with the provider key), without delays."""
    assert env.fake is not None
    headers = {"x-fake-chunk-delay-ms": "0", "x-fake-delay-ms": "0"}
    if path == MESSAGES:
        headers["x-api-key"] = PROVIDER_KEY
    else:
        headers["authorization"] = f"Bearer {PROVIDER_KEY}"
    return httpx.post(env.fake.base_url + path, json=body, headers=headers, timeout=30)


def assert_provider_key_only(env: GatewayEnv, path: str, agent: AgentInfo, marker: str) -> None:
    """The fake saw the provider's key and never the agent's Caracal key, in any header."""
    seen = env.upstream_requests(marker)
    assert seen, "the upstream received no request"
    for request in seen:
        if path == MESSAGES:
            assert request.headers.get("x-api-key") == PROVIDER_KEY
            assert "authorization" not in request.headers
        else:
            assert request.headers.get("authorization") == f"Bearer {PROVIDER_KEY}"
            assert "x-api-key" not in request.headers
        for name, value in request.headers.items():
            assert agent.token not in value, f"the agent's key reached the upstream in {name}"
            assert env.admin_token not in value, f"the admin key reached the upstream in {name}"


def assert_settled(
    env: GatewayEnv,
    agent: AgentInfo,
    path: str,
    model: str,
    *,
    hold: Decimal,
    quantities: dict[str, int],
    estimated: bool = False,
) -> list[LedgerEvent]:
    """The agent's ledger is exactly hold -> one charge per token kind -> release(settled), with the given
    quantities, ``cost == quantity x price``, the charges tied to the hold."""
    events = env.closed_entries(agent.agent_id)
    holds, charges, releases = split(events)
    assert len(holds) == 1 and len(releases) == 1, events
    assert holds[0].cost == hold
    assert release_reason(releases[0]) == "settled"
    assert [e.event_id for e in events] == sorted(e.event_id for e in events)
    assert events[0].kind == "hold" and events[-1].kind == "release"
    provider = provider_of(path)
    got = {c.resource_type: c for c in charges}
    expected = {f"{provider}.{model}.{kind}": qty for kind, qty in quantities.items()}
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for resource, quantity in expected.items():
        entry = got[resource]
        kind = resource.rsplit(".", 1)[1]
        assert entry.quantity == Decimal(quantity), (resource, entry.quantity)
        assert entry.cost == cost_of(Decimal(quantity), env.price(provider, model, kind)), resource
        assert entry.hold_id == holds[0].hold_id
        assert entry.currency == "USD"
        metadata = entry.metadata or {}
        assert bool(metadata.get("estimated")) is estimated, metadata
        assert "over_hold" not in metadata
    assert sum((c.cost for c in charges), Decimal(0)) <= hold
    return events


def assert_released(env: GatewayEnv, agent: AgentInfo, hold: Decimal | None = None) -> None:
    """The agent's ledger is exactly hold -> release(released): nothing billed."""
    events = env.closed_entries(agent.agent_id)
    holds, charges, releases = split(events)
    assert len(holds) == 1 and len(releases) == 1 and not charges, events
    assert release_reason(releases[0]) == "released"
    assert releases[0].hold_id == holds[0].hold_id
    if hold is not None:
        assert holds[0].cost == hold


def error_of(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == kind, error
    assert error["message"]
    return error


def sse_data(stream: bytes) -> list[Any]:
    """The JSON payloads of the ``data:`` lines of an SSE stream (``[DONE]`` as a string)."""
    payloads: list[Any] = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: "):
            raw = line[len(b"data: ") :]
            payloads.append("[DONE]" if raw == b"[DONE]" else orjson.loads(raw))
    return payloads


def stream_text(path: str, streamed: bytes) -> str:
    """The generated text carried by an OpenAI or Anthropic stream."""
    parts: list[str] = []
    for payload in sse_data(streamed):
        if payload == "[DONE]":
            continue
        if path == CHAT:
            parts.extend(choice["delta"].get("content") or "" for choice in payload["choices"])
        elif payload.get("type") == "content_block_delta":
            parts.append(payload["delta"]["text"])
    return "".join(parts)


# ------------------------------------------------------------------------------------------ happy paths


def test_openai_chat_is_passed_through_and_settled_from_the_reported_usage(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = chat(marker)
    bound, forward, hold = env.worst_case(CHAT, body)
    response = env.post(CHAT, body, agent=agent, headers={"openai-organization": "org-test"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")

    [seen] = env.upstream_requests(marker)
    assert seen.path == "/v1/chat/completions"
    assert seen.body == forward  # the client's body, with only the output cap added
    assert seen.body["max_tokens"] == MAX_OUTPUT_TOKENS == bound.output_tokens
    assert seen.headers["openai-organization"] == "org-test"
    assert_provider_key_only(env, CHAT, agent, marker)
    # The body reaches the client byte for byte as the upstream answers it (modulo the fake's clock).
    assert without_created(response.content) == without_created(direct(env, CHAT, seen.body).content)

    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == prompt_tokens(body)
    assert usage["completion_tokens"] == FAKE_COMPLETION
    assert_settled(
        env,
        agent,
        CHAT,
        GPT,
        hold=hold,
        quantities={"input_tokens": usage["prompt_tokens"], "output_tokens": FAKE_COMPLETION},
    )


def test_request_output_cap_is_kept_and_bounds_the_hold(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = chat(marker, max_tokens=7, n=2)
    bound, forward, hold = env.worst_case(CHAT, body)
    assert bound.output_tokens == 14  # n choices multiply the cap
    response = env.post(CHAT, body, agent=agent)
    assert response.status_code == 200, response.text
    [seen] = env.upstream_requests(marker)
    assert seen.body == forward == body
    assert len(response.json()["choices"]) == 2
    assert_settled(
        env,
        agent,
        CHAT,
        GPT,
        hold=hold,
        quantities={"input_tokens": prompt_tokens(body), "output_tokens": 14},
    )


def test_reasoning_models_get_the_cap_as_max_completion_tokens(env: GatewayEnv) -> None:
    # o-series and gpt-5 models refuse max_tokens; their cap goes in the field they accept.
    env.set_price("openai", "o3-mini", "0.001", "0.002")
    agent, marker = env.agent(), nonce()
    response = env.post(CHAT, chat(marker, model="o3-mini"), agent=agent)
    assert response.status_code == 200, response.text
    [seen] = env.upstream_requests(marker)
    assert seen.body["max_completion_tokens"] == MAX_OUTPUT_TOKENS and "max_tokens" not in seen.body
    env.closed_entries(agent.agent_id)


def test_embeddings_are_passed_through_and_settled(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = {"model": EMBEDDING, "input": [f"alpha beta {marker}", "gamma delta epsilon"]}
    bound, forward, hold = env.worst_case(EMBEDDINGS, body)
    assert bound.output_tokens == 0
    response = env.post(EMBEDDINGS, body, agent=agent)
    assert response.status_code == 200, response.text
    [seen] = env.upstream_requests(marker)
    assert seen.path == "/v1/embeddings"
    assert seen.body == forward == body  # nothing injected into an embeddings request
    assert_provider_key_only(env, EMBEDDINGS, agent, marker)
    data = response.json()
    assert without_created(response.content) == without_created(direct(env, EMBEDDINGS, body).content)
    assert len(data["data"]) == 2
    assert data["usage"]["prompt_tokens"] == 6
    assert_settled(env, agent, EMBEDDINGS, EMBEDDING, hold=hold, quantities={"input_tokens": 6})


def test_anthropic_messages_use_the_provider_key_and_settle(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = anthropic(marker)
    bound, forward, hold = env.worst_case(MESSAGES, body)
    response = env.post(MESSAGES, body, agent=agent, headers=anthropic_auth(agent))
    assert response.status_code == 200, response.text
    [seen] = env.upstream_requests(marker)
    assert seen.path == "/v1/messages"
    assert seen.body == forward
    assert seen.body["max_tokens"] == MAX_OUTPUT_TOKENS == bound.output_tokens  # injected when absent
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert_provider_key_only(env, MESSAGES, agent, marker)
    assert response.content == direct(env, MESSAGES, seen.body).content
    usage = response.json()["usage"]
    assert usage["input_tokens"] == prompt_tokens(body)
    assert_settled(
        env,
        agent,
        MESSAGES,
        CLAUDE,
        hold=hold,
        quantities={"input_tokens": usage["input_tokens"], "output_tokens": FAKE_COMPLETION},
    )


def test_anthropic_version_is_added_when_the_client_sends_none(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    response = env.post(MESSAGES, anthropic(marker, max_tokens=3), agent=agent)  # Bearer, no version
    assert response.status_code == 200, response.text
    [seen] = env.upstream_requests(marker)
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert_provider_key_only(env, MESSAGES, agent, marker)


def test_slow_upstream_still_settles_exactly(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    model = behaviour_model(GPT, "slow")
    body = chat(marker, model=model, max_tokens=5)
    _bound, _forward, hold = env.worst_case(CHAT, body)
    response = env.post(CHAT, body, agent=agent)
    assert response.status_code == 200, response.text
    events = assert_settled(
        env,
        agent,
        CHAT,
        model,
        hold=hold,
        quantities={"input_tokens": prompt_tokens(body), "output_tokens": 5},
    )
    # User prices: the arithmetic is exact and easy to check by hand.
    _holds, charges, _releases = split(events)
    assert [c.cost for c in charges] == [prompt_tokens(body) * INPUT_PRICE, 5 * OUTPUT_PRICE]


# --------------------------------------------------------------------------------------------- streams


def read_stream(env: GatewayEnv, path: str, body: Any, headers: dict[str, str]) -> list[bytes]:
    chunks: list[bytes] = []
    with env.client.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks.extend(chunk for chunk in response.iter_bytes() if chunk)
    return chunks


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_stream_arrives_incrementally_identical_and_is_settled_from_its_usage(
    env: GatewayEnv, path: str
) -> None:
    assert env.fake is not None
    env.fake.chunk_delay_ms = 40
    agent, marker = env.agent(), nonce()
    body = (chat if path == CHAT else anthropic)(marker, stream=True, max_tokens=4)
    model = body["model"]
    _bound, forward, hold = env.worst_case(path, body)
    headers = agent.auth() if path == CHAT else anthropic_auth(agent)
    chunks = read_stream(env, path, body, headers)

    end = b"[DONE]" if path == CHAT else b"message_stop"
    # Incremental: the first chunk the client got was a prefix, not the whole stream.
    assert len(chunks) >= 2, chunks
    assert end not in chunks[0]
    streamed = b"".join(chunks)
    assert streamed.rstrip().endswith(b"data: [DONE]" if path == CHAT else b'{"type":"message_stop"}')

    [seen] = env.upstream_requests(marker)
    assert seen.body == forward
    if path == CHAT:
        assert seen.body["stream_options"] == {"include_usage": True}
    assert_provider_key_only(env, path, agent, marker)
    assert without_created(streamed) == without_created(direct(env, path, seen.body).content)
    assert stream_text(path, streamed) == "tok tok tok tok"
    assert_settled(
        env,
        agent,
        path,
        model,
        hold=hold,
        quantities={"input_tokens": prompt_tokens(body), "output_tokens": 4},
    )


def test_openai_stream_options_of_the_client_are_kept_and_usage_forced(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    body = chat(marker, stream=True, max_tokens=2, stream_options={"include_usage": False})
    chunks = read_stream(env, CHAT, body, agent.auth())
    [seen] = env.upstream_requests(marker)
    assert seen.body["stream_options"] == {"include_usage": True}
    usage = [p["usage"] for p in sse_data(b"".join(chunks)) if p != "[DONE]" and p.get("usage")]
    assert usage == [{"prompt_tokens": prompt_tokens(body), "completion_tokens": 2, "total_tokens": 6}]
    env.closed_entries(agent.agent_id)


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_stream_without_usage_is_billed_as_an_estimate_within_the_cap(env: GatewayEnv, path: str) -> None:
    agent, marker = env.agent(), nonce()
    base = GPT if path == CHAT else CLAUDE
    model = behaviour_model(base, "no-usage")
    body = (chat if path == CHAT else anthropic)(marker, model=model, stream=True, max_tokens=10)
    bound, _forward, hold = env.worst_case(path, body)
    chunks = read_stream(env, path, body, agent.auth())
    assert b'"usage"' not in b"".join(chunks)
    events = env.closed_entries(agent.agent_id)
    _holds, charges, releases = split(events)
    assert release_reason(releases[0]) == "settled"
    by_kind = {c.resource_type.rsplit(".", 1)[1]: c for c in charges}
    assert by_kind["input_tokens"].quantity == bound.input_tokens
    assert 0 < by_kind["output_tokens"].quantity <= 10
    for charge in charges:
        assert charge.metadata is not None and charge.metadata["estimated"] is True
        kind = charge.resource_type.rsplit(".", 1)[1]
        assert charge.cost == cost_of(charge.quantity, env.price(provider_of(path), model, kind))
    assert sum(c.cost for c in charges) <= hold


def test_response_without_usage_is_billed_at_its_worst_case(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    model = behaviour_model(GPT, "no-usage")
    body = chat(marker, model=model, max_tokens=9)
    bound, _forward, hold = env.worst_case(CHAT, body)
    response = env.post(CHAT, body, agent=agent)
    assert response.status_code == 200, response.text
    assert "usage" not in response.json()
    assert_settled(
        env,
        agent,
        CHAT,
        model,
        hold=hold,
        quantities={"input_tokens": bound.input_tokens, "output_tokens": 9},
        estimated=True,
    )
    assert hold == bound.input_tokens * INPUT_PRICE + 9 * OUTPUT_PRICE


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_client_disconnect_mid_stream_settles_the_hold_as_an_estimate(env: GatewayEnv, path: str) -> None:
    assert env.fake is not None
    env.fake.chunk_delay_ms = 30  # 20 words: the stream would take ~0.6 s; we leave after two chunks
    agent, marker = env.agent(), nonce()
    body = (chat if path == CHAT else anthropic)(marker, stream=True, max_tokens=FAKE_COMPLETION)
    bound, _forward, hold = env.worst_case(path, body)
    received: list[bytes] = []
    with env.client.stream("POST", path, json=body, headers=agent.auth()) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received.append(chunk)
            if len(received) == 2:
                break
    end = b"[DONE]" if path == CHAT else b"message_stop"
    assert end not in b"".join(received)  # we really left before the end

    events = env.closed_entries(agent.agent_id)  # not left open until it expires
    _holds, charges, releases = split(events)
    assert len(releases) == 1 and release_reason(releases[0]) == "settled"
    by_kind = {c.resource_type.rsplit(".", 1)[1]: c for c in charges}
    assert set(by_kind) == {"input_tokens", "output_tokens"}
    assert by_kind["input_tokens"].quantity == bound.input_tokens
    assert 0 < by_kind["output_tokens"].quantity <= bound.output_tokens == FAKE_COMPLETION
    for charge in charges:
        assert charge.metadata is not None and charge.metadata["estimated"] is True
    assert sum(c.cost for c in charges) <= hold


def test_client_gone_before_the_first_byte_still_closes_the_hold(env: GatewayEnv) -> None:
    """The client times out while the upstream is still preparing the stream (time to first token)."""
    assert env.fake is not None
    env.fake.delay_ms = 400
    env.fake.chunk_delay_ms = 20
    agent, marker = env.agent(), nonce()
    body = chat(marker, model=behaviour_model(GPT, "slow"), stream=True, max_tokens=10)
    _bound, _forward, hold = env.worst_case(CHAT, body)
    with (
        pytest.raises(httpx.ReadTimeout),
        env.client.stream("POST", CHAT, json=body, headers=agent.auth(), timeout=httpx.Timeout(30, read=0.1)),
    ):
        pass
    events = env.closed_entries(agent.agent_id)
    _holds, charges, releases = split(events)
    assert len(releases) == 1 and release_reason(releases[0]) == "settled"
    assert charges and sum(c.cost for c in charges) <= hold


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_midstream_failure_reaches_the_client_and_is_billed_as_an_estimate(
    env: GatewayEnv, path: str
) -> None:
    agent, marker = env.agent(), nonce()
    base = GPT if path == CHAT else CLAUDE
    model = behaviour_model(base, "midstream-fail")
    body = (chat if path == CHAT else anthropic)(marker, model=model, stream=True, max_tokens=15)
    bound, _forward, hold = env.worst_case(path, body)
    received = b""
    failed = False
    try:
        with env.client.stream("POST", path, json=body, headers=agent.auth()) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received += chunk
    except httpx.TransportError:
        failed = True
    end = b"[DONE]" if path == CHAT else b"message_stop"
    assert failed, "the client saw a clean end of a stream the upstream broke off"
    assert end not in received

    events = env.closed_entries(agent.agent_id)
    _holds, charges, releases = split(events)
    assert len(releases) == 1 and release_reason(releases[0]) == "settled"
    by_kind = {c.resource_type.rsplit(".", 1)[1]: c for c in charges}
    assert by_kind["input_tokens"].quantity == bound.input_tokens
    assert 0 < by_kind["output_tokens"].quantity <= 15
    for charge in charges:
        assert charge.metadata is not None and charge.metadata["estimated"] is True
    assert sum(c.cost for c in charges) <= hold


def test_midstream_failure_of_a_plain_response_is_502_and_billed_at_worst_case(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    model = behaviour_model(GPT, "midstream-fail")
    body = chat(marker, model=model, max_tokens=6)
    bound, _forward, hold = env.worst_case(CHAT, body)
    response = env.post(CHAT, body, agent=agent)
    error_of(response, 502, "UpstreamError")
    assert len(env.upstream_requests(marker)) == 1
    assert_settled(
        env,
        agent,
        CHAT,
        model,
        hold=hold,
        quantities={"input_tokens": bound.input_tokens, "output_tokens": 6},
        estimated=True,
    )


# ------------------------------------------------------------------------------------- upstream errors


@pytest.mark.parametrize("behaviour", ["error500", "error429"])
@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS, MESSAGES])
def test_upstream_error_reaches_the_client_and_releases_the_hold(
    env: GatewayEnv, path: str, behaviour: str
) -> None:
    agent, marker = env.agent(), nonce()
    if path == EMBEDDINGS:
        body: dict[str, Any] = {"model": behaviour_model(EMBEDDING, behaviour), "input": f"x {marker}"}
    else:
        maker = chat if path == CHAT else anthropic
        body = maker(marker, model=behaviour_model(GPT if path == CHAT else CLAUDE, behaviour))
    _bound, _forward, hold = env.worst_case(path, body)
    response = env.post(path, body, agent=agent)
    status = 500 if behaviour == "error500" else 429
    assert response.status_code == status, response.text
    [seen] = env.upstream_requests(marker)
    assert response.content == direct(env, path, seen.body).content  # the provider's own error body
    assert response.headers["content-type"].startswith("application/json")
    assert_released(env, agent, hold)


def test_unreachable_upstream_is_502_and_releases_the_hold(tmp_path: Path, closed_port: int) -> None:
    with start_gateway(tmp_path / "home", upstream_url=f"http://127.0.0.1:{closed_port}") as live:
        for path, body in (
            (CHAT, chat(nonce())),
            (EMBEDDINGS, {"model": EMBEDDING, "input": "hello"}),
            (MESSAGES, anthropic(nonce())),
        ):
            agent = live.agent()
            _bound, _forward, hold = live.worst_case(path, body)
            error = error_of(live.post(path, body, agent=agent), 502, "UpstreamError")
            assert "released" in error["message"]
            assert "127.0.0.1" not in error["message"]  # an agent key is told the outcome, not the address
            assert_released(live, agent, hold)


# -------------------------------------------------------------------------------------------- denials


def test_budget_exceeded_is_402_with_the_decision_and_nothing_is_forwarded(env: GatewayEnv) -> None:
    agent, marker = env.agent("0.0001"), nonce()
    body = chat(marker)
    _bound, _forward, hold = env.worst_case(CHAT, body)
    assert hold > Decimal("0.0001")
    error = error_of(env.post(CHAT, body, agent=agent), 402, "BudgetExceededError")
    decision = error["decision"]
    assert decision["allowed"] is False
    assert decision["policy_id"] == agent.policy_id
    assert Decimal(decision["remaining"]) == Decimal("0.0001")
    assert Decimal(decision["amount"]) == hold
    assert env.upstream_requests(marker) == []
    assert env.entries(agent.agent_id) == []


def test_budget_exceeded_for_a_stream_is_a_plain_402(env: GatewayEnv) -> None:
    agent, marker = env.agent("0.0001"), nonce()
    response = env.post(MESSAGES, anthropic(marker, stream=True), agent=agent)
    error_of(response, 402, "BudgetExceededError")
    assert env.upstream_requests(marker) == []


def test_agent_without_policy_is_denied(env: GatewayEnv) -> None:
    agent, marker = env.agent(None), nonce()
    error_of(env.post(CHAT, chat(marker), agent=agent), 402, "BudgetExceededError")
    assert env.upstream_requests(marker) == []
    assert env.entries(agent.agent_id) == []


def test_unknown_model_price_is_400_before_any_hold(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    for path, body in (
        (CHAT, chat(marker, model="no-such-model-7b")),
        (MESSAGES, anthropic(marker, model="no-such-claude")),
        (EMBEDDINGS, {"model": "no-such-embedder", "input": marker}),
    ):
        error_of(env.post(path, body, agent=agent), 400, "UnknownPriceError")
    assert env.upstream_requests(marker) == []
    assert env.entries(agent.agent_id) == []


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (CHAT, b"{not json"),
        (CHAT, b""),
        (CHAT, b"[1, 2]"),
        (CHAT, b'{"model": "gpt-4o"}'),
        (CHAT, b'{"model": "gpt-4o", "messages": []}'),
        (CHAT, b'{"messages": [{"role": "user", "content": "hi"}]}'),
        (CHAT, b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}'),
        (MESSAGES, b'{"model": "claude-haiku-4-5", "max_tokens": 5}'),
        (EMBEDDINGS, b'{"model": "text-embedding-3-small"}'),
    ],
)
def test_malformed_request_is_400_and_changes_nothing(env: GatewayEnv, path: str, content: bytes) -> None:
    agent = env.agent()
    assert env.fake is not None
    before = len(env.fake.requests)
    error_of(env.post(path, agent=agent, content=content), 400, "GatewayRequestError")
    assert len(env.fake.requests) == before
    assert env.entries(agent.agent_id) == []


def test_missing_wrong_or_revoked_key_is_401(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    revoked = env.agent()
    env.service.keys.revoke(revoked.key_id)
    for headers in (
        {},
        {"Authorization": "Bearer ck-not-a-real-key"},
        {"x-api-key": "ck-not-a-real-key"},
        revoked.auth(),
        {"x-api-key": revoked.token},
    ):
        for path, body in ((CHAT, chat(marker)), (MESSAGES, anthropic(marker))):
            response = env.post(path, body, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"]["type"] == "AuthenticationError"
    assert env.upstream_requests(marker) == []
    assert env.entries(agent.agent_id) == [] and env.entries(revoked.agent_id) == []


def test_admin_key_must_name_the_agent(env: GatewayEnv) -> None:
    agent, marker = env.agent(), nonce()
    admin = {"Authorization": f"Bearer {env.admin_token}"}
    error_of(env.post(CHAT, chat(marker), headers=admin), 400, "GatewayRequestError")
    assert env.upstream_requests(marker) == []

    unknown = env.post(CHAT, chat(marker), headers={**admin, "x-caracal-agent": "no-such-agent"})
    assert unknown.status_code == 404, unknown.text
    assert env.upstream_requests(marker) == []

    body = chat(marker, max_tokens=3)
    _bound, _forward, hold = env.worst_case(CHAT, body)
    response = env.post(CHAT, body, headers={**admin, "x-caracal-agent": agent.name})
    assert response.status_code == 200, response.text
    assert_provider_key_only(env, CHAT, agent, marker)
    assert_settled(
        env,
        agent,
        CHAT,
        GPT,
        hold=hold,
        quantities={"input_tokens": prompt_tokens(body), "output_tokens": 3},
    )
    # By id too, for an Anthropic call.
    other, marker = env.agent(), nonce()
    response = env.post(MESSAGES, anthropic(marker), headers={**admin, "x-caracal-agent": other.agent_id})
    assert response.status_code == 200, response.text
    assert_provider_key_only(env, MESSAGES, other, marker)
    env.closed_entries(other.agent_id)


def test_agent_key_cannot_act_for_another_agent(env: GatewayEnv) -> None:
    """An agent key acts for its own agent: the X-Caracal-Agent header does not redirect its spend."""
    agent, other, marker = env.agent(), env.agent(), nonce()
    response = env.post(
        CHAT, chat(marker, max_tokens=2), agent=agent, headers={"x-caracal-agent": other.name}
    )
    if response.status_code == 200:
        env.closed_entries(agent.agent_id)
        assert env.entries(other.agent_id) == []
    else:
        assert response.status_code in (400, 403), response.text
        assert env.upstream_requests(marker) == []
        assert env.entries(other.agent_id) == []


@pytest.mark.parametrize("who", ["agent", "parent"])
def test_suspended_agent_or_ancestor_is_denied(env: GatewayEnv, who: str) -> None:
    parent = env.agent("1000")
    agent, marker = env.agent("100", parent=parent.agent_id), nonce()
    env.service.home.agents.suspend(agent.agent_id if who == "agent" else parent.agent_id)
    response = env.post(CHAT, chat(marker), agent=agent)
    assert response.status_code in (402, 403), response.text
    assert "suspended" in response.json()["error"]["message"]
    assert env.upstream_requests(marker) == []
    assert env.entries(agent.agent_id) == []


# ------------------------------------------------------------------------------------- official SDKs


def test_openai_sdk_through_the_gateway(env: GatewayEnv) -> None:
    openai = pytest.importorskip("openai")
    agent, marker = env.agent(), nonce()
    client = openai.OpenAI(base_url=f"{env.base_url}/v1", api_key=agent.token, max_retries=0)
    completion = client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": f"hi {marker}"}], max_tokens=3
    )
    assert completion.choices[0].message.content == "tok tok tok"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    stream = client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": f"again {marker}"}], max_tokens=4, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "tok tok tok tok"
    assert_provider_key_only(env, CHAT, agent, marker)
    env.closed_entries(agent.agent_id, holds=2)

    poor = env.agent("0.00001")
    poor_client = openai.OpenAI(base_url=f"{env.base_url}/v1", api_key=poor.token, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        poor_client.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 402
    assert env.entries(poor.agent_id) == []


def test_anthropic_sdk_through_the_gateway(env: GatewayEnv) -> None:
    anthropic_sdk = pytest.importorskip("anthropic")
    agent, marker = env.agent(), nonce()
    client = anthropic_sdk.Anthropic(base_url=env.base_url, api_key=agent.token, max_retries=0)
    message = client.messages.create(
        model=CLAUDE, max_tokens=3, messages=[{"role": "user", "content": f"hi {marker}"}]
    )
    assert message.content[0].text == "tok tok tok"
    assert message.usage.output_tokens == 3
    with client.messages.stream(
        model=CLAUDE, max_tokens=4, messages=[{"role": "user", "content": f"again {marker}"}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "tok tok tok tok"
    assert_provider_key_only(env, MESSAGES, agent, marker)
    env.closed_entries(agent.agent_id, holds=2)

    poor = env.agent("0.00001")
    poor_client = anthropic_sdk.Anthropic(base_url=env.base_url, api_key=poor.token, max_retries=0)
    with pytest.raises(anthropic_sdk.APIStatusError) as raised:
        poor_client.messages.create(model=CLAUDE, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 402
    assert env.entries(poor.agent_id) == []


# ------------------------------------------------------------------------------- compressing upstreams


def test_gzip_compressing_upstream_is_passed_through_readably_and_billed_exactly(tmp_path: Path) -> None:
    """Real provider front ends gzip JSON answers for a client that accepts gzip (aiohttp, which the
    gateway uses upstream, sends ``Accept-Encoding: gzip, deflate`` by default). The client must get a body
    it can read, and the call must be billed from the usage in it, not at its worst case."""
    with start_gateway(tmp_path / "home", gzip=True) as live:
        agent, marker = live.agent(), nonce()
        body = chat(marker, max_tokens=5)
        _bound, _forward, hold = live.worst_case(CHAT, body)
        response = live.post(CHAT, body, agent=agent)
        assert response.status_code == 200, response.content[:100]
        assert response.json()["usage"]["completion_tokens"] == 5
        assert_settled(
            live,
            agent,
            CHAT,
            GPT,
            hold=hold,
            quantities={"input_tokens": prompt_tokens(body), "output_tokens": 5},
        )


# ------------------------------------------------------------------------------- timeouts, disconnects


def test_upstream_timeout_after_the_request_was_sent_is_billed_not_released(tmp_path: Path) -> None:
    """The upstream received the call and is still working on it when the gateway gives up waiting
    (``[gateway] upstream_timeout``). The provider may bill it (it was processed, or is being), so the hold
    must be settled at its worst case, as a read failure after the headers is; releasing it would leave the
    spend unrecorded (fail closed: never under-count what the provider can bill)."""
    with start_gateway(tmp_path / "home", upstream_timeout=0.3, delay_ms=1000) as live:
        agent, marker = live.agent(), nonce()
        model = behaviour_model(GPT, "slow")
        body = chat(marker, model=model, max_tokens=6)
        bound, _forward, hold = live.worst_case(CHAT, body)
        response = live.post(CHAT, body, agent=agent)
        assert response.status_code in (502, 504), response.text
        assert response.json()["error"]["type"] == "UpstreamError"
        assert len(live.upstream_requests(marker)) == 1  # it was sent: the provider has it
        assert_settled(
            live,
            agent,
            CHAT,
            model,
            hold=hold,
            quantities={"input_tokens": bound.input_tokens, "output_tokens": 6},
            estimated=True,
        )


def test_client_gone_during_a_slow_plain_call_is_still_settled_from_usage(env: GatewayEnv) -> None:
    """The provider answers (and bills) a plain call even if the client stopped waiting for it."""
    assert env.fake is not None
    env.fake.delay_ms = 300
    agent, marker = env.agent(), nonce()
    model = behaviour_model(GPT, "slow")
    body = chat(marker, model=model, max_tokens=4)
    _bound, _forward, hold = env.worst_case(CHAT, body)
    with pytest.raises(httpx.ReadTimeout):
        env.client.post(CHAT, json=body, headers=agent.auth(), timeout=httpx.Timeout(30, read=0.05))
    assert_settled(
        env,
        agent,
        CHAT,
        model,
        hold=hold,
        quantities={"input_tokens": prompt_tokens(body), "output_tokens": 4},
    )


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_upstream_error_for_a_stream_request_is_a_plain_error_and_released(
    env: GatewayEnv, path: str
) -> None:
    agent, marker = env.agent(), nonce()
    model = behaviour_model(GPT if path == CHAT else CLAUDE, "error500")
    body = (chat if path == CHAT else anthropic)(marker, model=model, stream=True)
    response = env.post(path, body, agent=agent)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert "fake upstream failure" in response.text
    assert_released(env, agent)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_413_before_anything_is_held(env: GatewayEnv, chunked: bool) -> None:
    agent = env.agent()
    body = orjson.dumps(chat("x" * (1 << 20)))  # over the 1 MiB default limit
    content: Any = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    response = env.client.post(
        CHAT, content=content, headers={**agent.auth(), "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "InvalidRequestError"
    assert env.entries(agent.agent_id) == []


def test_gateway_paths_answer_other_methods_with_405(env: GatewayEnv) -> None:
    response = env.client.get(CHAT, headers=env.agent().auth())
    assert response.status_code == 405 and response.headers["allow"] == "POST"
