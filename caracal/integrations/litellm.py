"""LiteLLM: ``litellm.completion`` / ``litellm.acompletion`` metered with Caracal, embedded (no gateway).

::

    from caracal.integrations.litellm import metered_completion
    from caracal.integrations.meter import LlmMeter
    from caracal.sdk.client import CaracalClient

    meter = LlmMeter(CaracalClient(), "my-agent")
    response = metered_completion(meter, model="openai/gpt-4o", messages=[...], tools=[...])

Each call holds the worst case of its request (bounded as the gateway bounds a chat completion) before
LiteLLM is called, and raises :class:`~caracal.exceptions.BudgetExceededError` (naming the policy) instead
of calling when the budget cannot cover it. A request without an output cap is sent with ``max_tokens`` set
to the meter's cap (the hold's output bound), and a streamed one with ``stream_options.include_usage`` (so
the provider reports usage). The hold is settled from the response's ``usage`` (for a stream: when it ends
or is closed; with no usage seen, at the bound, marked estimated) and released when LiteLLM raises before
answering.

A wrapper rather than a LiteLLM ``CustomLogger``: a logger's pre-call hook cannot stop the call (LiteLLM
logs and ignores its exceptions outside the LiteLLM proxy), and a refusal must. Prices are looked up under
the meter's provider and the model name without LiteLLM's provider prefix (``openai/gpt-4o`` is priced as
``openai.gpt-4o.*`` with ``LlmMeter(provider="openai")``). Needs ``litellm``
(``pip install 'caracal-core[litellm]'``; set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` to keep LiteLLM from
fetching its price map at import).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import litellm

from caracal.exceptions import GatewayRequestError
from caracal.integrations.meter import LlmMeter, MeteredCall, Usage, usage_of

__all__ = ["ametered_completion", "metered_completion"]


def metered_completion(meter: LlmMeter, **kwargs: Any) -> Any:
    """``litellm.completion(**kwargs)``, held before and settled after (see the module docstring). A stream
    (``stream=True``) is returned as an iterator of LiteLLM's chunks: iterate it to the end or close it."""
    call, send = _prepare(meter, kwargs)
    try:
        response = litellm.completion(**send)
    except BaseException:
        meter.release(call)
        raise
    if send.get("stream"):
        return _metered_stream(meter, call, response)
    meter.settle(call, _usage(response))
    return response


async def ametered_completion(meter: LlmMeter, **kwargs: Any) -> Any:
    """``litellm.acompletion(**kwargs)``, held before and settled after (the ledger steps run in a worker
    thread). A stream is returned as an async iterator: iterate it to the end or ``aclose`` it."""
    call, send = await _aprepare(meter, kwargs)
    try:
        response = await litellm.acompletion(**send)
    except BaseException:
        await meter.arelease(call)
        raise
    if send.get("stream"):
        return _ametered_stream(meter, call, response)
    await meter.asettle(call, _usage(response))
    return response


def _request(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The request as the meter bounds it, and the model name it is priced under."""
    model = kwargs.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayRequestError("model is required and must be a non-empty string")
    priced = model
    # A model LiteLLM cannot route fails in LiteLLM itself, with its own message.
    with contextlib.suppress(Exception):
        priced = litellm.get_llm_provider(model, api_base=kwargs.get("api_base"))[0]
    request = {key: value for key, value in kwargs.items() if key not in ("api_key", "api_base", "base_url")}
    return request, priced


def _prepare(meter: LlmMeter, kwargs: Mapping[str, Any]) -> tuple[MeteredCall, dict[str, Any]]:
    request, priced = _request(kwargs)
    call = meter.hold(request, model=priced)
    return call, _send(kwargs, call)


async def _aprepare(meter: LlmMeter, kwargs: Mapping[str, Any]) -> tuple[MeteredCall, dict[str, Any]]:
    request, priced = _request(kwargs)
    call = await meter.ahold(request, model=priced)
    return call, _send(kwargs, call)


def _send(kwargs: Mapping[str, Any], call: MeteredCall) -> dict[str, Any]:
    """What LiteLLM is called with: the caller's arguments, the output cap the hold assumed when there was
    none, and usage asked for in a stream."""
    send = dict(kwargs)
    if send.get("max_tokens") is None and send.get("max_completion_tokens") is None:
        send["max_tokens"] = call.request["max_tokens"]
    if send.get("stream"):
        options = send.get("stream_options")
        send["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    return send


def _usage(response: Any) -> Usage | None:
    """The usage of a LiteLLM response or stream chunk (OpenAI names; ``prompt_tokens`` includes cached)."""
    usage = getattr(response, "usage", None)
    if usage is None and isinstance(response, Mapping):
        usage = response.get("usage")
    if usage is None:
        return None

    def field(source: Any, name: str) -> Any:
        return source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)

    details = field(usage, "prompt_tokens_details")
    cached = field(details, "cached_tokens") if details is not None else 0
    return usage_of(field(usage, "prompt_tokens"), field(usage, "completion_tokens"), cached or 0)


def _metered_stream(meter: LlmMeter, call: MeteredCall, stream: Any) -> Iterator[Any]:
    """Pass the chunks through; settle from the last usage seen when the stream ends, fails or is closed
    (the provider answered, so a stream cut short is billed at the bound when it reported nothing)."""
    usage: Usage | None = None
    try:
        for chunk in stream:
            usage = _usage(chunk) or usage
            yield chunk
    finally:
        meter.settle(call, usage)


async def _ametered_stream(meter: LlmMeter, call: MeteredCall, stream: Any) -> AsyncIterator[Any]:
    usage: Usage | None = None
    try:
        async for chunk in stream:
            usage = _usage(chunk) or usage
            yield chunk
    finally:
        await meter.asettle(call, usage)
