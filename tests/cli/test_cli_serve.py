"""``caracal serve`` as an operator runs it: a real process on 127.0.0.1, used over HTTP, stopped with
SIGTERM. What was recorded through it must be on disk, verified and checkpointed after a graceful stop."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests import homes


@contextmanager
def reserved_port() -> Iterator[int]:
    """A free port on 127.0.0.1, kept from everyone else until the block ends, so that ``caracal serve
    --port`` can take it even while other tests (other xdist workers) open ports at the same time.

    The port stays bound by this socket (SO_REUSEADDR, never listening): meanwhile no bind to port 0 gets
    it, nor any bind without SO_REUSEADDR; uvicorn's socket (SO_REUSEADDR too) may still bind it and listen
    on it, as Linux lets a listener share a port with sockets that do not listen."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def wait_for_health(base_url: str, process: subprocess.Popen[str]) -> None:
    """Until the server answers /healthz (or the process dies, which fails the test with its output)."""
    deadline = time.monotonic() + 60  # a bound on waiting, not a performance assertion
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"caracal serve exited with {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    pytest.fail("caracal serve did not answer /healthz")


@contextmanager
def serving(
    home: Path, *options: str, new_session: bool = False
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``caracal serve`` on ``home`` (with ``options``, e.g. ``--workers 2``) as a real process on a reserved
    port, up (answering /healthz) for the block: ``(base_url, process)``. ``new_session`` makes it the
    leader of its own process group (which a signal to the group, as Ctrl-C in a terminal, reaches). Killed
    at the end unless the block stopped it, its whole group with it when it has one."""
    with reserved_port() as port:
        process = subprocess.Popen(
            [sys.executable, "-m", "caracal", "serve", "--port", str(port), "--log-level", "warning",
             *options],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CARACAL_HOME": str(home)},
            start_new_session=new_session,
        )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_for_health(base_url, process)
            yield base_url, process
        finally:
            if new_session:  # also any worker left behind by a supervisor that died
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            elif process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def served(caracal_home: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True)
    with serving(caracal_home) as server:
        yield server


def test_serve_records_over_http_and_stops_gracefully(
    caracal_home: Path, served: tuple[str, subprocess.Popen[str]]
) -> None:
    base_url, process = served
    admin = (caracal_home / "keys" / "admin.key").read_text().strip()
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin}"})
    assert client.post("/api/v1/agents", json={"name": "bot", "owner": "ops@example.com"}).status_code == 201
    assert client.post("/api/v1/policies", json={"agent_id": "bot", "limit": "5"}).status_code == 201
    hold = client.post("/api/v1/holds", json={"agent_id": "bot", "amount": "2"}).json()
    settled = client.post(
        f"/api/v1/holds/{hold['hold_id']}/settle",
        json={"charges": [{"resource_type": "tool.calls", "quantity": "1", "cost": "1.25"}]},
    )
    assert settled.status_code == 200
    denied = client.post("/api/v1/holds", json={"agent_id": "bot", "amount": "4"})
    assert denied.status_code == 402 and denied.json()["error"]["decision"]["remaining"] == "3.75"
    assert httpx.get(f"{base_url}/api/v1/agents").status_code == 401  # no key

    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why it stopped
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)

    events = homes.events(caracal_home)
    assert [e.kind for e in events] == ["hold", None, "release"]
    report = homes.verify(caracal_home)
    assert report.ok
    assert report.checkpoints_matched == report.checkpoints_total >= 1
    assert report.checkpoints_total and homes.latest_checkpoint(caracal_home).size == 3  # the graceful
    # shutdown checkpointed what it served


@pytest.mark.files_only(
    "removes data/apikeys.json (a home from before API keys; every database home has the table)"
)
def test_serve_makes_an_admin_key_for_a_home_that_has_none(caracal_home: Path) -> None:
    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True)
    key_file = caracal_home / "keys" / "admin.key"
    (caracal_home / "data" / "apikeys.json").unlink()  # a home from before API keys existed
    key_file.unlink()
    with serving(caracal_home) as (base_url, process):
        token = key_file.read_text().strip()
        answer = httpx.get(f"{base_url}/api/v1/agents", headers={"x-api-key": token})
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert "created the admin API key" in process.stderr.read()  # type: ignore[union-attr]


@pytest.fixture
def impatient(caracal_home: Path) -> Iterator[tuple[int, str]]:
    """``caracal serve`` with ``server.body_timeout = 1``: (port, admin key)."""
    for command in (["init"], ["agent", "register", "--name", "bot", "--owner", "ops"]):
        subprocess.run([sys.executable, "-m", "caracal", *command], check=True, capture_output=True)
    config = caracal_home / "config.toml"
    text = config.read_text()
    assert "\nbody_timeout = 30\n" in text  # documented in the config init writes
    config.write_text(text.replace("\nbody_timeout = 30\n", "\nbody_timeout = 1\n"))
    with serving(caracal_home) as (base_url, _process):
        yield int(base_url.rsplit(":", 1)[1]), (caracal_home / "keys" / "admin.key").read_text().strip()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; fails if it keeps it open (the bound is
    generous: this is about "closed at all", not about how fast)."""
    sock.settimeout(30)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open; it sent {data!r}")
    return data


def partial_request(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A POST whose headers promise 200 bytes of body, of which only the first 20 are sent."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: 200\r\n{head}\r\n".encode()
        + b'{"agent_id": "bot", '
    )
    return sock


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/holds", "/v1/chat/completions"])
def test_a_stalled_request_body_times_out_and_the_connection_is_closed(
    impatient: tuple[int, str], path: str
) -> None:
    port, admin = impatient
    headers = {"Authorization": f"Bearer {admin}", "X-Caracal-Agent": "bot"}
    with partial_request(port, path, headers) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"body_timeout" in answer


def test_a_body_trickled_in_byte_by_byte_still_times_out(impatient: tuple[int, str]) -> None:
    port, admin = impatient
    with partial_request(port, "/api/v1/events", {"Authorization": f"Bearer {admin}"}) as sock:
        for _ in range(100):  # 100 x 0.3 s: far past the 1 s bound, which covers the whole body
            if select.select([sock], [], [], 0.3)[0]:
                break
            sock.sendall(b" ")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_an_answer_given_before_the_body_arrived_closes_the_connection(impatient: tuple[int, str]) -> None:
    """A request refused without reading its body (here: no key, 401) is answered and its connection closed,
    so the client cannot keep it open by trickling in the rest."""
    port, _admin = impatient
    with partial_request(port, "/api/v1/events", {}) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"connection: close" in answer.lower()
