"""A fake OpenAI- and Anthropic-compatible LLM upstream, served for real over HTTP on 127.0.0.1.

``with serve_fake_upstream() as fake: ...`` starts it in a background thread on a free port; point a client
(or the gateway) at ``fake.base_url``. It is a bare ASGI app under uvicorn (httptools, uvloop) so that it
costs little per request: the gateway benchmark drives it at hundreds of requests per second.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/embeddings`` (OpenAI, ``Authorization: Bearer <key>``)
and ``POST /v1/messages`` (Anthropic, ``x-api-key: <key>``). A missing or wrong key gets 401, so tests can
prove the gateway injects the provider key and never forwards the agent's own.

Deterministic usage:

- prompt tokens = the number of whitespace-separated words in all the text of the messages (and
  ``system``), at least 1 (:func:`prompt_tokens`); every word has at least one UTF-8 byte, so this never
  exceeds the gateway's byte bound. Embeddings: words of the strings, or the number of token ids.
- completion tokens per choice = ``min(max_tokens or max_completion_tokens, fake.completion_tokens)``; the
  reply is that many words ``"tok tok ..."``, streamed one word per chunk.

Behaviour, chosen per request so that concurrent tests do not interfere: the ``x-fake-behaviour`` header,
else a ``@behaviour`` suffix of the model name (``"gpt-4o@error500"``), else ``fake.behaviour``:

- ``ok`` (default);
- ``slow``: wait ``x-fake-delay-ms`` (else ``fake.delay_ms``) milliseconds before answering;
- ``error500`` / ``error429``: an error response in the provider's format (429 with ``retry-after: 1``);
- ``midstream-fail``: send part of the body (a few stream events, or half a JSON body) and drop the
  connection without finishing it;
- ``no-usage``: answer without any usage (no ``usage`` field, no usage chunk or usage in stream events);
- ``tools`` (chat completions, for agent loops): while the last message is not a tool result and the
  request offers ``tools``, answer with one call of the first tool (arguments: each declared property set to
  ``"tok"``, ``1`` or ``true`` by its type; ``finish_reason: "tool_calls"``); after a tool result, answer
  with text as ``ok`` does. Usage is counted as for ``ok``. Streamed, the call arrives as tool-call deltas.
  On ``/v1/responses`` the same with the Responses API's items: while the last input item is not a
  ``function_call_output`` and function tools are offered, the output is one ``function_call`` item
  (streamed as ``response.function_call_arguments.*`` events).
- ``incomplete`` / ``failed`` (``/v1/responses`` only): the response ends ``incomplete`` (max output tokens)
  or ``failed`` (a server error), with its usage, as ``response.incomplete`` / ``response.failed`` events
  when streamed.

The OpenAI Responses API (``POST /v1/responses``, plain and streamed; ``GET``/``DELETE
/v1/responses/{id}``, ``GET .../input_items``, ``POST .../cancel``): input tokens = words of ``input`` and
``instructions`` plus, with ``previous_response_id``, the input and output tokens of that response, which
are reported as cached (``input_tokens_details.cached_tokens``); output tokens = ``min(max_output_tokens,
fake.completion_tokens)``, a quarter of them (rounded down) reported as reasoning tokens
(``output_tokens_details.reasoning_tokens``, included in ``output_tokens``) and the rest streamed as words.
Responses are kept in ``fake.responses`` unless the request says ``"store": false``; an unknown
``previous_response_id`` gets 404 as from OpenAI.

``x-fake-chunk-delay-ms`` (else ``fake.chunk_delay_ms``) waits between stream chunks. Each request is
recorded in ``fake.requests`` (path, lower-cased headers, JSON body) unless ``fake.record`` is False.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

__all__ = ["BEHAVIOURS", "FakeRequest", "FakeUpstream", "prompt_tokens", "serve_fake_upstream"]

BEHAVIOURS = frozenset(
    ("ok", "slow", "error500", "error429", "midstream-fail", "no-usage", "tools", "incomplete", "failed")
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _MidstreamFailure(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-response (on purpose)."""


class _QuietMidstream(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _MidstreamFailure)


@dataclass
class FakeRequest:
    """One request the fake upstream received."""

    path: str
    headers: dict[str, str]
    body: Any


def _words(value: object) -> int:
    """Whitespace-separated words in every text of a message structure (strings under any key)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        total = 0
        for key, item in value.items():
            if key in ("content", "text") or isinstance(item, (dict, list)):
                total += _words(item)
        return total
    return 0


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's prompt token count of a chat/messages request: words of all message text, at least 1."""
    return max(1, _words(body.get("messages")) + _words(body.get("system")))


def responses_prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's input token count of a Responses API request that continues no earlier response."""
    return max(1, _words(body.get("input")) + _words(body.get("instructions")))


def _embedding_tokens(value: object) -> int:
    if isinstance(value, str):
        return max(1, len(value.split()))
    if isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            return len(value)
        return sum(_embedding_tokens(item) for item in value)
    return 1


@dataclass
class FakeUpstream:
    """The fake's state and knobs (settable by tests between or during requests)."""

    base_url: str = ""
    api_key: str = "sk-upstream-test"
    behaviour: str = "ok"
    delay_ms: int = 200
    chunk_delay_ms: int = 0
    completion_tokens: int = 20
    midstream_chunks: int = 5
    record: bool = True
    requests: list[FakeRequest] = field(default_factory=list)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- ASGI -------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        path = scope["path"]
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if self.record:
            self.requests.append(FakeRequest(path, headers, body))
        anthropic = path == "/v1/messages"
        if path == "/v1/responses" or path.startswith("/v1/responses/"):
            await self._responses_api(scope["method"], path, headers, body, send)
            return
        if scope["method"] != "POST" or path not in (
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1/messages",
        ):
            await self._json(send, 404, _error(anthropic, "not_found_error", f"no route {path}"))
            return
        if anthropic:
            authorized = headers.get("x-api-key") == self.api_key
        else:
            authorized = headers.get("authorization") == f"Bearer {self.api_key}"
        if not authorized:
            await self._json(send, 401, _error(anthropic, "authentication_error", "invalid api key"))
            return
        if not isinstance(body, dict):
            await self._json(send, 400, _error(anthropic, "invalid_request_error", "body must be JSON"))
            return
        model, behaviour = self._behaviour(headers, body)
        if behaviour == "slow":
            await asyncio.sleep(int(headers.get("x-fake-delay-ms", self.delay_ms)) / 1000)
        elif behaviour == "error500":
            await self._json(send, 500, _error(anthropic, "api_error", "fake upstream failure"))
            return
        elif behaviour == "error429":
            error = _error(anthropic, "rate_limit_error", "fake rate limit")
            await self._json(send, 429, error, extra=[(b"retry-after", b"1")])
            return
        chunk_delay = int(headers.get("x-fake-chunk-delay-ms", self.chunk_delay_ms)) / 1000
        usage = behaviour != "no-usage"
        fail = behaviour == "midstream-fail"
        if path == "/v1/embeddings":
            await self._embeddings(send, body, model, usage, fail)
            return
        cap = body.get("max_tokens") or body.get("max_completion_tokens") or self.completion_tokens
        completion = max(1, min(int(cap), self.completion_tokens))
        prompt = prompt_tokens(body)
        call = _tool_call(body) if behaviour == "tools" and not anthropic else None
        if body.get("stream"):
            events = (
                _anthropic_stream(model, prompt, completion, usage)
                if anthropic
                else _openai_stream(body, model, prompt, completion, usage, call)
            )
            await self._stream(send, events, chunk_delay, fail)
            return
        data = (
            _anthropic_message(model, prompt, completion, usage)
            if anthropic
            else _openai_completion(body, model, prompt, completion, usage, call)
        )
        await self._json(send, 200, data, fail=fail)

    def _behaviour(self, headers: dict[str, str], body: dict[str, Any]) -> tuple[str, str]:
        """The request's model name and the behaviour it asks for (see the module docstring)."""
        requested = body.get("model")
        model = requested if isinstance(requested, str) else "unknown"
        return model, headers.get("x-fake-behaviour") or (
            model.rpartition("@")[2] if "@" in model else self.behaviour
        )

    async def _responses_api(
        self, method: str, path: str, headers: dict[str, str], body: Any, send: Send
    ) -> None:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            await self._json(send, 401, _error(False, "authentication_error", "invalid api key"))
            return
        if path != "/v1/responses":
            await self._response_operation(method, path, send)
            return
        if method != "POST" or not isinstance(body, dict):
            await self._json(send, 400, _error(False, "invalid_request_error", "POST a JSON body"))
            return
        model, behaviour = self._behaviour(headers, body)
        if behaviour == "slow":
            await asyncio.sleep(int(headers.get("x-fake-delay-ms", self.delay_ms)) / 1000)
        elif behaviour in ("error500", "error429"):
            status = 500 if behaviour == "error500" else 429
            extra = [(b"retry-after", b"1")] if status == 429 else None
            await self._json(send, status, _error(False, "api_error", "fake failure"), extra=extra)
            return
        previous = body.get("previous_response_id")
        cached = 0
        if previous is not None:
            earlier = self.responses.get(previous) if isinstance(previous, str) else None
            if earlier is None:
                error = _error(False, "invalid_request_error", f"Previous response {previous!r} not found.")
                await self._json(send, 404, error)
                return
            cached = earlier["usage"]["input_tokens"] + earlier["usage"]["output_tokens"]
        prompt = responses_prompt_tokens(body) + cached
        cap = body.get("max_output_tokens") or self.completion_tokens
        completion = max(1, min(int(cap), self.completion_tokens))
        response = _response_object(body, model, prompt, cached, completion, behaviour)
        if body.get("store") is not False:
            self.responses[response["id"]] = {**response, "input": body.get("input")}
        if behaviour == "no-usage":
            response["usage"] = None
        fail = behaviour == "midstream-fail"
        if body.get("stream"):
            chunk_delay = int(headers.get("x-fake-chunk-delay-ms", self.chunk_delay_ms)) / 1000
            await self._stream(send, _responses_stream(response), chunk_delay, fail)
            return
        await self._json(send, 200, response, fail=fail)

    async def _response_operation(self, method: str, path: str, send: Send) -> None:
        response_id, _slash, tail = path[len("/v1/responses/") :].partition("/")
        stored = self.responses.get(response_id)
        if stored is None:
            error = _error(False, "invalid_request_error", f"No response found with id '{response_id}'.")
            await self._json(send, 404, error)
            return
        public = {key: value for key, value in stored.items() if key != "input"}
        if method == "GET" and not tail:
            await self._json(send, 200, public)
        elif method == "DELETE" and not tail:
            del self.responses[response_id]
            await self._json(send, 200, {"id": response_id, "object": "response", "deleted": True})
        elif method == "GET" and tail == "input_items":
            value = stored["input"]
            items = (
                [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
                if isinstance(value, str)
                else list(value or [])
            )
            items = [{"id": f"msg_in_{index}", **item} for index, item in enumerate(items)]
            listing = {
                "object": "list",
                "data": items,
                "first_id": items[0]["id"] if items else None,
                "last_id": items[-1]["id"] if items else None,
                "has_more": False,
            }
            await self._json(send, 200, listing)
        elif method == "POST" and tail == "cancel":
            await self._json(send, 200, {**public, "status": "cancelled"})
        else:
            await self._json(send, 405, _error(False, "invalid_request_error", f"{method} {path}"))

    async def _embeddings(
        self, send: Send, body: dict[str, Any], model: str, usage: bool, fail: bool
    ) -> None:
        value = body.get("input")
        items = value if isinstance(value, list) and not all(isinstance(i, int) for i in value) else [value]
        tokens = _embedding_tokens(value)
        data: dict[str, Any] = {
            "object": "list",
            "model": model,
            "data": [
                {"object": "embedding", "index": index, "embedding": [0.0, 0.5, 1.0]}
                for index in range(len(items))
            ],
        }
        if usage:
            data["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        await self._json(send, 200, data, fail=fail)

    async def _json(
        self,
        send: Send,
        status: int,
        data: object,
        *,
        fail: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        payload = orjson.dumps(data)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
        if fail:
            await send(
                {"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True}
            )
            raise _MidstreamFailure("fake upstream dropped the connection mid-body")
        await send({"type": "http.response.body", "body": payload})

    async def _stream(self, send: Send, events: list[bytes], chunk_delay: float, fail: bool) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, event in enumerate(events):
            if fail and index >= self.midstream_chunks:
                raise _MidstreamFailure("fake upstream dropped the connection mid-stream")
            if chunk_delay and index:
                await asyncio.sleep(chunk_delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _error(anthropic: bool, kind: str, message: str) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "code": kind}}


def _reply(completion: int) -> str:
    return " ".join(["tok"] * completion)


_ARGUMENT_VALUES: dict[str, Any] = {"string": "tok", "integer": 1, "number": 1, "boolean": True}


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``tools`` behaviour's call of the first offered tool, or None when it answers with text (no tools
    offered, or the last message is already a tool result)."""
    tools = body.get("tools")
    messages = body.get("messages")
    if not isinstance(tools, list) or not tools or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "tool":
        return None
    function = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    arguments = {
        name: _ARGUMENT_VALUES.get(spec.get("type") if isinstance(spec, dict) else None, "tok")
        for name, spec in properties.items()
    }
    return {
        "id": f"call_fake_{len(messages)}",
        "type": "function",
        "function": {"name": function.get("name", "tool"), "arguments": orjson.dumps(arguments).decode()},
    }


def _openai_completion(
    body: dict[str, Any],
    model: str,
    prompt: int,
    completion: int,
    usage: bool,
    call: dict[str, Any] | None = None,
) -> dict[str, Any]:
    n = body.get("n") or 1
    data: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": _reply(completion)},
                "finish_reason": "length" if completion < 20 else "stop",
            }
            for index in range(n)
        ],
    }
    if call is not None:
        for choice in data["choices"]:
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice["finish_reason"] = "tool_calls"
    if usage:
        data["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion * n,
            "total_tokens": prompt + completion * n,
        }
    return data


def _sse(data: object, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _openai_stream(
    body: dict[str, Any],
    model: str,
    prompt: int,
    completion: int,
    usage: bool,
    call: dict[str, Any] | None = None,
) -> list[bytes]:
    n = body.get("n") or 1
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    events = [
        _sse(
            {
                **base,
                "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)],
            }
        )
    ]
    if call is not None:
        events.extend(_tool_call_deltas(base, call, n))
    else:
        for word in range(completion):
            text = "tok" if word == 0 else " tok"
            events.extend(
                _sse({**base, "choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}]})
                for i in range(n)
            )
    finish = "length" if call is None else "tool_calls"
    events.append(
        _sse({**base, "choices": [{"index": i, "delta": {}, "finish_reason": finish} for i in range(n)]})
    )
    options = body.get("stream_options")
    if usage and isinstance(options, dict) and options.get("include_usage"):
        total = {
            "prompt_tokens": prompt,
            "completion_tokens": completion * n,
            "total_tokens": prompt + completion * n,
        }
        events.append(_sse({**base, "choices": [], "usage": total}))
    events.append(b"data: [DONE]\n\n")
    return events


def _tool_call_deltas(base: dict[str, Any], call: dict[str, Any], n: int) -> list[bytes]:
    """A tool call as OpenAI streams it: id and name first, then the arguments in two pieces."""
    arguments = call["function"]["arguments"]
    half = len(arguments) // 2
    head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
    head["function"]["arguments"] = ""
    events = []
    for delta in (head, {"index": 0, "function": {"arguments": arguments[:half]}}):
        events.extend(
            _sse({**base, "choices": [{"index": i, "delta": {"tool_calls": [delta]}, "finish_reason": None}]})
            for i in range(n)
        )
    tail = {"index": 0, "function": {"arguments": arguments[half:]}}
    events.extend(
        _sse({**base, "choices": [{"index": i, "delta": {"tool_calls": [tail]}, "finish_reason": None}]})
        for i in range(n)
    )
    return events


def _response_object(
    body: dict[str, Any], model: str, prompt: int, cached: int, completion: int, behaviour: str
) -> dict[str, Any]:
    """A Responses API response: a reasoning item and a message of ``completion - reasoning`` words."""
    reasoning = completion // 4
    words = completion - reasoning
    response_id = "resp_" + uuid.uuid4().hex
    status = {"incomplete": "incomplete", "failed": "failed"}.get(behaviour, "completed")
    call = _function_call(body, response_id) if behaviour == "tools" else None
    output: list[dict[str, Any]] = [
        {"type": "reasoning", "id": f"rs_{response_id[5:]}", "summary": []},
        {
            "type": "message",
            "id": f"msg_{response_id[5:]}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": _reply(words), "annotations": []}],
        },
    ]
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output if call is None else [call],
        "output_text": None,
        "error": {"code": "server_error", "message": "fake failure"} if status == "failed" else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        },
    }


def _function_call(body: dict[str, Any], response_id: str) -> dict[str, Any] | None:
    """The ``tools`` behaviour's ``function_call`` item on the Responses API (see :func:`_tool_call`), or None
    when it answers with text (no function tools, or the last input item is a function's output)."""
    tools = [
        tool for tool in body.get("tools") or [] if isinstance(tool, dict) and tool.get("type") == "function"
    ]
    items = body.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    if not tools or (isinstance(last, dict) and last.get("type") == "function_call_output"):
        return None
    properties = (tools[0].get("parameters") or {}).get("properties") or {}
    arguments = {
        name: _ARGUMENT_VALUES.get(spec.get("type") if isinstance(spec, dict) else None, "tok")
        for name, spec in properties.items()
    }
    return {
        "type": "function_call",
        "id": f"fc_{response_id[5:]}",
        "call_id": f"call_{response_id[5:]}",
        "name": tools[0].get("name", "tool"),
        "arguments": orjson.dumps(arguments).decode(),
        "status": "completed",
    }


def _function_call_stream(response: dict[str, Any]) -> list[dict[str, Any]]:
    (call,) = response["output"]
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    return [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {"type": "response.output_item.added", "output_index": 0, "item": {**call, "arguments": ""}},
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 0,
            "item_id": call["id"],
            "delta": call["arguments"],
        },
        {
            "type": "response.function_call_arguments.done",
            "output_index": 0,
            "item_id": call["id"],
            "arguments": call["arguments"],
        },
        {"type": "response.output_item.done", "output_index": 0, "item": call},
        {"type": f"response.{response['status']}", "response": response},
    ]


def _responses_stream(response: dict[str, Any]) -> list[bytes]:
    """The events of a streamed Responses API response, ``response.created`` to ``response.<status>``."""
    if len(response["output"]) == 1:
        return [
            _sse({**event, "sequence_number": number}, event["type"])
            for number, event in enumerate(_function_call_stream(response))
        ]
    reasoning, message = response["output"]
    text = message["content"][0]["text"]
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {"type": "response.output_item.added", "output_index": 0, "item": reasoning},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "output_index": 1,
            "content_index": 0,
            "item_id": message["id"],
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
    ]
    for index, word in enumerate(text.split(" ")):
        events.append(
            {
                "type": "response.output_text.delta",
                "output_index": 1,
                "content_index": 0,
                "item_id": message["id"],
                "delta": word if index == 0 else f" {word}",
                "logprobs": [],
            }
        )
    events += [
        {
            "type": "response.output_text.done",
            "output_index": 1,
            "content_index": 0,
            "item_id": message["id"],
            "text": text,
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "output_index": 1,
            "content_index": 0,
            "item_id": message["id"],
            "part": message["content"][0],
        },
        {"type": "response.output_item.done", "output_index": 1, "item": message},
        {"type": f"response.{response['status']}", "response": response},
    ]
    return [_sse({**event, "sequence_number": number}, event["type"]) for number, event in enumerate(events)]


def _anthropic_message(model: str, prompt: int, completion: int, usage: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": _reply(completion)}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
    }
    if usage:
        data["usage"] = {"input_tokens": prompt, "output_tokens": completion}
    return data


def _anthropic_stream(model: str, prompt: int, completion: int, usage: bool) -> list[bytes]:
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if usage:
        message["usage"] = {"input_tokens": prompt, "output_tokens": 1}
    events = [
        _sse({"type": "message_start", "message": message}, "message_start"),
        _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        _sse({"type": "ping"}, "ping"),
    ]
    for word in range(completion):
        delta = {"type": "text_delta", "text": "tok" if word == 0 else " tok"}
        events.append(
            _sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
        )
    events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    final: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
    }
    if usage:
        final["usage"] = {"output_tokens": completion}
    events.append(_sse(final, "message_delta"))
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return events


@contextmanager
def serve_fake_upstream(**knobs: Any) -> Iterator[FakeUpstream]:
    """Serve a :class:`FakeUpstream` (with ``knobs`` set) on a free 127.0.0.1 port for the ``with`` block."""
    fake = FakeUpstream(**knobs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    fake.base_url = f"http://127.0.0.1:{port}"
    config = uvicorn.Config(
        fake,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    quiet = _QuietMidstream()
    error_log = logging.getLogger("uvicorn.error")
    error_log.addFilter(quiet)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"the fake upstream did not start: {failure[:1]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the fake upstream did not start within 10 s")
            time.sleep(0.005)
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        error_log.removeFilter(quiet)
