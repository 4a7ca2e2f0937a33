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
    GatewayRequestError,
    UpstreamError,
)
from caracal.server.auth import AGENT_HEADER, acting_agent, authenticate
from caracal.server.errors import error_response, http_error_response
from caracal.server.gateway.estimate import (
    Bound,
    bound_anthropic_messages,
    bound_openai_chat,
    bound_openai_embeddings,
    bound_openai_responses,
)
from caracal.server.gateway.headers import passed_headers, provider_key, upstream_headers
from caracal.server.gateway.pricing import hold_amount, usage_charges
from caracal.server.gateway.responses import (
    RESPONSES_PREFIX,
    ResponseRecorder,
    openapi_response_operations,
    previous_tokens,
    response_operation,
)
from caracal.server.gateway.tokens import TokenCounter, counter_for_model, is_loaded, preload
from caracal.server.gateway.usage import ProviderApi, StreamMeter, Usage, billable, usage_from_response
from caracal.server.service import Service

logger = logging.getLogger("caracal.gateway")

CLOSE_DEFER = 0.005
"""Seconds a settlement or release may wait to share the next hold's fsync (see GroupCommitter)."""


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
            body,
            max_output_tokens=cap,
            image_tokens=images,
            previous_tokens=previous,
            counter=_counter(body),
        ),
    ),
}


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
        self.recorder = ResponseRecorder(service)

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
            response = await response_operation(self, Request(scope, receive))
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
        agent_id = self.agent_of(caller, request)
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise GatewayRequestError(f"the request body is not valid JSON: {exc}") from None
        limits = (self.settings.max_output_tokens, self.settings.image_tokens)
        previous = await previous_tokens(service, agent_id, body) if route.api == "openai-responses" else 0
        if len(raw) > COUNT_INLINE_BYTES or not is_loaded(_model(body)):
            bound, forward = await asyncio.to_thread(route.bound, body, *limits, previous)
        else:
            bound, forward = route.bound(body, *limits, previous)
        upstream = self.settings.upstream(route.upstream)
        key = provider_key(upstream)
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
        headers = upstream_headers(route.upstream, key, request)
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
            return Response(content, response.status, passed_headers(response), response.content_type)
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
        return Response(content, response.status, passed_headers(response), response.content_type)

    def agent_of(self, principal: Principal, request: Request) -> str:
        return acting_agent(self.service, principal, request)


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
        agent_id: str,
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

    async def record_response(self, response_id: object, usage: Usage | None) -> None:
        """Record a Responses API response for this call's agent with the tokens it was billed for (its bound
        when ``usage`` is None or an estimate), so a request that continues it is bounded (and allowed). A
        failure is logged: the response then cannot be continued through the gateway (refused, never
        unbounded)."""
        if not isinstance(response_id, str) or not response_id:
            return
        if usage is None or usage.estimated:
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
        headers = {**passed_headers(upstream), "cache-control": "no-cache", "content-type": content_type}
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
                    await self.call.record_response(meter.response_id, None)
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


_PENDING: set[asyncio.Future[None]] = set()
"""Record updates queued at the end of a stream (kept referenced until done)."""

_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
"""Upstream failures that happen before any byte of the request is sent: only these release the hold."""


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
            schema["paths"].update(openapi_response_operations())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.gateway = gateway
    return gateway


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
