"""``LlmMeter``: the gateway's hold-before-call, settle-from-usage flow for LLM calls made in-process.

The framework adapters (:mod:`.langchain`, :mod:`.litellm`, :mod:`.openai_agents`) meter the calls a
framework makes *without* a gateway in between: the agent's process talks to the provider directly and
Caracal runs embedded on a home (``CaracalClient()``). For each call:

1. **Worst case.** The chat request (OpenAI chat-completions shape) is bounded by the gateway's own
   :func:`~caracal.server.gateway.estimate.bound_openai_chat` (input tokens <= JSON bytes of the messages and
   tools, plus Anthropic's hidden tool prompt for ``provider="anthropic"``; output <= the request's cap)
   and priced by :func:`~caracal.server.gateway.pricing.hold_amount`, so
   the embedded hold and the gateway's hold of one request are the same amount. An unknown price refuses the
   call (:class:`~caracal.exceptions.UnknownPriceError`), as does a request that cannot be bounded
   (:class:`~caracal.exceptions.GatewayRequestError`).
2. **Hold** that amount (:class:`~caracal.exceptions.BudgetExceededError` names the policy when the budget
   cannot cover it; the adapter raises it *before* the provider is called, so nothing is spent). Holds are
   taken charge-on-expiry with the bound in their metadata, as the gateway's are: a process that dies between
   the call and its settlement leaves a hold that is billed at its bound when it expires, never forgotten.
3. **Settle** from the usage the framework reports (:func:`~caracal.server.gateway.pricing.usage_charges`:
   one charge per token kind at the exact Decimal price), or, when the framework reported none, at the bound
   (marked ``estimated``: fail closed, never below what could have been billed).
4. **Release** when the call failed (nothing billed).

The output bound holds only if the provider enforces a cap: :meth:`LlmMeter.hold` returns the request with
the cap filled in (``max_tokens``, from the home's ``[gateway] max_output_tokens``) and an adapter that
builds the request sends that. An adapter that cannot change the request (a callback) must refuse one
without a cap: :meth:`LlmMeter.hold` with ``require_cap=True`` does.

Blocking: each step appends to the ledger (a lock and an fsync on the file backend, a transaction on
PostgreSQL). The ``a``-prefixed methods run them in a worker thread for async frameworks. Safe to share
between threads and, through the home's own locking, between processes on one home.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from caracal.core.enforcement import Hold, Settlement
from caracal.exceptions import ConfigurationError, GatewayRequestError
from caracal.server.gateway.estimate import ANTHROPIC_TOOLS_OVERHEAD_TOKENS, Bound, bound_openai_chat
from caracal.server.gateway.pricing import hold_amount, usage_charges
from caracal.server.gateway.usage import Usage, billable

if TYPE_CHECKING:
    from caracal.sdk.client import CaracalClient

__all__ = ["LlmMeter", "MeteredCall", "Usage"]


@dataclass(frozen=True)
class MeteredCall:
    """One held LLM call: its hold, the bound it was priced from, the model and the request to send."""

    hold: Hold
    bound: Bound
    provider: str
    model: str
    request: dict[str, Any]

    @property
    def amount(self) -> Decimal:
        """The money set aside for the call (its worst case)."""
        return self.hold.amount


class LlmMeter:
    """Holds, settles and releases the LLM calls of one agent on an embedded Caracal client.

    - ``client``: an embedded :class:`~caracal.sdk.client.CaracalClient` (``CaracalClient()`` or
      ``CaracalClient(home=...)``); a remote client is refused (the meter prices calls with the home's
      pricebook, as the gateway does).
    - ``agent``: the agent's name or id; every call is held and billed against its budgets (and its
      ancestors').
    - ``provider``: the pricebook provider of the models (``openai`` prices ``openai.<model>.<kind>``).
    - ``max_output_tokens``, ``image_tokens``, ``ttl``: default to the home's ``[gateway] max_output_tokens``,
      ``image_tokens`` and ``hold_ttl``.
    """

    def __init__(
        self,
        client: CaracalClient,
        agent: str,
        *,
        provider: str = "openai",
        max_output_tokens: int | None = None,
        image_tokens: int | None = None,
        ttl: float | None = None,
    ):
        if not isinstance(agent, str) or not agent.strip():
            raise ConfigurationError("agent must be an agent's name or id (a non-empty string)")
        if not isinstance(provider, str) or not provider.strip():
            raise ConfigurationError("provider must be a non-empty string such as 'openai'")
        home = client.home  # ConfigurationError for a remote client, naming what to use instead
        settings = home.settings
        self.client = client
        self.agent = agent
        self.provider = provider
        cap = settings.max_output_tokens if max_output_tokens is None else max_output_tokens
        self.max_output_tokens = cap
        self.image_tokens = settings.image_tokens if image_tokens is None else image_tokens
        self.ttl = settings.gateway_hold_ttl if ttl is None else ttl
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, (int, float)) or self.ttl <= 0:
            raise ConfigurationError(f"ttl must be a positive number of seconds, got {self.ttl!r}")

    def __repr__(self) -> str:
        return f"LlmMeter(agent={self.agent!r}, provider={self.provider!r})"

    # ------------------------------------------------------------------ the three steps

    def hold(
        self, request: Mapping[str, Any], *, model: str | None = None, require_cap: bool = False
    ) -> MeteredCall:
        """Hold the worst case of an OpenAI chat-completions ``request`` (``model``, ``messages``, optional
        ``tools``, ``max_tokens``...) before it is sent; ``model`` overrides the priced model name.

        Returns the :class:`MeteredCall`, whose ``request`` has the output cap filled in when it had none
        (send that one). With ``require_cap`` a request without ``max_tokens``/``max_completion_tokens`` is
        refused (:class:`GatewayRequestError`): the caller cannot make the provider enforce the cap.
        Raises :class:`BudgetExceededError` (nothing held) when the budget cannot cover it.
        """
        body = dict(request)
        if model is not None:
            body["model"] = model
        if require_cap and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            raise GatewayRequestError(
                f"the call to {body.get('model')!r} sets no output cap, so Caracal cannot bound its cost: "
                f"set max_tokens on the model (for example ChatOpenAI(max_tokens=1024))"
            )
        bound, forward = bound_openai_chat(
            body, max_output_tokens=self.max_output_tokens, image_tokens=self.image_tokens
        )
        if self.provider == "anthropic" and body.get("tools"):
            # Anthropic adds a hidden tool-use system prompt, as the gateway's Anthropic bound counts.
            bound = Bound(bound.input_tokens + ANTHROPIC_TOOLS_OVERHEAD_TOKENS, bound.output_tokens)
        name = str(forward["model"])
        enforcer = self.client.enforcer
        amount, currency = hold_amount(
            self.client.home.prices.pricebook(), self.provider, name, bound, enforcer.now()
        )
        hold = enforcer.reserve(
            self.agent,
            amount,
            currency,
            self.ttl,
            on_expiry="charge",  # a call that may have been answered ends billed (see the module docstring)
            metadata={
                "integration": "llm-meter",
                "model": name,
                "input_tokens_bound": bound.input_tokens,
                "output_tokens_bound": bound.output_tokens,
            },
        )
        return MeteredCall(hold, bound, self.provider, name, forward)

    def settle(self, call: MeteredCall, usage: Usage | None) -> Settlement:
        """Close ``call``'s hold with the charges of ``usage`` (the provider's report), or of the bound
        (marked estimated) when the framework reported none. Exact Decimal prices of the held model."""
        billed = billable(usage, call.bound, None)
        enforcer = self.client.enforcer
        charges = usage_charges(
            self.client.home.prices.pricebook(),
            call.provider,
            call.model,
            billed,
            enforcer.now(),
            {"integration": "llm-meter"},
            currency=call.hold.currency,
        )
        return enforcer.settle(call.hold.hold_id, charges)

    def release(self, call: MeteredCall) -> bool:
        """Free ``call``'s hold without billing (the call failed before the provider answered); False when
        it was already closed."""
        return self.client.enforcer.release(call.hold.hold_id)

    # ------------------------------------------------------------------ async (worker threads)

    async def ahold(
        self, request: Mapping[str, Any], *, model: str | None = None, require_cap: bool = False
    ) -> MeteredCall:
        """:meth:`hold` in a worker thread."""
        return await asyncio.to_thread(self.hold, request, model=model, require_cap=require_cap)

    async def asettle(self, call: MeteredCall, usage: Usage | None) -> Settlement:
        """:meth:`settle` in a worker thread."""
        return await asyncio.to_thread(self.settle, call, usage)

    async def arelease(self, call: MeteredCall) -> bool:
        """:meth:`release` in a worker thread."""
        return await asyncio.to_thread(self.release, call)


def usage_of(
    input_tokens: object, output_tokens: object, cached_tokens: object = 0, model: object = None
) -> Usage | None:
    """A :class:`Usage` from OpenAI-style counts as frameworks report them (``input`` includes the cached
    ones), or None when the input and output counts are both missing: no report. Negative, boolean or
    non-integer counts are treated as missing."""

    def count(value: object) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        return value

    prompt, output, cached = count(input_tokens), count(output_tokens), count(cached_tokens) or 0
    if prompt is None and output is None:
        return None
    prompt = prompt or 0
    cached = min(cached, prompt)
    return Usage(
        input_tokens=prompt - cached,
        output_tokens=output or 0,
        cache_read_tokens=cached,
        model=model if isinstance(model, str) and model else None,
    )
