"""The HTTP transport: :class:`CaracalClient` over the HTTP API of ``caracal serve`` (``/api/v1``).

Used by ``CaracalClient(base_url="http://127.0.0.1:8787", api_key="ck_...", timeout=30.0)``.
Every method is one HTTP request and returns the same types, and raises the same exceptions, as the
embedded transport:

- **Money is exact.** Amounts go out as decimal strings (a ``Decimal`` or ``int`` is converted with
  ``str``); a float is refused before anything is sent, with the error the embedded client raises.
- **Same errors.** The server answers an error as ``{"error": {"type": "<CaracalError subclass>",
  "message": ..., "decision"?: ...}}``; the client raises that class from :mod:`caracal.exceptions` (a
  :class:`BudgetExceededError` carries the server's :class:`Decision`). An error answer that names no
  Caracal error is mapped by its status: 401 :class:`AuthenticationError`, 402 :class:`BudgetExceededError`,
  403 :class:`PermissionDeniedError`, 400/413/422 :class:`InvalidRequestError`, anything else
  :class:`ServerUnreachableError`.
- **Fail closed.** A refused connection, a timeout, a dropped connection, or an answer that is not the
  JSON the API promises raises :class:`ServerUnreachableError` naming the URL and the cause, so a
  ``budget_check`` block never runs unless the server proved its budget.
- **No double charges.** Only a failure to *establish* a connection is retried (once; nothing was sent).
  A request that was sent is never retried: if its answer is lost, a hold the server placed expires after
  its TTL, and a charge with an ``idempotency_key`` may be sent again safely.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx
import orjson

from caracal import __version__
from caracal import exceptions as _exceptions
from caracal.core.enforcement import Decision, Hold, PolicyStatus, Settlement, parse_ttl
from caracal.core.events import EXPIRY_MEANINGS
from caracal.core.identity import Agent
from caracal.core.ledger import LedgerEvent
from caracal.core.policy import Policy
from caracal.core.pricebook import Price
from caracal.core.validation import (
    check_identifier,
    check_metadata,
    dumps,
    format_timestamp,
    parse_amount,
    parse_timestamp,
)
from caracal.exceptions import (
    AgentNotFoundError,
    AuthenticationError,
    BudgetExceededError,
    CaracalError,
    ConfigurationError,
    InvalidAgentError,
    InvalidAmountError,
    InvalidMeteringEventError,
    InvalidPolicyError,
    InvalidPriceError,
    InvalidRequestError,
    PermissionDeniedError,
    ServerUnreachableError,
)
from caracal.sdk.transport import Usage

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for an answer: longer than the server's default ledger lock timeout (10 s), so a busy
ledger comes back as the server's typed error rather than a client timeout."""

CONNECT_TIMEOUT = 5.0
KEEPALIVE_EXPIRY = 2.0
"""Idle connections are dropped well before the server's keep-alive timeout (uvicorn: 5 s), so a request is
never sent on a connection the server is closing (its answer would be lost)."""

_STATUS_ERRORS: dict[int, type[CaracalError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: BudgetExceededError,
    403: PermissionDeniedError,
    413: InvalidRequestError,
    422: InvalidRequestError,
}
_CHARGE_FIELDS = frozenset({"resource_type", "quantity", "cost", "metadata", "idempotency_key"})
_JSON_HEADERS = {"Content-Type": "application/json"}


class HttpTransport:
    """The :class:`~caracal.sdk.transport.Transport` over HTTP. Safe to share between threads (one
    connection pool, opened on first use)."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float | None = None):
        self.base_url = _base_url(base_url)
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError(
                f"the remote client needs api_key (the admin key, or an agent key) for {self.base_url}"
            )
        if not api_key.isascii() or not api_key.isprintable():
            raise ConfigurationError("api_key must be printable ASCII (a Caracal key looks like ck_...)")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self._api = self.base_url + "/api/v1"
        self._headers = {
            "Authorization": f"Bearer {api_key.strip()}",
            "Accept": "application/json",
            "User-Agent": f"caracal-sdk/{__version__}",
        }
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self._ids: dict[str, str] = {}  # agent name or id -> id (they never change; agents are never deleted)

    def __repr__(self) -> str:
        return f"HttpTransport(base_url={self.base_url!r})"

    # ------------------------------------------------------------------ HTTP

    def _client(self) -> httpx.Client:
        http = self._http
        if http is not None:
            return http
        with self._http_lock:
            if self._http is not None:
                return self._http
            transport = httpx.HTTPTransport(
                retries=1,  # connection establishment only: nothing was sent, so nothing can be doubled
                limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY),
            )
            http = self._http = httpx.Client(
                headers=self._headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
                transport=transport,
            )
            return http

    def close(self) -> None:
        """Close the connections (the client opens new ones if used again)."""
        with self._http_lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Send one request; return the parsed JSON of a 2xx answer, else raise the answer's error."""
        url = self._api + path
        content = None if body is None else dumps(body)
        try:
            response = self._client().request(
                method, url, content=content, headers=None if content is None else _JSON_HEADERS
            )
        except httpx.TimeoutException as exc:
            sent = "" if isinstance(exc, httpx.ConnectTimeout) or method == "GET" else _MAYBE_RECORDED
            raise ServerUnreachableError(
                f"the Caracal server at {url} did not answer {method} within {self.timeout:g} s "
                f"({_cause(exc)}){sent}; denied (fail closed)"
            ) from exc
        except httpx.HTTPError as exc:
            sent = "" if isinstance(exc, httpx.ConnectError) or method == "GET" else _MAYBE_RECORDED
            raise ServerUnreachableError(
                f"cannot reach the Caracal server at {url}: {_cause(exc)}{sent}; denied (fail closed)"
            ) from exc
        status = response.status_code
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            _unreadable(url, f"answered HTTP {status} with a body that is not JSON: {_preview(response)}")
        if 200 <= status < 300:
            return data
        raise _error(url, status, data, response)

    def _read(self, url_path: str, convert: Callable[[Any], T], data: Any) -> T:
        """``convert(data)``; an answer that does not have the promised shape is a fail-closed error."""
        try:
            return convert(data)
        except (
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            ArithmeticError,
            AttributeError,
            CaracalError,
        ) as exc:
            _unreadable(self._api + url_path, f"sent an answer the client cannot read ({_cause(exc)})")

    # ------------------------------------------------------------------ identity, policies, prices

    def register_agent(
        self, name: str, owner: str, parent: str | None, metadata: dict[str, Any] | None
    ) -> Agent:
        check_metadata(metadata, InvalidAgentError)
        body = {"name": name, "owner": owner, "parent": parent, "metadata": metadata}
        return self._learn(self._read("/agents", _agent, self._call("POST", "/agents", body)))

    def get_agent(self, agent: str) -> Agent:
        path = "/agents/" + self._agent_segment(agent)
        return self._learn(self._read(path, _agent, self._call("GET", path)))

    def _learn(self, agent: Agent) -> Agent:
        self._ids[agent.name] = self._ids[agent.agent_id] = agent.agent_id
        return agent

    def create_policy(
        self, agent: str, limit: object, window: str | None, rolling: str | None, currency: str, timezone: str
    ) -> Policy:
        body = {
            "agent_id": _agent_ref(agent),
            "limit": _money(limit, "limit", InvalidPolicyError),
            "window": window,
            "rolling": rolling,
            "currency": currency,
            "timezone": timezone,
        }
        return self._read("/policies", Policy.from_dict, self._call("POST", "/policies", body))

    def set_price(self, resource_type: str, unit_price: object, currency: str) -> Price:
        path = "/prices/" + _segment(check_identifier(resource_type, "resource_type", InvalidPriceError))
        body = {"unit_price": _money(unit_price, "unit_price", InvalidPriceError), "currency": currency}
        return self._read(path, Price.from_dict, self._call("PUT", path, body))

    def price_of(self, resource_type: str) -> Price:
        path = "/prices/" + _segment(check_identifier(resource_type, "resource_type", InvalidPriceError))
        return self._read(path, Price.from_dict, self._call("GET", path))

    # ------------------------------------------------------------------ enforcement

    def check(self, agent: str, amount: object | None, currency: str) -> Decision:
        body: dict[str, Any] = {"agent_id": _agent_ref(agent), "currency": currency}
        if amount is not None:
            body["amount"] = _money(amount, "amount", InvalidAmountError)
        return self._read("/check", _decision, self._call("POST", "/check", body))

    def reserve(
        self,
        agent: str,
        amount: object,
        ttl: timedelta | float | None,
        currency: str,
        on_expiry: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> Hold:
        body: dict[str, Any] = {
            "agent_id": _agent_ref(agent),
            "amount": _money(amount, "amount", InvalidAmountError),
            "currency": currency,
        }
        if ttl is not None:  # else the server's home default
            body["ttl"] = _ttl_seconds(ttl)
        if on_expiry not in EXPIRY_MEANINGS:
            raise InvalidAmountError(f"on_expiry must be one of {sorted(EXPIRY_MEANINGS)}, got {on_expiry!r}")
        if on_expiry != "release":  # the default is left out, so older servers still accept the body
            body["on_expiry"] = on_expiry
        if metadata is not None:  # likewise
            body["metadata"] = check_metadata(metadata, InvalidAmountError)
        return self._read("/holds", _hold, self._call("POST", "/holds", body))

    def settle(self, hold_id: str, charges: list[Mapping[str, Any]]) -> Settlement:
        path = f"/holds/{_segment(_hold_id(hold_id))}/settle"
        body = {"charges": [_charge(index, charge) for index, charge in enumerate(charges)]}
        return self._read(path, Settlement.from_dict, self._call("POST", path, body))

    def release(self, hold_id: str) -> bool:
        path = f"/holds/{_segment(_hold_id(hold_id))}/release"
        return self._read(path, _released, self._call("POST", path))

    def budget_status(self, agent: str) -> list[PolicyStatus]:
        path = f"/agents/{self._agent_segment(agent)}/budget"
        return self._read(path, _statuses, self._call("GET", path))

    # ------------------------------------------------------------------ metering

    def emit(self, usage: Usage) -> LedgerEvent:
        error = InvalidMeteringEventError
        body: dict[str, Any] = {
            "agent_id": _agent_ref(usage.agent),
            "resource_type": usage.resource_type,
            "quantity": _money(usage.quantity, "quantity", error),
            "metadata": check_metadata(usage.metadata, error),
            "idempotency_key": usage.idempotency_key,
        }
        timestamp = usage.timestamp
        if timestamp is not None:
            body["timestamp"] = (
                timestamp
                if isinstance(timestamp, str)
                else format_timestamp(parse_timestamp(timestamp, "timestamp", error))
            )
        if usage.hold_id is not None:
            body["hold_id"] = usage.hold_id
        return self._read("/events", LedgerEvent.from_dict, self._call("POST", "/events", body))

    def _agent_segment(self, agent: object) -> str:
        """``agent`` as one URL path segment. The server routes on the decoded path, so a name holding a
        ``/`` (or one that is a dot segment) is first resolved to its id through the agent list."""
        ref = _agent_ref(agent)
        if "/" not in ref and ref not in (".", ".."):
            return _segment(ref)
        agent_id = self._ids.get(ref)
        if agent_id is None:
            for found in self._read("/agents", _agents, self._call("GET", "/agents")):
                self._learn(found)
            agent_id = self._ids.get(ref)
            if agent_id is None:
                raise AgentNotFoundError(f"no agent named {ref!r} at {self.base_url}")
        return agent_id

    def agent_id_of(self, agent: str) -> str | None:
        known = self._ids.get(agent) if isinstance(agent, str) else None
        if known is not None:
            return known
        try:
            return self.get_agent(agent).agent_id
        except (AgentNotFoundError, InvalidAgentError, PermissionDeniedError):
            return None  # not the block's agent; emitting for it reports the error

    def default_estimate(self) -> Decimal | None:
        """None: a remote ``budget_check`` without an estimate only checks."""
        return None


# ---------------------------------------------------------------------------------------------- helpers

_MAYBE_RECORDED = " (the request was sent: the server may have recorded it; a hold expires after its TTL)"


def _base_url(base_url: object) -> str:
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError(
            "the remote client needs base_url, the address of `caracal serve` (e.g. http://127.0.0.1:8787)"
        )
    text = base_url.strip().rstrip("/")
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ConfigurationError(f"base_url is not a valid URL ({exc}): {base_url!r}") from exc
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ConfigurationError(
            f"base_url must be an http:// or https:// address such as http://127.0.0.1:8787, got {base_url!r}"
        )
    return text.removesuffix("/api/v1")


def _cause(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _preview(response: httpx.Response) -> str:
    body = response.content
    return repr(body[:80]) + ("..." if len(body) > 80 else "")


def _unreadable(url: str, what: str) -> NoReturn:
    raise ServerUnreachableError(
        f"the server at {url} {what}; is base_url the address of a Caracal server? denied (fail closed)"
    )


def _error(url: str, status: int, data: Any, response: httpx.Response) -> CaracalError:
    """The exception for an error answer: the Caracal error it names, else one chosen by its status."""
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(error, dict) and isinstance(message, str):
        name = error.get("type")
        kind = getattr(_exceptions, name, None) if isinstance(name, str) else None
        if isinstance(kind, type) and issubclass(kind, CaracalError):
            if issubclass(kind, BudgetExceededError):
                decision = error.get("decision")
                try:
                    parsed = None if decision is None else _decision(decision)
                except (KeyError, TypeError, ValueError, ArithmeticError, CaracalError) as exc:
                    _unreadable(url, f"sent a denial whose decision the client cannot read ({_cause(exc)})")
                return kind(message, decision=parsed)
            try:
                return kind(message)
            except TypeError:
                pass  # a class whose constructor needs more: fall back to the status
    else:
        message = f"the server at {url} answered HTTP {status}: {_preview(response)}"
    fallback = _STATUS_ERRORS.get(status)
    if fallback is not None:
        return fallback(message)
    return ServerUnreachableError(
        f"the server at {url} answered HTTP {status} without a Caracal error ({_preview(response)}); is "
        f"base_url the address of a Caracal server? denied (fail closed)"
    )


def _agent_ref(agent: object) -> str:
    """An agent reference as the embedded registry checks it (the same errors, before any request)."""
    if not isinstance(agent, str):
        raise InvalidAgentError(f"agent must be an agent id or name (a string), got {type(agent).__name__}")
    if not agent or agent.isspace():
        raise InvalidAgentError("agent id or name must not be empty")
    return agent


def _hold_id(hold_id: object) -> str:
    if not isinstance(hold_id, str) or not hold_id:
        raise InvalidAmountError(f"a hold is a Hold or a hold id (a non-empty string), got {hold_id!r}")
    return hold_id


def _segment(value: str) -> str:
    return quote(value, safe="")


def _money(value: object, name: str, error: type[Exception]) -> str:
    """An amount as the exact decimal string sent on the wire. Floats and other types are refused here with
    the embedded client's error; the server checks the value itself."""
    if isinstance(value, str):
        return value
    if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
        return str(value)
    parse_amount(value, name, error)  # raises: a float, a bool or another type
    raise error(f"{name} must be a Decimal, int or numeric string, got {type(value).__name__}")


def _ttl_seconds(ttl: object) -> int:
    """The hold's TTL in whole seconds (the API's unit), rounded up; refused like the embedded client."""
    return math.ceil(parse_ttl(ttl).total_seconds())


def _charge(index: int, charge: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(charge, Mapping):
        raise InvalidAmountError(f"charge {index} must be a mapping, got {type(charge).__name__}")
    unknown = set(charge) - _CHARGE_FIELDS
    if unknown:
        raise InvalidAmountError(f"charge {index} has unknown fields: {sorted(unknown)}")
    item = dict(charge)
    for name in ("quantity", "cost"):
        if name in item:
            item[name] = _money(item[name], f"charge {index} {name}", InvalidAmountError)
    return item


def _agent(data: Any) -> Agent:
    if not isinstance(data, dict):
        raise TypeError(f"expected an agent object, got {type(data).__name__}")
    return Agent.from_dict(data)


def _agents(data: Any) -> list[Agent]:
    if not isinstance(data, list):
        raise TypeError(f"expected a list of agents, got {type(data).__name__}")
    return [_agent(item) for item in data]


def _decision(data: Any) -> Decision:
    if not isinstance(data, dict) or type(data.get("allowed")) is not bool:
        raise TypeError("expected a decision object with a boolean 'allowed'")
    return Decision.from_dict(data)


def _hold(data: Any) -> Hold:
    if not isinstance(data, dict):
        raise TypeError(f"expected a hold object, got {type(data).__name__}")
    _decision(data.get("decision"))
    return Hold.from_dict(data)


def _released(data: Any) -> bool:
    released = data["released"]
    if type(released) is not bool:
        raise TypeError(f"'released' must be a boolean, got {released!r}")
    return released


def _statuses(data: Any) -> list[PolicyStatus]:
    if not isinstance(data, list):
        raise TypeError(f"expected a list of policy statuses, got {type(data).__name__}")
    return [PolicyStatus.from_dict(item) for item in data]


__all__ = ["DEFAULT_TIMEOUT", "HttpTransport"]
