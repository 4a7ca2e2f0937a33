"""The dashboard's alerts page (``/ui/alerts``, the admin only): the rules, a form to create one, test and
delete buttons, and the outbox's recent deliveries with a retry for failed ones.

Every action is what ``caracal alert ...`` and ``/api/v1/alerts`` do, through the same objects
(:meth:`EmbeddedHome.create_alert`, the home's alert store, :meth:`Alerting.test`); every POST needs the
session's CSRF token. A new rule's signing secret is shown once, on the page that answers its creation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from caracal.core.alerts import FORMATS, KINDS
from caracal.exceptions import CaracalError
from caracal.server.alerts_api import SECRET_WARNING
from caracal.server.service import Service
from caracal.server.ui import routes
from caracal.server.ui.session import Session

router = APIRouter(prefix="/ui/alerts", include_in_schema=False)
DELIVERIES_SHOWN = 50

Field = Annotated[str, Form(max_length=2048)]


def _admin(request: Request, csrf: str | None = None, *, post: bool = False) -> Session | Response:
    """The admin's session, or the answer that refuses the request (403 for an agent key or a bad token)."""
    session = routes._session(request)
    if post:
        refused = routes._require_csrf(session, csrf or request.headers.get("x-csrf-token"))
        if refused is not None:
            return refused
    if not session.principal.is_admin:
        return HTMLResponse("alerts need the admin key", 403, routes._HEADERS)
    return session


def _show(request: Request, session: Session, status: int = 200, **context: Any) -> HTMLResponse:
    service = routes._service(request)
    home = service.home
    names = {agent.agent_id: agent.name for agent in home.agents.list()}
    page = routes._page(
        request, session, "alerts.html", live=False, rules=home.alerts.list(), names=names,
        deliveries=home.alerts.deliveries(DELIVERIES_SHOWN), kinds=KINDS, formats=FORMATS,
        **{"created": None, "tested": None, "error": None, "form": {}, **context},
    )  # fmt: skip
    page.status_code = status
    return page


@router.get("")
def alerts_page(request: Request) -> Response:
    session = _admin(request)
    return session if isinstance(session, Response) else _show(request, session)


@router.post("")
def create(
    request: Request,
    name: Field = "",
    url: Field = "",
    on: Field = "threshold",
    threshold: Field = "",
    count_holds: Field = "",
    agent: Field = "",
    policy_id: Field = "",
    format: Field = "json",
    csrf: Annotated[str | None, Form()] = None,
) -> Response:
    session = _admin(request, csrf, post=True)
    if isinstance(session, Response):
        return session
    form = {"name": name, "url": url, "on": on, "threshold": threshold, "count_holds": count_holds,
            "agent": agent, "policy_id": policy_id, "format": format}  # fmt: skip
    try:
        rule = routes._service(request).home.create_alert(
            name=name.strip(),
            url=url.strip(),
            on=on,
            threshold=threshold.strip() or None,
            count_holds=bool(count_holds),
            agent=agent.strip() or None,
            policy_id=policy_id.strip() or None,
            format=format,
        )
    except CaracalError as exc:
        return _show(request, session, 400, error=str(exc), form=form)
    return _show(request, session, 201, created=rule, warning=SECRET_WARNING)


async def _act(
    request: Request, csrf: str | None, action: Callable[[Service], Any], failed: int, then: str | None
) -> Response:
    """Run ``action`` (in the thread pool: it may wait on the disk or a webhook) for the admin; the page
    again with the error (``failed``) when it raises, else a redirect to ``then`` or, without one, the page
    showing what it returned as a test's result."""
    session = _admin(request, csrf, post=True)
    if isinstance(session, Response):
        return session
    try:
        result = await run_in_threadpool(action, routes._service(request))
    except CaracalError as exc:
        return _show(request, session, failed, error=str(exc))
    return RedirectResponse(then, 303) if then is not None else _show(request, session, tested=result)


@router.post("/{rule_id}/delete")
async def delete(request: Request, rule_id: str, csrf: Annotated[str | None, Form()] = None) -> Response:
    return await _act(request, csrf, lambda service: service.home.alerts.delete(rule_id), 404, "/ui/alerts")


@router.post("/{rule_id}/test")
async def test(request: Request, rule_id: str, csrf: Annotated[str | None, Form()] = None) -> Response:
    return await _act(request, csrf, lambda service: service.alerting.test(rule_id), 404, None)


@router.post("/deliveries/{event_id}/retry")
async def retry(request: Request, event_id: str, csrf: Annotated[str | None, Form()] = None) -> Response:
    return await _act(
        request, csrf, lambda service: service.home.alerts.retry(event_id), 409, "/ui/alerts#deliveries"
    )


__all__ = ["router"]
