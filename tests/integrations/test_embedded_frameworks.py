"""Each framework's agent loop metered embedded (no gateway): the framework talks to the fake upstream
directly and its adapter (a LangChain callback handler, a LiteLLM wrapper, an Agents SDK model wrapper)
holds each call on the test's home before it is made and settles it from the usage the framework reports.

Runs on both backends (the home's files and PostgreSQL). The multi-process tests run the loops in several
OS processes sharing one home and one budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.events import LedgerEvent
from caracal.core.ledger import LedgerReader
from caracal.core.verify import verify_ledger
from caracal.exceptions import BudgetExceededError, ConfigurationError, GatewayRequestError, UnknownPriceError
from caracal.integrations.meter import LlmMeter
from caracal.sdk.client import CaracalClient
from caracal.server.gateway.estimate import ANTHROPIC_TOOLS_OVERHEAD_TOKENS, bound_openai_chat
from caracal.server.gateway.pricing import hold_amount
from tests.integrations.ledger import INPUT_PRICE, OUTPUT_PRICE, assert_calls_billed, expected_usage
from tests.integrations.loops import FRAMEWORKS, MODEL, TOOL_SCHEMA, run_loop
from tests.server.fake_upstream import FakeRequest, FakeUpstream, serve_fake_upstream
from tests.server.gateway_env import nonce

ROOT = Path(__file__).resolve().parents[2]
FAILING = "gpt-4o@error500"
BROKEN = "gpt-4o@midstream-fail"
LANGCHAIN_CAP = 50  # a callback cannot set the cap, so the LangChain model sets one


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with serve_fake_upstream() as server:
        yield server


@pytest.fixture
def client(caracal_home: Path) -> Iterator[CaracalClient]:
    with CaracalClient() as embedded:
        for model in (MODEL, FAILING, BROKEN):
            embedded.set_price(f"openai.{model}.input_tokens", INPUT_PRICE)
            embedded.set_price(f"openai.{model}.output_tokens", OUTPUT_PRICE)
        yield embedded


def new_agent(client: CaracalClient, limit: object = "1000") -> tuple[str, str]:
    """A fresh agent with a total USD policy of ``limit``: (name, policy id)."""
    name = f"agent-{nonce()[:10]}"
    client.register_agent(name, "tests@example.com")
    return name, client.create_policy(name, limit, "total").policy_id


def entries(client: CaracalClient, agent: str) -> list[LedgerEvent]:
    agent_id = client.get_agent(agent).agent_id
    return [e for e in LedgerReader(client.home.ledger) if e.agent_id == agent_id]


def sent(fake: FakeUpstream, marker: str) -> list[FakeRequest]:
    return [r for r in list(fake.requests) if marker in json.dumps(r.body)]


def loop(
    framework: str, fake: FakeUpstream, meter: LlmMeter, marker: str, *, stream: bool, model: str = MODEL
) -> tuple[str, list[str]]:
    return run_loop(
        framework,
        f"{fake.base_url}/v1",
        fake.api_key,
        marker,
        stream=stream,
        meter=meter,
        max_tokens=LANGCHAIN_CAP,
        model=model,
    )


def assert_verified(client: CaracalClient) -> None:
    report = verify_ledger(client.home.ledger)
    assert report.ok, report.problems


# ------------------------------------------------------------------------------------------- the loops


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_embedded_loop_is_held_before_and_settled_after_each_call(
    client: CaracalClient, fake: FakeUpstream, framework: str, stream: bool
) -> None:
    agent, _policy = new_agent(client)
    meter = LlmMeter(client, agent)
    marker = nonce()
    answer, ran = loop(framework, fake, meter, marker, stream=stream)
    assert ran == ["tok"] and answer.startswith("tok")
    requests = sent(fake, marker)
    assert len(requests) == 2
    holds = assert_calls_billed(entries(client, agent), requests, MODEL)
    pricebook = client.home.prices.pricebook()
    for hold, request in zip(holds, requests, strict=True):
        body = request.body
        if framework == "langchain":
            assert body["max_completion_tokens"] == LANGCHAIN_CAP
        else:  # the adapter sent the cap its hold assumed, so the provider enforces the bound
            assert body["max_tokens"] == meter.max_output_tokens
        if stream:  # and asked for usage, so the settlement is the provider's report, not an estimate
            assert body["stream_options"] == {"include_usage": True}
        # A process killed mid-call leaves a hold that is billed at its bound when it expires.
        assert hold.on_expiry == "charge"
        # The hold covers what the gateway would have held for the request actually sent.
        bound, _forward = bound_openai_chat(
            body, max_output_tokens=meter.max_output_tokens, image_tokens=meter.image_tokens
        )
        gateway_hold, _currency = hold_amount(pricebook, "openai", MODEL, bound, client.enforcer.now())
        assert hold.cost >= gateway_hold, (hold.cost, gateway_hold)
    assert next(s.remaining for s in client.budget_status(agent)) == Decimal(1000) - sum(
        (e.cost for e in entries(client, agent) if e.is_charge), Decimal(0)
    )
    assert_verified(client)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_budget_too_small_for_the_second_call_refuses_it_before_the_call(
    client: CaracalClient, fake: FakeUpstream, framework: str
) -> None:
    probe, _ = new_agent(client)
    probe_marker = nonce()
    loop(framework, fake, LlmMeter(client, probe), probe_marker, stream=False)
    first_hold = next(e for e in entries(client, probe) if e.kind == "hold").cost
    agent, policy_id = new_agent(client, first_hold)  # room for the first call's worst case only
    marker = nonce()  # as long as probe_marker: the same bound
    with pytest.raises(BudgetExceededError) as refused:
        loop(framework, fake, LlmMeter(client, agent), marker, stream=False)
    assert f"policy {policy_id} " in str(refused.value)
    assert refused.value.decision is not None
    requests = sent(fake, marker)
    assert len(requests) == 1, "the refused call must never reach the provider"
    assert_calls_billed(entries(client, agent), requests, MODEL)
    assert_verified(client)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_failed_call_releases_its_hold(
    client: CaracalClient, fake: FakeUpstream, framework: str, stream: bool
) -> None:
    agent, _ = new_agent(client)
    marker = nonce()
    with pytest.raises(Exception) as failed:
        loop(framework, fake, LlmMeter(client, agent), marker, stream=stream, model=FAILING)
    assert not isinstance(failed.value, BudgetExceededError)
    assert len(sent(fake, marker)) == 1
    events = entries(client, agent)
    assert [e.kind for e in events] == ["hold", "release"]
    assert events[1].metadata is not None and events[1].metadata["reason"] != "settled"
    assert [s.spent for s in client.budget_status(agent)] == [Decimal(0)]
    assert [s.held for s in client.budget_status(agent)] == [Decimal(0)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_stream_broken_after_it_began_is_billed_at_its_bound(
    client: CaracalClient, fake: FakeUpstream, framework: str
) -> None:
    """The provider answered part of a stream and the connection dropped: it may bill the call, so the
    hold is settled at its bound (marked estimated), never released for free."""
    agent, _ = new_agent(client)
    marker = nonce()
    with contextlib.suppress(Exception):  # the framework may raise or end the broken stream quietly
        loop(framework, fake, LlmMeter(client, agent), marker, stream=True, model=BROKEN)
    assert len(sent(fake, marker)) == 1
    events = entries(client, agent)
    hold = events[0]
    assert hold.kind == "hold" and hold.metadata is not None
    charges = [e for e in events if e.is_charge]
    assert [(c.resource_type, c.quantity) for c in charges] == [
        (f"openai.{BROKEN}.input_tokens", Decimal(hold.metadata["input_tokens_bound"])),
        (f"openai.{BROKEN}.output_tokens", Decimal(hold.metadata["output_tokens_bound"])),
    ]
    assert all(c.metadata is not None and c.metadata.get("estimated") is True for c in charges)
    assert sum((c.cost for c in charges), Decimal(0)) == hold.cost
    assert events[-1].kind == "release" and events[-1].metadata == {"reason": "settled"}


def test_langchain_async_calls_are_held_and_settled(client: CaracalClient, fake: FakeUpstream) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI
    from openai import DefaultAsyncHttpxClient

    from caracal.integrations.langchain import CaracalCallbackHandler

    agent, _ = new_agent(client)
    handler = CaracalCallbackHandler(LlmMeter(client, agent))
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{fake.base_url}/v1",
        api_key=fake.api_key,
        max_tokens=LANGCHAIN_CAP,
        max_retries=0,
        callbacks=[handler],
        http_async_client=DefaultAsyncHttpxClient(),  # its own: LangChain's shared one is bound to one loop
    )
    markers = [nonce() for _ in range(3)]

    async def ask() -> None:
        await asyncio.gather(*(llm.ainvoke([HumanMessage(f"hello {marker}")]) for marker in markers))

    asyncio.run(ask())
    requests = [sent(fake, marker)[0] for marker in markers]
    events = entries(client, agent)
    assert len([e for e in events if e.kind == "hold"]) == 3
    assert {e.hold_id for e in events if e.kind == "hold"} == {
        e.hold_id for e in events if e.kind == "release"
    }
    spent = sum((e.cost for e in events if e.is_charge), Decimal(0))
    expected = Decimal(0)
    for request in requests:
        prompt, completion = expected_usage(request, fake.completion_tokens)
        expected += Decimal(prompt) * INPUT_PRICE + Decimal(completion) * OUTPUT_PRICE
    assert spent == expected


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_litellm_async_calls_are_held_and_settled(
    client: CaracalClient, fake: FakeUpstream, stream: bool
) -> None:
    from caracal.integrations.litellm import ametered_completion

    agent, _ = new_agent(client)
    meter = LlmMeter(client, agent)
    markers = [nonce() for _ in range(3)]

    async def ask(marker: str) -> None:
        response = await ametered_completion(
            meter,
            model=f"openai/{MODEL}",
            api_base=f"{fake.base_url}/v1",
            api_key=fake.api_key,
            messages=[{"role": "user", "content": f"hello {marker}"}],
            stream=stream,
            num_retries=0,
        )
        if stream:
            async for _chunk in response:
                pass

    async def ask_all() -> None:
        await asyncio.gather(*(ask(marker) for marker in markers))

    asyncio.run(ask_all())
    requests = [sent(fake, marker)[0] for marker in markers]
    events = entries(client, agent)
    held = {e.hold_id for e in events if e.kind == "hold"}
    assert len(held) == 3 and held == {e.hold_id for e in events if e.kind == "release"}
    spent = sum((e.cost for e in events if e.is_charge), Decimal(0))
    expected = Decimal(0)
    for request in requests:
        prompt, completion = expected_usage(request, fake.completion_tokens)
        expected += Decimal(prompt) * INPUT_PRICE + Decimal(completion) * OUTPUT_PRICE
    assert spent == expected
    assert not any(e.metadata and e.metadata.get("estimated") for e in events if e.is_charge)


def test_a_langchain_stream_without_usage_is_billed_at_its_bound(
    client: CaracalClient, fake: FakeUpstream
) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    from caracal.integrations.langchain import CaracalCallbackHandler

    agent, _ = new_agent(client)
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{fake.base_url}/v1",
        api_key=fake.api_key,
        max_tokens=LANGCHAIN_CAP,
        streaming=True,
        stream_usage=False,  # the provider is not asked for usage, so nothing is reported
        max_retries=0,
        callbacks=[CaracalCallbackHandler(LlmMeter(client, agent))],
    )
    marker = nonce()
    assert str(llm.invoke([HumanMessage(f"hello {marker}")]).content).startswith("tok")
    assert "stream_options" not in sent(fake, marker)[0].body
    events = entries(client, agent)
    hold = events[0]
    assert hold.metadata is not None
    charges = [e for e in events if e.is_charge]
    assert [c.quantity for c in charges] == [
        Decimal(hold.metadata["input_tokens_bound"]),
        Decimal(LANGCHAIN_CAP),
    ]
    assert all(c.metadata is not None and c.metadata.get("estimated") is True for c in charges)


# ------------------------------------------------------------------------------------------- refusals


def test_langchain_model_without_an_output_cap_is_refused_before_anything_is_held(
    client: CaracalClient, fake: FakeUpstream
) -> None:
    agent, _ = new_agent(client)
    marker = nonce()
    with pytest.raises(GatewayRequestError, match="max_tokens"):
        run_loop(
            "langchain",
            f"{fake.base_url}/v1",
            fake.api_key,
            marker,
            stream=False,
            meter=LlmMeter(client, agent),
        )
    assert sent(fake, marker) == []
    assert entries(client, agent) == []


def test_an_unpriced_model_is_refused_before_anything_is_held(client: CaracalClient) -> None:
    agent, _ = new_agent(client)
    meter = LlmMeter(client, agent)
    with pytest.raises(UnknownPriceError):
        meter.hold({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert entries(client, agent) == []


def test_the_meter_holds_what_the_gateway_holds(client: CaracalClient) -> None:
    agent, _ = new_agent(client)
    meter = LlmMeter(client, agent, max_output_tokens=100)
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]}
    call = meter.hold(request)
    bound, forward = bound_openai_chat(request, max_output_tokens=100, image_tokens=meter.image_tokens)
    amount, _ = hold_amount(client.home.prices.pricebook(), "openai", MODEL, bound, client.enforcer.now())
    assert call.amount == amount and call.bound == bound and call.request == forward
    assert forward["max_tokens"] == 100
    assert meter.release(call) is True
    assert meter.release(call) is False


def test_anthropic_models_hold_the_hidden_tool_prompt_too(client: CaracalClient) -> None:
    agent, _ = new_agent(client)
    client.set_price("anthropic.claude-x.input_tokens", INPUT_PRICE)
    client.set_price("anthropic.claude-x.output_tokens", OUTPUT_PRICE)
    meter = LlmMeter(client, agent, provider="anthropic", max_output_tokens=100)
    request = {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL_SCHEMA]}
    call = meter.hold(request)
    bound, _ = bound_openai_chat(request, max_output_tokens=100, image_tokens=meter.image_tokens)
    assert call.bound.input_tokens == bound.input_tokens + ANTHROPIC_TOOLS_OVERHEAD_TOKENS
    assert (
        call.amount
        == (bound.input_tokens + ANTHROPIC_TOOLS_OVERHEAD_TOKENS) * INPUT_PRICE + 100 * OUTPUT_PRICE
    )
    meter.release(call)


def test_a_remote_client_is_refused_with_what_to_use(caracal_home: Path) -> None:
    remote = CaracalClient(base_url="http://127.0.0.1:9", api_key="ck_x")
    with pytest.raises(ConfigurationError, match="embedded client"):
        LlmMeter(remote, "someone")


# ------------------------------------------------------------------------------------------- processes


def test_loops_in_several_processes_share_one_home_and_one_budget(
    client: CaracalClient, fake: FakeUpstream, caracal_home: Path
) -> None:
    """Three OS processes (one per framework), each running two loops, on one home, against one budget
    that covers about three calls' worst cases at once: no call is made without its hold, every hold ends
    closed, the spend never passes the limit, and the charges are exactly the fake's usage."""
    probe, _ = new_agent(client)
    loop("litellm", fake, LlmMeter(client, probe), nonce(), stream=False)
    worst = max(e.cost for e in entries(client, probe) if e.kind == "hold")
    limit = worst * 3
    agent, policy_id = new_agent(client, limit)
    marker = nonce()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def work(framework: str) -> dict[str, object]:
        args = [framework, f"{fake.base_url}/v1", fake.api_key, agent, f"{marker}-{framework}", "2", "1"]
        done = subprocess.run(
            [sys.executable, "-m", "tests.integrations.worker", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    with ThreadPoolExecutor(len(FRAMEWORKS)) as pool:
        results = list(pool.map(work, FRAMEWORKS))
    completed = sum(int(str(r["completed"])) for r in results)
    refusals = [str(message) for r in results for message in r["refused"]]  # type: ignore[attr-defined]
    assert completed + len(refusals) == 2 * len(FRAMEWORKS)
    assert completed >= 1
    for message in refusals:
        assert f"policy {policy_id} " in message
    requests = sent(fake, marker)
    events = entries(client, agent)
    holds = [e for e in events if e.kind == "hold"]
    assert len(holds) == len(requests), "every call was held, and no hold was taken for a call not made"
    closed = {e.hold_id for e in events if e.kind == "release"}
    assert {h.hold_id for h in holds} <= closed
    spent = sum((e.cost for e in events if e.is_charge), Decimal(0))
    assert spent <= limit
    expected = Decimal(0)
    for request in requests:
        prompt, completion = expected_usage(request, fake.completion_tokens)
        expected += Decimal(prompt) * INPUT_PRICE + Decimal(completion) * OUTPUT_PRICE
    assert spent == expected
    assert_verified(client)
