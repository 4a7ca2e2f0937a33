"""OpenAI Agents SDK: a :class:`Model` wrapper that meters every model call with Caracal, embedded.

::

    from agents import Agent, OpenAIChatCompletionsModel, Runner
    from caracal.integrations.meter import LlmMeter
    from caracal.integrations.openai_agents import CaracalModel
    from caracal.sdk.client import CaracalClient

    model = CaracalModel(OpenAIChatCompletionsModel("gpt-4o", AsyncOpenAI()), LlmMeter(CaracalClient(), "me"))
    agent = Agent(name="assistant", tools=[...], model=model)

``get_response`` and ``stream_response`` hold the worst case of the call first (its instructions, input
items and tools as chat messages, bounded as the gateway bounds them) and raise
:class:`~caracal.exceptions.BudgetExceededError` (naming the policy) instead of calling the model when the
budget cannot cover it; the Runner surfaces it to the caller. The call is made with ``max_tokens`` set to
the hold's output bound when the settings had none (so the provider enforces the bound) and, streamed,
with ``include_usage``. The hold is settled from the response's usage (a stream's from its
``response.completed`` event; with no usage reported, at the bound, marked estimated) and released when the
model raises before answering.

Hosted tools (web search, file search, code interpreter...) are refused
(:class:`~caracal.exceptions.GatewayRequestError`): their fees are not in the request, so the call could
not be bounded. Needs ``openai-agents`` (``pip install 'caracal-core[openai-agents]'``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from agents import Handoff, ModelResponse, ModelSettings, Tool
from agents.agent_output import AgentOutputSchemaBase
from agents.items import TResponseInputItem, TResponseStreamEvent
from agents.models.chatcmpl_converter import Converter
from agents.models.interface import Model, ModelTracing

from caracal.exceptions import GatewayRequestError
from caracal.integrations.meter import LlmMeter, MeteredCall, Usage, usage_of

__all__ = ["CaracalModel"]


class CaracalModel(Model):
    """``model`` (any Agents SDK :class:`Model`) with each call held before and settled after on ``meter``.

    ``model_name`` is the name the call is priced under (default: the wrapped model's ``model``).
    """

    def __init__(self, model: Model, meter: LlmMeter, *, model_name: str | None = None):
        if not isinstance(model, Model):
            raise TypeError(f"model must be an Agents SDK Model, got {type(model).__name__}")
        if not isinstance(meter, LlmMeter):
            raise TypeError(f"meter must be an LlmMeter, got {type(meter).__name__}")
        name = model_name if model_name is not None else getattr(model, "model", None)
        if not isinstance(name, str) or not name:
            raise GatewayRequestError(
                f"the model name of {type(model).__name__} is unknown: give CaracalModel(..., model_name=...)"
            )
        self.model = model
        self.meter = meter
        self.model_name = name

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        **kwargs: Any,
    ) -> ModelResponse:
        request = self._request(system_instructions, input, model_settings, tools, output_schema, handoffs)
        call = await self.meter.ahold(request)
        try:
            response = await self.model.get_response(
                system_instructions,
                input,
                _settings(model_settings, call, stream=False),
                tools,
                output_schema,
                handoffs,
                tracing,
                **kwargs,
            )
        except BaseException:
            await self.meter.arelease(call)
            raise
        await self.meter.asettle(call, _usage(response.usage))
        return response

    async def stream_response(  # an async generator: the AsyncIterator the interface returns
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        **kwargs: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        request = self._request(system_instructions, input, model_settings, tools, output_schema, handoffs)
        call = await self.meter.ahold(request)
        usage: Usage | None = None
        answered = False
        try:
            async for event in self.model.stream_response(
                system_instructions,
                input,
                _settings(model_settings, call, stream=True),
                tools,
                output_schema,
                handoffs,
                tracing,
                **kwargs,
            ):
                answered = True
                if getattr(event, "type", None) == "response.completed":
                    usage = _usage(getattr(getattr(event, "response", None), "usage", None))
                yield event
        except BaseException:
            if not answered:
                await self.meter.arelease(call)
                raise
            await self.meter.asettle(call, usage)  # it answered: bill what was reported, or the bound
            raise
        await self.meter.asettle(call, usage)

    async def close(self) -> None:
        await self.model.close()

    def get_retry_advice(self, request: Any) -> Any:
        return self.model.get_retry_advice(request)

    def _request(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
    ) -> dict[str, Any]:
        """The call as an OpenAI chat request, as far as its cost goes (what the bound reads)."""
        messages: list[Any] = list(Converter.items_to_messages(input, model=self.model_name))
        if system_instructions:
            messages.insert(0, {"role": "system", "content": system_instructions})
        converted: list[Any] = []
        for tool in tools:
            try:
                converted.append(Converter.tool_to_openai(tool))
            except Exception as exc:
                raise GatewayRequestError(
                    f"tool {getattr(tool, 'name', type(tool).__name__)!r} is a hosted tool whose fees are "
                    f"not in the request, so Caracal cannot bound the call's cost: use function tools"
                ) from exc
        converted.extend(Converter.convert_handoff_tool(handoff) for handoff in handoffs)
        request: dict[str, Any] = {"model": self.model_name, "messages": _plain(messages)}
        if converted:
            request["tools"] = _plain(converted)
        response_format = Converter.convert_response_format(output_schema)
        if isinstance(response_format, dict):
            request["response_format"] = _plain(response_format)
        if model_settings.max_tokens is not None:
            request["max_tokens"] = model_settings.max_tokens
        return request


def _settings(settings: ModelSettings, call: MeteredCall, *, stream: bool) -> ModelSettings:
    """The settings the call is made with: the hold's output cap when there was none, and usage in a
    stream (the provider reports it in a last chunk)."""
    changes: dict[str, Any] = {}
    if settings.max_tokens is None:
        changes["max_tokens"] = call.request["max_tokens"]
    if stream and settings.include_usage is not True:
        changes["include_usage"] = True
    return dataclasses.replace(settings, **changes) if changes else settings


def _usage(usage: Any) -> Usage | None:
    """A Caracal usage from the Agents SDK's (or a Responses ``ResponseUsage``): ``input_tokens`` includes
    the cached ones. The SDK reports zero tokens when the provider sent no usage: that is no report."""
    if usage is None:
        return None
    input_tokens = getattr(usage, "input_tokens", None)
    output_tokens = getattr(usage, "output_tokens", None)
    if not input_tokens and not output_tokens:
        return None
    details = getattr(usage, "input_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) if details is not None else 0
    return usage_of(input_tokens, output_tokens, cached or 0)


def _plain(value: Any) -> Any:
    """JSON-ready copies of the SDK's params (TypedDicts, possibly holding pydantic models)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump(mode="json", exclude_none=True))
    return value
