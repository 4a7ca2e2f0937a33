"""The remote client's own behaviour: failing closed on network faults and unreadable answers, API keys,
denials that match the embedded client's, and exact money on the wire. (The shared behaviour runs on both
transports in test_client.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from caracal.core.enforcement import Decision
from caracal.exceptions import (
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
from caracal.sdk.client import CaracalClient
from tests.sdk.conftest import Transport

# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextlib.contextmanager
def raw_server(reply: bytes) -> Iterator[str]:
    """Answers every connection with ``reply`` (not necessarily HTTP) and closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(1)
                with contextlib.suppress(OSError):
                    connection.recv(65536)
                    connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


@contextlib.contextmanager
def fake_server(
    status: int, body: bytes, content_type: str = "application/json"
) -> Iterator[tuple[str, list[tuple[str, str, object]]]]:
    """An HTTP server answering every request with ``status`` and ``body``; yields its URL and the requests
    it received as ``(method, path, parsed JSON body or None)``."""
    received: list[tuple[str, str, object]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            received.append((self.command, self.path, orjson.loads(raw) if raw else None))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def assert_denied_without_running(client: CaracalClient, error: type[CaracalError]) -> CaracalError:
    """Every way into a budget block fails with ``error`` and the block never runs."""
    ran = []
    with pytest.raises(error), client.budget_check("my-agent", estimated_cost="0.10"):
        ran.append("estimated")
    with pytest.raises(error), client.budget_check("my-agent"):
        ran.append("checked")

    @client.guard("my-agent", estimated_cost="0.10")
    def guarded() -> None:
        ran.append("guarded")

    with pytest.raises(error):
        guarded()

    async def main() -> None:
        async with client.abudget_check("my-agent", estimated_cost="0.10"):
            ran.append("async")

    with pytest.raises(error) as caught:
        asyncio.run(main())
    assert ran == []
    return caught.value


@pytest.fixture
def remote(caracal_home: Path) -> Iterator[Transport]:
    transport = Transport("remote", caracal_home)
    yield transport
    transport.close()


@pytest.fixture
def admin(remote: Transport) -> CaracalClient:
    client = remote.client()
    client.register_agent("my-agent", "user@example.com")
    client.create_policy("my-agent", "1.00", "daily")
    client.set_price("tool.search.calls", "0.10")
    return client


# ------------------------------------------------------------------------------------------ fail closed


def test_a_refused_connection_fails_closed(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    client = CaracalClient(base_url=url, api_key="ck_whatever")
    error = assert_denied_without_running(client, ServerUnreachableError)
    assert url in str(error) and "fail closed" in str(error)
    assert "ConnectError" in str(error)
    for call in (
        lambda: client.check("my-agent"),
        lambda: client.reserve("my-agent", "0.10"),
        lambda: client.emit_event("my-agent", "tool.search.calls", 1),
        lambda: client.get_agent("my-agent"),
        lambda: client.budget_status("my-agent"),
        lambda: client.release("hold-1"),
    ):
        with pytest.raises(ServerUnreachableError):
            call()
    client.close()


def test_a_server_that_never_answers_times_out_and_fails_closed() -> None:
    with silent_server() as url:
        client = CaracalClient(base_url=url, api_key="ck_whatever", timeout=0.2)
        error = assert_denied_without_running(client, ServerUnreachableError)
        assert "did not answer" in str(error) and url in str(error)
        assert "may have recorded it" in str(error)  # a reservation was sent: it may exist (and will expire)
        with pytest.raises(ServerUnreachableError) as read:
            client.get_agent("my-agent")
        assert "may have recorded" not in str(read.value)
        client.close()


def test_a_server_that_went_away_fails_closed(remote: Transport, admin: CaracalClient) -> None:
    with admin.budget_check("my-agent", estimated_cost="0.10"):
        admin.emit_event("my-agent", "tool.search.calls", 1)
    remote.stop()
    assert_denied_without_running(admin, ServerUnreachableError)
    remote.start()  # back on the same address: the same client works again
    assert admin.check("my-agent").spent == Decimal("0.10")


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, b"<html>hello</html>", "text/html"),  # some other web server
        (200, b"", "application/json"),
        (200, b"[1, 2, 3]", "application/json"),  # JSON, but not the promised object
        (
            200,
            b'{"allowed": "yes", "reason": "", "agent_id": "a", "amount": "0", "currency": "USD"}',
            "a/json",
        ),
        (201, b'{"hold_id": "h", "amount": "0.10"}', "application/json"),
        (500, b"Internal Server Error", "text/plain"),
        (502, b"<html>Bad gateway</html>", "text/html"),  # a proxy in front of a dead server
        (404, b'{"detail": "Not Found"}', "application/json"),  # not the Caracal API
        (307, b"", "text/plain"),
        (402, b'{"error": {"type": "BudgetExceededError", "message": "no", "decision": {"x": 1}}}', "a/json"),
    ],
)
def test_an_unreadable_answer_fails_closed(status: int, body: bytes, content_type: str) -> None:
    with fake_server(status, body, content_type) as (url, _received):
        client = CaracalClient(base_url=url, api_key="ck_whatever")
        error = assert_denied_without_running(client, ServerUnreachableError)
        assert url in str(error)
        client.close()


@pytest.mark.parametrize(
    "reply", [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", b""]
)
def test_a_server_speaking_garbage_fails_closed(reply: bytes) -> None:
    with raw_server(reply) as url:
        client = CaracalClient(base_url=url, api_key="ck_whatever", timeout=2)
        assert_denied_without_running(client, ServerUnreachableError)
        client.close()


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (403, {"type": "NoSuchError", "message": "nope"}, PermissionDeniedError),  # unknown: by status
        (403, {"type": "ValueError", "message": "nope"}, PermissionDeniedError),  # not a Caracal error
        (401, {"type": "AuthenticationError", "message": "invalid API key"}, AuthenticationError),
        (400, {"type": "InvalidRequestError", "message": "bad"}, InvalidRequestError),
        (503, {"type": "LedgerLockTimeoutError", "message": "lock"}, CaracalError),
    ],
)
def test_error_answers_raise_the_named_caracal_error(
    status: int, error: dict[str, str], expected: type[CaracalError]
) -> None:
    with fake_server(status, orjson.dumps({"error": error})) as (url, _received):
        client = CaracalClient(base_url=url, api_key="ck_whatever")
        with pytest.raises(expected) as raised:
            client.check("my-agent")
        assert str(raised.value) == error["message"]
        if error["type"] == "LedgerLockTimeoutError":
            assert type(raised.value).__name__ == "LedgerLockTimeoutError"
        client.close()


# ------------------------------------------------------------------------------------------- API keys


def test_a_bad_api_key_is_refused(remote: Transport, admin: CaracalClient) -> None:
    stranger = remote.client(api_key="ck_notakey")
    assert_denied_without_running(stranger, AuthenticationError)


def test_an_agent_key_acts_for_its_own_agent_only(remote: Transport, admin: CaracalClient) -> None:
    other = admin.register_agent("other-agent", "someone@example.com")
    admin.create_policy("other-agent", "1.00")
    assert remote.service is not None
    me = admin.get_agent("my-agent")
    _key, token = remote.service.keys.create("agent", me.agent_id)
    agent = remote.client(api_key=token)

    # its own agent, end to end
    with agent.budget_check("my-agent", estimated_cost="0.50") as scope:
        agent.emit_event("my-agent", "tool.search.calls", 2)
    assert scope.hold is not None and scope.charges[0].hold_id == scope.hold.hold_id
    assert scope.settlement is not None and scope.settlement.total == Decimal("0.20")
    hold = agent.reserve(me.agent_id, "0.30")
    settled = agent.settle(hold, [{"resource_type": "tool.search.calls", "quantity": "1", "cost": "0.10"}])
    assert settled.total == Decimal("0.10")
    assert agent.check("my-agent").spent == Decimal("0.30")
    assert [status.spent for status in agent.budget_status("my-agent")] == [Decimal("0.30")]

    # anything for another agent, or admin work
    ran = []
    with pytest.raises(PermissionDeniedError), agent.budget_check("other-agent", estimated_cost="0.10"):
        ran.append(True)
    assert ran == []
    theirs = admin.reserve("other-agent", "0.10")
    for call in (
        lambda: agent.reserve("other-agent", "0.10"),
        lambda: agent.emit_event(other.agent_id, "tool.search.calls", 1),
        lambda: agent.settle(theirs),
        lambda: agent.release(theirs),
        lambda: agent.check("other-agent"),
        lambda: agent.get_agent("other-agent"),
        lambda: agent.register_agent("mine", "me@example.com"),
        lambda: agent.create_policy("my-agent", "100"),
        lambda: agent.set_price("tool.search.calls", "0"),
    ):
        with pytest.raises(PermissionDeniedError):
            call()
    assert admin.check("other-agent").held == Decimal("0.10")

    # inside its own block, a charge for another agent is that agent's business (and refused)
    with agent.budget_check("my-agent", estimated_cost="0.10"), pytest.raises(PermissionDeniedError):
        agent.emit_event("other-agent", "tool.search.calls", 1)


# ------------------------------------------------------------------------------ the same denials, exactly


def test_a_denial_carries_the_same_decision_as_the_embedded_client(
    caracal_home: Path, admin: CaracalClient
) -> None:
    admin.reserve("my-agent", "0.70", ttl=60)
    embedded = CaracalClient(caracal_home)  # the same home, beside the server
    try:
        with pytest.raises(BudgetExceededError) as remote_denial:
            admin.reserve("my-agent", "0.40")
        with pytest.raises(BudgetExceededError) as embedded_denial:
            embedded.reserve("my-agent", "0.40")
        remote_decision, embedded_decision = remote_denial.value.decision, embedded_denial.value.decision
        assert isinstance(remote_decision, Decision) and isinstance(embedded_decision, Decision)
        assert remote_decision == embedded_decision
        assert remote_decision.to_dict() == embedded_decision.to_dict()  # the same digits, too
        assert remote_decision.remaining == Decimal("0.30") and not remote_decision.allowed
        assert str(remote_denial.value) == str(embedded_denial.value)
        assert admin.check("my-agent", "0.40") == embedded.check("my-agent", "0.40")
        assert admin.budget_status("my-agent") == embedded.budget_status("my-agent")
        assert admin.get_agent("my-agent") == embedded.get_agent("my-agent")
    finally:
        embedded.close()


# ------------------------------------------------------------------------------------------ exact money


def test_money_stays_exact_over_the_wire(caracal_home: Path, admin: CaracalClient) -> None:
    def exactly(value: Decimal, text: str) -> bool:  # the same number and the same digits
        return value.as_tuple() == Decimal(text).as_tuple()

    price = admin.set_price("tool.tiny.calls", "0.000000001")
    assert exactly(price.unit_price, "0.000000001")
    policy = admin.create_policy("my-agent", Decimal("0.000000010"), "total")
    assert exactly(policy.limit, "0.000000010")
    event = admin.emit_event("my-agent", "tool.tiny.calls", 3)
    assert exactly(event.cost, "0.000000003") and exactly(event.quantity, "3")
    hold = admin.reserve("my-agent", Decimal("0.000000001"))
    assert exactly(hold.amount, "0.000000001")
    decision = admin.check("my-agent", "0.000000006")
    assert decision.allowed and decision.remaining is not None and exactly(decision.remaining, "0.000000006")
    assert not admin.check("my-agent", "0.000000007").allowed
    embedded = CaracalClient(caracal_home)
    try:
        assert admin.check("my-agent").to_dict() == embedded.check("my-agent").to_dict()
    finally:
        embedded.close()


def test_amounts_are_sent_as_decimal_strings() -> None:
    with fake_server(200, b"{}") as (url, received):
        client = CaracalClient(base_url=url, api_key="ck_whatever")
        with contextlib.suppress(ServerUnreachableError):
            client.reserve("my-agent", Decimal("0.000000001"), ttl=1.5)
        with contextlib.suppress(ServerUnreachableError):
            client.check("my-agent", 7)
        with contextlib.suppress(ServerUnreachableError):
            client.emit_event("my-agent", "r", Decimal("1E+3"), metadata={"price": Decimal("0.10")})
        client.close()
    bodies = {path: body for _method, path, body in received}
    assert bodies["/api/v1/holds"] == {
        "agent_id": "my-agent",
        "amount": "1E-9",  # str(Decimal("0.000000001")): the same digits and exponent, never a float
        "currency": "USD",
        "ttl": 2,  # whole seconds, rounded up
    }
    assert bodies["/api/v1/check"] == {"agent_id": "my-agent", "amount": "7", "currency": "USD"}
    event = bodies["/api/v1/events"]
    assert isinstance(event, dict) and event["quantity"] == "1E+3" and event["metadata"] == {"price": "0.10"}


def test_floats_and_bad_input_are_refused_before_anything_is_sent(closed_port: int) -> None:
    client = CaracalClient(base_url=f"http://127.0.0.1:{closed_port}", api_key="ck_whatever")
    refused: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: client.reserve("my-agent", 0.1), InvalidAmountError),
        (lambda: client.check("my-agent", 0.1), InvalidAmountError),
        (lambda: client.reserve("my-agent", "1", ttl=0), InvalidAmountError),
        (lambda: client.reserve("my-agent", "1", ttl=float("nan")), InvalidAmountError),
        (lambda: client.emit_event("my-agent", "r", 0.5), InvalidMeteringEventError),
        (
            lambda: client.emit_event("my-agent", "r", 1, metadata={"x": float("inf")}),
            InvalidMeteringEventError,
        ),
        (lambda: client.create_policy("my-agent", 1.5), InvalidPolicyError),
        (lambda: client.set_price("r", 0.1), InvalidPriceError),
        (lambda: client.settle("hold-1", [{"cost": 0.1}]), InvalidAmountError),
        (lambda: client.settle("hold-1", [{"price": "1"}]), InvalidAmountError),
        (lambda: client.check(""), InvalidAgentError),
        (lambda: client.get_agent(42), InvalidAgentError),  # type: ignore[arg-type]
    ]
    for call, error in refused:
        with pytest.raises(error):
            call()
    client.close()


# ------------------------------------------------------------------------------------------- configuration


def test_configuration_errors(caracal_home: Path) -> None:
    for kwargs in (
        {"base_url": "http://127.0.0.1:8787"},
        {"base_url": "http://127.0.0.1:8787", "api_key": ""},
        {"api_key": "ck_x"},
        {"base_url": "ftp://127.0.0.1", "api_key": "ck_x"},
        {"base_url": "127.0.0.1:8787", "api_key": "ck_x"},
        {"base_url": "http://127.0.0.1:8787", "api_key": "ck_x", "timeout": 0},
        {"base_url": "http://127.0.0.1:8787", "api_key": "ck_x", "clock": lambda: None},
        {"base_url": "http://127.0.0.1:8787", "api_key": "ck_\n"},
    ):
        with pytest.raises(ConfigurationError):
            CaracalClient(**kwargs)
    with pytest.raises(ConfigurationError):
        CaracalClient(caracal_home, base_url="http://127.0.0.1:8787", api_key="ck_x")
    client = CaracalClient(base_url="http://127.0.0.1:8787/api/v1/", api_key="ck_x")
    assert isinstance(client, CaracalClient)
    with pytest.raises(ConfigurationError):
        _ = client.home  # no local home
    client.close()


def test_base_url_may_include_the_api_prefix(remote: Transport, admin: CaracalClient) -> None:
    server = remote.start()
    assert remote.admin_token is not None
    client = CaracalClient(base_url=server.base_url + "/api/v1/", api_key=remote.admin_token)
    with client:
        assert client.check("my-agent").remaining == Decimal("1.00")
        client.close()
        assert client.check("my-agent").allowed  # reconnects after close, like the embedded client
