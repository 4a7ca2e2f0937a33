"""The alerts REST API (``/api/v1/alerts...``, admin key only): rules, tests, and the outbox's deliveries.

A rule's signing ``secret`` is in the answer to its creation only (like an API key's token); later
answers never carry it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import Field, StrictBool, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from caracal.core.alerts import KINDS
from caracal.server.api import AuthenticatedRoute, Body, Caller, Identifier, Money, service_of
from caracal.server.auth import require_admin
from caracal.server.errors import json_response

router = APIRouter(prefix="/api/v1", route_class=AuthenticatedRoute)
RuleRef = Annotated[str, Path(min_length=1, max_length=64)]
EventRef = Annotated[str, Path(min_length=1, max_length=64)]
SECRET_WARNING = "the secret signs this rule's webhooks; it is shown only now: store it with the receiver"


class AlertCreate(Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048, description="http(s) URL to POST to")]
    on: Literal["threshold", "denied", "over-hold", "suspended", "verification-failed"] = Field(
        description=f"What to watch: {', '.join(KINDS)}"
    )
    threshold: Money | None = Field(
        None, description='threshold rules: a fraction of the limit as a decimal string ("0.8" is 80%)'
    )
    count_holds: StrictBool = Field(False, description="threshold rules: count live holds as used")
    policy_id: Identifier | None = Field(None, description="threshold rules: watch this policy only")
    agent_id: Identifier | None = Field(None, description="Watch this agent only (id or name)")
    format: Literal["json", "slack"] = "json"


@router.post("/alerts", status_code=201, tags=["alerts"], summary="Create an alert rule (admin)")
def create_alert(body: AlertCreate, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    rule = service_of(request).home.create_alert(
        name=body.name,
        url=body.url,
        on=body.on,
        threshold=body.threshold,
        count_holds=body.count_holds,
        policy_id=body.policy_id,
        agent=body.agent_id,
        format=body.format,
    )
    return json_response({**rule.public_dict(), "secret": rule.secret, "warning": SECRET_WARNING}, 201)


@router.get("/alerts", tags=["alerts"], summary="Alert rules, without their secrets (admin)")
def list_alerts(request: Request, caller: Caller) -> Response:
    require_admin(caller)
    return json_response([rule.public_dict() for rule in service_of(request).home.alerts.list()])


@router.get("/alerts/deliveries", tags=["alerts"], summary="Recent webhooks and their state (admin)")
def list_deliveries(
    request: Request,
    caller: Caller,
    state: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    require_admin(caller)
    return json_response(service_of(request).home.alerts.deliveries(limit, state))


@router.post(
    "/alerts/deliveries/{event_id}/retry",
    tags=["alerts"],
    summary="Send a failed webhook again (admin)",
)
def retry_delivery(event_id: EventRef, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    return json_response(service_of(request).home.alerts.retry(event_id))


@router.get("/alerts/{rule_id}", tags=["alerts"], summary="One alert rule, without its secret (admin)")
def get_alert(rule_id: RuleRef, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    return json_response(service_of(request).home.alerts.get(rule_id).public_dict())


@router.delete("/alerts/{rule_id}", tags=["alerts"], summary="Delete an alert rule (admin)")
def delete_alert(rule_id: RuleRef, request: Request, caller: Caller) -> Response:
    require_admin(caller)
    return json_response({**service_of(request).home.alerts.delete(rule_id).public_dict(), "deleted": True})


@router.post("/alerts/{rule_id}/test", tags=["alerts"], summary="Send a test event (admin)")
async def test_alert(rule_id: RuleRef, request: Request, caller: Caller) -> Response:
    """Enqueue a ``test`` event and try it once now; the answer is the delivery as recorded (``delivered``,
    or ``pending`` with the error and the next try, which the server's sender makes)."""
    require_admin(caller)
    service = service_of(request)
    return json_response(await run_in_threadpool(service.alerting.test, rule_id))


__all__ = ["router"]
