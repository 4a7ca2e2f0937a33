"""The gateway endpoints: OpenAI-compatible ``POST /v1/chat/completions``, ``POST /v1/embeddings`` and
``POST /v1/responses``, Anthropic-compatible ``POST /v1/messages``. An agent points its client's
``base_url`` at Caracal and uses its Caracal key as the API key; nothing else in its code changes.

The Responses API also has ``GET``/``DELETE /v1/responses/{id}``, ``GET .../input_items`` and ``POST
.../cancel``: passed through, uncharged, for the agent that created the response only (the registry of
:mod:`caracal.storage.responses`, written before a response reaches its client; 404 for anyone else). A
request with ``previous_response_id`` holds for the recorded tokens of the response it continues too.

For each call, in this order:

1. **Who.** The Caracal key names the agent (an agent key acts for its own agent; the admin key must name
   one in ``X-Caracal-Agent``). The provider key is taken from the configuration; the agent's key is never
   forwarded and the provider key never reaches the agent.
2. **Worst case.** The request is bounded (:mod:`.estimate`: input tokens <= bytes, or the count of the
   model's tokenizer where :mod:`.tokens` has one; output tokens <= the request's ``max_tokens`` or the
   configured cap, which is then injected so the bound holds) and priced from the pricebook
   (:mod:`.pricing`). An unknown price refuses the call (400) before anything is held.
3. **Hold.** The worst case is reserved, atomically with every other request (group commit). Denied: HTTP
   402 with the policy and what remains, and **no upstream call is made**. Granted: the hold is durable
   before the request is forwarded. Gateway holds are taken **charge-on-expiry** (``on_expiry: charge``,
   with the bound in their metadata): if nothing closes one before it expires (the server was killed),
   the call is billed at its bound, marked estimated. That includes a crash between the hold's fsync and
   the send: Caracal cannot prove the request was not sent, so it bills rather than forgets.
4. **Forward** to the configured upstream. Streams are passed through chunk by chunk and metered on the way
   (:class:`.usage.StreamMeter`); OpenAI streams are asked to include usage.
5. **Settle** from the provider's reported usage (:func:`.usage.billable`: when none was reported, e.g. the
   client disconnected, the upstream failed mid-stream or timed out after the request was sent, the safe
   upper bound of what could have been consumed). An upstream error response, or an upstream that could
   not be reached at all (nothing sent), releases the hold: nothing was billed. The provider refusing the
   gateway's own key is a 502 for the agent (its Caracal key was fine), never the provider's message.

The settlement is queued to the group committer as the response completes rather than awaited before it:
the client does not wait for that fsync, and the hold keeps the money reserved until the settlement lands
(operations run in queue order, so the agent's next call already sees it). A server crash in between (or
while the upstream was answering) leaves the hold on record; when it expires, the next start of the
server (or any later write to the ledger) bills it at its bound, marked ``estimated``: an answered call
never ends unbilled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from caracal.config import UpstreamSettings
from caracal.core.apikeys import Principal
from caracal.core.enforcement import Hold, Operation
from caracal.exceptions import (
    BudgetExceededError,
    CaracalError,
    ConfigurationError,
    GatewayRequestError,
    UpstreamError,
)
from caracal.server.auth import authenticate, require_writable
from caracal.server.errors import error_response, http_error_response
from caracal.server.gateway.estimate import (
    Bound,
    bound_anthropic_messages,
    bound_openai_chat,
    bound_openai_embeddings,
    bound_openai_responses,
)
from caracal.server.gateway.pricing import hold_amount, usage_charges
from caracal.server.gateway.tokens import TokenCounter, counter_for_model, is_loaded, preload
from caracal.server.gateway.usage import ProviderApi, StreamMeter, Usage, billable, usage_from_response
from caracal.server.service import Service
from caracal.storage.responses import check_response_id

logger = logging.getLogger("caracal.gateway")

AGENT_HEADER = "x-caracal-agent"
CLOSE_DEFER = 0.005
"""Seconds a settlement or release may wait to share the next hold's fsync (see GroupCommitter)."""
ANTHROPIC_VERSION = "2023-06-01"
_PASSED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-organization", "openai-project")


@dataclass(frozen=True)
class _Route:
    api: ProviderApi
    upstream: str  # "openai" | "anthropic": which [gateway.<name>] table
    path: str  # appended to the upstream's base_url
    bound: Callable[[object, int, int, int], tuple[Bound, dict[str, Any]]]
    """(body, output cap, tokens per image, tokens of the response it continues) -> (bound, forwarded body)"""


_ROUTES = {
    "/v1/chat/completions": _Route(
        "openai-chat",
        "openai",
        "/chat/completions",
        lambda body, cap, images, _previous: bound_openai_chat(
            body,
            max_output_tokens=cap,
            image_tokens=images,
            output_cap_field=_output_cap_field(body),
            counter=_counter(body),
        ),
    ),
    "/v1/embeddings": _Route(
        "openai-embeddings",
        "openai",
        "/embeddings",
        lambda body, _cap, _images, _previous: bound_openai_embeddings(body, counter=_counter(body)),
    ),
    "/v1/messages": _Route(
        "anthropic",
        "anthropic",
        "/messages",
        lambda body, cap, images, _previous: bound_anthropic_messages(
            body, max_output_tokens=cap, image_tokens=images
        ),
    ),
    "/v1/responses": _Route(
        "openai-responses",
        "openai",
        "/responses",
        lambda body, cap, images, previous: bound_openai_responses(
            body, max_output_tokens=cap, image_tokens=images, previous_tokens=previous
        ),
    ),
}

RESPONSES_PREFIX = "/v1/responses/"
"""``GET``/``DELETE /v1/responses/{id}``, ``GET .../input_items``, ``POST .../cancel``: passed through for the
agent that created the response (:meth:`Gateway.response_operation`), never charged."""
_RESPONSE_OPERATIONS = {("GET", ""), ("DELETE", ""), ("GET", "/input_items"), ("POST", "/cancel")}


COUNT_INLINE_BYTES = 32 * 1024
"""Request bodies up to this size are bounded on the event loop (counting 32 KB of text takes 1-2 ms);
larger ones, and any request that would wait for an encoding to load, are bounded in a worker thread."""


def _model(body: object) -> object:
    return body.get("model") if isinstance(body, dict) else None


def _counter(body: object) -> TokenCounter | None:
    """The tokenizer of the request's model (:mod:`.tokens`), or ``None``: the byte bound applies."""
    return counter_for_model(_model(body))


REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
"""OpenAI models that think before they answer: they refuse ``max_tokens`` (the cap is injected as
``max_completion_tokens``), and their reasoning tokens are billed but never streamed, so a stream that ends
without a usage report is billed at the whole output bound rather than at what was seen."""


def _is_reasoning(model: object) -> bool:
    return isinstance(model, str) and model.startswith(REASONING_MODEL_PREFIXES)


def _output_cap_field(body: object) -> Literal["max_tokens", "max_completion_tokens"]:
    reasoning = isinstance(body, dict) and _is_reasoning(body.get("model"))
    return "max_completion_tokens" if reasoning else "max_tokens"


class Gateway:
    """The gateway of one server: its upstream HTTP session and the request flow of the module docstring."""

    def __init__(self, service: Service):
        self.service = service
        self.settings = service.home.settings
        self._session: aiohttp.ClientSession | None = None
        preload()  # the tokenizers load in the background (a fraction of a second); see COUNT_INLINE_BYTES
        self.recorder = _Recorder(service)

    def session(self) -> aiohttp.ClientSession:
        """One pooled session per server (created in the server's event loop on first use)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=1000),
                timeout=aiohttp.ClientTimeout(total=self.settings.upstream_timeout, sock_connect=10),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """ASGI entry for :data:`PATHS` and the paths under :data:`RESPONSES_PREFIX`."""
        if scope["path"].startswith(RESPONSES_PREFIX):
            response = await self.response_operation(Request(scope, receive))
        elif scope["method"] != "POST":
            response = http_error_response(405, "use POST", {"allow": "POST"})
        else:
            response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request, _ROUTES[request.scope["path"]])
        except CaracalError as exc:
            if isinstance(exc, BudgetExceededError):
                self.service.metrics.decisions.labels("gateway", "denied").inc()
            self.service.metrics.errors.labels(type(exc).__name__).inc()
            return error_response(exc, getattr(request.state, "principal", None))

    async def _handle(self, request: Request, route: _Route) -> Response:
        service = self.service
        request.state.principal = caller = authenticate(service, request)
        agent_id = self._agent_of(caller, request)
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise GatewayRequestError(f"the request body is not valid JSON: {exc}") from None
        limits = (self.settings.max_output_tokens, self.settings.image_tokens)
        previous = await self._previous_tokens(agent_id, body) if route.api == "openai-responses" else 0
        if len(raw) > COUNT_INLINE_BYTES or not is_loaded(_model(body)):
            bound, forward = await asyncio.to_thread(route.bound, body, *limits, previous)
        else:
            bound, forward = route.bound(body, *limits, previous)
        upstream = self.settings.upstream(route.upstream)
        provider_key = _provider_key(upstream)
        model = forward["model"]
        enforcer = service.enforcer
        amount, currency = hold_amount(
            service.home.prices.pricebook(), upstream.provider, model, bound, enforcer.now()
        )
        hold = await service.run(
            enforcer.reserve_op(
                agent_id,
                amount,
                currency,
                self.settings.gateway_hold_ttl,
                on_expiry="charge",  # see the module docstring: a forwarded call ends billed
                metadata={
                    "gateway": route.api,
                    "model": model,
                    "input_tokens_bound": bound.input_tokens,
                    "output_tokens_bound": bound.output_tokens,
                },
            )
        )
        service.metrics.decisions.labels("gateway", "allowed").inc()
        service.metrics.holds.labels("placed").inc()
        started = time.perf_counter()
        call = _Call(self, route, upstream, hold, bound, model, started, agent_id)
        headers = _upstream_headers(route, provider_key, request)
        try:
            response = await self.session().post(
                upstream.base_url + route.path, data=orjson.dumps(forward), headers=headers
            )
        except _NOT_SENT as exc:
            call.release("unreachable")
            raise UpstreamError(
                f"the upstream {upstream.base_url} could not be reached ({type(exc).__name__}: {exc}); "
                f"nothing was sent, the hold was released and nothing was billed",
                outcome="the upstream could not be reached; nothing was sent, the hold was released and "
                "nothing was billed",
            ) from None
        except BaseException as exc:
            raise call.failed(exc) from None
        if response.status >= 400:
            try:
                content = await response.read()
            finally:
                response.release()
                call.release(f"http_{response.status}")
            if response.status in (401, 403):
                raise UpstreamError(
                    f"the {upstream.api} upstream refused the gateway's provider key (HTTP "
                    f"{response.status}): the operator must check ${upstream.api_key_env} or "
                    f"gateway.{upstream.api}.api_key on the server; the hold was released",
                    outcome="the upstream refused the gateway's provider key, which the server's operator "
                    "must fix; the hold was released and nothing was billed",
                )
            return Response(content, response.status, _passed_headers(response), response.content_type)
        if forward.get("stream") is True:
            return _Passthrough(call, response)
        try:
            content = await response.read()
        except BaseException as exc:
            raise call.failed(exc) from None
        finally:
            response.release()
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            answer = None
        usage = billable(usage_from_response(route.api, answer), bound, None)
        call.settle(usage, "ok")
        if route.api == "openai-responses" and isinstance(answer, dict):
            await call.record_response(answer.get("id"), usage)  # before the client can continue it
        return Response(content, response.status, _passed_headers(response), response.content_type)

    async def _previous_tokens(self, agent_id: str, body: object) -> int:
        """The recorded tokens of the response a Responses request continues (0 when it continues none);
        :class:`ResponseNotFoundError` when the agent created no such response through the gateway."""
        previous = body.get("previous_response_id") if isinstance(body, dict) else None
        if previous is None:
            return 0
        if not isinstance(previous, str) or not previous:
            raise GatewayRequestError("previous_response_id must be a non-empty string")
        record = await asyncio.to_thread(self.service.home.responses.get, previous, agent_id)
        return record.tokens

    async def response_operation(self, request: Request) -> Response:
        """Read, delete, list the input items of, or cancel a response: passed through (with the provider
        key) only for the agent that created it; any other caller gets 404, as for an unknown id. Nothing is
        held or charged (the provider does not bill these)."""
        try:
            caller = request.state.principal = authenticate(self.service, request)
            agent_id = self._agent_of(caller, request)
            rest = request.scope["path"][len(RESPONSES_PREFIX) :]
            response_id, _slash, tail = rest.partition("/")
            suffix = f"/{tail}" if tail else ""
            method = request.scope["method"]
            if (method, suffix) not in _RESPONSE_OPERATIONS:
                allowed = sorted(m for m, s in _RESPONSE_OPERATIONS if s == suffix)
                if not allowed:
                    return http_error_response(404, f"no gateway operation at {request.scope['path']}")
                return http_error_response(405, f"use {' or '.join(allowed)}", {"allow": ", ".join(allowed)})
            # 404 unless this agent's (a registry read: off the event loop)
            await asyncio.to_thread(self.service.home.responses.get, response_id, agent_id)
            check_response_id(response_id)
            upstream = self.settings.upstream("openai")
            headers = _upstream_headers(_ROUTES["/v1/responses"], _provider_key(upstream), request)
            url = f"{upstream.base_url}/responses/{response_id}{suffix}"
            query = request.scope.get("query_string", b"").decode("latin-1")
            try:
                async with self.session().request(
                    method,
                    url + (f"?{query}" if query else ""),
                    data=await request.body() or None,
                    headers=headers,
                ) as answer:
                    content = await answer.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise UpstreamError(
                    f"the upstream {upstream.base_url} failed on {method} {url} "
                    f"({type(exc).__name__}: {exc})",
                    outcome="the upstream failed; nothing was held or billed",
                ) from None
            if answer.status in (401, 403):
                raise UpstreamError(
                    f"the openai upstream refused the gateway's provider key (HTTP {answer.status}) on "
                    f"{method} {url}: the operator must check ${upstream.api_key_env}",
                    outcome="the upstream refused the gateway's provider key; nothing was held or billed",
                )
            if method == "DELETE" and answer.status < 300:
                try:
                    await asyncio.to_thread(self.service.home.responses.forget, response_id)
                except (
                    CaracalError
                ) as exc:  # deleted upstream all the same; a stale record reaches a 404 there
                    logger.error("could not forget deleted response %s: %s", response_id, exc)
            return Response(content, answer.status, _passed_headers(answer), answer.content_type)
        except CaracalError as exc:
            self.service.metrics.errors.labels(type(exc).__name__).inc()
            return error_response(exc, getattr(request.state, "principal", None))

    def _agent_of(self, principal: Principal, request: Request) -> str:
        if principal.agent_id is not None:
            require_writable(self.service, principal)  # a suspended agent's key: 403, nothing forwarded
            return principal.agent_id
        named = request.headers.get(AGENT_HEADER)
        if not named:
            raise GatewayRequestError(
                f"the admin key acts for no agent: name the agent in the {AGENT_HEADER} header, or use the "
                f"agent's own key (caracal agent key create NAME)"
            )
        return self.service.home.directory.agent_id(named)


class _Call:
    """One forwarded call's hold, closed exactly once: settled from usage, or released."""

    def __init__(
        self,
        gateway: Gateway,
        route: _Route,
        upstream: UpstreamSettings,
        hold: Hold,
        bound: Bound,
        model: str,
        started: float,
        agent_id: str = "",
    ):
        self.gateway = gateway
        self.agent_id = agent_id
        self.route = route
        self.upstream = upstream
        self.hold = hold
        self.bound = bound
        self.model = model
        self.started = started
        self.closed = False

    def release(self, outcome: str) -> None:
        if not self.closed:
            self._close(outcome, "release", self.gateway.service.enforcer.release_op(self.hold.hold_id))

    def settle(self, usage: Usage, outcome: str) -> None:
        """Queue the settlement (see the module docstring); failures are logged and counted."""
        if self.closed:
            return
        service = self.gateway.service
        try:
            charges = usage_charges(
                service.home.prices.pricebook(),
                self.upstream.provider,
                self.model,
                usage,
                service.enforcer.now(),
                {"gateway": self.route.api},
                currency=self.hold.currency,
            )
        except CaracalError as exc:  # the price vanished since the hold: bill the whole hold, never nothing
            logger.error("pricing the usage of hold %s failed (%s); billing the hold", self.hold.hold_id, exc)
            charges = [
                {
                    "resource_type": f"{self.upstream.provider}.{self.model}.unpriced_call",
                    "quantity": 1,
                    "cost": self.hold.amount,
                    "metadata": {"gateway": self.route.api, "pricing_error": str(exc)[:500]},
                }
            ]
        self._close(outcome, "settle", service.enforcer.settle_op(self.hold.hold_id, charges))

    async def record_response(self, response_id: object, usage: Usage) -> None:
        """Record a Responses API response for this call's agent with the tokens it was billed for (its bound
        when the usage is an estimate), so a request that continues it is bounded (and allowed). A failure
        is logged: the response then cannot be continued through the gateway (refused, never unbounded)."""
        if not isinstance(response_id, str) or not response_id:
            return
        if usage.estimated:
            tokens = self.bound.input_tokens + self.bound.output_tokens
        else:
            tokens = (
                usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens + usage.output_tokens
            )
        try:
            await self.gateway.recorder.record(response_id, self.agent_id, tokens)
        except Exception as exc:  # the call is billed and answered either way; only continuing it is refused
            logger.error(
                "could not record response %.80s of hold %s: %s", response_id, self.hold.hold_id, exc
            )

    def failed(self, exc: BaseException) -> BaseException:
        """The upstream failed after the request was sent (a timeout, a dropped connection, a cancelled
        handler): the provider may have processed it and may bill it, so the call is billed at its worst
        case (fail closed). Returns the exception to raise."""
        self.settle(billable(None, self.bound, None), "failed")
        if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return UpstreamError(
                f"the upstream {self.upstream.base_url} failed after the request was sent ({cause}); the "
                f"call was billed at its worst case because the provider may have processed it",
                outcome="the upstream failed after the request was sent; the call was billed at its worst "
                "case because the provider may have processed it",
            )
        return exc

    def _close(self, outcome: str, what: Literal["settle", "release"], operation: Operation[Any]) -> None:
        """Record the upstream's outcome and queue the operation that closes the hold (deferred: nobody
        waits for it); a failure to record it is logged and counted."""
        self.closed = True
        metrics = self.gateway.service.metrics
        metrics.upstream.labels(self.route.api, outcome).observe(time.perf_counter() - self.started)
        metrics.holds.labels("settled" if what == "settle" else "released").inc()
        future = self.gateway.service.committer.submit(operation, defer=CLOSE_DEFER)
        hold_id = self.hold.hold_id

        def check(done: Future[Any]) -> None:
            exc = done.exception()
            if exc is not None:
                metrics.close_failures.labels(what).inc()
                logger.error("could not %s gateway hold %s: %s", what, hold_id, exc)

        future.add_done_callback(check)


class _Passthrough(Response):
    """A streamed upstream response, passed to the client chunk by chunk and metered on the way; the call
    is settled when the stream ends, however it ends.

    A plain ASGI response rather than Starlette's ``StreamingResponse``: that one runs each stream in an
    anyio task group to notice a client disconnect, which cost more than everything else the gateway does
    per chunk. Here one small task waits for the disconnect and the loop looks at it between chunks; when
    the client is gone the upstream connection is closed (the provider stops generating) and what was
    streamed so far is billed (see :func:`~caracal.server.gateway.usage.billable`).
    """

    def __init__(self, call: _Call, upstream: aiohttp.ClientResponse):
        self.call = call
        self.upstream = upstream
        self.status_code = upstream.status
        content_type = upstream.headers.get("content-type", "text/event-stream")
        headers = {**_passed_headers(upstream), "cache-control": "no-cache", "content-type": content_type}
        self.raw_headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        meter = StreamMeter()
        responses = self.call.route.api == "openai-responses"
        recorded = False
        outcome = "cancelled"  # the client went away, or the handler was cancelled
        disconnected = asyncio.ensure_future(receive())  # the request body is read: next comes the disconnect
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            async for chunk in self.upstream.content.iter_any():
                meter.feed(chunk)
                if disconnected.done():
                    break
                if responses and not recorded and meter.response_id is not None:
                    # At its worst case, before the client sees the id and can continue the response.
                    recorded = True
                    await self.call.record_response(meter.response_id, billable(None, self.call.bound, None))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                outcome = "ok"
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            outcome = "failed"
            raise  # the client's connection is dropped too, so it sees the failure instead of a clean end
        finally:
            disconnected.cancel()
            if outcome == "ok":
                self.upstream.release()  # back to the pool
            else:
                self.upstream.close()  # the provider sees the connection drop and stops generating
            # Hidden reasoning is never streamed: a reasoning model's, and any Responses API stream's (its
            # models may reason whatever their name), output is billed at the whole bound without a report.
            seen = None if responses or _is_reasoning(self.call.model) else meter.consumed_output_bound()
            usage = billable(meter.usage(), self.call.bound, seen)
            self.call.settle(usage, outcome)
            if recorded and not usage.estimated:  # lowered to the reported usage; else the worst case stays
                task = asyncio.ensure_future(self.call.record_response(meter.response_id, usage))
                _PENDING.add(task)
                task.add_done_callback(_PENDING.discard)


class _Recorder:
    """Writes the records of Responses API responses, batching per shard the ones that arrive while that
    shard's write is under way into its next one: a shard is one document rewritten whole, so concurrent
    calls share one write instead of queueing on its lock one by one, and different shards are written at
    the same time. Each caller waits for the write that holds its record (it must be stored before the
    client can continue the response); a shard's records are written in arrival order."""

    def __init__(self, service: Service):
        self.service = service
        self.pending: dict[int, list[tuple[str, str, int, asyncio.Future[None]]]] = {}
        self.writers: dict[int, asyncio.Future[None]] = {}

    async def record(self, response_id: str, agent_id: str, tokens: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard = self.service.home.responses.shard_of(response_id)
        self.pending.setdefault(shard, []).append((response_id, agent_id, tokens, done))
        writer = self.writers.get(shard)
        if writer is None or writer.done():
            self.writers[shard] = asyncio.ensure_future(self._write(shard))
        await done

    async def _write(self, shard: int) -> None:
        while self.pending.get(shard):
            batch = self.pending.pop(shard)
            try:
                records = [(response_id, agent, tokens) for response_id, agent, tokens, _done in batch]
                await asyncio.to_thread(self.service.home.responses.record_many, records)
            except Exception as exc:
                for *_record, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for *_record, done in batch:
                    if not done.done():
                        done.set_result(None)


_PENDING: set[asyncio.Future[None]] = set()
"""Record updates queued at the end of a stream (kept referenced until done)."""

_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
"""Upstream failures that happen before any byte of the request is sent: only these release the hold."""

_PASSED_RESPONSE_HEADERS = frozenset(("retry-after", "x-request-id", "request-id", "openai-processing-ms"))
_PASSED_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def _passed_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The provider's response headers a client uses (retry-after for backoff, request ids, rate limits);
    never its cookies, encodings or lengths (the gateway sets its own)."""
    return {
        name: value
        for name, value in response.headers.items()
        if (lower := name.lower()) in _PASSED_RESPONSE_HEADERS or lower.startswith(_PASSED_RESPONSE_PREFIXES)
    }


def _provider_key(upstream: UpstreamSettings) -> str:
    key = upstream.api_key or os.environ.get(upstream.api_key_env)
    if not key:
        raise ConfigurationError(
            f"no provider key for the {upstream.api} upstream: set ${upstream.api_key_env} for the server, "
            f"or gateway.{upstream.api}.api_key in config.toml"
        )
    return key


def _upstream_headers(route: _Route, provider_key: str, request: Request) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept-encoding": "identity"}  # bodies read as sent
    for name in _PASSED_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    if route.upstream == "anthropic":
        headers["x-api-key"] = provider_key
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    else:
        headers["authorization"] = f"Bearer {provider_key}"
    return headers


PATHS = frozenset(_ROUTES)
"""The gateway's paths: the application hands requests for them straight to :meth:`Gateway.__call__`."""


def is_gateway_path(path: str) -> bool:
    """True for :data:`PATHS` and the paths under :data:`RESPONSES_PREFIX` (the gateway's requests)."""
    return path in PATHS or path.startswith(RESPONSES_PREFIX)


def path_template(path: str) -> str:
    """The gateway path as metrics label it (one label for every response id)."""
    if path.startswith(RESPONSES_PREFIX):
        tail = path[len(RESPONSES_PREFIX) :].partition("/")[2]
        return RESPONSES_PREFIX + "{id}" + (f"/{tail}" if tail in ("input_items", "cancel") else "")
    return path


def install(app: FastAPI, service: Service) -> Gateway:
    """The gateway of ``app``, and its operations in ``app``'s OpenAPI document (bodies as the providers
    define them). The application routes :data:`PATHS` to the gateway itself (see
    :mod:`caracal.server.app`), ahead of FastAPI's middleware and routing: the body is the provider's, read
    once with orjson, so that machinery would only add latency to every LLM call."""
    gateway = Gateway(service)
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_schema()
            for path, route in _ROUTES.items():
                schema["paths"][path] = _openapi_operation(route)
            schema["paths"].update(_openapi_response_operations())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.gateway = gateway
    return gateway


def _openapi_response_operations() -> dict[str, Any]:
    """``GET``/``DELETE /v1/responses/{response_id}``, ``GET .../input_items``, ``POST .../cancel``."""
    parameter = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
    error = {"description": "JSON error: {error: {type, code, message}}"}

    def operation(summary: str) -> dict[str, Any]:
        return {
            "tags": ["gateway"],
            "summary": summary,
            "description": (
                "Passed through to OpenAI, uncharged, for the agent that created the response through the "
                "gateway; any other agent gets 404, as for an unknown id."
            ),
            "parameters": [parameter],
            "responses": {"200": {"description": "The OpenAI answer"}, "401": error, "404": error},
        }

    paths: dict[str, Any] = {}
    for method, suffix in sorted(_RESPONSE_OPERATIONS):
        path = f"{RESPONSES_PREFIX}{{response_id}}{suffix}"
        what = {"GET": "Read", "DELETE": "Delete", "POST": "Cancel"}[method]
        summary = f"{what} a response" + (" (its input items)" if suffix == "/input_items" else "")
        paths.setdefault(path, {})[method.lower()] = operation(summary)
    return paths


def _openapi_operation(route: _Route) -> dict[str, Any]:
    provider = "Anthropic" if route.upstream == "anthropic" else "OpenAI"
    error = {"description": "JSON error: {error: {type, code, message, decision?}}"}
    return {
        "post": {
            "tags": ["gateway"],
            "summary": f"{provider}-compatible {route.path.strip('/')} with a pre-call hold",
            "description": (
                f"The {provider} request and response, unchanged; authenticate with a Caracal agent key "
                f"(or the admin key and an {AGENT_HEADER} header). The worst-case cost is held before "
                f"the call is forwarded and settled from the reported usage."
            ),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": {"description": f"The {provider} response (JSON, or events when streamed)"},
                "400": error,
                "401": error,
                "402": {"description": "Denied: the hold would exceed a budget; nothing was forwarded"},
                "403": error,
                "502": error,
            },
        }
    }


__all__ = [
    "AGENT_HEADER",
    "PATHS",
    "RESPONSES_PREFIX",
    "Gateway",
    "install",
    "is_gateway_path",
    "path_template",
]
