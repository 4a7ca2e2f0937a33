"""Usage from responses and streams, and what gets billed when the provider never said."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caracal.server.gateway.estimate import Bound
from caracal.server.gateway.usage import StreamMeter, Usage, billable, usage_from_response
from tests.server.fake_upstream import _anthropic_stream, _openai_stream

OPENAI: dict[str, Any] = {
    "model": "gpt-4o-2024-08-06",
    "choices": [],
    "usage": {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 30},
    },
}
ANTHROPIC: dict[str, Any] = {
    "model": "claude-sonnet-4-20250514",
    "type": "message",
    "usage": {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 7,
        "cache_creation_input_tokens": 3,
    },
}


@pytest.mark.parametrize(
    ("api", "provider", "flavor", "data"),
    [
        ("openai-chat", "openai", "chat", OPENAI),
        ("anthropic", "anthropic", "default", ANTHROPIC),
        (
            "openai-embeddings",
            "openai",
            "embeddings",
            {"model": "text-embedding-3-small", "usage": {"prompt_tokens": 5, "total_tokens": 5}},
        ),
    ],
)
def test_reading_agrees_with_genai_prices(api: Any, provider: str, flavor: str, data: dict[str, Any]):
    genai_prices = pytest.importorskip("genai_prices")
    extracted = genai_prices.extract_usage(data, provider_id=provider, api_flavor=flavor).usage
    read = usage_from_response(api, data)
    assert read is not None
    cache_read = extracted.cache_read_tokens or 0
    cache_write = extracted.cache_write_tokens or 0
    assert read.cache_read_tokens == cache_read
    assert read.cache_write_tokens == cache_write
    assert read.input_tokens == (extracted.input_tokens or 0) - cache_read - cache_write  # disjoint
    assert read.output_tokens == (extracted.output_tokens or 0)


def test_openai_usage_is_disjoint():
    found = usage_from_response("openai-chat", OPENAI)
    assert found == Usage(input_tokens=70, output_tokens=20, cache_read_tokens=30, model="gpt-4o-2024-08-06")


def test_anthropic_usage_is_disjoint():
    found = usage_from_response("anthropic", ANTHROPIC)
    assert found == Usage(
        input_tokens=10, output_tokens=5, cache_read_tokens=7, cache_write_tokens=3, model=ANTHROPIC["model"]
    )


def test_embeddings_usage():
    data = {"model": "text-embedding-3-small", "usage": {"prompt_tokens": 5, "total_tokens": 5}}
    assert usage_from_response("openai-embeddings", data) == Usage(
        input_tokens=5, model="text-embedding-3-small"
    )


@pytest.mark.parametrize("data", [{}, {"usage": None}, [], "x", {"model": "m"}])
def test_no_usage_is_none(data: Any):
    assert usage_from_response("openai-chat", data) is None
    assert usage_from_response("anthropic", data) is None


def test_partial_usage_reads_what_is_there():
    found = usage_from_response("openai-chat", {"usage": {"prompt_tokens": 4}})
    assert found == Usage(input_tokens=4)


def test_junk_counts_count_nothing():
    found = usage_from_response("anthropic", {"usage": {"input_tokens": True, "output_tokens": -3}})
    assert found is not None and found.input_tokens == 0 and found.output_tokens == 0


# --- streams --------------------------------------------------------------------------------------------


def feed_all(stream: bytes, cuts: list[int] | None = None) -> StreamMeter:
    meter = StreamMeter()
    points = sorted(set(cuts or []))
    start = 0
    for point in [*points, len(stream)]:
        meter.feed(stream[start:point])
        start = point
    return meter


def openai_stream(completion: int = 4, usage: bool = True, n: int = 1) -> bytes:
    body = {"n": n, "stream_options": {"include_usage": True}}
    return b"".join(_openai_stream(body, "gpt-4o", 12, completion, usage))


def anthropic_stream(completion: int = 4, usage: bool = True) -> bytes:
    return b"".join(_anthropic_stream("claude-x", 12, completion, usage))


def test_openai_stream_usage():
    meter = feed_all(openai_stream())
    assert meter.usage() == Usage(input_tokens=12, output_tokens=4, model="gpt-4o")
    assert meter.done
    # 4 words "tok"/" tok" = 3 + 4 * 3 bytes, plus one per delta (role, 4 words, finish)
    assert meter.consumed_output_bound() == 15 + 6


def test_openai_stream_without_usage_reports_none_but_bounds_output():
    meter = feed_all(openai_stream(completion=7, usage=False))
    assert meter.usage() is None
    assert meter.consumed_output_bound() >= 7


def test_anthropic_stream_usage_merges_start_and_delta():
    meter = feed_all(anthropic_stream(completion=9))
    assert meter.usage() == Usage(input_tokens=12, output_tokens=9, model="claude-x")


def test_anthropic_stream_cut_before_message_delta_reports_nothing():
    stream = anthropic_stream(completion=9)
    cut = stream.index(b"event: message_delta")
    meter = feed_all(stream[:cut])
    assert meter.usage() is None  # not message_start's partial output_tokens=1
    assert meter.consumed_output_bound() >= 9


def test_anthropic_cache_tokens_from_message_start():
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-x",
            "usage": {
                "input_tokens": 5,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20,
                "output_tokens": 1,
            },
        },
    }
    delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 33}}
    events: list[dict[str, Any]] = [start, delta]
    stream = b"".join(
        b"event: " + str(e["type"]).encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )
    meter = feed_all(stream)
    assert meter.usage() == Usage(
        input_tokens=5, output_tokens=33, cache_read_tokens=100, cache_write_tokens=20, model="claude-x"
    )


def test_tool_calls_reasoning_and_thinking_are_bounded():
    chunk = {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "reasoning_content": "ééé",
                    "tool_calls": [{"index": 0, "function": {"name": "get", "arguments": '{"a":1}'}}],
                },
            }
        ]
    }
    meter = feed_all(b"data: " + orjson.dumps(chunk) + b"\n\n")
    assert meter.consumed_output_bound() == 1 + 6 + 3 + 7
    events = [
        {"type": "content_block_start", "content_block": {"type": "tool_use", "name": "get", "input": {}}},
        {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": '{"a":'}},
        {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "hmm"}},
    ]
    meter = feed_all(b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events))
    assert meter.consumed_output_bound() == (1 + 3) + (1 + 5) + (1 + 3)


def test_sse_syntax_crlf_cr_comments_multiline_and_bom():
    chunk = orjson.dumps({"choices": [{"delta": {"content": "abc"}}]})
    usage = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
    stream = (
        b"\xef\xbb\xbf: comment\r\n"
        + b"data: "
        + chunk
        + b"\r\n\r\n"
        + b"data:"
        + usage
        + b"\r\r"
        + b"data: [DONE]\n\n"
    )
    meter = feed_all(stream)
    assert meter.consumed_output_bound() == 4
    assert meter.usage() == Usage(input_tokens=2, output_tokens=1)
    assert meter.done
    # a payload split over two data lines is joined with a newline (valid JSON whitespace)
    meter = feed_all(b'data: {"choices":\ndata: [{"delta":{"content":"xy"}}]}\n\n')
    assert meter.consumed_output_bound() == 3


def test_garbage_and_incomplete_events_count_every_byte():
    meter = feed_all(b"data: {not json\n\n")
    assert meter.consumed_output_bound() == len(b"{not json")
    meter = feed_all(b'data: {"choices":[{"delta":{"content":"abc')
    assert meter.consumed_output_bound() >= 3
    assert meter.usage() is None


def test_billable_rule():
    bound = Bound(input_tokens=500, output_tokens=100)
    reported = Usage(input_tokens=3, output_tokens=4)
    assert billable(reported, bound, 7) is reported
    assert billable(None, bound, 30) == Usage(input_tokens=500, output_tokens=30, estimated=True)
    assert billable(None, bound, 10_000) == Usage(input_tokens=500, output_tokens=100, estimated=True)
    assert billable(None, bound, None) == Usage(input_tokens=500, output_tokens=100, estimated=True)


# --- split independence (property) ----------------------------------------------------------------------

STREAMS = [
    openai_stream(),
    openai_stream(completion=6, usage=False, n=2),
    anthropic_stream(),
    anthropic_stream(completion=3, usage=False),
    openai_stream().replace(b"\n", b"\r\n"),
    anthropic_stream().replace(b"\n", b"\r"),
    b"\xef\xbb\xbf" + openai_stream(completion=2),
    'data: {"choices":[{"delta":{"content":"h\u00e9 \U0001f389"}}]}\n\n'.encode()
    + b": keep-alive\n\ndata: [DONE]\n\n",
    anthropic_stream()[:-17],  # cut inside the final event
]


def state(meter: StreamMeter) -> tuple[Any, ...]:
    return (meter.usage(), meter.consumed_output_bound(), meter.done)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(STREAMS))), st.data())
def test_stream_meter_is_independent_of_chunking(index: int, data: st.DataObject):
    stream = STREAMS[index]
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40))
    assert state(feed_all(stream, cuts)) == state(feed_all(stream))


def test_stream_meter_byte_by_byte():
    for stream in STREAMS:
        assert state(feed_all(stream, list(range(len(stream))))) == state(feed_all(stream))
