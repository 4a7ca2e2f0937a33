"""The REST API (``/api/v1/...``): agents, policies, prices, metering, check/reserve/settle/release, budget.

Every endpoint needs a key (see :mod:`caracal.server.auth` for who may do what). Request bodies are
validated twice: their shape by the models below (which is what the OpenAPI document shows), their values
by the same core functions the embedded client uses, so both transports accept and refuse the same input.
Money is a decimal string (``"0.25"``) or an integer, never a JSON float.

Writes to the ledger go through the group committer (:meth:`Service.run`); registry changes (agents,
policies, prices) are small synchronous file transactions run in the thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.responses import Response

from caracal.core.apikeys import Principal
from caracal.core.enforcement import policy_status
from caracal.core.windows import parse_window
from caracal.exceptions import BudgetExceededError, HoldNotFoundError
from caracal.server.auth import authenticate, require_acting_for, require_admin, require_reading
from caracal.server.errors import json_response
from caracal.server.service import Service

Money = Annotated[
    StrictStr | StrictInt, Field(description='An exact decimal amount as a string ("0.25") or an integer')
]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Metadata = Annotated[dict[str, Any] | None, Field(description="A small JSON object (bounded in size)")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def principal(request: Request) -> Principal:
    return authenticate(service_of(request), request)


Caller = Annotated[Principal, Depends(principal)]
router = APIRouter(prefix="/api/v1")


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
def get_agent(agent: str, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    found = service.home.agents.get(agent)
    require_reading(service, caller, found.agent_id)
    return json_response(found.to_dict())


@router.get("/agents/{agent}/budget", tags=["budget"], summary="Policies over the agent: spent, held, left")
def budget_status(agent: str, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    agent_id = service.home.directory.agent_id(agent)
    require_reading(service, caller, agent_id)
    enforcer = service.enforcer
    state = enforcer.catch_up()
    now = enforcer.now()
    chain = service.home.directory.chain(agent_id)
    statuses = [
        policy_status(policy, state, now).to_dict()
        for _member, policies in service.home.directory.policies(chain)
        for policy in policies
    ]
    return json_response(statuses)


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
    kind = body.window if body.window is not None else ("rolling" if body.rolling is not None else "daily")
    policy = home.policies.create(
        agent.agent_id, body.limit, parse_window(kind, body.rolling, body.timezone), body.currency
    )
    return json_response(policy.to_dict(), 201)


@router.get("/policies", tags=["policies"], summary="Policies (of one agent, or all for the admin)")
def list_policies(
    request: Request,
    caller: Caller,
    agent_id: Annotated[str | None, Query(max_length=256)] = None,
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


# ---------------------------------------------------------------------------------------------- prices


class PriceSet(Body):
    unit_price: Money
    currency: StrictStr = "USD"


@router.put("/prices/{resource_type}", tags=["prices"], summary="Set a unit price from now on (admin)")
def set_price(resource_type: str, body: PriceSet, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    price = service_of(request).home.prices.set(resource_type, body.unit_price, body.currency)
    return json_response(price.to_dict())


@router.get("/prices", tags=["prices"], summary="The user price history (any valid key)")
def list_prices(request: Request, caller: Caller) -> Response:
    return json_response([price.to_dict() for price in service_of(request).home.prices.history()])


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
    require_acting_for(caller, agent_id)
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


@router.post("/holds", status_code=201, tags=["enforcement"], summary="Reserve an amount (402 if denied)")
async def reserve(body: HoldCreate, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    agent_id = service.home.directory.agent_id(body.agent_id)
    require_acting_for(caller, agent_id)
    ttl = service.home.settings.default_ttl if body.ttl is None else body.ttl
    try:
        hold = await service.run(service.enforcer.reserve_op(agent_id, body.amount, body.currency, ttl))
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
async def settle(hold_id: str, body: SettleRequest, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    _require_hold_of(service, hold_id, caller)
    charges = [charge.model_dump(exclude_none=True) for charge in body.charges]
    settlement = await service.run(service.enforcer.settle_op(hold_id, charges))
    service.metrics.holds.labels("settled").inc()
    return json_response(settlement.to_dict())


@router.post("/holds/{hold_id}/release", tags=["enforcement"], summary="Close a hold without charging it")
async def release(hold_id: str, request: Request, caller: Caller) -> Response:
    service = service_of(request)
    hold = service.enforcer.catch_up().hold(hold_id)
    if hold is not None:
        require_acting_for(caller, hold.agent_id)
    released = await service.run(service.enforcer.release_op(hold_id))
    if released:
        service.metrics.holds.labels("released").inc()
    return json_response({"hold_id": hold_id, "released": released})


def _require_hold_of(service: Service, hold_id: str, caller: Principal) -> None:
    """The hold must be open (404 otherwise) and the caller must act for its agent (403)."""
    hold = service.enforcer.catch_up().hold(hold_id)
    if hold is None:
        raise HoldNotFoundError(
            f"no open hold {hold_id!r}: it was settled or released already, or never existed"
        )
    require_acting_for(caller, hold.agent_id)


__all__ = ["router"]
