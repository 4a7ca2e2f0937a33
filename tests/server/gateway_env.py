"""A live gateway over real HTTP for the end-to-end gateway tests (127.0.0.1 only).

:func:`start_gateway` makes a fresh Caracal home whose ``config.toml`` points both upstreams (OpenAI and
Anthropic) at a :func:`~tests.server.fake_upstream.serve_fake_upstream` instance (or at any URL, e.g. a
closed port), opens a :class:`Service` on it and serves :func:`create_app` in a :class:`ServerThread`.

Tests share one gateway per module and isolate themselves with one agent each (:meth:`GatewayEnv.agent`)
and a unique nonce in every request body, so that ledger entries (by agent) and upstream requests (by
nonce) of one test are never confused with another's. Settlement is queued after the response (see
:mod:`caracal.server.gateway.proxy`): :meth:`GatewayEnv.closed_entries` waits, with a timeout, until every
hold of an agent is closed in the ledger before a test asserts on it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.middleware.gzip import GZipMiddleware

from caracal.core.enforcement import HOLD_RESOURCE
from caracal.core.events import LedgerEvent
from caracal.core.ledger import LedgerReader
from caracal.core.pricebook import multiply_exactly
from caracal.core.windows import parse_window
from caracal.server.app import create_app
from caracal.server.gateway.estimate import (
    Bound,
    bound_anthropic_messages,
    bound_openai_chat,
    bound_openai_embeddings,
    bound_openai_responses,
)
from caracal.server.gateway.pricing import hold_amount
from caracal.server.gateway.tokens import counter_for_model
from caracal.server.runner import ServerThread
from caracal.server.service import Service
from tests.pg import storage_config
from tests.server.fake_upstream import FakeRequest, FakeUpstream, serve_fake_upstream

PROVIDER_KEY = "sk-upstream-test"
MAX_OUTPUT_TOKENS = 64
"""The gateway's ``[gateway] max_output_tokens`` in these homes (injected when a request sets no cap)."""
IMAGE_TOKENS = 1000

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"

# Models priced from genai-prices (Python 3.11+): the plain happy paths use them as a user would.
GPT = "gpt-4o"
CLAUDE = "claude-haiku-4-5"
EMBEDDING = "text-embedding-3-small"

INPUT_PRICE = Decimal("0.001")
OUTPUT_PRICE = Decimal("0.002")


def behaviour_model(model: str, behaviour: str) -> str:
    """``model@behaviour``: the fake upstream acts out ``behaviour`` for this model name."""
    return f"{model}@{behaviour}"


DEFAULT_USER_PRICED = tuple(
    (provider, behaviour_model(model, behaviour))
    for provider, model in (("openai", GPT), ("openai", EMBEDDING), ("anthropic", CLAUDE))
    for behaviour in ("ok", "slow", "error500", "error429", "midstream-fail", "no-usage")
)
"""``(provider, model)`` pairs given user prices (:data:`INPUT_PRICE`, :data:`OUTPUT_PRICE`) in every home:
the fake's behaviour-suffixed model names, which genai-prices does not know."""

try:
    import genai_prices  # noqa: F401
except ImportError:  # Python 3.10: no LLM prices are bundled, so the plain model names are user-priced too
    DEFAULT_USER_PRICED += (("openai", GPT), ("openai", EMBEDDING), ("anthropic", CLAUDE))


def nonce() -> str:
    return uuid.uuid4().hex


@dataclass
class AgentInfo:
    agent_id: str
    name: str
    token: str
    key_id: str
    policy_id: str | None

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class GatewayEnv:
    home: Path
    service: Service
    fake: FakeUpstream | None
    base_url: str
    admin_token: str
    client: httpx.Client

    # ---------------------------------------------------------------------------------------- setup

    def agent(
        self,
        limit: str | None = "100",
        *,
        parent: str | None = None,
        prefix: str = "agent",
    ) -> AgentInfo:
        """A new active agent (optionally a child of ``parent``) with an agent key and, unless ``limit`` is
        None, a total-window USD policy of ``limit``."""
        home = self.service.home
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        agent = home.agents.register(name, "tests@example.com", parent)
        key, token = self.service.keys.create("agent", agent.agent_id, f"{name} key")
        policy_id = None
        if limit is not None:
            policy = home.policies.create(agent.agent_id, limit, parse_window("total"), "USD")
            policy_id = policy.policy_id
        return AgentInfo(agent.agent_id, name, token, key.key_id, policy_id)

    def set_price(self, provider: str, model: str, input_price: object, output_price: object) -> None:
        prices = self.service.home.prices
        prices.set(f"{provider}.{model}.input_tokens", str(input_price), "USD")
        prices.set(f"{provider}.{model}.output_tokens", str(output_price), "USD")

    # ---------------------------------------------------------------------------------------- calls

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        agent: AgentInfo | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        sent = {**(agent.auth() if agent is not None else {}), **(headers or {})}
        if content is None:
            content = orjson.dumps(body)
        sent.setdefault("content-type", "application/json")
        return self.client.post(path, content=content, headers=sent)

    # ---------------------------------------------------------------------------------------- upstream

    def upstream_requests(self, marker: str) -> list[FakeRequest]:
        """The requests the fake received whose JSON body contains ``marker`` (a test's nonce)."""
        assert self.fake is not None
        needle = marker.encode()
        return [r for r in list(self.fake.requests) if needle in orjson.dumps(r.body)]

    # ---------------------------------------------------------------------------------------- ledger

    def entries(self, agent_id: str) -> list[LedgerEvent]:
        return [e for e in LedgerReader(self.service.home.ledger) if e.agent_id == agent_id]

    def closed_entries(self, agent_id: str, holds: int = 1, timeout: float = 20.0) -> list[LedgerEvent]:
        """The agent's ledger entries once it has at least ``holds`` holds and every one is closed (settled
        or released). Polls (the settlement is queued after the response); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.entries(agent_id)
            opened = {e.hold_id for e in events if e.kind == "hold"}
            closed = {e.hold_id for e in events if e.kind == "release"}
            if len(opened) >= holds and opened <= closed:
                return events
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"holds of {agent_id} not closed within {timeout} s: {len(opened)} held, "
                    f"{len(opened & closed)} closed, expected at least {holds}"
                )
            time.sleep(0.02)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until no hold of any agent is open (used between tests of a shared gateway)."""
        deadline = time.monotonic() + timeout
        while open_holds(list(LedgerReader(self.service.home.ledger))):
            if time.monotonic() > deadline:
                raise AssertionError(f"holds still open after {timeout} s")
            time.sleep(0.02)

    # ---------------------------------------------------------------------------------------- money

    def price(self, provider: str, model: str, kind: str) -> Decimal:
        pricebook = self.service.home.prices.pricebook()
        return pricebook.price_of(f"{provider}.{model}.{kind}", self.service.enforcer.now()).unit_price

    def worst_case(self, path: str, body: dict[str, Any]) -> tuple[Bound, dict[str, Any], Decimal]:
        """The gateway's bound, forwarded body and hold amount for ``body`` on ``path`` (with the model's
        tokenizer where the gateway has one, as it does)."""
        counter = counter_for_model(body.get("model"))
        if path == CHAT:
            bound, forward = bound_openai_chat(
                body, max_output_tokens=MAX_OUTPUT_TOKENS, image_tokens=IMAGE_TOKENS, counter=counter
            )
            provider = "openai"
        elif path == EMBEDDINGS:
            bound, forward = bound_openai_embeddings(body, counter=counter)
            provider = "openai"
        elif path == RESPONSES:  # a request that continues no earlier response
            bound, forward = bound_openai_responses(
                body, max_output_tokens=MAX_OUTPUT_TOKENS, image_tokens=IMAGE_TOKENS, counter=counter
            )
            provider = "openai"
        else:
            bound, forward = bound_anthropic_messages(
                body, max_output_tokens=MAX_OUTPUT_TOKENS, image_tokens=IMAGE_TOKENS
            )
            provider = "anthropic"
        amount, _currency = hold_amount(
            self.service.home.prices.pricebook(), provider, body["model"], bound, self.service.enforcer.now()
        )
        return bound, forward, amount


def open_holds(events: list[LedgerEvent]) -> set[str | None]:
    opened = {e.hold_id for e in events if e.kind == "hold"}
    closed = {e.hold_id for e in events if e.kind == "release"}
    return opened - closed


def split(events: list[LedgerEvent]) -> tuple[list[LedgerEvent], list[LedgerEvent], list[LedgerEvent]]:
    """``(holds, charges, releases)`` of a list of entries."""
    holds = [e for e in events if e.kind == "hold"]
    charges = [e for e in events if e.is_charge]
    releases = [e for e in events if e.kind == "release"]
    for entry in holds + releases:
        assert entry.resource_type == HOLD_RESOURCE
    return holds, charges, releases


def release_reason(event: LedgerEvent) -> str:
    assert event.metadata is not None
    return str(event.metadata["reason"])


def cost_of(quantity: Decimal, unit_price: Decimal) -> Decimal:
    return multiply_exactly(quantity, unit_price)


def _config(upstream_url: str, *, upstream_timeout: float) -> str:
    tables = "\n".join(
        f'[gateway.{api}]\nbase_url = "{upstream_url}/v1"\napi_key = "{PROVIDER_KEY}"\n'
        for api in ("openai", "anthropic")
    )
    return (
        f"[gateway]\nmax_output_tokens = {MAX_OUTPUT_TOKENS}\nimage_tokens = {IMAGE_TOKENS}\n"
        f"hold_ttl = 900\nupstream_timeout = {upstream_timeout}\n\n{tables}"
    )


@contextmanager
def _serving(
    home: Path,
    fake: FakeUpstream | None,
    upstream_url: str,
    upstream_timeout: float,
    database_url: str | None = None,
) -> Iterator[GatewayEnv]:
    home.mkdir(parents=True, exist_ok=True)
    config = storage_config(database_url) + _config(upstream_url, upstream_timeout=upstream_timeout)
    (home / "config.toml").write_text(config)
    service = Service(home)
    admin_token = service.keys.ensure_admin_key(home / "keys" / "admin.key")
    assert admin_token is not None
    for provider, model in DEFAULT_USER_PRICED:
        service.home.prices.set(f"{provider}.{model}.input_tokens", str(INPUT_PRICE), "USD")
        service.home.prices.set(f"{provider}.{model}.output_tokens", str(OUTPUT_PRICE), "USD")
    with ServerThread(create_app(service, own_service=True)) as server:  # closes the service at shutdown
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=50)
        with httpx.Client(base_url=server.base_url, timeout=30.0, limits=limits) as client:
            yield GatewayEnv(home, service, fake, server.base_url, admin_token, client)


@contextmanager
def start_gateway(
    home: Path,
    *,
    upstream_url: str | None = None,
    upstream_timeout: float = 30.0,
    gzip: bool = False,
    database_url: str | None = None,
    **fake_knobs: Any,
) -> Iterator[GatewayEnv]:
    """A live gateway over a fresh home at ``home``, its upstreams a new fake (``fake_knobs`` set on it), or
    ``upstream_url`` when given (then no fake is started). ``database_url``: the home's storage is that
    PostgreSQL schema (``[storage] url``) instead of its files.

    ``gzip`` serves the fake behind Starlette's ``GZipMiddleware``: JSON answers are gzip-compressed for a
    client that accepts it (``Accept-Encoding: gzip``), as the real providers' front ends do.
    """
    if upstream_url is not None:
        with _serving(home, None, upstream_url, upstream_timeout, database_url) as env:
            yield env
        return
    if gzip:
        fake = FakeUpstream(**fake_knobs)
        with ServerThread(GZipMiddleware(fake, minimum_size=1)) as upstream:
            fake.base_url = upstream.base_url
            with _serving(home, fake, fake.base_url, upstream_timeout, database_url) as env:
                yield env
        return
    with (
        serve_fake_upstream(**fake_knobs) as fake,
        _serving(home, fake, fake.base_url, upstream_timeout, database_url) as env,
    ):
        yield env


__all__ = [
    "CHAT",
    "CLAUDE",
    "EMBEDDING",
    "EMBEDDINGS",
    "GPT",
    "INPUT_PRICE",
    "MAX_OUTPUT_TOKENS",
    "MESSAGES",
    "OUTPUT_PRICE",
    "PROVIDER_KEY",
    "AgentInfo",
    "GatewayEnv",
    "behaviour_model",
    "cost_of",
    "nonce",
    "open_holds",
    "release_reason",
    "split",
    "start_gateway",
]
