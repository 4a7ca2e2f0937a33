"""The OpenAI Responses API's own parts of the gateway: the records of the responses it created, the bound a
continuation adds, and the operations on a stored response (read, delete, input items, cancel).

A ``POST /v1/responses`` goes through the gateway's common flow (:mod:`.proxy`); what is particular to it
lives here. Invariants: a response is recorded (:class:`ResponseRecorder`) before its client can continue
it, at the tokens billed for it; a request that continues a response is bounded by those tokens
(:func:`previous_tokens`), and refused when this agent did not create it through the gateway; a stored
response's operations pass through, uncharged, only for the agent that created it (:func:`response_operation`:
any other caller gets 404, as for an id that does not exist).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from caracal.exceptions import CaracalError, GatewayRequestError, UpstreamError
from caracal.server.auth import authenticate
from caracal.server.errors import error_response, http_error_response
from caracal.server.gateway.headers import passed_headers, provider_key, upstream_headers
from caracal.server.service import Service

if TYPE_CHECKING:
    from caracal.server.gateway.proxy import Gateway

logger = logging.getLogger("caracal.gateway")

RESPONSES_PREFIX = "/v1/responses/"
"""``GET``/``DELETE /v1/responses/{id}``, ``GET .../input_items``, ``POST .../cancel``: passed through for the
agent that created the response (:func:`response_operation`), never charged."""
RESPONSE_OPERATIONS = {("GET", ""), ("DELETE", ""), ("GET", "/input_items"), ("POST", "/cancel")}


class ResponseRecorder:
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


async def previous_tokens(service: Service, agent_id: str, body: object) -> int:
    """The recorded tokens of the response a Responses request continues (0 when it continues none);
    :class:`ResponseNotFoundError` when the agent created no such response through the gateway."""
    previous = body.get("previous_response_id") if isinstance(body, dict) else None
    if previous is None:
        return 0
    if not isinstance(previous, str) or not previous:
        raise GatewayRequestError("previous_response_id must be a non-empty string")
    record = await asyncio.to_thread(service.home.responses.get, previous, agent_id)
    return record.tokens


async def response_operation(gateway: Gateway, request: Request) -> Response:
    """Read, delete, list the input items of, or cancel a response: passed through (with the provider
    key) only for the agent that created it; any other caller gets 404, as for an unknown id. Nothing is
    held or charged (the provider does not bill these)."""
    try:
        caller = request.state.principal = authenticate(gateway.service, request)
        agent_id = gateway.agent_of(caller, request)
        rest = request.scope["path"][len(RESPONSES_PREFIX) :]
        response_id, _slash, tail = rest.partition("/")
        suffix = f"/{tail}" if tail else ""
        method = request.scope["method"]
        if (method, suffix) not in RESPONSE_OPERATIONS:
            allowed = sorted(m for m, s in RESPONSE_OPERATIONS if s == suffix)
            if not allowed:
                return http_error_response(404, f"no gateway operation at {request.scope['path']}")
            return http_error_response(405, f"use {' or '.join(allowed)}", {"allow": ", ".join(allowed)})
        # 404 unless this agent's (a registry read, off the event loop; an id that could not be put in a
        # URL is never recorded, so it is a 404 too)
        await asyncio.to_thread(gateway.service.home.responses.get, response_id, agent_id)
        upstream = gateway.settings.upstream("openai")
        headers = upstream_headers("openai", provider_key(upstream), request)
        url = f"{upstream.base_url}/responses/{response_id}{suffix}"
        query = request.scope.get("query_string", b"").decode("latin-1")
        try:
            async with gateway.session().request(
                method,
                url + (f"?{query}" if query else ""),
                data=await request.body() or None,
                headers=headers,
            ) as answer:
                content = await answer.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UpstreamError(
                f"the upstream {upstream.base_url} failed on {method} {url} ({type(exc).__name__}: {exc})",
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
                await asyncio.to_thread(gateway.service.home.responses.forget, response_id)
            except CaracalError as exc:  # deleted upstream all the same; a stale record reaches a 404 there
                logger.error("could not forget deleted response %s: %s", response_id, exc)
        return Response(content, answer.status, passed_headers(answer), answer.content_type)
    except CaracalError as exc:
        gateway.service.metrics.errors.labels(type(exc).__name__).inc()
        return error_response(exc, getattr(request.state, "principal", None))


def openapi_response_operations() -> dict[str, Any]:
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
    for method, suffix in sorted(RESPONSE_OPERATIONS):
        path = f"{RESPONSES_PREFIX}{{response_id}}{suffix}"
        what = {"GET": "Read", "DELETE": "Delete", "POST": "Cancel"}[method]
        summary = f"{what} a response" + (" (its input items)" if suffix == "/input_items" else "")
        paths.setdefault(path, {})[method.lower()] = operation(summary)
    return paths


__all__ = [
    "RESPONSES_PREFIX",
    "RESPONSE_OPERATIONS",
    "ResponseRecorder",
    "openapi_response_operations",
    "previous_tokens",
    "response_operation",
]
