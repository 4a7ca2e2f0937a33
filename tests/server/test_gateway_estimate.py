"""Worst-case bounds of gateway requests: validation, output caps, images, refusals, and the byte bound."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caracal.exceptions import GatewayRequestError
from caracal.server.gateway.estimate import (
    ANTHROPIC_TOOLS_OVERHEAD_TOKENS,
    EMBEDDING_ITEM_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    Bound,
    bound_anthropic_messages,
    bound_openai_chat,
    bound_openai_embeddings,
)
from tests.server.fake_upstream import prompt_tokens

CAP = 1000
IMG = 1500


def chat(body: dict[str, Any], **kw: Any) -> tuple[Bound, dict[str, Any]]:
    return bound_openai_chat(body, max_output_tokens=kw.pop("cap", CAP), image_tokens=IMG, **kw)


def claude(body: dict[str, Any]) -> tuple[Bound, dict[str, Any]]:
    return bound_anthropic_messages(body, max_output_tokens=CAP, image_tokens=IMG)


def msgs(*texts: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text} for text in texts]


# --- OpenAI chat ----------------------------------------------------------------------------------------


def test_chat_input_is_json_bytes_of_messages_plus_margin():
    body = {"model": "gpt-4o", "messages": msgs("héllo wörld 🎉")}
    bound, _ = chat(body)
    assert bound.input_tokens == len(orjson.dumps(body["messages"])) + REQUEST_OVERHEAD_TOKENS


def test_chat_counts_tools_response_format_and_tool_choice():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    base = {"model": "m", "messages": msgs("hi")}
    plain, _ = chat(base)
    full, _ = chat({**base, "tools": tools, "response_format": fmt, "tool_choice": "auto"})
    extra = len(orjson.dumps(tools)) + len(orjson.dumps(fmt)) + len(orjson.dumps("auto"))
    assert full.input_tokens == plain.input_tokens + extra


def test_chat_injects_max_tokens_when_absent_and_does_not_mutate():
    body = {"model": "m", "messages": msgs("hi")}
    before = copy.deepcopy(body)
    bound, forward = chat(body, cap=123)
    assert bound.output_tokens == 123
    assert forward["max_tokens"] == 123
    assert "max_completion_tokens" not in forward
    assert body == before


def test_chat_can_inject_max_completion_tokens_instead():
    _, forward = chat({"model": "o3", "messages": msgs("hi")}, output_cap_field="max_completion_tokens")
    assert forward["max_completion_tokens"] == CAP and "max_tokens" not in forward


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 70}, 70),
        ({"max_tokens": 50, "max_completion_tokens": 70}, 70),
        ({"max_tokens": 90, "max_completion_tokens": 70}, 90),
        ({"max_tokens": 50, "n": 3}, 150),
        ({"n": 2}, 2 * CAP),
    ],
)
def test_chat_output_bound(fields: dict[str, Any], expected: int):
    bound, forward = chat({"model": "m", "messages": msgs("hi"), **fields})
    assert bound.output_tokens == expected
    if "max_tokens" in fields or "max_completion_tokens" in fields:
        assert forward.get("max_tokens") == fields.get("max_tokens")


def test_chat_stream_asks_for_usage_keeping_other_options():
    body = {"model": "m", "messages": msgs("hi"), "stream": True, "stream_options": {"x": 1}}
    _, forward = chat(body)
    assert forward["stream_options"] == {"x": 1, "include_usage": True}
    assert body["stream_options"] == {"x": 1}
    _, forward = chat({"model": "m", "messages": msgs("hi"), "stream": True})
    assert forward["stream_options"] == {"include_usage": True}
    _, forward = chat({"model": "m", "messages": msgs("hi"), "stream": False})
    assert "stream_options" not in forward


def test_chat_images_cost_image_tokens_and_base64_is_not_counted_twice():
    data_url = "data:image/png;base64," + "A" * 10_000
    text_part = {"type": "text", "text": "what is this?"}
    image = {"type": "image_url", "image_url": {"url": data_url, "detail": "high"}}
    with_image, _ = chat({"model": "m", "messages": [{"role": "user", "content": [text_part, image]}]})
    empty = {"type": "image_url", "image_url": {"url": "", "detail": "high"}}
    blank, _ = chat({"model": "m", "messages": [{"role": "user", "content": [text_part, empty]}]})
    assert with_image.input_tokens == blank.input_tokens  # the base64 bytes are not counted on top
    text_only, _ = chat({"model": "m", "messages": [{"role": "user", "content": [text_part]}]})
    assert with_image.input_tokens > text_only.input_tokens + IMG
    url = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    by_url, _ = chat({"model": "m", "messages": [{"role": "user", "content": [url, url]}]})
    assert by_url.input_tokens >= 2 * IMG + len("https://example.com/cat.png")


def test_responses_style_input_image_counts():
    part = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    bound, _ = chat({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert bound.input_tokens >= IMG


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "JSON object"),
        ({"messages": msgs("x")}, "model is required"),
        ({"model": 3, "messages": msgs("x")}, "model is required"),
        ({"model": "  ", "messages": msgs("x")}, "model is required"),
        ({"model": "m"}, "messages is required"),
        ({"model": "m", "messages": []}, "must not be empty"),
        ({"model": "m", "messages": "hi"}, "messages must be a list"),
        ({"model": "m", "messages": ["hi"]}, "messages[0] must be an object"),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "m", "messages": msgs("x"), "max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"model": "m", "messages": msgs("x"), "max_tokens": True}, "max_tokens must be a positive integer"),
        ({"model": "m", "messages": msgs("x"), "max_tokens": 5.0}, "max_tokens must be a positive integer"),
        ({"model": "m", "messages": msgs("x"), "max_completion_tokens": "9"}, "max_completion_tokens"),
        ({"model": "m", "messages": msgs("x"), "n": 0}, "n must be a positive integer"),
        ({"model": "m", "messages": msgs("x"), "n": False}, "n must be a positive integer"),
        ({"model": "m", "messages": msgs("x"), "stream": "yes"}, "stream must be true or false"),
        ({"model": "m", "messages": msgs("x"), "stream": True, "stream_options": 1}, "stream_options"),
        ({"model": "m", "messages": msgs("x"), "tools": {}}, "tools must be a list"),
        ({"model": "m", "messages": msgs("x"), "web_search_options": {}}, "web_search_options"),
        ({"model": "m", "messages": msgs("x"), "prediction": {"type": "content"}}, "prediction"),
        ({"model": "m", "messages": msgs("x"), "modalities": ["text", "audio"]}, "audio output"),
        ({"model": "m", "messages": msgs("x"), "service_tier": "priority"}, "priority"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "'file'",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "audio",
        ),
    ],
)
def test_chat_refuses_bad_requests_with_a_clear_message(body: Any, words: str):
    with pytest.raises(GatewayRequestError) as caught:
        chat(body)
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_deeply_nested_request_is_refused_not_a_crash():
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    with pytest.raises(GatewayRequestError, match="nested"):
        chat({"model": "m", "messages": [{"role": "user", "content": deep}]})


def test_huge_integers_are_measured():
    bound, _ = chat({"model": "m", "messages": [{"role": "user", "content": "x", "z": 10**30}]})
    assert bound.input_tokens > 30


def test_gateway_configuration_errors_are_not_request_errors():
    with pytest.raises(ValueError, match="max_output_tokens") as caught:
        bound_openai_chat({"model": "m", "messages": msgs("x")}, max_output_tokens=0, image_tokens=0)
    assert not isinstance(caught.value, GatewayRequestError)


# --- embeddings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("héllo", 6 + EMBEDDING_ITEM_OVERHEAD_TOKENS),
        (["ab", "c"], 3 + 2 * EMBEDDING_ITEM_OVERHEAD_TOKENS),
        ([1, 2, 3], 3 + EMBEDDING_ITEM_OVERHEAD_TOKENS),
        ([[1, 2], [3]], 3 + 2 * EMBEDDING_ITEM_OVERHEAD_TOKENS),
    ],
)
def test_embeddings_bound(value: Any, tokens: int):
    bound, forward = bound_openai_embeddings({"model": "text-embedding-3-small", "input": value})
    assert bound == Bound(tokens, 0)
    assert forward["input"] == value


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "e"}, "input is required"),
        ({"model": "e", "input": []}, "must not be empty"),
        ({"model": "e", "input": 3}, "input must be a string or a list"),
        ({"model": "e", "input": [[]]}, "input[0]"),
        ({"model": "e", "input": [[1, True]]}, "input[0]"),
        ({"model": "e", "input": ["a", 3.5]}, "input[1]"),
        ({"input": "a"}, "model is required"),
    ],
)
def test_embeddings_refuse_bad_input(body: dict[str, Any], words: str):
    with pytest.raises(GatewayRequestError) as caught:
        bound_openai_embeddings(body)
    assert words in str(caught.value)


# --- Anthropic ------------------------------------------------------------------------------------------


def test_anthropic_bound_counts_system_tools_and_injects_max_tokens():
    tools = [{"name": "get", "description": "d", "input_schema": {"type": "object"}}]
    body = {"model": "claude-sonnet-4", "messages": msgs("hi"), "system": "be brief", "tools": tools}
    bound, forward = claude(body)
    expected = (
        len(orjson.dumps(body["messages"]))
        + len(orjson.dumps("be brief"))
        + len(orjson.dumps(tools))
        + REQUEST_OVERHEAD_TOKENS
        + ANTHROPIC_TOOLS_OVERHEAD_TOKENS
    )
    assert bound == Bound(expected, CAP)
    assert forward["max_tokens"] == CAP and "max_tokens" not in body


def test_anthropic_keeps_client_max_tokens_and_adds_no_stream_options():
    bound, forward = claude({"model": "c", "messages": msgs("hi"), "max_tokens": 7, "stream": True})
    assert bound.output_tokens == 7
    assert "stream_options" not in forward


def test_anthropic_base64_image_and_nested_tool_result_image():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "Q" * 5000}}
    result = {"type": "tool_result", "tool_use_id": "t", "content": [image]}
    bound, _ = claude({"model": "c", "messages": [{"role": "user", "content": [result, image]}]})
    blank = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    result_blank = {**result, "content": [blank]}
    plain, _ = claude({"model": "c", "messages": [{"role": "user", "content": [result_blank, blank]}]})
    assert bound.input_tokens == plain.input_tokens  # the base64 bytes are not counted on top
    assert bound.input_tokens > 2 * IMG  # both images, the nested one too


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "server tools"),
        ({"tools": "x"}, "tools must be a list"),
        ({"tools": ["x"]}, "tools[0] must be an object"),
        ({"system": 5}, "system must be"),
        ({"mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
        ({"max_tokens": -1}, "max_tokens"),
        (
            {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
            "ttl",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "'document'"),
    ],
)
def test_anthropic_refusals(fields: dict[str, Any], words: str):
    with pytest.raises(GatewayRequestError) as caught:
        claude({"model": "c", "messages": msgs("hi"), **fields})
    assert words in str(caught.value)


def test_anthropic_custom_tools_and_five_minute_cache_are_fine():
    tools = [{"type": "custom", "name": "t", "input_schema": {"type": "object"}}]
    system = [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]
    bound, _ = claude({"model": "c", "messages": msgs("hi"), "tools": tools, "system": system})
    assert bound.input_tokens > ANTHROPIC_TOOLS_OVERHEAD_TOKENS


# --- the byte bound (property) --------------------------------------------------------------------------

texts = st.text(
    alphabet=st.characters(codec="utf-8"),  # any code point UTF-8 can encode (no lone surrogates)
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, min_size=1, max_size=6), texts)
def test_input_bound_covers_every_text_byte_and_the_fake_token_count(contents: list[str], system: str):
    messages = [
        {"role": "user" if index % 2 == 0 else "assistant", "content": text}
        for index, text in enumerate(contents)
    ]
    text_bytes = sum(len(text.encode()) for text in contents)
    openai, _ = chat({"model": "m", "messages": messages})
    assert openai.input_tokens >= text_bytes
    assert openai.input_tokens >= prompt_tokens({"messages": messages})
    # a lower bound of real tokenizer overhead: 4 per message + 3 priming, over the text bytes
    assert openai.input_tokens >= text_bytes + 4 * len(messages) + 3
    anthropic, _ = claude({"model": "c", "messages": messages, "system": system})
    assert anthropic.input_tokens >= text_bytes + len(system.encode())
    assert anthropic.input_tokens >= prompt_tokens({"messages": messages, "system": system})
