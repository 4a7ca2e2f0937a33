"""Running the app with uvicorn: in the foreground (``caracal serve``) or in a thread (tests, benchmarks).

uvloop and httptools are used when installed (they come with ``uvicorn[standard]``): they roughly halve the
per-request cost of the HTTP layer, which matters for the gateway's added latency.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from caracal.exceptions import ConfigurationError


def _config(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def serve(app: ASGIApp, host: str, port: int, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM shut down gracefully: in-flight requests finish)."""
    uvicorn.Server(_config(app, host, port, log_level)).run()


class ServerThread:
    """``with ServerThread(app) as server: server.base_url``: the app served on 127.0.0.1 (a free port)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.base_url = f"http://{self.host}:{self.port}"
        self._server = uvicorn.Server(_config(app, self.host, self.port))
        self._thread = threading.Thread(target=self._run, name="caracal-server", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise ConfigurationError(f"the server did not start: {self._error}")
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["ServerThread", "serve"]
