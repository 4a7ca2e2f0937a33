"""The fake upstream over real HTTP: plain and streamed answers, errors, mid-stream failure, auth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from caracal.server.gateway.estimate import bound_anthropic_messages, bound_openai_chat
from caracal.server.gateway.usage import StreamMeter, Usage, usage_from_response
from tests.server.fake_upstream import FakeUpstream, serve_fake_upstream

OPENAI_KEY = {"authorization": "Bearer sk-upstream-test"}
ANTHROPIC_KEY = {"x-api-key": "sk-upstream-test"}
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello to the world"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with serve_fake_upstream() as server:
        yield server


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as http:
        yield http


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": MESSAGES, **extra}


def test_plain_chat_completion(client: httpx.Client, fake: FakeUpstream):
    response = client.post("/v1/chat/completions", json=chat_body(max_tokens=5), headers=OPENAI_KEY)
    assert response.status_code == 200
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "tok tok tok tok tok"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert usage_from_response("openai-chat", data) == Usage(input_tokens=7, output_tokens=5, model="gpt-4o")
    seen = fake.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.body["max_tokens"] == 5
    assert seen.headers["authorization"] == "Bearer sk-upstream-test"


def test_default_completion_and_n(client: httpx.Client):
    data = client.post("/v1/chat/completions", json=chat_body(n=2), headers=OPENAI_KEY).json()
    assert len(data["choices"]) == 2
    assert data["usage"]["completion_tokens"] == 40


def test_streamed_chat_with_usage_matches_the_meter(client: httpx.Client):
    bound, forward = bound_openai_chat(
        chat_body(stream=True, max_tokens=4), max_output_tokens=100, image_tokens=0
    )
    meter = StreamMeter()
    with client.stream("POST", "/v1/chat/completions", json=forward, headers=OPENAI_KEY) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_raw():
            meter.feed(chunk)
    assert meter.done
    assert meter.usage() == Usage(input_tokens=7, output_tokens=4, model="gpt-4o")
    assert bound.input_tokens >= 7 and bound.output_tokens == 4


def test_streamed_chat_without_include_usage_has_no_usage_chunk(client: httpx.Client):
    meter = StreamMeter()
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True), headers=OPENAI_KEY) as r:
        for chunk in r.iter_raw():
            meter.feed(chunk)
    assert meter.done and meter.usage() is None
    assert meter.consumed_output_bound() >= 20


def test_streamed_anthropic_messages(client: httpx.Client):
    body = {"model": "claude-x", "system": "be brief", "messages": MESSAGES[1:], "stream": True}
    bound, forward = bound_anthropic_messages(body, max_output_tokens=7, image_tokens=0)
    meter = StreamMeter()
    with client.stream("POST", "/v1/messages", json=forward, headers=ANTHROPIC_KEY) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            meter.feed(chunk)
    assert meter.usage() == Usage(input_tokens=7, output_tokens=7, model="claude-x")
    assert bound.input_tokens >= 7


def test_plain_anthropic_and_embeddings(client: httpx.Client):
    body = {"model": "claude-x", "messages": MESSAGES[1:], "max_tokens": 3}
    data = client.post("/v1/messages", json=body, headers=ANTHROPIC_KEY).json()
    assert data["content"][0]["text"] == "tok tok tok"
    assert usage_from_response("anthropic", data) == Usage(input_tokens=5, output_tokens=3, model="claude-x")
    data = client.post(
        "/v1/embeddings", json={"model": "e", "input": ["a b", "c"]}, headers=OPENAI_KEY
    ).json()
    assert len(data["data"]) == 2
    assert usage_from_response("openai-embeddings", data) == Usage(input_tokens=3, model="e")


@pytest.mark.parametrize("select", ["header", "model"])
@pytest.mark.parametrize(("behaviour", "status"), [("error500", 500), ("error429", 429)])
def test_errors(client: httpx.Client, select: str, behaviour: str, status: int):
    headers = dict(OPENAI_KEY)
    body = chat_body()
    if select == "header":
        headers["x-fake-behaviour"] = behaviour
    else:
        body["model"] = f"gpt-4o@{behaviour}"
    response = client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == status
    assert "error" in response.json()
    if status == 429:
        assert response.headers["retry-after"] == "1"


def test_anthropic_error_format(client: httpx.Client):
    headers = {**ANTHROPIC_KEY, "x-fake-behaviour": "error500"}
    response = client.post("/v1/messages", json={"model": "c", "messages": MESSAGES[1:]}, headers=headers)
    assert response.status_code == 500
    assert response.json()["type"] == "error"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_midstream_failure_is_seen_by_the_client(client: httpx.Client, path: str):
    headers = {
        **(ANTHROPIC_KEY if path == "/v1/messages" else OPENAI_KEY),
        "x-fake-behaviour": "midstream-fail",
    }
    body = chat_body(stream=True, stream_options={"include_usage": True})
    meter = StreamMeter()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", path, json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_raw():
            meter.feed(chunk)
    assert meter.usage() is None
    assert 0 < meter.consumed_output_bound() < 40


def test_midstream_failure_of_a_plain_body(client: httpx.Client):
    headers = {**OPENAI_KEY, "x-fake-behaviour": "midstream-fail"}
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/chat/completions", json=chat_body(), headers=headers)


def test_no_usage(client: httpx.Client):
    headers = {**OPENAI_KEY, "x-fake-behaviour": "no-usage"}
    data = client.post("/v1/chat/completions", json=chat_body(), headers=headers).json()
    assert "usage" not in data and usage_from_response("openai-chat", data) is None
    body = {"model": "c", "messages": MESSAGES[1:], "stream": True, "max_tokens": 5}
    meter = StreamMeter()
    with client.stream("POST", "/v1/messages", json=body, headers={**ANTHROPIC_KEY, **headers}) as r:
        for chunk in r.iter_raw():
            meter.feed(chunk)
    assert meter.usage() is None and meter.consumed_output_bound() >= 5


def test_slow(client: httpx.Client):
    headers = {**OPENAI_KEY, "x-fake-behaviour": "slow", "x-fake-delay-ms": "300"}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=chat_body(), headers=headers, timeout=0.05)
    response = client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/chat/completions", {}),
        ("/v1/chat/completions", {"authorization": "Bearer sk-agent-key"}),
        ("/v1/chat/completions", ANTHROPIC_KEY),  # right key, wrong header for OpenAI
        ("/v1/messages", OPENAI_KEY),  # right key, wrong header for Anthropic
        ("/v1/messages", {"x-api-key": "sk-agent-key"}),
        ("/v1/embeddings", {}),
    ],
)
def test_auth_is_checked(client: httpx.Client, fake: FakeUpstream, path: str, headers: dict[str, str]):
    response = client.post(path, json=chat_body(), headers=headers)
    assert response.status_code == 401
    assert fake.requests[-1].headers.get("authorization") == headers.get("authorization")


def test_custom_key_and_unknown_route():
    with serve_fake_upstream(api_key="sk-other", record=False) as fake:
        with httpx.Client(base_url=fake.base_url) as http:
            ok = http.post(
                "/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer sk-other"}
            )
            assert ok.status_code == 200
            assert http.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_KEY).status_code == 401
            assert http.post("/v1/nothing", json={}, headers=OPENAI_KEY).status_code == 404
        assert fake.requests == []


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


def test_tools_behaviour_calls_the_first_tool_then_answers_after_its_result(client: httpx.Client):
    body = chat_body(model="gpt-4o@tools", tools=[WEATHER_TOOL], max_tokens=3)
    data = client.post("/v1/chat/completions", json=body, headers=OPENAI_KEY).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"tok","days":1}'}
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    result = {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
    body["messages"] = [*MESSAGES, choice["message"], result]
    data = client.post("/v1/chat/completions", json=body, headers=OPENAI_KEY).json()
    assert data["choices"][0]["message"]["content"] == "tok tok tok"
    assert data["usage"]["prompt_tokens"] == 8


def test_tools_behaviour_streams_the_call_as_deltas_with_usage(client: httpx.Client):
    body = chat_body(model="gpt-4o@tools", tools=[WEATHER_TOOL], stream=True, max_tokens=3)
    body["stream_options"] = {"include_usage": True}
    meter = StreamMeter()
    arguments, names, finish = "", [], []
    with client.stream("POST", "/v1/chat/completions", json=body, headers=OPENAI_KEY) as response:
        for chunk in response.iter_raw():
            meter.feed(chunk)
            for line in chunk.decode().splitlines():
                if not line.startswith("data: {"):
                    continue
                event = orjson.loads(line[6:])
                for choice in event["choices"]:
                    for delta in choice["delta"].get("tool_calls", []):
                        names.append(delta["function"].get("name"))
                        arguments += delta["function"].get("arguments", "")
                    finish.append(choice.get("finish_reason"))
    assert [name for name in names if name] == ["get_weather"]
    assert orjson.loads(arguments) == {"city": "tok", "days": 1}
    assert "tool_calls" in finish
    assert meter.usage() == Usage(input_tokens=7, output_tokens=3, model="gpt-4o@tools")


# ------------------------------------------------------------------------------------- Responses API


def test_responses_report_cached_and_reasoning_tokens_and_chain(client: httpx.Client, fake: FakeUpstream):
    body = {"model": "gpt-5", "input": "say hello to the world", "instructions": "be brief"}
    first = client.post("/v1/responses", json=body, headers=OPENAI_KEY).json()
    assert first["usage"]["input_tokens"] == 7 and first["usage"]["output_tokens"] == 20
    assert first["usage"]["output_tokens_details"] == {"reasoning_tokens": 5}
    assert first["output"][1]["content"][0]["text"] == " ".join(["tok"] * 15)
    chained = {**body, "previous_response_id": first["id"], "max_output_tokens": 4}
    second = client.post("/v1/responses", json=chained, headers=OPENAI_KEY).json()
    assert second["usage"]["input_tokens_details"] == {"cached_tokens": 27}
    assert second["usage"]["input_tokens"] == 7 + 27 and second["usage"]["output_tokens"] == 4
    # What the gateway reads from it: cached input apart, reasoning inside output.
    usage = usage_from_response("openai-responses", second)
    assert usage is not None and (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (
        7,
        27,
        4,
    )
    unknown = client.post(
        "/v1/responses", json={**body, "previous_response_id": "resp_nope"}, headers=OPENAI_KEY
    )
    assert unknown.status_code == 404


def test_a_streamed_response_ends_with_its_usage_and_matches_the_plain_one(client: httpx.Client):
    body = {"model": "gpt-4o@incomplete", "input": "hello there", "stream": True, "max_output_tokens": 8}
    streamed = client.post("/v1/responses", json=body, headers=OPENAI_KEY).content
    meter = StreamMeter()
    meter.feed(streamed)
    assert meter.usage() == Usage(input_tokens=2, output_tokens=8, model="gpt-4o@incomplete")
    assert b"event: response.incomplete" in streamed and b"response.completed" not in streamed


def test_stored_responses_are_read_listed_and_deleted(client: httpx.Client, fake: FakeUpstream):
    created = client.post("/v1/responses", json={"model": "m", "input": "hi"}, headers=OPENAI_KEY).json()
    path = f"/v1/responses/{created['id']}"
    assert client.get(path).status_code == 401
    assert client.get(path, headers=OPENAI_KEY).json()["id"] == created["id"]
    items = client.get(f"{path}/input_items", headers=OPENAI_KEY).json()["data"]
    assert items[0]["content"][0]["text"] == "hi"
    assert client.delete(path, headers=OPENAI_KEY).json()["deleted"] is True
    assert client.get(path, headers=OPENAI_KEY).status_code == 404
    unstored = {"model": "m", "input": "hi", "store": False}
    kept = client.post("/v1/responses", json=unstored, headers=OPENAI_KEY).json()
    assert kept["id"] not in fake.responses
