"""Dashboard sign-in: signed session cookies and CSRF tokens.

- Signing in posts an API key (the admin key or an agent key); the server authenticates it exactly as the
  API does (:meth:`ApiKeyRegistry.authenticate`) and sets a cookie ``caracal_session`` = ``<key id>.<expiry>.
  <nonce>.<HMAC>``: HttpOnly, SameSite=Strict, Path=/ui, Secure when the request came over https. The token
  itself is never stored in the cookie.
- The HMAC key is a random secret kept in the home's ``dashboard`` document, so every server process of the
  home (``--workers N``, several hosts on PostgreSQL) accepts every other's sessions.
- Every request re-reads the key by its id: a revoked (or deleted) key signs its sessions out at once.
- CSRF: every POST carries ``csrf`` (form field or ``x-csrf-token`` header) = HMAC of the session cookie;
  missing or wrong means 403, whatever else the request holds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from starlette.requests import Request

from caracal.core.apikeys import Principal
from caracal.exceptions import CaracalError
from caracal.server.service import Service

COOKIE = "caracal_session"
SESSION_SECONDS = 12 * 3600
"""How long a session lasts after sign-in."""
_SECRET_FIELD = "session_secret"


def shared_state(service: Service) -> Mapping[str, Any]:
    """The home's ``dashboard`` document, read-only: re-read only when it changed (every request needs the
    session secret, every poll the verification's state), never a file read per request."""
    return service.home.dashboard.read_cached(MappingProxyType)


def session_secret(service: Service) -> bytes:
    """The home's session secret, made on first use (under the document's transaction, so concurrent
    processes agree on one)."""
    found = shared_state(service).get(_SECRET_FIELD)
    if isinstance(found, str) and found:
        return bytes.fromhex(found)
    with service.home.dashboard.transaction() as document:
        if not document.get(_SECRET_FIELD):
            document[_SECRET_FIELD] = secrets.token_hex(32)
        return bytes.fromhex(document[_SECRET_FIELD])


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    principal: Principal
    cookie: str
    csrf: str


def new_cookie(service: Service, principal: Principal, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    body = f"{principal.key_id}.{expires}.{secrets.token_hex(16)}"
    return f"{body}.{_mac(session_secret(service), body)}"


def csrf_token(service: Service, cookie: str) -> str:
    return _mac(session_secret(service), "csrf:" + cookie)


def current_session(service: Service, request: Request) -> Session | None:
    """The request's valid session, or None (no cookie, a bad signature, expired, or a key that was revoked
    since)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or len(cookie) > 512:
        return None
    body, _, mac = cookie.rpartition(".")
    parts = body.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    secret = session_secret(service)
    if not hmac.compare_digest(_mac(secret, body), mac) or int(parts[1]) < time.time():
        return None
    try:
        key = service.keys.get(parts[0])
    except CaracalError:
        return None
    if not key.active:
        return None
    principal = Principal(role=key.role, key_id=key.key_id, agent_id=key.agent_id)
    return Session(principal, cookie, _mac(secret, "csrf:" + cookie))


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf, presented or "")


def cookie_options(request: Request) -> dict[str, object]:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
        "path": "/ui",
        "max_age": SESSION_SECONDS,
    }


__all__ = [
    "shared_state",
    "COOKIE",
    "Session",
    "cookie_options",
    "csrf_ok",
    "csrf_token",
    "current_session",
    "new_cookie",
]
