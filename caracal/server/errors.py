"""Caracal errors as HTTP responses: one status per error class and one JSON body shape everywhere.

Body: ``{"error": {"type": "<CaracalError subclass>", "code": "<snake_case>", "message": "...", ...}}`` (the
shape OpenAI and Anthropic clients read, so a gateway denial shows up readably in agent logs). A denial
adds ``"decision"`` (the policy, the limit, what is spent, held and remaining). ``type`` is the exception's
class name, so the remote SDK raises the same exception the embedded client would.

**Answers to agent keys reveal nothing about other agents or the host** (:func:`error_response` with the
caller's principal): an unknown agent gets the same 403 as another agent's (:meth:`Principal.out_of_scope`,
so an agent key cannot probe which names exist, and no registry path, agent count or look-alike names
leave); an idempotency conflict does not describe the other charge; a server-side failure (5xx) keeps its
``type`` but its message says only that the server's log has the details (it may name files, hosts or
configuration), and the full message is logged. The admin key gets every message in full.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.responses import Response

from caracal.core.apikeys import Principal
from caracal.core.validation import dumps
from caracal.exceptions import (
    AgentNotFoundError,
    AgentSuspendedError,
    AlertNotFoundError,
    ApiKeyNotFoundError,
    AuthenticationError,
    BudgetExceededError,
    CaracalError,
    ConfigurationError,
    DuplicateAgentError,
    HoldNotFoundError,
    IdempotencyConflictError,
    LedgerCorruptError,
    LedgerError,
    LedgerLockTimeoutError,
    LedgerWriteError,
    PermissionDeniedError,
    PolicyNotFoundError,
    ProofError,
    RegistryError,
    ResponseNotFoundError,
    UnknownPriceError,
    UpstreamError,
)

logger = logging.getLogger("caracal.server")

_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (BudgetExceededError, 402),
    (AgentSuspendedError, 403),
    (AgentNotFoundError, 404),
    (HoldNotFoundError, 404),
    (PolicyNotFoundError, 404),
    (ApiKeyNotFoundError, 404),
    (AlertNotFoundError, 404),
    (ResponseNotFoundError, 404),
    (DuplicateAgentError, 409),
    (IdempotencyConflictError, 409),
    (UnknownPriceError, 400),
    (ProofError, 400),
    (ValueError, 400),  # every Invalid*Error of the tree is also a ValueError: bad input, nothing changed
    (LedgerLockTimeoutError, 503),
    (LedgerWriteError, 503),
    (LedgerCorruptError, 503),
    (LedgerError, 503),
    (RegistryError, 503),
    (UpstreamError, 502),
    (ConfigurationError, 500),
)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, _Redacted):
        exc = exc.original
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def _code(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Error")).lower()


def error_response(exc: CaracalError, caller: Principal | None = None) -> Response:
    """The HTTP answer to ``exc``; ``caller`` is who asked (None before authentication, or unknown), and an
    agent key's answer is redacted (see the module docstring)."""
    if caller is not None and not caller.is_admin:
        exc = _for_agent_key(exc, caller)
    name = type(exc.original if isinstance(exc, _Redacted) else exc).__name__
    body: dict[str, Any] = {"type": name, "code": _code(name), "message": str(exc)}
    decision = getattr(exc, "decision", None)
    if decision is not None:
        body["decision"] = decision.to_dict()
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return json_response({"error": body}, status, headers)


class _Redacted(CaracalError):
    """A server-side failure as an agent key sees it: the original's type and status, a message that
    names nothing of the host."""

    def __init__(self, original: CaracalError):
        outcome = getattr(original, "outcome", None)
        super().__init__(
            f"the server could not complete this request ({type(original).__name__}"
            + (f": {outcome}" if outcome else "")
            + "); the server's log has the details"
        )
        self.original = original


def _for_agent_key(exc: CaracalError, caller: Principal) -> CaracalError:
    if isinstance(exc, AgentNotFoundError):
        return PermissionDeniedError(caller.out_of_scope())
    if isinstance(exc, IdempotencyConflictError):
        return IdempotencyConflictError(
            "this idempotency key was already used for a different charge; use a new key for a new charge"
        )
    if status_of(exc) >= 500:
        logger.error("agent key %s is told only that %s happened: %s", caller.key_id, type(exc).__name__, exc)
        return _Redacted(exc)
    return exc


def http_error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An HTTP-level refusal that is no Caracal error (unknown path, wrong method), in the same shape."""
    body = {"type": "HTTPError", "code": f"http_{status}", "message": message}
    return json_response({"error": body}, status, headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON with Decimals as exact strings (the one encoder Caracal uses everywhere)."""
    return Response(dumps(data), status, headers, media_type="application/json")


__all__ = ["error_response", "http_error_response", "json_response", "status_of"]
