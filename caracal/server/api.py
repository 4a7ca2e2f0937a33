"""The REST API (``/api/v1/...``): agents and their API keys, policies, prices, metering,
check/reserve/settle/release, budget, and the ledger (entries, summaries, verification, checkpoints and
RFC 9162 proofs with hex hashes).

Every endpoint needs a key (see :mod:`caracal.server.auth` for who may do what); the key is checked before
the request body is parsed (:class:`AuthenticatedRoute`), so a request without a valid key gets 401
whatever it carries. Request bodies are validated twice: their shape by the models below (which is what the
OpenAPI document shows), their values by the same core functions the embedded client uses, so both
transports accept and refuse the same input. Money is a decimal string (``"0.25"``) or an integer, never a
JSON float.

Writes to the ledger go through the group committer (:meth:`Service.run`); registry changes (agents,
policies, prices) are small synchronous file transactions run in the thread pool.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from caracal.core.apikeys import TOKEN_WARNING, Principal
from caracal.core.checkpoint import matches_signed, public_key_path
from caracal.core.events import LedgerEvent
from caracal.core.ledger_read import LedgerQuery, query_bound
from caracal.core.verify import prove_consistency, prove_inclusion
from caracal.core.windows import policy_window
from caracal.exceptions import (
    BudgetExceededError,
    CaracalError,
    InvalidRequestError,
    PermissionDeniedError,
)
from caracal.server.auth import authenticate, require_admin, require_reading, require_writable
from caracal.server.errors import json_response
from caracal.server.service import Service
from caracal.server.verification import verify_and_record


def _not_a_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(
            f'amounts are exact: send a decimal string ("{value!r}") or an integer, not a JSON float'
        )
    return value


Money = Annotated[
    StrictStr | StrictInt,
    BeforeValidator(_not_a_float),
    Field(description='An exact decimal amount as a string ("0.25") or an integer; never a JSON float'),
]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Reason = Annotated[StrictStr | None, Field(None, min_length=1, max_length=1024)]
AgentRef = Annotated[str, Path(min_length=1, max_length=256, description="The agent's id or name")]
PolicyRef = Annotated[str, Path(min_length=1, max_length=256)]
HoldRef = Annotated[str, Path(min_length=1, max_length=256)]
KeyRef = Annotated[str, Path(min_length=1, max_length=64)]
QueryText = Annotated[str | None, Query(min_length=1, max_length=256)]
Metadata = Annotated[dict[str, Any] | None, Field(description="A small JSON object (bounded in size)")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def principal(request: Request) -> Principal:
    found = getattr(request.state, "principal", None)
    if isinstance(found, Principal):
        return found
    return authenticate(service_of(request), request)


class AuthenticatedRoute(APIRoute):
    """A route that authenticates the caller before anything else about the request is looked at.

    FastAPI parses a JSON body (and reports a malformed one as 400) before it resolves dependencies; this
    wrapper runs first, so a request without a valid key gets 401 whatever its body, and nothing about the
    endpoint's input is revealed to an unauthenticated caller. The principal is kept in ``request.state``
    for the ``Caller`` dependency.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            request.state.principal = authenticate(service_of(request), request)
            return await handler(request)

        return authenticated


Caller = Annotated[Principal, Depends(principal)]
router = APIRouter(prefix="/api/v1", route_class=AuthenticatedRoute)


# ---------------------------------------------------------------------------------------------- agents


class AgentCreate(Body):
    name: Identifier
    owner: Identifier
    parent: Identifier | None = None
    metadata: Metadata = None


@router.post("/agents", status_code=201, tags=["agents"], summary="Register an agent (admin)")
def create_agent(body: AgentCreate, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    agent = service_of(request).home.agents.register(body.name, body.owner, body.parent, body.metadata)
    return json_response(agent.to_dict(), 201)


@router.get("/agents", tags=["agents"], summary="List agents (an agent key sees itself and its descendants)")
def list_agents(request: Request, caller: Caller) -> Response:
    agents = service_of(request).home.agents
    if caller.role == "admin":
        found = agents.list()
    else:
        assert caller.agent_id is not None
        found = [agents.get(caller.agent_id), *agents.descendants(caller.agent_id)]
    return json_response([agent.to_dict() for agent in found])


@router.get("/agents/{agent}", tags=["agents"], summary="One agent, by id or name")
def get_agent(agent: AgentRef, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    found = service.home.agents.get(agent)
    require_reading(service, caller, found.agent_id)
    return json_response(found.to_dict())


@router.get("/agents/{agent}/budget", tags=["budget"], summary="Policies over the agent: spent, held, left")
def budget_status(agent: AgentRef, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    agent_id = service.home.directory.agent_id(agent)
    require_reading(service, caller, agent_id)
    return json_response([status.to_dict() for status in service.enforcer.status(agent_id)])


def subtree(service: Service, caller: Principal, agent: str | None) -> set[str] | None:
    """The agent ids a read about ``agent`` and its descendants covers (``None``: every agent, for the admin
    without ``agent``). An agent key without ``agent`` reads its own subtree; naming another is 403."""
    agents = service.home.agents
    if agent is None:
        if caller.is_admin:
            return None
        assert caller.agent_id is not None
        agent = caller.agent_id
    agent_id = service.home.directory.agent_id(agent)
    require_reading(service, caller, agent_id)
    return {agent_id, *(found.agent_id for found in agents.descendants(agent_id))}


@router.get(
    "/denials",
    tags=["budget"],
    summary="Denied reserves per hour, agent and policy (an agent key sees its own subtree)",
)
def denials(
    request: Request,
    caller: Caller,
    agent_id: Annotated[
        str | None, Query(min_length=1, max_length=256, description="This agent and its descendants")
    ] = None,
    since: Annotated[
        str | None, Query(max_length=64, description="ISO 8601 time or a date (default: 24 hours ago)")
    ] = None,
) -> Response:
    service = service_of(request)
    agent_ids = subtree(service, caller, agent_id)
    start = query_bound(since, "since", InvalidRequestError) or service.home.now() - timedelta(hours=24)
    return json_response([record.to_dict() for record in service.home.denials.recent(start, agent_ids)])


@router.post("/agents/{agent}/suspend", tags=["agents"], summary="Suspend an agent and its subtree (admin)")
def suspend_agent(agent: AgentRef, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    return json_response(service_of(request).home.agents.suspend(agent).to_dict())


@router.post("/agents/{agent}/activate", tags=["agents"], summary="Make a suspended agent active (admin)")
def activate_agent(agent: AgentRef, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    return json_response(service_of(request).home.agents.activate(agent).to_dict())


# -------------------------------------------------------------------------------------------- API keys


class KeyCreate(Body):
    label: Annotated[StrictStr | None, Field(None, min_length=1, max_length=256)]


@router.post(
    "/agents/{agent}/keys", status_code=201, tags=["keys"], summary="Create an agent API key (admin)"
)
def create_key(agent: AgentRef, request: Request, caller: Caller, body: KeyCreate | None = None) -> Response:
    require_admin(caller)
    service = service_of(request)
    found = service.home.agents.get(agent)
    key, token = service.keys.create("agent", found.agent_id, body.label if body is not None else None)
    return json_response({**key.public_dict(), "token": token, "warning": TOKEN_WARNING}, 201)


@router.get("/agents/{agent}/keys", tags=["keys"], summary="An agent's API keys, never their tokens (admin)")
def list_keys(agent: AgentRef, request: Request, caller: Caller, include_revoked: bool = False) -> Response:
    require_admin(caller)
    service = service_of(request)
    agent_id = service.home.agents.get(agent).agent_id
    keys = service.keys.list(agent_id, include_revoked=include_revoked)
    return json_response([key.public_dict() for key in keys])


@router.delete("/keys/{key_id}", tags=["keys"], summary="Revoke an API key (admin; idempotent)")
def revoke_key(key_id: KeyRef, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    return json_response(service_of(request).keys.revoke(key_id).public_dict())


# -------------------------------------------------------------------------------------------- policies


class PolicyCreate(Body):
    agent_id: Identifier = Field(description="The agent's id or name")
    limit: Money
    window: StrictStr | None = Field(None, description="hourly, daily, weekly, monthly, total or rolling")
    rolling: StrictStr | None = Field(None, description='Duration of a rolling window, e.g. "24h"')
    currency: StrictStr = "USD"
    timezone: StrictStr = "UTC"


@router.post("/policies", status_code=201, tags=["policies"], summary="Create a budget policy (admin)")
def create_policy(body: PolicyCreate, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    home = service_of(request).home
    agent = home.agents.get(body.agent_id)
    policy = home.policies.create(
        agent.agent_id, body.limit, policy_window(body.window, body.rolling, body.timezone), body.currency
    )
    return json_response(policy.to_dict(), 201)


@router.get("/policies", tags=["policies"], summary="Policies (of one agent, or all for the admin)")
def list_policies(
    request: Request,
    caller: Caller,
    agent_id: QueryText = None,
    include_inactive: bool = False,
) -> Response:
    service = service_of(request)
    if agent_id is None:
        require_admin(caller)
        policies = service.home.policies.list(include_inactive=include_inactive)
    else:
        resolved = service.home.directory.agent_id(agent_id)
        require_reading(service, caller, resolved)
        policies = service.home.policies.list(resolved, include_inactive=include_inactive)
    return json_response([policy.to_dict() for policy in policies])


@router.get("/policies/{policy_id}", tags=["policies"], summary="One policy (its latest revision)")
def get_policy(policy_id: PolicyRef, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    policy = service.home.policies.get(policy_id)
    require_reading(service, caller, policy.agent_id)
    return json_response(policy.to_dict())


class PolicyUpdate(Body):
    limit: Money
    reason: Reason = None


@router.patch("/policies/{policy_id}", tags=["policies"], summary="Change a policy's limit (admin)")
def update_policy(policy_id: PolicyRef, body: PolicyUpdate, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    policy = service_of(request).home.policies.update(policy_id, limit=body.limit, reason=body.reason)
    return json_response(policy.to_dict())


class PolicyRevision(Body):
    reason: Reason = None


@router.post(
    "/policies/{policy_id}/deactivate", tags=["policies"], summary="Deactivate a policy (admin; idempotent)"
)
def deactivate_policy(
    policy_id: PolicyRef, request: Request, caller: Caller, body: PolicyRevision | None = None
) -> Response:
    require_admin(caller)
    reason = body.reason if body is not None else None
    return json_response(service_of(request).home.policies.deactivate(policy_id, reason=reason).to_dict())


@router.post(
    "/policies/{policy_id}/activate", tags=["policies"], summary="Activate a policy again (admin; idempotent)"
)
def activate_policy(
    policy_id: PolicyRef, request: Request, caller: Caller, body: PolicyRevision | None = None
) -> Response:
    require_admin(caller)
    reason = body.reason if body is not None else None
    return json_response(service_of(request).home.policies.activate(policy_id, reason=reason).to_dict())


# ---------------------------------------------------------------------------------------------- prices


class PriceSet(Body):
    unit_price: Money
    currency: StrictStr = "USD"


@router.put("/prices/{resource_type:path}", tags=["prices"], summary="Set a unit price from now on (admin)")
def set_price(
    resource_type: Annotated[str, Path(min_length=1, max_length=256)],
    body: PriceSet,
    request: Request,
    caller: Caller,
) -> Response:
    require_admin(caller)
    price = service_of(request).home.prices.set(resource_type, body.unit_price, body.currency)
    return json_response(price.to_dict())


@router.get("/prices", tags=["prices"], summary="The user price history (any valid key)")
def list_prices(request: Request, caller: Caller) -> Response:
    return json_response([price.to_dict() for price in service_of(request).home.prices.history()])


@router.get(
    "/prices/{resource_type:path}",
    tags=["prices"],
    summary="The price in effect now (any valid key; 400 if none)",
)
def current_price(
    resource_type: Annotated[str, Path(min_length=1, max_length=256)], request: Request, caller: Caller
) -> Response:
    service = service_of(request)
    price = service.home.prices.pricebook().price_of(resource_type, service.enforcer.now())
    return json_response(price.to_dict())


# ------------------------------------------------------------------------------- metering, enforcement


class EventCreate(Body):
    agent_id: Identifier
    resource_type: Identifier
    quantity: Money
    metadata: Metadata = None
    idempotency_key: Identifier | None = None
    timestamp: StrictStr | None = Field(None, description="When it happened (kept as metadata.occurred_at)")
    hold_id: Identifier | None = Field(None, description="Charge against this open hold of the agent")


@router.post("/events", status_code=201, tags=["metering"], summary="Price and record usage")
async def create_event(body: EventCreate, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    agent_id = service.home.directory.agent_id(body.agent_id)
    caller.require_act_for(agent_id)
    require_writable(service, caller)
    if body.hold_id is not None:
        _require_hold_of(service, body.hold_id, caller)
    operation = service.meter.emit_op(
        agent_id,
        body.resource_type,
        body.quantity,
        body.metadata,
        body.idempotency_key,
        body.timestamp,
        body.hold_id,
    )
    event = await service.run(operation)
    return json_response(event.to_dict(), 201)


class CheckRequest(Body):
    agent_id: Identifier
    amount: Money | None = None
    currency: StrictStr = "USD"


@router.post("/check", tags=["enforcement"], summary="Would this amount be allowed now? (reserves nothing)")
def check(body: CheckRequest, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    agent_id = service.home.directory.agent_id(body.agent_id)
    require_reading(service, caller, agent_id)
    decision = service.enforcer.check(agent_id, body.amount, body.currency)
    service.metrics.decisions.labels("check", "allowed" if decision.allowed else "denied").inc()
    return json_response(decision.to_dict())


class HoldCreate(Body):
    agent_id: Identifier
    amount: Money
    currency: StrictStr = "USD"
    ttl: Annotated[StrictInt | None, Field(None, gt=0, le=7 * 86400, description="Seconds until it expires")]
    on_expiry: Literal["release", "charge"] = Field(
        "release",
        description="What expiry means: release the money, or charge what is left (estimated) because it "
        "may have been spent; a charge hold keeps counting after its TTL until it is closed",
    )
    metadata: Metadata = Field(None, description="Recorded on the hold entry (e.g. what the amount bounds)")


@router.post("/holds", status_code=201, tags=["enforcement"], summary="Reserve an amount (402 if denied)")
async def reserve(body: HoldCreate, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    agent_id = service.home.directory.agent_id(body.agent_id)
    caller.require_act_for(agent_id)
    require_writable(service, caller)
    ttl = service.home.settings.default_ttl if body.ttl is None else body.ttl
    try:
        operation = service.enforcer.reserve_op(
            agent_id, body.amount, body.currency, ttl, on_expiry=body.on_expiry, metadata=body.metadata
        )
        hold = await service.run(operation)
    except BudgetExceededError:
        service.metrics.decisions.labels("reserve", "denied").inc()
        raise
    service.metrics.decisions.labels("reserve", "allowed").inc()
    service.metrics.holds.labels("placed").inc()
    return json_response(hold.to_dict(), 201)


class Charge(Body):
    resource_type: Identifier
    quantity: Money
    cost: Money
    metadata: Metadata = None
    idempotency_key: Identifier | None = None


class SettleRequest(Body):
    charges: Annotated[list[Charge], Field(max_length=1000)] = []


@router.post("/holds/{hold_id}/settle", tags=["enforcement"], summary="Record the actual charges; close")
async def settle(hold_id: HoldRef, body: SettleRequest, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    _require_hold_of(service, hold_id, caller)
    charges = [charge.model_dump(exclude_none=True) for charge in body.charges]
    settlement = await service.run(service.enforcer.settle_op(hold_id, charges))
    service.metrics.holds.labels("settled").inc()
    return json_response(settlement.to_dict())


@router.post("/holds/{hold_id}/release", tags=["enforcement"], summary="Close a hold without charging it")
async def release(hold_id: HoldRef, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    hold = service.enforcer.catch_up().hold(hold_id)
    if hold is not None:
        caller.require_act_for(hold.agent_id)
    require_writable(service, caller)
    released = await service.run(service.enforcer.release_op(hold_id))
    if released:
        service.metrics.holds.labels("released").inc()
    return json_response({"hold_id": hold_id, "released": released})


# ---------------------------------------------------------------------------------------------- ledger

MAX_EVENTS = 1000
Bound = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="ISO 8601 time or a date (inclusive; naive means UTC; a date as `until`: the whole day)",
    ),
]


def _window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    start = query_bound(since, "since", InvalidRequestError)
    stop = query_bound(until, "until", InvalidRequestError, end=True)
    if start is not None and stop is not None and start > stop:
        raise InvalidRequestError(f"since ({start.isoformat()}) is after until ({stop.isoformat()})")
    return start, stop


def _ledger_agent(service: Service, caller: Principal, agent_id: str | None) -> str | None:
    """The agent filter, resolved (a name becomes its id). An agent key must name an agent it may read."""
    if agent_id is None:
        if not caller.is_admin:
            raise PermissionDeniedError(
                "an agent key must pass agent_id (its own agent or a descendant) to read the ledger"
            )
        return None
    if caller.is_admin:
        try:
            return service.home.directory.agent_id(agent_id)
        except CaracalError:
            return agent_id  # entries may name agents the registry does not know (plain ledger appends)
    resolved = service.home.directory.agent_id(agent_id)
    require_reading(service, caller, resolved)
    return resolved


@router.get("/ledger/events", tags=["ledger"], summary="Ledger entries, filtered (oldest first)")
def ledger_events(
    request: Request,
    caller: Caller,
    agent_id: QueryText = None,
    resource_type: QueryText = None,
    since: Bound = None,
    until: Bound = None,
    limit: Annotated[int, Query(ge=0, le=MAX_EVENTS, description="At most this many (the latest)")] = 100,
    after_id: Annotated[
        int | None,
        Query(ge=0, le=2**63, description="Only entries after this id (the first `limit` of them)"),
    ] = None,
    include_holds: Annotated[bool, Query(description="Also holds and releases, not only charges")] = False,
) -> Response:
    service = service_of(request)
    agent = _ledger_agent(service, caller, agent_id)
    start, stop = _window(since, until)
    matching = LedgerQuery(service.home.ledger).iter_matching(
        agent, start, stop, resource_type, charges_only=not include_holds
    )
    events: Iterable[LedgerEvent]
    if after_id is not None:
        events = itertools.islice((e for e in matching if e.event_id > after_id), limit)
    else:
        events = collections.deque(matching, maxlen=limit) if limit else ()
    return json_response([event.to_dict() for event in events])


@router.get("/ledger/summary", tags=["ledger"], summary="Spend totals by resource, day or agent (admin)")
def ledger_summary(
    request: Request,
    caller: Caller,
    by: Literal["resource", "day", "agent"] = "resource",
    agent_id: QueryText = None,
    resource_type: QueryText = None,
    since: Bound = None,
    until: Bound = None,
) -> Response:
    require_admin(caller)
    service = service_of(request)
    agent = _ledger_agent(service, caller, agent_id)
    start, stop = _window(since, until)
    totals = LedgerQuery(service.home.ledger).summarize(
        by, agent_id=agent, start_time=start, end_time=stop, resource_type=resource_type
    )
    return json_response(
        [
            {by: key, "currency": currency, "events": t.events, "quantity": t.quantity, "cost": t.cost}
            for (key, currency), t in sorted(totals.items())
        ]
    )


@router.post("/ledger/verify", tags=["ledger"], summary="Check the whole ledger (admin; can take a while)")
async def ledger_verify(request: Request, caller: Caller) -> Response:
    require_admin(caller)
    report = await run_in_threadpool(verify_and_record, service_of(request))
    return json_response(report)


def checkpoint_dict(service: Service, checkpoint: Any) -> dict[str, Any]:
    public = public_key_path(service.home.key_path)
    return {
        **checkpoint.to_dict(),
        "root_hex": checkpoint.root.hex(),
        "public_key_pem": public.read_text("ascii") if public.exists() else None,
    }


@router.get("/ledger/checkpoint", tags=["ledger"], summary="The latest signed checkpoint (admin)")
def latest_checkpoint(request: Request, caller: Caller) -> Response:
    require_admin(caller)
    service = service_of(request)
    checkpoint = service.enforcer.writer.checkpoints.latest()
    if checkpoint is None:
        raise HTTPException(404, "no signed checkpoint yet: POST /api/v1/ledger/checkpoint signs one now")
    return json_response(checkpoint_dict(service, checkpoint))


@router.post("/ledger/checkpoint", tags=["ledger"], summary="Sign a checkpoint of the ledger now (admin)")
def sign_checkpoint(request: Request, caller: Caller) -> Response:
    require_admin(caller)
    service = service_of(request)
    return json_response(checkpoint_dict(service, service.enforcer.writer.checkpoint()))


TreeSize = Annotated[int, Query(ge=1, le=2**62)]


@router.get(
    "/ledger/proofs/inclusion",
    tags=["ledger"],
    summary="RFC 9162 inclusion proof of an event (admin; hashes in hex)",
)
def inclusion_proof(
    request: Request, caller: Caller, event_id: TreeSize, tree_size: TreeSize | None = None
) -> Response:
    require_admin(caller)
    return json_response(inclusion_proof_dict(service_of(request), event_id, tree_size))


def inclusion_proof_dict(service: Service, event_id: int, tree_size: int | None = None) -> dict[str, Any]:
    """The inclusion proof's JSON (the API's answer; the dashboard's download)."""
    proof = prove_inclusion(service.home.ledger, event_id, tree_size)
    proof.verify()
    signed = service.enforcer.writer.checkpoints.roots()
    return {
        "type": "inclusion",
        "event_id": proof.event_id,
        "leaf_index": proof.event_id - 1,
        "tree_size": proof.size,
        "leaf_hash": proof.leaf_hash.hex(),
        "root": proof.root.hex(),
        "proof": [node.hex() for node in proof.proof],
        "matches_signed_checkpoint": matches_signed(signed, proof.size, proof.root),
    }


@router.get(
    "/ledger/proofs/consistency",
    tags=["ledger"],
    summary="RFC 9162 consistency proof between two tree sizes (admin; hashes in hex)",
)
def consistency_proof(
    request: Request, caller: Caller, first: TreeSize, second: TreeSize | None = None
) -> Response:
    require_admin(caller)
    service = service_of(request)
    proof = prove_consistency(service.home.ledger, first, second)
    proof.verify()
    signed = service.enforcer.writer.checkpoints.roots()
    return json_response(
        {
            "type": "consistency",
            "first": proof.size1,
            "second": proof.size2,
            "first_root": proof.root1.hex(),
            "second_root": proof.root2.hex(),
            "proof": [node.hex() for node in proof.proof],
            "first_matches_signed_checkpoint": matches_signed(signed, proof.size1, proof.root1),
            "second_matches_signed_checkpoint": matches_signed(signed, proof.size2, proof.root2),
        }
    )


def _require_hold_of(service: Service, hold_id: str, caller: Principal) -> None:
    """The hold must be open (404 otherwise) and the caller must act for its agent, with a key that may
    write (403)."""
    caller.require_act_for(service.enforcer.open_hold(hold_id).agent_id)
    require_writable(service, caller)


__all__ = ["router"]
