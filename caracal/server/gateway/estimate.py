"""Worst-case token bounds of an LLM request, computed before it is forwarded (pure: no I/O, no framework).

The gateway holds the worst-case cost of a request before forwarding it, so the bound computed here must
never be below what the provider can bill (promise 4, *no overspend*, and 5, *fail closed*). A request whose
cost cannot be bounded from its body is refused with :class:`~caracal.exceptions.GatewayRequestError`
(nothing forwarded, nothing held) instead of being guessed.

Input tokens are bounded without a tokenizer (the *byte bound*), except the text of OpenAI ``messages``
when the model's tokenizer is available offline (the *counted bound*: :mod:`.tokens` says why it is safe;
callers pass a :class:`~.tokens.TokenCounter`, and without one the byte bound applies everywhere):

- **Every BPE token encodes at least one UTF-8 byte**, so the tokens of a text are at most its UTF-8 bytes.
  Byte-level BPE (OpenAI, Anthropic) and SentencePiece with byte fallback all have this property.
- The bound is the byte length of the **compact JSON** of everything the model reads (``messages``, tool
  definitions, response format, ...). JSON escaping never shortens a string (non-ASCII stays raw UTF-8,
  control characters grow to ``\\uXXXX``), so the JSON is at least as long as all the text inside it.
- **Per-message overhead is covered by the JSON syntax.** OpenAI spends at most 4 tokens per message on top
  of its text (``<|start|>``, role, ``<|message|>``, ``<|end|>``; the role's text is already counted from its
  JSON value) plus 3 per request to prime the reply. Each message serializes to at least ``{"role":"…"}``:
  11 bytes of pure syntax besides the role text, and any content adds ``,"content":`` (11 more), so a
  message with content carries >= 20 bytes of syntax (>= 4 tokens), and the list's ``[`` ``]`` plus the
  first message's surplus cover the reply priming. Anthropic's turn markers (``\\n\\nHuman:``) are of the
  same size. :data:`REQUEST_OVERHEAD_TOKENS` is added on top as a margin for per-request framing.
- Tool definitions are rendered by the provider into a form no longer than their JSON (OpenAI renders a
  TypeScript-like namespace; its fixed frame of ~20 tokens is covered by the >= 60 bytes of syntax of any
  tool). Anthropic adds a hidden tool-use system prompt of up to 530 tokens (Claude 3 Opus, "Tool use"
  pricing table) whenever ``tools`` is non-empty: :data:`ANTHROPIC_TOOLS_OVERHEAD_TOKENS` covers it.
- **Images** are not priced by the bytes of their URL: each image part (``image_url``, ``input_image``,
  Anthropic ``image``) counts ``image_tokens`` (configured by the operator as the largest image cost of the
  models it serves) and the base64 payload of an inline image is subtracted from the byte count (its
  characters are at most its JSON bytes, so the subtraction never goes below the text that remains).

Refused because their tokens (or their price) cannot be bounded from the request: file/PDF/document and
audio parts, audio output, OpenAI ``web_search_options`` and ``prediction``, OpenAI ``service_tier:
"priority"`` (billed above the standard price the pricebook knows), Anthropic server or Anthropic-defined
tools (any tool with a ``type`` other than ``"custom"``: search results and fixed schemas are not in the
request), Anthropic ``mcp_servers``, and one-hour cache writes (billed at twice the input price while the
pricebook knows the five-minute write price).

The OpenAI Responses API (:func:`bound_openai_responses`) is bounded the same way, plus the recorded tokens
of the response a ``previous_response_id`` continues; it refuses, besides the parts above, server-side
tools (any tool whose ``type`` is not ``"function"``), stored ``prompt`` templates, ``conversation``,
``background`` responses and ``item_reference`` and ``computer_call_output`` input items.

Output tokens are bounded by the request's own cap (``max_completion_tokens``/``max_tokens``); when there
is none, the gateway's cap is injected into the forwarded body, so the bound holds because the provider
enforces it. ``n`` choices multiply the output bound (the prompt is billed once).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from caracal.exceptions import GatewayRequestError
from caracal.server.gateway.tokens import (
    COUNTED_REQUEST_OVERHEAD_TOKENS,
    JOIN_SLACK_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    TOOL_RESULT_TOKENS,
    TokenCounter,
)

__all__ = [
    "ANTHROPIC_TOOLS_OVERHEAD_TOKENS",
    "EMBEDDING_ITEM_OVERHEAD_TOKENS",
    "MAX_NESTING",
    "REQUEST_OVERHEAD_TOKENS",
    "Bound",
    "bound_anthropic_messages",
    "bound_openai_chat",
    "bound_openai_embeddings",
    "bound_openai_responses",
]

REQUEST_OVERHEAD_TOKENS = 16
"""Added to every chat/messages input bound: a margin for per-request framing tokens."""

ANTHROPIC_TOOLS_OVERHEAD_TOKENS = 600
"""Added when an Anthropic request has tools: the hidden tool-use system prompt (at most 530 tokens in
Anthropic's published table)."""

EMBEDDING_ITEM_OVERHEAD_TOKENS = 2
"""Added per embedding input: room for begin/end markers some embedding servers add."""

MAX_NESTING = 64
"""Deepest nesting of lists/objects accepted in the parts of a request that are inspected."""

_IMAGE_TYPES = frozenset(("image_url", "input_image", "image"))
_PDF = "files (PDFs) are billed by pages and extracted text that the request bytes do not bound"
_REFUSED_PART_TYPES: Mapping[str, str] = {
    "file": _PDF,
    "input_file": _PDF,
    "document": _PDF,
    "input_audio": "audio input is billed as audio tokens, which the pricebook does not price",
}


@dataclass(frozen=True)
class Bound:
    """Worst-case token counts of one request: the provider cannot bill more (see the module docstring)."""

    input_tokens: int
    output_tokens: int


class _Scan:
    """What a walk over the inspected parts of a request found."""

    __slots__ = ("images", "inline_chars")

    def __init__(self) -> None:
        self.images = 0
        self.inline_chars = 0


def _fail(message: str) -> GatewayRequestError:
    return GatewayRequestError(message)


def _json_bytes(value: object, what: str) -> int:
    """Length of the compact UTF-8 JSON of ``value`` (never shorter than the text inside it)."""
    try:
        return len(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:  # e.g. integers beyond 64 bits, which orjson refuses and the json module accepts
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise _fail(f"{what} is not JSON: {exc}") from exc
    return len(text.encode("utf-8", "surrogatepass"))


def _positive_int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{field} must be a positive integer, got {type(value).__name__} {value!r:.40}")
    if value < 1:
        raise _fail(f"{field} must be a positive integer, got {value}")
    return value


def _check_common(body: object, max_output_tokens: int, image_tokens: int) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _fail(f"the request body must be a JSON object, got {type(body).__name__}")
    if isinstance(max_output_tokens, bool) or not isinstance(max_output_tokens, int) or max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be a positive integer, got {max_output_tokens!r}")
    if isinstance(image_tokens, bool) or not isinstance(image_tokens, int) or image_tokens < 0:
        raise ValueError(f"image_tokens must be a non-negative integer, got {image_tokens!r}")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _fail(
            "model is required and must be a non-empty string"
            + ("" if model is None else f", got {type(model).__name__}")
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _fail(f"stream must be true or false, got {type(stream).__name__}")
    return body


def _check_messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if messages is None:
        raise _fail("messages is required: a non-empty list of message objects")
    if not isinstance(messages, list):
        raise _fail(f"messages must be a list of message objects, got {type(messages).__name__}")
    if not messages:
        raise _fail("messages must not be empty")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(f"messages[{index}] must be an object, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise _fail(f"messages[{index}].role is required and must be a non-empty string")
    return messages


def _scan(value: object, scan: _Scan, where: str, depth: int = 0) -> None:
    """Count images and inline image payloads; refuse parts whose cost the request does not bound."""
    if depth > MAX_NESTING:
        raise _fail(f"{where} is nested more than {MAX_NESTING} levels deep")
    if isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                _scan(item, scan, where, depth + 1)
        return
    if not isinstance(value, dict):
        return
    kind = value.get("type")
    if isinstance(kind, str):
        if kind in _IMAGE_TYPES:
            scan.images += 1
            scan.inline_chars += _inline_chars(kind, value)
        else:
            reason = _REFUSED_PART_TYPES.get(kind)
            if reason is not None:
                raise _fail(
                    f"{where}: content parts of type {kind!r} are not supported by the gateway: {reason}"
                )
    cache = value.get("cache_control")
    if isinstance(cache, dict) and cache.get("ttl") not in (None, "5m"):
        raise _fail(
            f"{where}: cache_control ttl {cache.get('ttl')!r} is not supported by the gateway: only "
            f"five-minute cache writes are priced (longer ones are billed at a higher rate)"
        )
    for item in value.values():
        if isinstance(item, (dict, list)):
            _scan(item, scan, where, depth + 1)


def _inline_chars(kind: str, part: Mapping[str, Any]) -> int:
    """Characters of an inline (base64) image payload inside ``part``; 0 for a URL or anything else."""
    if kind == "image":  # Anthropic: {"type": "image", "source": {"type": "base64", "data": ...}}
        source = part.get("source")
        if isinstance(source, dict) and source.get("type") == "base64":
            data = source.get("data")
            return len(data) if isinstance(data, str) else 0
        return 0
    url: object = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if isinstance(url, str) and url.startswith("data:"):
        return len(url)
    return 0


def _input_bound(
    body: Mapping[str, Any],
    fields: tuple[str, ...],
    scan: _Scan,
    image_tokens: int,
    counter: TokenCounter | None = None,
    counted_fields: tuple[str, ...] = ("messages",),
) -> int:
    """The input bound of ``fields``: JSON bytes, except the ``counted_fields`` (lists of messages) when a
    ``counter`` is given, which count the text of their messages (:func:`_counted_messages`)."""
    total = 0
    counted = False
    for field in fields:
        value = body.get(field)
        if value is None:
            continue
        if counter is not None and field in counted_fields and isinstance(value, list):
            total += _counted_messages(value, counter, field)
            counted = True
        else:
            total += _json_bytes(value, field)
    if counted:
        total += COUNTED_REQUEST_OVERHEAD_TOKENS
    # Every image part (and so every inline payload) is counted by its JSON bytes above, whichever way the
    # rest was bounded, so the difference is never negative.
    return total - scan.inline_chars + scan.images * image_tokens + REQUEST_OVERHEAD_TOKENS


_COUNTED_KEYS = frozenset(("role", "content"))


def _counted_messages(messages: list[Any], counter: TokenCounter, field: str) -> int:
    """The counted bound of a list of messages (see :mod:`.tokens` for why it is never below the real count).

    Per message: :data:`MESSAGE_OVERHEAD_TOKENS`, the tokens of its ``role`` and of a string ``content`` or
    of each plain text part (``{"type": "text", "text": ...}`` and nothing else) plus
    :data:`JOIN_SLACK_TOKENS` per part; every other part and every other field of the message (``name``,
    ``tool_calls``, ...) by its JSON bytes, as the byte bound does; a tool result adds
    :data:`TOOL_RESULT_TOKENS` (the called function's name, under which it is rendered).
    """
    texts: list[str] = []
    total = 0
    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):  # validated by the callers; bytes if not
            total += _json_bytes(message, where)
            continue
        total += MESSAGE_OVERHEAD_TOKENS
        role = message.get("role")
        if role in ("tool", "function"):
            total += TOOL_RESULT_TOKENS
        if isinstance(role, str):
            texts.append(role)
        else:
            total += _json_bytes(role, where)
        rest = {key: value for key, value in message.items() if key not in _COUNTED_KEYS}
        if rest:
            total += _json_bytes(rest, where)
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                total += JOIN_SLACK_TOKENS
                if (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                    and len(part) == 2
                ):
                    texts.append(part["text"])
                else:
                    total += _json_bytes(part, where)
        elif content is not None:
            total += _json_bytes(content, where)
    return total + counter.count_all(texts)


_OPENAI_CHAT_INPUT_FIELDS = (
    "messages",
    "tools",
    "functions",
    "response_format",
    "tool_choice",
    "function_call",
)


def bound_openai_chat(
    body: object,
    *,
    max_output_tokens: int,
    image_tokens: int,
    output_cap_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    counter: TokenCounter | None = None,
) -> tuple[Bound, dict[str, Any]]:
    """The worst-case :class:`Bound` of an OpenAI chat completion request and the body to forward.

    - Input: see the module docstring (JSON bytes of ``messages``, tools, functions, response format and tool
      choice, ``image_tokens`` per image, plus :data:`REQUEST_OVERHEAD_TOKENS`); with a ``counter`` (the
      model's tokenizer, :func:`~.tokens.counter_for_model`) the text of ``messages`` is counted instead.
    - Output per choice: ``max_completion_tokens`` or ``max_tokens`` (the larger when both are given: the
      provider applies one of them); when neither is given ``max_output_tokens`` is injected into the
      forwarded body as ``output_cap_field`` (``max_tokens`` by default, which every OpenAI-compatible
      server understands; OpenAI's reasoning models want ``max_completion_tokens``). Times ``n``.
    - A streamed request (``"stream": true``) is forwarded with ``stream_options.include_usage`` set, so the
      provider reports the usage in a final chunk.

    The returned body is a shallow copy; ``body`` is not modified. Raises :class:`GatewayRequestError` for
    a malformed or unboundable request.
    """
    data = _check_common(body, max_output_tokens, image_tokens)
    messages = _check_messages(data)
    for field in ("tools", "functions"):
        value = data.get(field)
        if value is not None and not isinstance(value, list):
            raise _fail(f"{field} must be a list, got {type(value).__name__}")
    if data.get("web_search_options") is not None:
        raise _fail(
            "web_search_options is not supported by the gateway: search results and fees are not bounded"
        )
    if data.get("prediction") is not None:
        raise _fail("prediction is not supported by the gateway: rejected prediction tokens are not bounded")
    modalities = data.get("modalities")
    if data.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise _fail("audio output is not supported by the gateway: audio tokens are not priced")
    if data.get("service_tier") == "priority":
        raise _fail(
            "service_tier 'priority' is not supported by the gateway: it is billed above the standard price"
        )
    n = _positive_int(data, "n") or 1
    completion_cap = _positive_int(data, "max_completion_tokens")
    tokens_cap = _positive_int(data, "max_tokens")
    forward = dict(data)
    if completion_cap is None and tokens_cap is None:
        per_choice = max_output_tokens
        forward[output_cap_field] = max_output_tokens
    else:
        per_choice = max(cap for cap in (completion_cap, tokens_cap) if cap is not None)
    if data.get("stream"):
        options = data.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise _fail(f"stream_options must be an object, got {type(options).__name__}")
        forward["stream_options"] = {**(options or {}), "include_usage": True}
    scan = _Scan()
    _scan(messages, scan, "messages")
    input_tokens = _input_bound(data, _OPENAI_CHAT_INPUT_FIELDS, scan, image_tokens, counter)
    return Bound(input_tokens, per_choice * n), forward


def bound_openai_embeddings(
    body: object, *, counter: TokenCounter | None = None
) -> tuple[Bound, dict[str, Any]]:
    """The :class:`Bound` of an OpenAI embeddings request and the body to forward (unchanged copy).

    ``input`` is a string, a list of strings, a list of token ids or a list of such lists. A string counts
    its UTF-8 bytes (tokens <= bytes), or its tokens with a ``counter`` (the model's tokenizer: embeddings
    encode each input on its own, so the count is exact), a token id list its length (exact); every item adds
    :data:`EMBEDDING_ITEM_OVERHEAD_TOKENS`. Embeddings produce no output tokens.
    """
    data = _check_common(body, 1, 0)
    value = data.get("input")
    if value is None:
        raise _fail("input is required: a string, a list of strings or a list of token id lists")
    items: list[Any]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list):
        if not value:
            raise _fail("input must not be empty")
        items = [value] if all(_is_token_id(item) for item in value) else value
    else:
        raise _fail(f"input must be a string or a list, got {type(value).__name__}")
    total = 0
    for index, item in enumerate(items):
        if isinstance(item, str):
            total += len(item.encode("utf-8", "surrogatepass")) if counter is None else counter.count(item)
        elif isinstance(item, list) and item and all(_is_token_id(token) for token in item):
            total += len(item)
        else:
            raise _fail(
                f"input[{index}] must be a string or a non-empty list of token ids (non-negative integers)"
            )
        total += EMBEDDING_ITEM_OVERHEAD_TOKENS
    return Bound(total, 0), dict(data)


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_ANTHROPIC_INPUT_FIELDS = ("messages", "system", "tools", "tool_choice")


def _check_tools(data: Mapping[str, Any], accepted: tuple[object, ...], refusal: str) -> list[Any] | None:
    """``tools``, if given, is a list of objects whose ``type`` is one of ``accepted``; a tool of another
    type is refused with ``refusal`` (the provider runs it, so its cost is not in the request)."""
    tools = data.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _fail(f"tools must be a list, got {type(tools).__name__}")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _fail(f"tools[{index}] must be an object, got {type(tool).__name__}")
        kind = tool.get("type")
        if kind not in accepted:
            raise _fail(f"tools[{index}].type is {kind!r}: {refusal}")
    return tools


def bound_anthropic_messages(
    body: object, *, max_output_tokens: int, image_tokens: int
) -> tuple[Bound, dict[str, Any]]:
    """The worst-case :class:`Bound` of an Anthropic Messages request and the body to forward.

    - Input: JSON bytes of ``messages``, ``system``, ``tools`` and ``tool_choice``, ``image_tokens`` per
      image, :data:`REQUEST_OVERHEAD_TOKENS`, and :data:`ANTHROPIC_TOOLS_OVERHEAD_TOKENS` with tools.
    - Output: ``max_tokens`` (required by Anthropic; injected as ``max_output_tokens`` when absent). Extended
      thinking counts against ``max_tokens``, so it is covered.
    - Streams always report usage (``message_start`` and ``message_delta``): nothing to add.

    The returned body is a shallow copy. Raises :class:`GatewayRequestError` for a malformed or
    unboundable request.
    """
    data = _check_common(body, max_output_tokens, image_tokens)
    messages = _check_messages(data)
    system = data.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise _fail(f"system must be a string or a list of content blocks, got {type(system).__name__}")
    tools = _check_tools(
        data,
        (None, "custom"),
        "server tools and Anthropic-defined tools are not supported by the gateway (their inputs and fees "
        "are not in the request); only custom tools are",
    )
    if data.get("mcp_servers"):
        raise _fail("mcp_servers is not supported by the gateway: remote tool definitions are not bounded")
    cap = _positive_int(data, "max_tokens")
    forward = dict(data)
    if cap is None:
        cap = max_output_tokens
        forward["max_tokens"] = cap
    scan = _Scan()
    _scan(messages, scan, "messages")
    if system is not None:
        _scan(system, scan, "system")
    if tools:
        _scan(tools, scan, "tools")
    input_tokens = _input_bound(data, _ANTHROPIC_INPUT_FIELDS, scan, image_tokens)
    if tools:
        input_tokens += ANTHROPIC_TOOLS_OVERHEAD_TOKENS
    return Bound(input_tokens, cap), forward


_OPENAI_RESPONSES_INPUT_FIELDS = ("input", "instructions", "tools", "text", "tool_choice")
_OPENAI_RESPONSES_BYTE_FIELDS = ("tools", "text", "tool_choice")
"""The fields bounded by their bytes even when the input's text is counted."""

_RESPONSES_REFUSED_FIELDS: Mapping[str, str] = {
    "prompt": "stored prompt templates are expanded by the provider: their text is not in the request",
    "conversation": "a stored conversation is re-read by the provider: its length is not in the request",
}


_RESPONSES_TEXT_PARTS = frozenset(("input_text", "output_text"))
_RESPONSES_EMPTY_PART_KEYS = frozenset(("annotations", "logprobs"))


def _responses_text_part(part: object) -> object:
    """``part`` as a chat text part (``{"type": "text", "text": ...}``) when it is plain text on the Responses
    API (``input_text``/``output_text`` with nothing but empty annotations and logprobs), else unchanged."""
    if (
        isinstance(part, dict)
        and part.get("type") in _RESPONSES_TEXT_PARTS
        and isinstance(part.get("text"), str)
        and all(
            key in ("type", "text") or (key in _RESPONSES_EMPTY_PART_KEYS and part[key] == []) for key in part
        )
    ):
        return {"type": "text", "text": part["text"]}
    return part


def _counted_responses_input(data: Mapping[str, Any], counter: TokenCounter) -> int:
    """The counted bound of a Responses request's ``instructions`` and ``input``, as chat messages are counted
    (:func:`_counted_messages`; the provider renders them with the same template): ``instructions`` as a
    system message, a string ``input`` as a user message, message items with their plain text parts counted.
    Every other item (function calls, reasoning, ...) is counted by its JSON bytes with a message's
    overhead, and a ``function_call_output`` also adds :data:`TOOL_RESULT_TOKENS` (it is rendered under the
    called function's name, which it does not carry), so nothing is below the byte bound's argument."""
    messages: list[Any] = []
    extra = 0
    instructions = data.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        extra += _json_bytes(instructions, "instructions")
    value = data.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for item in value:
            kind = item.get("type")
            if kind in (None, "message") and "role" in item:
                content = item.get("content")
                if isinstance(content, list):
                    content = [_responses_text_part(part) for part in content]
                messages.append({**item, "content": content})
            else:
                if kind == "function_call_output":
                    extra += TOOL_RESULT_TOKENS
                messages.append(item)  # counted by its bytes (it has no role and no content)
    return extra + _counted_messages(messages, counter, "input")


def bound_openai_responses(
    body: object,
    *,
    max_output_tokens: int,
    image_tokens: int,
    previous_tokens: int = 0,
    counter: TokenCounter | None = None,
) -> tuple[Bound, dict[str, Any]]:
    """The worst-case :class:`Bound` of an OpenAI Responses API request (``POST /v1/responses``) and the
    body to forward.

    - Input: JSON bytes of ``input`` (a string or a list of items), ``instructions``, ``tools``, ``text`` and
      ``tool_choice``, ``image_tokens`` per image, :data:`REQUEST_OVERHEAD_TOKENS`, plus ``previous_tokens``:
      with ``previous_response_id`` the provider re-reads the earlier conversation, so the caller passes the
      billed input and output tokens recorded for that response (which include its own predecessors).
      With a ``counter`` (the model's tokenizer) the text of ``instructions`` and of the input's messages is
      counted instead of its bytes (:func:`_counted_responses_input`).
    - Output: ``max_output_tokens`` of the request, else the gateway's cap injected into the forwarded body
      as ``max_output_tokens``. Reasoning tokens are output tokens on this API and count against that cap,
      so the bound covers any reasoning effort.
    - Streams always end with ``response.completed`` (or ``.incomplete``/``.failed``) carrying the usage.

    Refused (:class:`GatewayRequestError`, naming the field): server-side tools (any tool whose type is not
    ``"function"``: web/file search, code interpreter, computer use, image generation, MCP...), ``prompt``,
    ``conversation``, ``background: true``, ``service_tier: "priority"``, input items of type
    ``item_reference`` or ``computer_call_output``, and ``input_file``/``input_audio`` content: their tokens
    or fees are not in the request. The returned body is a shallow copy; ``body`` is not modified.
    """
    data = _check_common(body, max_output_tokens, image_tokens)
    if isinstance(previous_tokens, bool) or not isinstance(previous_tokens, int) or previous_tokens < 0:
        raise ValueError(f"previous_tokens must be a non-negative integer, got {previous_tokens!r}")
    for field, reason in _RESPONSES_REFUSED_FIELDS.items():
        if data.get(field) is not None:
            raise _fail(f"{field} is not supported by the gateway: {reason}")
    background = data.get("background")
    if background is not None and not isinstance(background, bool):
        raise _fail(f"background must be true or false, got {type(background).__name__}")
    if background:
        raise _fail(
            "background is not supported by the gateway: a background response is billed after the call "
            "returns, so the gateway could not settle it; send the request without background"
        )
    if data.get("service_tier") == "priority":
        raise _fail(
            "service_tier 'priority' is not supported by the gateway: it is billed above the standard price"
        )
    previous = data.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _fail("previous_response_id must be a non-empty string")
    value = data.get("input")
    if value is not None and not isinstance(value, (str, list)):
        raise _fail(f"input must be a string or a list of input items, got {type(value).__name__}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise _fail(f"input[{index}] must be an object, got {type(item).__name__}")
            if item.get("type") == "item_reference":
                raise _fail(
                    f"input[{index}] is an item_reference, which is not supported by the gateway: the "
                    f"referenced item is stored by the provider and its length is not in the request"
                )
            if item.get("type") == "computer_call_output":
                raise _fail(
                    f"input[{index}] is a computer_call_output, which is not supported by the gateway: its "
                    f"screenshot is billed as an image the request does not bound (computer use is refused)"
                )
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, (str, list)):
        raise _fail(
            f"instructions must be a string or a list of input items, got {type(instructions).__name__}"
        )
    _check_tools(
        data,
        ("function",),
        "server-side tools (web search, file search, code interpreter, computer use, image generation, "
        "MCP...) are not supported by the gateway (their results and fees are not in the request); only "
        "function tools are",
    )
    cap = _positive_int(data, "max_output_tokens")
    forward = dict(data)
    if cap is None:
        cap = max_output_tokens
        forward["max_output_tokens"] = cap
    scan = _Scan()
    for field in ("input", "instructions", "tools"):
        part = data.get(field)
        if isinstance(part, (list, dict)):
            _scan(part, scan, field)
    if counter is None:
        input_tokens = _input_bound(data, _OPENAI_RESPONSES_INPUT_FIELDS, scan, image_tokens)
    else:
        # Image parts stay inside the bytes counted here, so _input_bound's image arithmetic still holds.
        counted = _counted_responses_input(data, counter) + COUNTED_REQUEST_OVERHEAD_TOKENS
        input_tokens = counted + _input_bound(data, _OPENAI_RESPONSES_BYTE_FIELDS, scan, image_tokens)
    return Bound(input_tokens + previous_tokens, cap), forward
