"""LangChain: a callback handler that meters every chat model call with Caracal, embedded (no gateway).

::

    from caracal.integrations.langchain import CaracalCallbackHandler
    from caracal.integrations.meter import LlmMeter
    from caracal.sdk.client import CaracalClient

    handler = CaracalCallbackHandler(LlmMeter(CaracalClient(), "my-agent"))
    llm = ChatOpenAI(model="gpt-4o", max_tokens=1024, callbacks=[handler])

- ``on_chat_model_start`` holds the worst case of the request (its messages, tools and output cap, bounded
  as the gateway bounds them) and **raises** :class:`~caracal.exceptions.BudgetExceededError` (naming the
  policy) when the budget cannot cover it: the handler sets ``raise_error``, so LangChain stops the call
  before the provider is reached.
- ``on_llm_end`` settles the hold from the usage LangChain reports (``usage_metadata`` of the message, or
  ``llm_output["token_usage"]``); with no usage reported (a stream without ``stream_usage=True``) the call
  is billed at its bound, marked estimated.
- ``on_llm_error`` releases the hold, unless the call had already streamed tokens (the provider answered,
  so it may bill): then it is billed at its bound, marked estimated, as the gateway bills a broken stream.

A callback cannot change the request, so a model without an output cap (``max_tokens``) is refused: its
cost could not be bounded. Needs ``langchain-core`` (``pip install 'caracal-core[langchain]'``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, LLMResult

from caracal.integrations.meter import LlmMeter, MeteredCall, Usage, usage_of

__all__ = ["CaracalCallbackHandler"]

_REQUEST_FIELDS = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "web_search_options",
    "prediction",
    "audio",
    "modalities",
    "service_tier",
)
"""Invocation parameters that shape the cost of a call (the bound reads or refuses them); others (sampling,
``stop``, LangChain's own ``_type``) cost nothing and are left out."""


class CaracalCallbackHandler(BaseCallbackHandler):
    """Meters the chat model calls it is attached to with ``meter`` (see the module docstring).

    Invariant: every hold taken in ``on_chat_model_start`` is closed exactly once, by ``on_llm_end``
    (settled) or ``on_llm_error`` (released); runs are told apart by LangChain's ``run_id``.
    """

    raise_error = True  # a refusal must stop the call, not be logged and ignored
    # Not run_inline: in async code LangChain runs the (blocking) ledger steps in a worker thread, and still
    # awaits on_chat_model_start before the call is made.

    def __init__(self, meter: LlmMeter):
        super().__init__()
        if not isinstance(meter, LlmMeter):
            raise TypeError(f"meter must be an LlmMeter, got {type(meter).__name__}")
        self.meter = meter
        self._calls: dict[UUID, MeteredCall] = {}
        self._streamed: set[UUID] = set()
        self._lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        invocation_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = dict(invocation_params or kwargs.get("invocation_params") or {})
        request = _request(params, messages)
        call = self.meter.hold(request, require_cap=True)
        with self._lock:
            self._calls[run_id] = call

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            if run_id in self._calls:
                self._streamed.add(run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call, _streamed = self._pop(run_id)
        if call is not None:
            self.meter.settle(call, _usage(response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call, streamed = self._pop(run_id)
        if call is None:
            return
        if streamed:
            self.meter.settle(call, None)  # answered in part: billed at the bound, marked estimated
        else:
            self.meter.release(call)

    def _pop(self, run_id: UUID) -> tuple[MeteredCall | None, bool]:
        with self._lock:
            streamed = run_id in self._streamed
            self._streamed.discard(run_id)
            return self._calls.pop(run_id, None), streamed


def _request(params: Mapping[str, Any], messages: Sequence[Sequence[BaseMessage]]) -> dict[str, Any]:
    """The OpenAI chat request LangChain is about to send, as far as its cost goes."""
    model = params.get("model") or params.get("model_name")
    converted: list[Any] = []
    for prompt in messages:
        converted.extend(_to_openai(list(prompt)))
    request: dict[str, Any] = {"model": model, "messages": converted}
    for field in _REQUEST_FIELDS:
        value = params.get(field)
        if value is not None:
            request[field] = value
    return request


def _to_openai(messages: list[BaseMessage]) -> list[Any]:
    """The messages as ChatOpenAI sends them (its own converter, so the bound is of the bytes it sends:
    e.g. ``"content": null`` beside tool calls), or LangChain's generic OpenAI form without
    ``langchain-openai``."""
    try:
        from langchain_openai.chat_models.base import _convert_message_to_dict
    except ImportError:  # another provider's package only: the generic form, as long to within a few bytes
        return list(convert_to_openai_messages(messages))
    return [_convert_message_to_dict(message) for message in messages]


def _usage(response: LLMResult) -> Usage | None:
    """The usage LangChain reports for a call: the message's ``usage_metadata`` (plain and streamed), else
    the provider's ``token_usage`` in ``llm_output``; None when neither is there. One run is one request:
    with ``n`` choices every generation carries the request's total, so the first report is the one."""
    for generations in response.generations:
        for generation in generations:
            message = generation.message if isinstance(generation, ChatGeneration) else None
            metadata = message.usage_metadata if isinstance(message, AIMessage) else None
            if metadata:
                details = metadata.get("input_token_details") or {}
                usage = usage_of(
                    metadata.get("input_tokens"), metadata.get("output_tokens"), details.get("cache_read", 0)
                )
                if usage is not None:
                    return usage
    output = response.llm_output or {}
    token_usage = output.get("token_usage") or output.get("usage")
    if isinstance(token_usage, Mapping):
        details = token_usage.get("prompt_tokens_details") or {}
        return usage_of(
            token_usage.get("prompt_tokens"),
            token_usage.get("completion_tokens"),
            details.get("cached_tokens", 0) if isinstance(details, Mapping) else 0,
        )
    return None
