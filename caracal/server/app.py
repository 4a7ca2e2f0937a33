"""The ASGI application: REST API, gateway, ``/healthz``, ``/metrics`` and the OpenAPI document.

:func:`create_app` builds it over a :class:`Service` (one home). Two pure ASGI middlewares wrap every
request: the body's bounds (``server.max_body_bytes``: 413 before a handler sees more;
``server.body_timeout``: 408 and the connection closed when the body has not arrived in time) and the
latency histogram. Every error leaves as JSON in the shape of :mod:`caracal.server.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caracal import __version__
from caracal.exceptions import CaracalError, InvalidRequestError
from caracal.server import alerts_api, api, mcp
from caracal.server.auth import authenticate, require_admin
from caracal.server.errors import error_response, http_error_response, json_response
from caracal.server.gateway import proxy
from caracal.server.service import Service
from caracal.server.ui import routes as ui

logger = logging.getLogger("caracal.server")


def worker_app() -> FastAPI:
    """The app of one worker process of ``caracal serve --workers N`` (uvicorn calls this factory in each
    worker, see :mod:`caracal.server.runner`): its own :class:`Service` over the home of ``$CARACAL_HOME``,
    closed by the app at shutdown (queued ledger operations written, snapshot and checkpoint saved).

    A home this worker cannot open exits with uvicorn's startup-failure status, so that the supervisor stops
    instead of restarting the worker in a loop (``caracal serve`` opened the home once before starting the
    workers, so this is rare: a home broken in between)."""
    from caracal.config import caracal_home

    home = caracal_home()
    try:
        service = Service(home)
    except CaracalError as exc:
        from uvicorn.config import STARTUP_FAILURE

        logger.error("worker %d cannot serve %s: %s", os.getpid(), home, exc)
        sys.exit(STARTUP_FAILURE)
    return create_app(service, own_service=True)


def create_app(
    service: Service,
    *,
    max_body_bytes: int | None = None,
    body_timeout: float | None = None,
    own_service: bool = False,
) -> FastAPI:
    """The application over ``service``; with ``own_service`` it closes the service at shutdown. The body's
    bounds are the home's ``server.max_body_bytes`` and ``server.body_timeout`` unless given."""
    if max_body_bytes is None:
        max_body_bytes = service.home.settings.max_body_bytes
    if body_timeout is None:
        body_timeout = service.home.settings.body_timeout

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            async with mcp_endpoints.running():
                yield
        finally:
            await gateway.close()
            if own_service:
                service.close()

    app = _CaracalApp(
        title="Caracal",
        version=__version__,
        description=(
            "Economic control plane for AI agents: budgets enforced before actions run, an exact "
            "append-only ledger. Authenticate with `Authorization: Bearer <key>` (or `x-api-key`)."
        ),
        lifespan=lifespan,
        # Prometheus at /metrics is Caracal's telemetry; FastAPI's OpenTelemetry hooks would only cost time
        # on every request (an older FastAPI takes this as an unused extra setting).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service

    @app.exception_handler(CaracalError)
    async def caracal_error(request: Request, exc: CaracalError) -> Response:
        service.metrics.errors.labels(type(exc).__name__).inc()
        return error_response(exc, getattr(request.state, "principal", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg')}"
            for error in exc.errors()
        )
        return error_response(InvalidRequestError(f"invalid request: {problems}"))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        if isinstance(exc, (_BodyTooLarge, _BodyTimedOut)):
            return exc.response()
        return http_error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.get("/healthz", tags=["operations"], summary="Liveness: the service is up (open: says nothing more)")
    def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (admin key)")
    def metrics(request: Request) -> Response:
        require_admin(authenticate(service, request))
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(api.router)
    app.include_router(alerts_api.router)
    ui.install(app)
    gateway = proxy.install(app, service)
    mcp_endpoints = mcp.McpEndpoints(service)
    app.mcp_app = _BodyLimit(_Observed(mcp_endpoints, service), max_body_bytes, body_timeout)
    app.add_middleware(_Observed, service=service)
    app.add_middleware(_BodyLimit, max_body_bytes=max_body_bytes, body_timeout=body_timeout)
    app.gateway_app = _BodyLimit(_Observed(gateway, service), max_body_bytes, body_timeout)
    return app


class _CaracalApp(FastAPI):
    """FastAPI for the REST API; the LLM gateway's paths go straight to the gateway, wrapped only in the
    body limit and the latency histogram (see :func:`caracal.server.gateway.proxy.install`)."""

    gateway_app: ASGIApp
    mcp_app: ASGIApp
    """``/mcp/<name>``: the MCP endpoints (:mod:`caracal.server.mcp`), routed like the gateway."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and proxy.is_gateway_path(scope["path"]):
            await self.gateway_app(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith(mcp.PREFIX):
            await self.mcp_app(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class _BodyLimit:
    """The request body's bounds, in size and in time.

    - 413 for a body over ``max_body_bytes``, by its Content-Length or by counting what arrives.
    - 408 for a body that has not fully arrived ``body_timeout`` seconds after the request reached the app
      (its headers did): a client that sends part of a body and stalls cannot hold a connection and a
      handler forever. The bound covers the whole body, so trickling it in byte by byte does not help.
    - An answer sent before the whole body arrived (those two, or a 401 that did not need the body) closes
      the connection (``Connection: close``): the unread rest must not be taken for a next request, and a
      client trickling it in must not keep the connection open after its answer.

    Only reading the body is bounded: once it is complete, waiting for the client to disconnect (as a
    streamed answer does) is not.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout: float):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        received = 0
        complete = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise _BodyTimedOut(self.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            else:  # the client is gone: there is no more body to wait for
                complete = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not complete:
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            await send(message)

        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = True
                if too_big:
                    await _too_large(limit)(scope, receive, tracking_send)
                    return
        try:
            await self.app(scope, bounded_receive, tracking_send)
        except (_BodyTooLarge, _BodyTimedOut) as exc:
            if not started:
                await exc.response()(scope, receive, tracking_send)


_CLOSE = (b"connection", b"close")


class _BodyTooLarge(HTTPException):
    """Raised by the bounded ``receive``: an HTTPException, so that FastAPI's body parsing re-raises it
    (it turns any other exception into "400 error parsing the body") and the app answers 413."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large_message(limit))
        self.limit = limit

    def response(self) -> Response:
        return _too_large(self.limit)


class _BodyTimedOut(HTTPException):
    """Raised by the bounded ``receive`` when the body is late (an HTTPException for the same reason)."""

    def __init__(self, seconds: float):
        super().__init__(408, f"the request body did not arrive within {seconds:g} s (server.body_timeout)")

    def response(self) -> Response:
        response = error_response(InvalidRequestError(str(self.detail)))
        response.status_code = 408
        return response


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than the server's limit of {limit} bytes"


def _too_large(limit: int) -> Response:
    response = error_response(InvalidRequestError(_too_large_message(limit)))
    response.status_code = 413
    return response


class _Observed:
    """Request latency by route template, method and status class (``2xx``...)."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.histogram = service.metrics.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            route: Any = scope.get("route")
            path = scope["path"]
            if proxy.is_gateway_path(path):
                known = proxy.path_template(path)
            else:
                known = "/mcp/{name}" if path.startswith(mcp.PREFIX) else "unmatched"
            template = getattr(route, "path", known)
            self.histogram.labels(template, scope["method"], f"{status[0] // 100}xx").observe(
                time.perf_counter() - started
            )


__all__ = ["create_app", "worker_app"]
