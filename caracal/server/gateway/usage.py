"""What an LLM call consumed, read from the provider's response or stream (pure: no I/O, no framework).

- :func:`usage_from_response` reads the usage of a complete JSON response.
- :class:`StreamMeter` follows a server-sent-event stream chunk by chunk and reports the provider's usage
  when the stream carried it, and otherwise an upper bound of the output that was streamed.
- :func:`billable` picks what to bill, failing closed: when the provider never reported usage, the bill is
  the safe upper bound of what could have been consumed, never a guess below it.

Token kinds are disjoint, as in the pricebook: ``input_tokens`` is *uncached* input, ``cache_read_tokens``
cached input, ``cache_write_tokens`` input written to the cache. (``genai-prices`` reports ``input_tokens``
including the cached ones; the difference is taken here.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from caracal.server.gateway.estimate import Bound

__all__ = ["ProviderApi", "StreamMeter", "Usage", "billable", "usage_from_response"]

ProviderApi = Literal["openai-chat", "openai-embeddings", "anthropic", "openai-responses"]


@dataclass
class Usage:
    """Tokens consumed by one call, by disjoint kind. ``estimated`` marks a bound billed in place of a report
    the provider never sent; ``model`` is the model the provider says answered, when it said."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model: str | None = None
    estimated: bool = False


def _count(value: object) -> int:
    """A token count from a response field: a non-negative int, else 0 (a bool or junk counts nothing)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def usage_from_response(provider_api: ProviderApi, data: object) -> Usage | None:
    """The usage a provider reported in a complete response body, or None when it reported none.

    Reads the standard fields: OpenAI ``usage.prompt_tokens`` / ``completion_tokens`` /
    ``prompt_tokens_details.cached_tokens`` (or the newer ``input_tokens`` / ``output_tokens`` names),
    Anthropic ``usage.input_tokens`` / ``output_tokens`` / ``cache_read_input_tokens`` /
    ``cache_creation_input_tokens``. These are the fields ``genai-prices``' extractors read too (the tests
    check that both agree); reading them directly costs a few microseconds instead of ~100 per call, and
    works on Python 3.10, where ``genai-prices`` is not installed.
    """
    if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
        return None
    model = data.get("model")
    model_name = model if isinstance(model, str) and model else None
    usage: Mapping[str, Any] = data["usage"]
    if provider_api == "openai-responses":
        return _responses_usage(usage, model_name)
    if provider_api == "anthropic":
        return Usage(
            input_tokens=_count(usage.get("input_tokens")),
            output_tokens=_count(usage.get("output_tokens")),
            cache_read_tokens=_count(usage.get("cache_read_input_tokens")),
            cache_write_tokens=_count(usage.get("cache_creation_input_tokens")),
            model=model_name,
        )
    prompt = _count(usage.get("prompt_tokens"))
    if not prompt:
        prompt = _count(usage.get("input_tokens"))  # OpenAI-compatible servers that use the newer names
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(cached, prompt)
    output = 0
    if provider_api == "openai-chat":
        output = _count(usage.get("completion_tokens")) or _count(usage.get("output_tokens"))
    return Usage(
        input_tokens=prompt - cached, output_tokens=output, cache_read_tokens=cached, model=model_name
    )


def _responses_usage(usage: Mapping[str, Any], model: str | None) -> Usage:
    """OpenAI Responses API usage: ``input_tokens`` (with ``input_tokens_details.cached_tokens`` among them)
    and ``output_tokens``, which already include ``output_tokens_details.reasoning_tokens`` (reasoning is
    billed as output, so it is not added again)."""
    prompt = _count(usage.get("input_tokens"))
    details = usage.get("input_tokens_details")
    cached = min(_count(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    output = _count(usage.get("output_tokens"))
    out_details = usage.get("output_tokens_details")
    reasoning = _count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    # A server that reported reasoning outside output_tokens is still billed for it (never under-count).
    output = max(output, reasoning)
    return Usage(input_tokens=prompt - cached, output_tokens=output, cache_read_tokens=cached, model=model)


_RESPONSES_FINAL = frozenset(("response.completed", "response.incomplete", "response.failed"))
"""Responses API stream events that carry the whole response, with its usage, at the end of a stream."""


def _utf8_len(value: object) -> int:
    if not isinstance(value, str):
        return 0
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


_OPENAI_DELTA_TEXT = ("content", "reasoning_content", "reasoning", "refusal")
_ANTHROPIC_DELTA_TEXT = ("text", "partial_json", "thinking")


class StreamMeter:
    """Follows an OpenAI or Anthropic server-sent-event stream, fed raw bytes as they arrive.

    Invariants:

    - **Split-independent.** Chunks may split lines, ``\\r\\n`` pairs, events and UTF-8 characters anywhere;
      after the same bytes the meter is in the same state whatever the split (a trailing ``\\r`` is held back
      until the next byte says whether it starts ``\\r\\n``). Lines end with ``\\n``, ``\\r\\n`` or ``\\r``;
      a blank line ends an event; ``:`` lines are comments; multi-line ``data`` is joined with ``\\n``.
    - **Cheap.** Only complete ``data`` payloads are parsed (orjson), ``[DONE]`` and ``ping`` never.
    - :meth:`usage` is the provider's report, and only a *final* one: OpenAI's usage chunk (no choices left)
      or Anthropic's ``message_delta`` (cumulative output) merged with ``message_start`` (input and cache).
      A stream cut before that reports None, never the partial counts of ``message_start``.
    - :meth:`consumed_output_bound` bounds the output tokens streamed so far: UTF-8 bytes of the generated
      text seen (content, reasoning, refusals, tool names and arguments, Anthropic text/JSON/thinking
      deltas) plus one per delta event (for tokens without text), plus every byte of an unparsable or
      incomplete event (it may have carried text). Tokens the provider generated but never sent (hidden
      reasoning of OpenAI's reasoning models, tokens generated after a disconnect) are not visible here.
    """

    __slots__ = (
        "_anthropic_usage",
        "_buffer",
        "_data",
        "_done",
        "_event",
        "_final",
        "_model",
        "_output",
        "_response_id",
        "_started",
    )

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = b""
        self._output = 0
        self._final: dict[str, Any] | None = None
        self._anthropic_usage: dict[str, Any] | None = None
        self._model: str | None = None
        self._done = False
        self._started = False
        self._response_id: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the stream (any split)."""
        if not chunk:
            return
        if not self._started:
            # A UTF-8 byte order mark at the start of the stream is ignored (SSE spec); wait for 3 bytes.
            head = self._buffer + chunk
            if len(head) < 3 and b"\xef\xbb\xbf".startswith(head):
                self._buffer = head
                return
            self._started = True
            self._buffer = b""
            chunk = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        buffer = self._buffer + chunk if self._buffer else chunk
        hold = b""
        if buffer.endswith(b"\r"):
            buffer, hold = buffer[:-1], b"\r"
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer + hold
            return
        self._buffer = buffer[end + 1 :] + hold
        for line in buffer[:end].split(b"\n"):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                self._data = []
                self._dispatch(self._event, data)
            self._event = b""
            return
        if line[0] == 0x3A:  # ':' comment
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value

    def _dispatch(self, event: bytes, data: bytes) -> None:
        if data == b"[DONE]":
            self._done = True
            return
        if event == b"ping":
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._output += len(data)  # could have carried text: count every byte
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            self._responses(kind, payload)
        elif isinstance(kind, str) and "choices" not in payload:
            self._anthropic(kind, payload)
        else:
            self._openai(payload)

    def _openai(self, payload: dict[str, Any]) -> None:
        choices = payload.get("choices")
        if self._model is None:
            model = payload.get("model")
            if isinstance(model, str) and model:
                self._model = model
        if isinstance(choices, list):
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                size = 1
                for key in _OPENAI_DELTA_TEXT:
                    text = delta.get(key)
                    if text:
                        size += _utf8_len(text)
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        function = call.get("function") if isinstance(call, dict) else None
                        if isinstance(function, dict):
                            size += _utf8_len(function.get("name")) + _utf8_len(function.get("arguments"))
                self._output += size
        usage = payload.get("usage")
        if isinstance(usage, dict) and not choices:
            self._final = payload

    def _anthropic(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "content_block_delta":
            delta = payload.get("delta")
            size = 1
            if isinstance(delta, dict):
                for key in _ANTHROPIC_DELTA_TEXT:
                    size += _utf8_len(delta.get(key))
            self._output += size
        elif kind == "content_block_start":
            block = payload.get("content_block")
            size = 1
            if isinstance(block, dict):
                size += _utf8_len(block.get("name")) + _utf8_len(block.get("text"))
                size += _utf8_len(block.get("thinking"))
            self._output += size
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                model = message.get("model")
                if isinstance(model, str) and model:
                    self._model = model
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._anthropic_usage = dict(usage)
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                merged = dict(self._anthropic_usage or {})
                merged.update((key, value) for key, value in usage.items() if value is not None)
                self._anthropic_usage = merged
                self._final = {"model": self._model, "usage": merged, "type": "message"}

    def _responses(self, kind: str, payload: dict[str, Any]) -> None:
        """OpenAI Responses API events: ``*.delta`` events carry generated text (output, reasoning summary,
        refusal, function arguments); ``response.created`` names the response and model; the final events
        carry the usage."""
        if kind.endswith(".delta"):
            self._output += 1 + _utf8_len(payload.get("delta"))
            return
        if kind == "response.output_item.added":
            item = payload.get("item")
            self._output += 1 + (_utf8_len(item.get("name")) if isinstance(item, dict) else 0)
            return
        response = payload.get("response")
        if not isinstance(response, dict):
            return
        if self._response_id is None:
            response_id = response.get("id")
            if isinstance(response_id, str) and response_id:
                self._response_id = response_id
        if self._model is None:
            model = response.get("model")
            if isinstance(model, str) and model:
                self._model = model
        usage = response.get("usage")
        if kind in _RESPONSES_FINAL and isinstance(usage, dict):
            self._final = {"model": self._model, "usage": usage, "type": "response"}

    @property
    def response_id(self) -> str | None:
        """The id of the Responses API response this stream carries, once an event named it."""
        return self._response_id

    @property
    def done(self) -> bool:
        """True once OpenAI's ``[DONE]`` was seen."""
        return self._done

    def usage(self) -> Usage | None:
        """The usage the provider reported in its final usage event, or None if it sent none (yet)."""
        final = self._final
        if final is None:
            return None
        kind = final.get("type")
        api: ProviderApi = (
            "anthropic" if kind == "message" else "openai-responses" if kind == "response" else "openai-chat"
        )
        found = usage_from_response(api, final)
        if found is not None and found.model is None:
            found.model = self._model
        return found

    def consumed_output_bound(self) -> int:
        """An upper bound of the output tokens in the stream so far (see the class invariants), counting the
        bytes of an event that has not been completed (and may never be)."""
        pending = len(self._buffer) + sum(len(part) for part in self._data)
        return self._output + pending


def billable(usage: Usage | None, bound: Bound, streamed_output_bound: int | None) -> Usage:
    """The usage to bill for a call.

    The rule (fail closed: never under-count what the provider can bill):

    - the provider reported usage: bill exactly that;
    - it never did (the client disconnected, the upstream failed mid-stream, a server that omits usage):
      bill the request's input bound and, for output, ``min(bound.output_tokens, streamed_output_bound)``
      — the provider cannot bill above the output cap it enforces, nor, as far as the gateway can see, above
      what it streamed — or the whole output bound when nothing was streamed-and-measured (``None``).
      The result is marked ``estimated=True``.
    """
    if usage is not None:
        return usage
    output = bound.output_tokens
    if streamed_output_bound is not None:
        output = min(output, max(streamed_output_bound, 0))
    return Usage(input_tokens=bound.input_tokens, output_tokens=output, estimated=True)
