"""Tighter holds through a real gateway: the input of OpenAI models is held at its token count (the model's
tokenizer), not at one token per byte, so a budget the byte bound would refuse is used, and never overspent.

Prices are user prices (exact arithmetic). The fake upstream reports the words of the messages as prompt
tokens, fewer than the tokenizer's count, so every settled call costs less than its hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from caracal.core.ledger import LedgerReader
from caracal.core.verify import verify_ledger
from caracal.server.gateway.estimate import (
    bound_anthropic_messages,
    bound_openai_chat,
    bound_openai_responses,
)
from caracal.server.gateway.pricing import hold_amount
from caracal.server.gateway.tokens import counter_for_model
from tests.pg import BACKEND_PARAMS, home_database
from tests.server.fake_upstream import prompt_tokens, responses_prompt_tokens
from tests.server.gateway_env import (
    CHAT,
    IMAGE_TOKENS,
    MAX_OUTPUT_TOKENS,
    MESSAGES,
    RESPONSES,
    GatewayEnv,
    behaviour_model,
    nonce,
    open_holds,
    split,
    start_gateway,
)

BACKENDS_PER_MODULE = True

GPT = behaviour_model("gpt-4o", "ok")  # user-priced in every home; its tokenizer is o200k_base
LOCAL = behaviour_model("local-llama", "ok")  # an OpenAI-compatible model without a known tokenizer
CLAUDE = behaviour_model("claude-haiku-4-5", "ok")
INPUT = Decimal("0.000002")
OUTPUT = Decimal("0.000008")
CAP = 50

PARAGRAPH = (
    "Please summarise the quarterly report for the finance team. Revenue grew twelve percent, driven by "
    "the new subscription tier, while support costs fell after the migration to the new ticketing system. "
    "List the three main risks, and suggest one action for each of them before the board meeting. "
)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[GatewayEnv]:
    home = tmp_path_factory.mktemp("tight") / "home"
    with start_gateway(home, delay_ms=0, database_url=home_database(request)) as live:
        for provider, model in (("openai", GPT), ("openai", LOCAL), ("anthropic", CLAUDE)):
            live.set_price(provider, model, INPUT, OUTPUT)
        yield live


def chat(marker: str, repeat: int, model: str = GPT) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": CAP,
        "messages": [
            {"role": "system", "content": "You are a careful analyst."},
            {"role": "user", "content": f"{marker} " + PARAGRAPH * repeat},
        ],
    }


def byte_hold(env: GatewayEnv, body: dict[str, Any], path: str = CHAT) -> Decimal:
    """The hold of ``body`` under the byte bound (no tokenizer), as the gateway held it before."""
    if path == CHAT:
        bound, _ = bound_openai_chat(body, max_output_tokens=MAX_OUTPUT_TOKENS, image_tokens=IMAGE_TOKENS)
        provider = "openai"
    else:
        bound, _ = bound_anthropic_messages(
            body, max_output_tokens=MAX_OUTPUT_TOKENS, image_tokens=IMAGE_TOKENS
        )
        provider = "anthropic"
    pricebook = env.service.home.prices.pricebook()
    return hold_amount(pricebook, provider, body["model"], bound, env.service.enforcer.now())[0]


def spent(events: list[Any]) -> Decimal:
    _holds, charges, _releases = split(events)
    return sum((charge.cost for charge in charges), Decimal(0))


def assert_ledger_sound(env: GatewayEnv) -> None:
    assert not open_holds(list(LedgerReader(env.service.home.ledger)))
    report = verify_ledger(env.service.home.ledger)
    assert report.ok, report.problems


def test_a_budget_the_byte_bound_refuses_is_used_and_never_overspent(env: GatewayEnv) -> None:
    marker = nonce()
    body = chat(marker, repeat=8)
    bound, _forward, hold = env.worst_case(CHAT, body)
    by_bytes = byte_hold(env, body)
    assert hold * 2 < by_bytes  # English text: far fewer tokens than bytes
    limit = hold + Decimal("0.000001")  # covers the counted hold, not the byte one
    agent = env.agent(str(limit))

    first = env.post(CHAT, body, agent=agent)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["prompt_tokens"] == prompt_tokens(body) <= bound.input_tokens
    events = env.closed_entries(agent.agent_id)
    [held], charges, _ = split(events)
    assert held.cost == hold
    assert held.metadata is not None and held.metadata["input_tokens_bound"] == bound.input_tokens
    assert charges and spent(events) <= hold <= limit
    assert not any((charge.metadata or {}).get("over_hold") for charge in charges)

    # What remains cannot cover another counted hold: refused before anything is forwarded.
    second = env.post(CHAT, chat(marker, repeat=8), agent=agent)
    assert second.status_code == 402, second.text
    assert len(env.upstream_requests(marker)) == 1
    assert spent(env.entries(agent.agent_id)) <= limit
    assert_ledger_sound(env)


def test_more_calls_fit_a_budget_than_under_the_byte_bound(env: GatewayEnv) -> None:
    marker = nonce()
    body = chat(marker, repeat=4)
    _bound, _forward, hold = env.worst_case(CHAT, body)
    by_bytes = byte_hold(env, body)
    limit = by_bytes * 3  # the byte bound grants 3 calls at most in a row before settling any
    agent = env.agent(str(limit))
    granted = 0
    for _ in range(60):
        response = env.post(CHAT, body, agent=agent)
        if response.status_code == 402:
            break
        assert response.status_code == 200, response.text
        granted += 1
        env.closed_entries(agent.agent_id, holds=granted)
    assert granted > 3
    events = env.closed_entries(agent.agent_id, holds=granted)
    total = spent(events)
    assert total <= limit
    assert limit - total < hold  # refused only once what remains cannot cover one counted hold
    assert_ledger_sound(env)


@pytest.mark.parametrize(("path", "model"), [(CHAT, LOCAL), (MESSAGES, CLAUDE)])
def test_models_without_a_known_tokenizer_keep_the_byte_bound(env: GatewayEnv, path: str, model: str) -> None:
    marker = nonce()
    body = chat(marker, repeat=8, model=model)
    if path == MESSAGES:
        body = {**body, "system": body["messages"][0]["content"], "messages": body["messages"][1:]}
    _bound, _forward, hold = env.worst_case(path, body)
    assert counter_for_model(model) is None
    assert hold == byte_hold(env, body, path)
    agent = env.agent(str(hold - Decimal("0.000001")))
    response = env.post(path, body, agent=agent)
    assert response.status_code == 402, response.text
    assert env.upstream_requests(marker) == []


def test_a_large_request_is_counted_too_and_settled(env: GatewayEnv) -> None:
    marker = nonce()
    body = chat(marker, repeat=300)  # about 84 KB: bounded in a worker thread, off the event loop
    assert len(body["messages"][1]["content"]) > 80_000
    bound, _forward, hold = env.worst_case(CHAT, body)
    assert hold * 3 < byte_hold(env, body)
    agent = env.agent(str(hold))
    response = env.post(CHAT, body, agent=agent)
    assert response.status_code == 200, response.text
    events = env.closed_entries(agent.agent_id)
    [held], _charges, _ = split(events)
    assert held.metadata is not None and held.metadata["input_tokens_bound"] == bound.input_tokens
    assert spent(events) <= hold
    assert_ledger_sound(env)


def test_a_responses_call_is_held_at_its_counted_input_and_never_overspent(env: GatewayEnv) -> None:
    """The Agents SDK's default API: instructions and input messages counted with the model's tokenizer."""
    marker = nonce()

    def body() -> dict[str, Any]:
        return {
            "model": GPT,
            "max_output_tokens": CAP,
            "instructions": "You are a careful analyst.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": f"{marker} " + PARAGRAPH * 8}]}
            ],
        }

    bound, _forward, hold = env.worst_case(RESPONSES, body())
    by_bytes, _ = bound_openai_responses(
        body(), max_output_tokens=MAX_OUTPUT_TOKENS, image_tokens=IMAGE_TOKENS
    )
    assert bound.input_tokens * 2 < by_bytes.input_tokens
    limit = hold + Decimal("0.000001")
    agent = env.agent(str(limit))
    first = env.post(RESPONSES, body(), agent=agent)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["input_tokens"] == responses_prompt_tokens(body()) <= bound.input_tokens
    events = env.closed_entries(agent.agent_id)
    [held], charges, _ = split(events)
    assert held.cost == hold and held.metadata is not None
    assert held.metadata["input_tokens_bound"] == bound.input_tokens
    assert charges and spent(events) <= hold
    second = env.post(RESPONSES, body(), agent=agent)
    assert second.status_code == 402, second.text
    assert len(env.upstream_requests(marker)) == 1
    assert_ledger_sound(env)
