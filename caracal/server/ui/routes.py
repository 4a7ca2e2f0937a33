"""The dashboard's pages, under ``/ui`` (see :mod:`caracal.server.ui` for the design).

Every page needs a session (:mod:`caracal.server.ui.session`); a GET without one goes to the sign-in page,
anything else gets 401. Every POST needs the session's CSRF token (403 otherwise). Pages are rendered on the
server; ``ui.js`` polls ``/ui/state`` every two seconds and, when the ledger moved, re-fetches the page and
swaps its ``#live`` part in place.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, FastAPI, Form, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from caracal.core.ledger_read import query_bound
from caracal.core.spend_series import HOURS, period_starts, used_fraction
from caracal.exceptions import CaracalError, InvalidRequestError
from caracal.server.api import checkpoint_dict, inclusion_proof_dict
from caracal.server.auth import require_reading
from caracal.server.errors import json_response
from caracal.server.service import Service
from caracal.server.ui import figures
from caracal.server.ui.charts import stacked
from caracal.server.ui.session import (
    COOKIE,
    Session,
    cookie_options,
    csrf_ok,
    current_session,
    new_cookie,
    shared_state,
)

router = APIRouter(prefix="/ui", include_in_schema=False)
_package = resources.files("caracal.server.ui")
_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("caracal.server.ui", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def money(value: Decimal | None) -> str:
    """An exact amount as plain digits (never scientific notation, never rounded)."""
    if value is None:
        return "—"
    text = format(value, "f")
    return "0" if text in ("-0", "") else text


def when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


_templates.filters["money"] = money
_templates.filters["when"] = when
_templates.filters["percent"] = lambda fraction: f"{min(fraction, Decimal(999)) * 100:.0f}%"


_HIDDEN = "no such agent, or not yours to see"


class _Unauthorized(Exception):
    """No valid session: the sign-in page for a GET, 401 for anything else."""


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _session(request: Request) -> Session:
    found = current_session(_service(request), request)
    if found is None:
        raise _Unauthorized()
    request.state.principal = found.principal
    return found


def _render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    template = _templates.get_template(name)
    html = template.render(request=request, **context)
    return HTMLResponse(html, status, headers=_HEADERS)


def _page(request: Request, session: Session, name: str, **context: Any) -> HTMLResponse:
    names = {a.agent_id: a.name for a in figures.visible_agents(_service(request), session.principal)}
    me = "admin" if session.principal.is_admin else names.get(session.principal.agent_id or "", "?")
    return _render(request, name, session=session, me=me, **context)


def _require_csrf(session: Session, token: str | None) -> Response | None:
    if not csrf_ok(session, token):
        return HTMLResponse("CSRF token missing or wrong: reload the page and try again", 403, _HEADERS)
    return None


def _hidden(
    request: Request, session: Session, message: str = "no such agent, or not yours to see"
) -> Response:
    return _render(request, "error.html", 403 if not session.principal.is_admin else 404, message=message,
                   session=session, me="", live=False)  # fmt: skip


# ---------------------------------------------------------------------------------------- sign-in


@router.get("")
@router.get("/")
def home(request: Request) -> Response:
    signed_in = current_session(_service(request), request) is not None
    return RedirectResponse("/ui/overview" if signed_in else "/ui/login", 303)


@router.get("/login")
def login_page(request: Request) -> Response:
    return _render(request, "login.html", error=None, session=None, me="", live=False)


@router.post("/login")
def login(request: Request, key: Annotated[str, Form(max_length=512)] = "") -> Response:
    service = _service(request)
    origin = request.headers.get("origin")
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}  # behind a proxy too
    if origin is not None and urlsplit(origin).netloc not in hosts:
        # A form on another site must not sign a browser in (login CSRF: into the attacker's session).
        return HTMLResponse("sign in from this server's own page", 403, _HEADERS)
    try:
        principal = service.keys.authenticate(key.strip() or None)
    except CaracalError as exc:
        return _render(request, "login.html", 401, error=str(exc), session=None, me="", live=False)
    response = RedirectResponse("/ui/overview", 303)
    response.set_cookie(COOKIE, new_cookie(service, principal), **cookie_options(request))  # type: ignore[arg-type]
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str | None, Form()] = None) -> Response:
    session = _session(request)
    refused = _require_csrf(session, csrf)
    if refused is not None:
        return refused
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


# ------------------------------------------------------------------------------------------- pages


@router.get("/overview")
def overview_page(
    request: Request,
    granularity: Literal["hour", "day"] = "hour",
    by: Literal["agent", "resource"] = "agent",
    currency: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    session = _session(request)
    service = _service(request)
    view = figures.overview(service, session.principal, request.app.state.ui_series)
    currencies = sorted({*view.series.currencies(), *(c for p in view.periods.values() for c in p)}) or [
        "USD"
    ]
    chosen = currency if currency in currencies else currencies[0]
    scope = None if session.principal.is_admin else view.visible
    bars = view.series.bars(granularity, by, chosen, view.now, scope, HOURS if granularity == "hour" else 30)
    chart = stacked(bars, chosen, view.agent_names, "%H:00" if granularity == "hour" else "%m-%d")
    return _page(
        request, session, "overview.html", view=view, chart=chart, bars=bars, granularity=granularity, by=by,
        currency=chosen, currencies=currencies, used_fraction=used_fraction,
    )  # fmt: skip


@router.get("/agents/{ref}")
def agent_page(request: Request, ref: str, granularity: Literal["hour", "day"] = "day") -> Response:
    session = _session(request)
    service = _service(request)
    try:
        agent = service.home.agents.get(ref)
        require_reading(service, session.principal, agent.agent_id)
    except CaracalError:
        return _hidden(request, session)
    agents = service.home.agents
    subtree = [agent, *agents.descendants(agent.agent_id)]
    ids = {a.agent_id for a in subtree}
    chain = service.home.directory.chain(agent.agent_id)
    visible = {a.agent_id for a in figures.visible_agents(service, session.principal)}
    ancestors = [agents.get(a) for a in reversed(chain[1:])]
    series = request.app.state.ui_series.refresh(service)
    now = service.home.now()
    names = {a.agent_id: a.name for a in agents.list()}
    currencies = series.currencies() or ["USD"]
    charts = []
    for cur in currencies:
        bars = series.bars(granularity, "agent", cur, now, ids, HOURS if granularity == "hour" else 30)
        charts.append((cur, stacked(bars, cur, names, "%H:00" if granularity == "hour" else "%m-%d"), bars))
    month = period_starts(now)["month"]
    by_resource = sorted(series.totals_since(month, ids, by="resource").items())
    recent = figures.ledger_page(service, ids, None, None, None, None, None, size=20)
    return _page(
        request, session, "agent.html", agent=agent, ancestors=ancestors, subtree=subtree, visible=visible,
        children=[a for a in subtree if a.parent_id == agent.agent_id],
        statuses=service.enforcer.status(agent.agent_id), names=names, charts=charts,
        granularity=granularity, by_resource=by_resource, recent=recent.events,
        holds=service.enforcer.open_holds([agent.agent_id]),
        denials=figures.denials_since(service, now - figures.DENIALS_WINDOW, ids),
        used_fraction=used_fraction,
    )  # fmt: skip


def _status_action(request: Request, ref: str, csrf: str | None, action: str) -> Response:
    session = _session(request)
    refused = _require_csrf(session, csrf)
    if refused is not None:
        return refused
    if not session.principal.is_admin:
        return HTMLResponse("only the admin may suspend or activate agents", 403, _HEADERS)
    agents = _service(request).home.agents
    agent = agents.suspend(ref) if action == "suspend" else agents.activate(ref)
    return RedirectResponse(f"/ui/agents/{agent.agent_id}", 303)


@router.post("/agents/{ref}/suspend")
def suspend(request: Request, ref: str, csrf: Annotated[str | None, Form()] = None) -> Response:
    return _status_action(request, ref, csrf or request.headers.get("x-csrf-token"), "suspend")


@router.post("/agents/{ref}/activate")
def activate(request: Request, ref: str, csrf: Annotated[str | None, Form()] = None) -> Response:
    return _status_action(request, ref, csrf or request.headers.get("x-csrf-token"), "activate")


Text = Annotated[str | None, Query(max_length=256)]


@router.get("/ledger")
def ledger_page(
    request: Request,
    agent: Text = None,
    resource: Text = None,
    kind: Literal["", "charge", "hold", "release"] = "",
    since: Text = None,
    until: Text = None,
    before: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> Response:
    session = _session(request)
    service = _service(request)
    visible = figures.visible_agents(service, session.principal)
    names = {a.agent_id: a.name for a in visible}
    scope: set[str] | None = None if session.principal.is_admin else set(names)
    if agent:
        try:
            agent_id = service.home.directory.agent_id(agent)
            require_reading(service, session.principal, agent_id)
        except CaracalError:
            if not session.principal.is_admin:
                return _hidden(request, session)
            agent_id = agent
        scope = {agent_id}
    try:
        start = query_bound(since or None, "since", InvalidRequestError)
        stop = query_bound(until or None, "until", InvalidRequestError, end=True)
    except CaracalError as exc:
        return _render(request, "error.html", 400, message=str(exc), session=session, me="", live=False)
    page = figures.ledger_page(service, scope, resource or None, kind or None, start, stop, before)
    filters = {"agent": agent or "", "resource": resource or "", "kind": kind, "since": since or "",
               "until": until or ""}  # fmt: skip
    return _page(
        request, session, "ledger.html", page=page, names=names, filters=filters, before=before,
        scan_limit=figures.SCAN_LIMIT, live=before is None, state=figures.ledger_state(service),
        progress=figures.verify_progress(service),
    )  # fmt: skip


@router.post("/ledger/verify")
def start_verify(request: Request, csrf: Annotated[str | None, Form()] = None) -> Response:
    session = _session(request)
    refused = _require_csrf(session, csrf or request.headers.get("x-csrf-token"))
    if refused is not None:
        return refused
    if not session.principal.is_admin:
        return HTMLResponse("only the admin may verify the ledger", 403, _HEADERS)
    request.app.state.ui_verify.start(_service(request))
    return RedirectResponse("/ui/ledger#verify", 303)


@router.get("/ledger/proof/{event_id}")
def proof(request: Request, event_id: int) -> Response:
    session = _session(request)
    if not session.principal.is_admin:
        return HTMLResponse("inclusion proofs need the admin key (as in the API)", 403, _HEADERS)
    service = _service(request)
    if event_id < 1:
        return HTMLResponse("no such event", 404, _HEADERS)
    try:
        body = inclusion_proof_dict(service, event_id)
    except CaracalError as exc:
        return HTMLResponse(str(exc), 404, _HEADERS)
    checkpoint = service.enforcer.writer.checkpoints.latest()
    body["checkpoint"] = checkpoint_dict(service, checkpoint) if checkpoint is not None else None
    headers = {"Content-Disposition": f'attachment; filename="caracal-inclusion-{event_id}.json"'}
    return json_response(body, 200, headers)


@router.get("/state")
def state(request: Request) -> Response:
    """What the page polls: a version that changes when anything it shows may have changed."""
    session = _session(request)
    service = _service(request)
    size = service.enforcer.catch_up().last_event_id
    document = shared_state(service)
    extra = repr((document.get("verify_progress"), document.get("last_verify"), session.principal.key_id))
    version = f"{size}-{hashlib.sha256(extra.encode()).hexdigest()[:12]}"
    return json_response({"version": version, "ledger_size": size})


def install(app: FastAPI) -> None:
    """Mount the dashboard on ``app`` (the pages, the alerts page, the static assets, the sign-in
    redirect)."""
    from caracal.server.ui.alerts import router as alerts_router  # it builds on this module

    app.state.ui_series = figures.LiveSeries()
    app.state.ui_verify = figures.VerifyJob()
    app.include_router(router)
    app.include_router(alerts_router)
    static = _package / "static"
    app.mount("/ui/static", StaticFiles(directory=str(static)), name="ui-static")

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, _exc: _Unauthorized) -> Response:
        if request.method == "GET" and not request.url.path.startswith("/ui/state"):
            return RedirectResponse("/ui/login", 303)
        return HTMLResponse("sign in first", 401, _HEADERS)


__all__ = ["install", "router"]
