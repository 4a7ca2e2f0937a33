"""A real webhook receiver on 127.0.0.1 for the alert tests: a threaded ``http.server`` that records every
request (headers and raw body) and answers with :attr:`Receiver.status`.

It can start *down*: its port is bound by a socket that does not listen, so connections are refused (as
from a receiver that is not running) and no other test can take the port; :meth:`Receiver.up` starts
listening on that same socket.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from caracal.core.webhooks import verify_signature


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["Caracal-Event-Id"]

    def verifies(self, secret: str) -> bool:
        return verify_signature(secret, self.headers, self.body, int(time.time()))


class Receiver:
    def __init__(self, *, up: bool = True):
        self.requests: list[Received] = []
        self.status = 200
        self._lock = threading.Lock()
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if up:
            self.up()

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                    status = receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._socket
        server.server_activate()  # listen() on the socket that held the port
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def received(self, predicate: Callable[[Received], bool] = lambda r: True) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if predicate(r)]

    def wait_for(
        self, predicate: Callable[[Received], bool] = lambda r: True, count: int = 1, timeout: float = 60.0
    ) -> list[Received]:
        """Until ``count`` matching requests arrived (a bound on waiting, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(predicate)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"the receiver got {len(self.received(predicate))} matching requests, not {count}"
        )

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self._socket.close()


def receiving(*, up: bool = True) -> Iterator[Receiver]:
    receiver = Receiver(up=up)
    try:
        yield receiver
    finally:
        receiver.close()
