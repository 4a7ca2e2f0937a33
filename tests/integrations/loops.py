"""One small real agent loop per framework, against any OpenAI-compatible base URL (the gateway or the fake).

Each loop asks about the weather with one tool offered (``get_weather``); with the fake upstream's ``tools``
behaviour (a model name ending in ``@tools``) the model calls the tool on the first call, the tool runs
here, and the second call answers with text. So every loop makes exactly two model calls, with a tool call
in between. Each returns the final answer and the tool calls it ran (the tool's arguments), so a test can
prove the tool really ran between the calls.

``marker`` (a test's nonce) goes into the user's message: the fake's recorded requests and the ledger
entries of one run are found by it. The loops also run in worker processes (:mod:`.worker`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch of LiteLLM's price map
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # no trace export to OpenAI

from caracal.integrations.meter import LlmMeter

MODEL = "gpt-4o@tools"
"""The fake's tool-calling behaviour under a user-priced name (see the tests' homes)."""

FRAMEWORKS = ("langchain", "litellm", "openai-agents")

TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def prompt(marker: str) -> str:
    return f"What is the weather in Paris today {marker}"


def weather(city: str) -> str:
    return f"sunny in {city}"


def run_loop(
    framework: str,
    base_url: str,
    api_key: str,
    marker: str,
    *,
    stream: bool,
    meter: LlmMeter | None = None,
    max_tokens: int | None = None,
    model: str = MODEL,
) -> tuple[str, list[str]]:
    """Run ``framework``'s loop; with ``meter`` its calls are metered embedded (the framework's adapter)."""
    if framework == "langchain":
        return langchain_loop(
            base_url, api_key, marker, stream=stream, meter=meter, max_tokens=max_tokens, model=model
        )
    if framework == "litellm":
        return litellm_loop(base_url, api_key, marker, stream=stream, meter=meter, model=model)
    if framework == "openai-agents":
        return agents_loop(base_url, api_key, marker, stream=stream, meter=meter, model=model)
    raise ValueError(f"unknown framework {framework!r}")


def langchain_loop(
    base_url: str,
    api_key: str,
    marker: str,
    *,
    stream: bool,
    meter: LlmMeter | None = None,
    max_tokens: int | None = None,
    model: str = MODEL,
) -> tuple[str, list[str]]:
    from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    from caracal.integrations.langchain import CaracalCallbackHandler

    ran: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        ran.append(city)
        return weather(city)

    callbacks = [CaracalCallbackHandler(meter)] if meter is not None else None
    llm = ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key,
        max_tokens=max_tokens,
        streaming=stream,
        stream_usage=meter is not None,  # embedded: ask for usage; the gateway asks for it itself
        max_retries=0,
        callbacks=callbacks,
    ).bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(prompt(marker))]
    while True:
        answer = llm.invoke(messages)
        messages.append(answer)
        if not answer.tool_calls:
            return str(answer.content), ran
        for call in answer.tool_calls:
            messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))


def litellm_loop(
    base_url: str,
    api_key: str,
    marker: str,
    *,
    stream: bool,
    meter: LlmMeter | None = None,
    model: str = MODEL,
) -> tuple[str, list[str]]:
    import json

    import litellm

    from caracal.integrations.litellm import metered_completion

    ran: list[str] = []
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt(marker)}]
    while True:
        arguments: dict[str, Any] = {
            "model": f"openai/{model}",
            "api_base": base_url,
            "api_key": api_key,
            "messages": messages,
            "tools": [TOOL_SCHEMA],
            "stream": stream,
            "num_retries": 0,
        }
        response = metered_completion(meter, **arguments) if meter else litellm.completion(**arguments)
        if stream:
            response = litellm.stream_chunk_builder(list(response), messages=messages)
        message = response.choices[0].message
        calls = message.tool_calls or []
        if not calls:
            return str(message.content), ran
        messages.append(
            {
                "role": "assistant",
                "content": message.content,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                    for call in calls
                ],
            }
        )
        for call in calls:
            city = json.loads(call.function.arguments)["city"]
            ran.append(city)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": weather(city)})


def agents_loop(
    base_url: str,
    api_key: str,
    marker: str,
    *,
    stream: bool,
    meter: LlmMeter | None = None,
    model: str = MODEL,
) -> tuple[str, list[str]]:
    return asyncio.run(_agents_loop(base_url, api_key, marker, stream=stream, meter=meter, model=model))


async def _agents_loop(
    base_url: str,
    api_key: str,
    marker: str,
    *,
    stream: bool,
    meter: LlmMeter | None,
    model: str,
    default_model: bool = False,
) -> tuple[str, list[str]]:
    """With ``default_model`` the agent is given only the model's name, so the SDK runs it on its default:
    the Responses API through the default client (here the gateway's base URL and the agent's key)."""
    from agents import (
        Agent,
        Model,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_default_openai_api,
        set_default_openai_client,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    from caracal.integrations.openai_agents import CaracalModel

    set_tracing_disabled(True)
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        ran.append(city)
        return weather(city)

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    llm: Model | str
    if default_model:
        set_default_openai_client(client, use_for_tracing=False)
        set_default_openai_api("responses")  # the SDK's default, said here so the test never runs on another
        llm = model
    else:
        llm = OpenAIChatCompletionsModel(model, client)
        if meter is not None:
            llm = CaracalModel(llm, meter)
    agent = Agent(name="weather", instructions="Answer briefly.", tools=[get_weather], model=llm)
    try:
        if stream:
            result = Runner.run_streamed(agent, prompt(marker))
            async for _event in result.stream_events():
                pass
            return str(result.final_output), ran
        return str((await Runner.run(agent, prompt(marker))).final_output), ran
    finally:
        await client.close()


def agents_responses_loop(base_url: str, api_key: str, marker: str, *, stream: bool) -> tuple[str, list[str]]:
    """The Agents SDK's loop on its default model (the Responses API), through ``base_url``."""
    return asyncio.run(
        _agents_loop(base_url, api_key, marker, stream=stream, meter=None, model=MODEL, default_model=True)
    )
