"""A lean OpenAI-compatible upstream for benchmarks: the test fake's replies at a fraction of its CPU.

Run: ``python bench/lean_upstream.py`` prints its base URL and serves until killed.

Why it exists: on a machine of two CPUs the upstream runs beside the gateway it measures, and whatever CPU
it takes is taken from the gateway's workers. The test fake (``tests/server/fake_upstream.py``: uvicorn,
ASGI, every reply built per request) took a quarter of a core at 1,000 streamed calls/s, which capped what a
second worker could add. This server answers ``POST /v1/chat/completions`` with byte-for-byte the replies
the test fake builds for the same body (its builders, run once per distinct body and kept), on a bare
asyncio protocol with httptools parsing: the gateway reads and does exactly the same work as behind the
test fake. Streams are written one SSE event per chunk, in separate writes, as the test fake's (and
uvicorn's) are; a real provider spaces them further apart, which costs the gateway no more CPU.

Invariant: the upstream answers only what the benchmark sends (chat completions with the bench's key,
``Content-Length`` bodies); anything else gets an OpenAI-shaped 4xx, so a misconfigured benchmark fails
loudly instead of measuring errors.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import cast

import httptools
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server.fake_upstream import (  # noqa: E402
    _openai_completion,
    _openai_stream,
    prompt_tokens,
)

API_KEY = b"Bearer sk-upstream-test"
COMPLETION_TOKENS = 16
_CACHE_LIMIT = 64


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error(status: str, message: str) -> bytes:
    payload = orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    head = _head(status, [("content-type", "application/json"), ("content-length", str(len(payload)))])
    return head + payload


def _reply(raw: bytes) -> list[bytes]:
    """The writes that answer a chat completion with body ``raw``, as the test fake would reply."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [_error("400 Bad Request", "body must be JSON")]
    if not isinstance(body, dict):
        return [_error("400 Bad Request", "body must be a JSON object")]
    model = str(body.get("model") or "gpt-4o")
    cap = body.get("max_tokens") or body.get("max_completion_tokens") or COMPLETION_TOKENS
    completion = max(1, min(int(cap), COMPLETION_TOKENS))
    prompt = prompt_tokens(body)
    if body.get("stream"):
        events = _openai_stream(body, model, prompt, completion, True)
        head = _head(
            "200 OK",
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                ("transfer-encoding", "chunked"),
            ],
        )
        return [head] + [b"%x\r\n%s\r\n" % (len(event), event) for event in events] + [b"0\r\n\r\n"]
    payload = orjson.dumps(_openai_completion(body, model, prompt, completion, True))
    head = _head("200 OK", [("content-type", "application/json"), ("content-length", str(len(payload)))])
    return [head + payload]


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order as each completes."""

    def __init__(self, replies: dict[bytes, list[bytes]]) -> None:
        self.replies = replies
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.authorized = False
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_error("400 Bad Request", "malformed request"))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.authorized, self.body = b"", False, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorized = value == API_KEY

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.parser.get_method() != b"POST" or self.url != b"/v1/chat/completions":
            writes = [_error("404 Not Found", f"no route {self.url.decode('latin-1')}")]
        elif not self.authorized:
            writes = [_error("401 Unauthorized", "invalid api key")]
        else:
            raw = b"".join(self.body)
            writes = self.replies.get(raw) or []
            if not writes:
                writes = _reply(raw)
                if len(self.replies) >= _CACHE_LIMIT:
                    self.replies.clear()
                self.replies[raw] = writes
        for chunk in writes:
            self.transport.write(chunk)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def _serve() -> None:
    replies: dict[bytes, list[bytes]] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(replies), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())


if __name__ == "__main__":
    main()
