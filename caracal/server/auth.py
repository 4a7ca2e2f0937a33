"""Who is calling, and what they may do.

- The key comes from ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (what OpenAI and Anthropic
  clients send). Keys are stored hashed and compared in constant time (:mod:`caracal.storage.apikeys`).
- The **admin key** (made by ``caracal init``, in ``keys/admin.key``) may do everything.
- An **agent key** acts only for its own agent: it may record, hold, settle and release for that agent and
  no other; it may *read* (check, budget status, its agents, its ledger entries) its own agent and its
  descendants. Everything else is 403 (401 when the key is missing, unknown or revoked); for an agent key,
  an agent that does not exist gets the same 403 as one outside its scope, so names cannot be probed
  (:mod:`caracal.server.errors`).
- The key of a **suspended** agent (or of an agent with a suspended ancestor) may read, not write: every
  write route (events, holds, settle, release, the gateway) answers 403 (:func:`require_writable`).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from caracal.core.apikeys import Principal
from caracal.exceptions import GatewayRequestError, PermissionDeniedError
from caracal.server.service import Service


def token_of(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else header
    return connection.headers.get("x-api-key")


def authenticate(service: Service, connection: HTTPConnection) -> Principal:
    """The caller's principal; :class:`AuthenticationError` (401) when the key is missing or not valid."""
    return service.keys.authenticate(token_of(connection))


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedError("this endpoint needs the admin key; agent keys cannot use it")


def require_writable(service: Service, principal: Principal) -> None:
    """A write with an agent key: its agent and every ancestor must be active (403 naming the suspended one
    otherwise). The admin key is not affected (its holds are still denied for a suspended agent)."""
    if principal.agent_id is None:
        return
    directory = service.home.directory
    suspended = directory.suspended(directory.chain(principal.agent_id))
    if suspended is not None:
        name = directory.agent(suspended).name
        who = f"agent {name} is" if suspended == principal.agent_id else f"its ancestor {name} is"
        raise PermissionDeniedError(
            f"API key {principal.key_id} may read but not write: {who} suspended; an operator can "
            f"activate it with 'caracal agent activate {name}'"
        )


def require_reading(service: Service, principal: Principal, agent_id: str) -> None:
    """A read about ``agent_id``: the admin, that agent's key, or the key of one of its ancestors."""
    principal.require_read(service.home.directory.chain(agent_id))


AGENT_HEADER = "x-caracal-agent"
"""The header in which the admin key names the agent a gateway or MCP call is for."""


def acting_agent(service: Service, principal: Principal, connection: HTTPConnection) -> str:
    """The agent a gateway or MCP call is made for: an agent key's own (which must be writable: a suspended
    agent's key gets 403 and nothing is forwarded), or the one the admin key names in :data:`AGENT_HEADER`
    (else :class:`GatewayRequestError` saying how to name one)."""
    if principal.agent_id is not None:
        require_writable(service, principal)
        return principal.agent_id
    named = connection.headers.get(AGENT_HEADER)
    if not named:
        raise GatewayRequestError(
            f"the admin key acts for no agent: name the agent in the {AGENT_HEADER} header, or use the "
            f"agent's own key (caracal agent key create NAME)"
        )
    return service.home.directory.agent_id(named)


__all__ = [
    "AGENT_HEADER",
    "acting_agent",
    "authenticate",
    "require_admin",
    "require_reading",
    "require_writable",
    "token_of",
]
