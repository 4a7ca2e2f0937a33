"""The Responses API's pure pieces: the worst-case bound of a request, the usage of a response, and the
stream meter over ``response.*`` events (no server)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from caracal.exceptions import GatewayRequestError
from caracal.server.gateway.estimate import REQUEST_OVERHEAD_TOKENS, bound_openai_responses
from caracal.server.gateway.usage import StreamMeter, usage_from_response
from tests.server.fake_upstream import _response_object, _responses_stream

CAP = 64
IMAGES = 1000


def bound(body: dict[str, Any], previous: int = 0) -> Any:
    return bound_openai_responses(body, max_output_tokens=CAP, image_tokens=IMAGES, previous_tokens=previous)


def test_the_input_bound_covers_every_input_field_and_the_earlier_conversation() -> None:
    body = {
        "model": "gpt-4o",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "héllo wörld"}]}],
        "instructions": "Be terse.",
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        "tool_choice": "auto",
        "metadata": {"not": "read by the model"},
    }
    fresh, _forward = bound(body)
    fields = ("input", "instructions", "tools", "text", "tool_choice")
    assert fresh.input_tokens == sum(len(orjson.dumps(body[f])) for f in fields) + REQUEST_OVERHEAD_TOKENS
    continued, _forward = bound({**body, "previous_response_id": "resp_1"}, previous=1234)
    assert continued.input_tokens == fresh.input_tokens + 1234


def test_the_gateway_cap_is_injected_and_a_request_cap_kept() -> None:
    body = {"model": "o3", "input": "hi"}
    original = copy.deepcopy(body)
    injected, forward = bound(body)
    assert injected.output_tokens == CAP and forward["max_output_tokens"] == CAP
    assert body == original  # the caller's body is not modified
    own, forward = bound({**body, "max_output_tokens": 5})
    assert own.output_tokens == 5 and forward["max_output_tokens"] == 5


def test_an_image_counts_the_image_bound_not_its_inline_bytes() -> None:
    data = "data:image/png;base64," + base64.b64encode(b"\0" * 30_000).decode()
    image = {"type": "input_image", "image_url": data}
    with_image, _forward = bound({"model": "m", "input": [{"role": "user", "content": [image]}]})
    without, _forward = bound({"model": "m", "input": [{"role": "user", "content": []}]})
    assert IMAGES <= with_image.input_tokens - without.input_tokens < IMAGES + 100


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"input": 5}, "input"),
        ({"input": ["text"]}, "input[0]"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "custom", "name": "x"}]}, "tools[0].type"),
        ({"tools": [{"name": "no type"}]}, "tools[0].type"),
        ({"previous_response_id": ""}, "previous_response_id"),
        ({"previous_response_id": 7}, "previous_response_id"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": True}, "max_output_tokens"),
        ({"background": "yes"}, "background"),
        ({"stream": "yes"}, "stream"),
        ({"model": ""}, "model"),
        ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "computer_call_output"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(extra: dict[str, Any], named: str) -> None:
    with pytest.raises(GatewayRequestError, match=named.replace("[", r"\[").replace("]", r"\]")):
        bound({"model": "gpt-4o", "input": "hi", **extra})


def test_background_false_and_other_service_tiers_are_accepted() -> None:
    bound({"model": "m", "input": "hi", "background": False, "service_tier": "flex"})


def test_usage_bills_cached_input_apart_and_reasoning_as_output() -> None:
    usage = usage_from_response(
        "openai-responses",
        {
            "model": "gpt-5",
            "usage": {
                "input_tokens": 100,
                "input_tokens_details": {"cached_tokens": 60},
                "output_tokens": 30,
                "output_tokens_details": {"reasoning_tokens": 20},
            },
        },
    )
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (40, 60, 30)
    assert usage.model == "gpt-5"
    assert usage_from_response("openai-responses", {"usage": None}) is None


def test_reasoning_reported_outside_output_is_still_billed() -> None:
    usage = usage_from_response(
        "openai-responses",
        {"usage": {"input_tokens": 1, "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 9}}},
    )
    assert usage is not None and usage.output_tokens == 9


def stream(behaviour: str = "ok", completion: int = 12) -> bytes:
    response = _response_object({"input": "hi"}, "gpt-4o", 7, 3, completion, behaviour)
    if behaviour == "no-usage":
        response["usage"] = None
    return b"".join(_responses_stream(response))


@pytest.mark.parametrize("behaviour", ["ok", "incomplete", "failed"])
def test_the_meter_reads_the_usage_of_the_final_event(behaviour: str) -> None:
    meter = StreamMeter()
    meter.feed(stream(behaviour))
    usage = meter.usage()
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (4, 3, 12)
    assert usage.model == "gpt-4o"
    assert meter.response_id is not None and meter.response_id.startswith("resp_")


def test_the_meter_is_split_independent() -> None:
    data = stream()
    whole = StreamMeter()
    whole.feed(data)
    for size in (1, 7, 64):
        meter = StreamMeter()
        for start in range(0, len(data), size):
            meter.feed(data[start : start + size])
        assert meter.usage() == whole.usage()
        assert meter.response_id == whole.response_id
        assert meter.consumed_output_bound() == whole.consumed_output_bound()


def test_a_stream_without_usage_or_cut_before_its_end_reports_none_but_bounds_the_text_seen() -> None:
    meter = StreamMeter()
    meter.feed(stream("no-usage", completion=40))
    assert meter.usage() is None
    assert meter.consumed_output_bound() >= len(" ".join(["tok"] * 30))
    cut = stream()
    meter = StreamMeter()
    meter.feed(cut[: cut.index(b"event: response.completed")])
    assert meter.usage() is None
    assert meter.response_id is not None  # known from response.created: recorded before the client sees it
