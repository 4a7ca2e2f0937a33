"""The gateway's token counter (caracal.server.gateway.tokens) and the counted input bound.

Ground truth is tiktoken itself: its own encoding definitions (tiktoken_ext.openai_public) built from the
shipped files by tiktoken's own loader, which checks the hash it pins. The bound must never be below the
count of the rendered chat template (special-token frame per message, reply priming, text parts joined with
any of the usual separators), and the shipped files are treated as input an attacker may have edited.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from caracal.server.gateway import tokens
from caracal.server.gateway.estimate import (
    REQUEST_OVERHEAD_TOKENS,
    bound_openai_chat,
    bound_openai_embeddings,
    bound_openai_responses,
)
from caracal.server.gateway.tokens import (
    ENCODINGS,
    JOIN_SLACK_TOKENS,
    MAX_ENCODING_BYTES,
    TokenCounter,
    counter_for_model,
    encoding_for_model,
    load_counter,
)
from tests.server.fake_upstream import prompt_tokens, responses_prompt_tokens

BACKENDS_PER_MODULE = True  # pure computation: no ledger, so one run (not one per storage backend)

SHIPPED = Path(tokens.__file__).parent / "encodings"
CAP = 100
IMG = 1500
SEPARATORS = ("", " ", "\n", "\n\n")
FRAME_TOKENS = 3  # <|im_start|> <|im_sep|> <|im_end|> (role and content are encoded between them)
NAME_TOKENS = 1  # a name marker; the name's own text is encoded too
PRIMING_TOKENS = 3  # <|im_start|>assistant<|im_sep|>


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tiktoken.Encoding]]:
    """tiktoken's own encodings (its pattern, special tokens and pinned hash), from the shipped files."""
    plain = tmp_path_factory.mktemp("plain")
    for spec in ENCODINGS.values():
        (plain / spec.name).write_bytes(gzip.decompress((SHIPPED / spec.file).read_bytes()))

    def local(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        assert expected_hash is not None  # tiktoken pins a hash for both: its loader checks it
        return load_tiktoken_bpe(str(plain / url.rsplit("/", 1)[1].removesuffix(".tiktoken")), expected_hash)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(openai_public, "load_tiktoken_bpe", local)
        yield {
            "o200k_base": tiktoken.Encoding(**openai_public.o200k_base()),
            "cl100k_base": tiktoken.Encoding(**openai_public.cl100k_base()),
        }


@functools.cache
def counter(name: str) -> TokenCounter:
    loaded = load_counter(name)
    assert loaded is not None
    return loaded


# --- the shipped encodings ------------------------------------------------------------------------------


def test_pinned_hashes_patterns_and_special_tokens_are_tiktokens_own(reference: dict[str, Any]) -> None:
    source = Path(openai_public.__file__).read_text(encoding="utf-8")
    for name, spec in ENCODINGS.items():
        assert f'expected_hash="{spec.sha256}"' in source
        assert reference[name]._pat_str == spec.pat_str
        assert reference[name]._special_tokens == spec.special_tokens


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [("cl100k_base", "hello world", [15339, 1917]), ("o200k_base", "hello world", [24912, 2375])],
)
def test_counter_matches_known_token_ids(name: str, text: str, ids: list[int]) -> None:
    loaded = counter(name)
    assert loaded.count(text) == len(ids)
    assert loaded.count("<|endoftext|>") > 1  # user text is ordinary text, never a special token


@given(text=st.text(max_size=300))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_counter_counts_exactly_what_tiktoken_counts(reference: dict[str, Any], text: str) -> None:
    for name in ENCODINGS:
        assert counter(name).count(text) == len(reference[name].encode_ordinary(text))


def test_lone_surrogates_count_their_bytes_rather_than_fail() -> None:
    text = "a\ud800b"
    assert counter("o200k_base").count(text) >= 1
    assert counter("o200k_base").count(text) <= len(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("claude-haiku-4-5", None),
        ("llama-3.1-70b", None),
        ("o10-custom", None),
        ("gpt-50", None),
        ("", None),
        (None, None),
    ],
)
def test_encoding_for_model(model: object, encoding: str | None) -> None:
    assert encoding_for_model(model) == encoding
    assert (counter_for_model(model) is None) == (encoding is None)


# --- an edited or broken file is never loaded -----------------------------------------------------------


def edited(tmp_path: Path, name: str, change: Callable[[bytes], bytes]) -> Path:
    spec = ENCODINGS[name]
    data = gzip.decompress((SHIPPED / spec.file).read_bytes())
    (tmp_path / spec.file).write_bytes(gzip.compress(change(data)))
    return tmp_path


def swap_two_ranks(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    first, second = lines[1000].split(), lines[1001].split()
    lines[1000] = first[0] + b" " + second[1] + b"\n"
    lines[1001] = second[0] + b" " + first[1] + b"\n"
    return b"".join(lines)


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_a_recompressed_but_identical_file_loads(tmp_path: Path, name: str) -> None:
    loaded = load_counter(name, edited(tmp_path, name, lambda data: data))
    assert loaded is not None and loaded.count("hello world") == 2


@pytest.mark.parametrize(
    "change",
    [
        swap_two_ranks,  # a plausible edit: still a valid encoding, but not the one the provider uses
        lambda data: data.replace(b"IQ== 0", b"IQ== 7", 1),
        lambda data: data + b"QUJD 999999\n",
        lambda data: data[: len(data) // 2],
        lambda data: b"",
    ],
    ids=["swapped-ranks", "edited-rank", "appended-token", "truncated", "empty"],
)
def test_an_edited_file_is_refused_and_the_byte_bound_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: Callable[[bytes], bytes]
) -> None:
    with caplog.at_level(logging.WARNING, logger="caracal.gateway"):
        assert load_counter("o200k_base", edited(tmp_path, "o200k_base", change)) is None
    assert "SHA-256" in caplog.text and ENCODINGS["o200k_base"].sha256 in caplog.text
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
    bound, _ = bound_openai_chat(body, max_output_tokens=CAP, image_tokens=IMG, counter=None)
    assert bound.input_tokens == len(orjson.dumps(body["messages"])) + REQUEST_OVERHEAD_TOKENS


@pytest.mark.parametrize(
    "write",
    [
        lambda path: path.write_bytes(b"not gzip at all"),
        lambda path: path.write_bytes(gzip.compress(b"\0" * (MAX_ENCODING_BYTES + 1))),  # a gzip bomb
        lambda path: None,  # missing
    ],
    ids=["not-gzip", "too-large", "missing"],
)
def test_an_unreadable_file_is_refused(tmp_path: Path, write: Callable[[Path], None]) -> None:
    write(tmp_path / ENCODINGS["cl100k_base"].file)
    assert load_counter("cl100k_base", tmp_path) is None


def test_without_tiktoken_every_model_keeps_the_byte_bound() -> None:
    script = (
        "import sys; sys.modules['tiktoken'] = None\n"  # as if the 'tokens' extra were not installed
        "from caracal.server.gateway.tokens import counter_for_model, is_loaded\n"
        "from caracal.server.gateway.estimate import bound_openai_chat\n"
        "assert counter_for_model('gpt-4o') is None and is_loaded('gpt-4o')\n"
        "body = {'model': 'gpt-4o', 'messages': [{'role': 'user', 'content': 'hello there'}]}\n"
        "counter = counter_for_model('gpt-4o')\n"
        "bound, _ = bound_openai_chat(body, max_output_tokens=1, image_tokens=0, counter=counter)\n"
        "print(bound.input_tokens)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    messages = [{"role": "user", "content": "hello there"}]
    assert int(done.stdout) == len(orjson.dumps(messages)) + REQUEST_OVERHEAD_TOKENS


def test_an_unknown_encoding_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'p50k_base'"):
        load_counter("p50k_base")


# --- the counted bound is never below the rendered template ---------------------------------------------

WORDS = [
    "the",
    "budget",
    "agent",
    "will",
    "call",
    "a",
    "tool",
    "and",
    "then",
    "reply",
    "with",
    "the",
    "answer",
    "it",
    "found",
    "in",
    "the",
    "report,",
    "however,",
    "quarterly",
    "revenue",
    "grew",
    "12.5%",
    "to",
    "$4,302,117",
    "(see",
    "table",
    "3);",
    "don't",
    "forget:",
    "it's",
    "done.",
]

english = st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join)
letters_only = st.text(alphabet=string.ascii_letters + "'", max_size=40)  # joins merge words
digits_and_space = st.text(alphabet="0123456789 \n\t", max_size=40)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
).map(lambda value: json.dumps(value, ensure_ascii=False))
texts = st.one_of(st.text(max_size=120), english, letters_only, digits_and_space, json_like)
roles = st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool"]), st.text(min_size=1))
contents = st.one_of(
    texts, st.lists(texts.map(lambda text: {"type": "text", "text": text}), min_size=1, max_size=4)
)
message = st.fixed_dictionaries(
    {"role": roles, "content": contents}, optional={"name": st.text(min_size=1, max_size=12)}
)
conversations = st.lists(message, min_size=1, max_size=5)


def rendered_tokens(encoding: tiktoken.Encoding, messages: list[dict[str, Any]], separator: str) -> int:
    """Tokens of the chat template as the provider renders it: each message framed by special tokens,
    text parts joined by ``separator``, the reply primed at the end."""
    total = PRIMING_TOKENS
    for item in messages:
        content = item["content"]
        text = content if isinstance(content, str) else separator.join(part["text"] for part in content)
        total += (
            FRAME_TOKENS + len(encoding.encode_ordinary(item["role"])) + len(encoding.encode_ordinary(text))
        )
        if "name" in item:
            total += NAME_TOKENS + len(encoding.encode_ordinary(item["name"]))
    return total


@given(messages=conversations)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_counted_bound_is_never_below_the_rendered_template(
    reference: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        body = {"model": model, "messages": messages}
        bound, _ = bound_openai_chat(
            body, max_output_tokens=CAP, image_tokens=IMG, counter=counter_for_model(model)
        )
        for separator in SEPARATORS:
            assert bound.input_tokens >= rendered_tokens(reference[name], messages, separator), separator
        assert bound.input_tokens >= prompt_tokens(body)  # what the fake upstream reports


@given(parts=st.lists(texts, min_size=2, max_size=6), separator=st.sampled_from(SEPARATORS))
@settings(max_examples=400, deadline=None)
def test_joining_text_parts_costs_at_most_the_join_slack(parts: list[str], separator: str) -> None:
    for name in ENCODINGS:
        loaded = counter(name)
        joined = loaded.count(separator.join(parts))
        assert joined <= sum(loaded.count(part) for part in parts) + JOIN_SLACK_TOKENS * (len(parts) - 1)


def test_english_chat_is_bounded_far_below_its_bytes() -> None:
    text = " ".join(WORDS * 40)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    counted, _ = bound_openai_chat(
        body, max_output_tokens=CAP, image_tokens=IMG, counter=counter("o200k_base")
    )
    by_bytes, _ = bound_openai_chat(body, max_output_tokens=CAP, image_tokens=IMG)
    assert counted.input_tokens * 3 < by_bytes.input_tokens


def test_parts_that_are_not_plain_text_keep_the_byte_and_image_bounds() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 200_000}}
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "describe"}, image]},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = {"model": "gpt-4o", "messages": messages}
    bound, _ = bound_openai_chat(body, max_output_tokens=CAP, image_tokens=IMG, counter=counter("o200k_base"))
    image_bytes = len(orjson.dumps(image)) - len(image["image_url"]["url"])
    tool_bytes = len(orjson.dumps({"tool_calls": [tool_call]}))
    assert bound.input_tokens >= IMG + image_bytes + tool_bytes
    assert bound.input_tokens < IMG + 1000  # the inline payload is priced as an image, not by its bytes
    no_image, _ = bound_openai_chat(
        {**body, "messages": [messages[0] | {"content": "describe"}, *messages[1:]]},
        max_output_tokens=CAP,
        image_tokens=IMG,
        counter=counter("o200k_base"),
    )
    assert bound.input_tokens - no_image.input_tokens >= IMG


def test_tools_are_still_bounded_by_their_bytes() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    loaded = counter("o200k_base")
    plain, _ = bound_openai_chat(base, max_output_tokens=CAP, image_tokens=IMG, counter=loaded)
    full, _ = bound_openai_chat(
        {**base, "tools": tools}, max_output_tokens=CAP, image_tokens=IMG, counter=loaded
    )
    assert full.input_tokens - plain.input_tokens == len(orjson.dumps(tools))


@given(inputs=st.lists(texts, min_size=1, max_size=4))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_embedding_inputs_are_counted_exactly(reference: dict[str, Any], inputs: list[str]) -> None:
    body = {"model": "text-embedding-3-small", "input": inputs}
    bound, _ = bound_openai_embeddings(body, counter=counter_for_model(body["model"]))
    exact = sum(len(reference["cl100k_base"].encode_ordinary(text)) for text in inputs)
    assert exact <= bound.input_tokens <= exact + 2 * len(inputs)
    by_bytes, _ = bound_openai_embeddings(body)
    assert bound.input_tokens <= by_bytes.input_tokens


@given(name=st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_tool_result_covers_the_function_name_it_is_rendered_under(
    reference: dict[str, Any], name: str
) -> None:
    """The tool message alone (its bound with the rest of the conversation held fixed) covers its rendering
    ``<start>functions.NAME to=assistant<sep>CONTENT<end>``, whose name the message does not carry."""
    call = {"id": "c", "type": "function", "function": {"name": name, "arguments": "{}"}}
    before = [{"role": "user", "content": "go"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    result = {"role": "tool", "tool_call_id": "c", "content": "42 degrees and sunny"}
    loaded = counter("o200k_base")
    without, _ = bound_openai_chat(
        {"model": "gpt-4o", "messages": before}, max_output_tokens=CAP, image_tokens=IMG, counter=loaded
    )
    with_result, _ = bound_openai_chat(
        {"model": "gpt-4o", "messages": [*before, result]},
        max_output_tokens=CAP,
        image_tokens=IMG,
        counter=loaded,
    )
    encoding = reference["o200k_base"]
    rendered = FRAME_TOKENS + len(encoding.encode_ordinary(f"functions.{name} to=assistant"))
    rendered += len(encoding.encode_ordinary(result["content"]))
    assert with_result.input_tokens - without.input_tokens >= rendered


# --- the Responses API: instructions and input messages counted like chat messages ------------------------

responses_roles = st.sampled_from(["system", "developer", "user", "assistant"])
responses_parts = st.lists(
    st.one_of(
        texts.map(lambda text: {"type": "input_text", "text": text}),
        texts.map(lambda text: {"type": "output_text", "text": text, "annotations": []}),
    ),
    min_size=1,
    max_size=4,
)
responses_items = st.lists(
    st.fixed_dictionaries(
        {"role": responses_roles, "content": st.one_of(texts, responses_parts)},
        optional={"type": st.just("message")},
    ),
    min_size=1,
    max_size=5,
)


def as_chat(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages the provider renders: the instructions as a system message, then each input message."""
    messages = [{"role": "system", "content": instructions}] if instructions is not None else []
    for item in items:
        content = item["content"]
        if isinstance(content, list):
            content = [{"type": "text", "text": part["text"]} for part in content]
        messages.append({"role": item["role"], "content": content})
    return messages


def responses_bound(body: dict[str, Any], counted: bool = True) -> int:
    loaded = counter("o200k_base") if counted else None
    bound, _ = bound_openai_responses(body, max_output_tokens=CAP, image_tokens=IMG, counter=loaded)
    return bound.input_tokens


@given(instructions=st.one_of(st.none(), texts), items=st.one_of(texts, responses_items))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_responses_input_is_never_bounded_below_its_rendered_template(
    reference: dict[str, Any], instructions: str | None, items: str | list[dict[str, Any]]
) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "input": items}
    if instructions is not None:
        body["instructions"] = instructions
    listed = [{"role": "user", "content": items}] if isinstance(items, str) else items
    bound = responses_bound(body)
    for separator in SEPARATORS:
        rendered = rendered_tokens(reference["o200k_base"], as_chat(instructions, listed), separator)
        assert bound >= rendered, separator
    assert bound >= responses_prompt_tokens(body)  # what the fake upstream reports


def test_responses_english_input_is_bounded_far_below_its_bytes() -> None:
    text = " ".join(WORDS * 40)
    body = {
        "model": "gpt-4o",
        "instructions": "Answer briefly.",
        "input": [{"role": "user", "content": text}],
    }
    assert responses_bound(body) * 2 < responses_bound(body, counted=False)


def test_responses_items_that_are_not_plain_text_keep_their_byte_and_image_bounds() -> None:
    """A function call, its output (plus the function name it is rendered under), an image and text with
    annotations are bounded by their bytes as before: counting the rest never lowers them."""
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "x"}'}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny " * 50}
    image = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 4000}
    cited = {
        "type": "output_text",
        "text": "see " * 30,
        "annotations": [{"type": "url_citation", "url": "u"}],
    }
    base = {"model": "gpt-4o", "input": [{"role": "user", "content": "go"}]}

    def added(*items: dict[str, Any], counted: bool = True) -> int:
        more = {**base, "input": [*base["input"], *items]}
        return responses_bound(more, counted) - responses_bound(base, counted)

    assert added(call) >= added(call, counted=False) >= len(orjson.dumps(call))
    assert added(output) >= tokens.TOOL_RESULT_TOKENS + len(orjson.dumps(output))
    # inside a message: the image at the image bound, the annotated text by its bytes
    assert added({"role": "user", "content": [image, cited]}) >= IMG + len(orjson.dumps(cited))
