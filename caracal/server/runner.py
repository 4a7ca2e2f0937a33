"""Running the app with uvicorn: in the foreground (``caracal serve``), as several worker processes on one
port (``caracal serve --workers N``), or in a thread (tests, benchmarks).

uvloop and httptools are used when installed (they come with ``uvicorn[standard]``): they roughly halve the
per-request cost of the HTTP layer, which matters for the gateway's added latency.

With several workers (:func:`serve_workers`) this process supervises N worker processes. Each is a fresh
(spawned) Python process that builds its own app with :data:`WORKER_APP` (its own
:class:`~caracal.server.service.Service` over the home: its own ledger writer, live budget state and group
committer). On Linux each worker listens on its own socket bound to the same port with ``SO_REUSEPORT``,
so the kernel spreads new connections evenly over the workers (one listening socket shared by all, the
fallback elsewhere, lets whichever worker wakes first accept a whole burst). Budgets hold across workers
because every write is decided under the ledger's exclusive lock after catching up on what the other
workers appended.

SIGTERM or Ctrl-C: the supervisor sends SIGTERM to every worker, and each shuts down gracefully (in-flight
requests finish, its queued ledger operations are written, its snapshot and a checkpoint are saved) before
the supervisor exits. A worker that dies while serving is replaced; one that fails before it serves (the
port is taken, the home cannot be opened) stops them all, with the error.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType, TracebackType

import uvicorn
from starlette.types import ASGIApp

from caracal.exceptions import ConfigurationError

WORKER_APP = "caracal.server.app:worker_app"
"""The import string of the app factory every worker process calls (:func:`caracal.server.app.worker_app`)."""

STARTUP_FAILURE = 3
"""The exit status of a worker that could not start serving (uvicorn's own code for it)."""

REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
"""Whether each worker gets its own listening socket (the kernel balances connections between them)."""

logger = logging.getLogger("caracal.server")


def _config(
    app: ASGIApp | str, host: str, port: int, log_level: str = "warning", *, workers: int = 1
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=isinstance(app, str),
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


def _listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


ORPHAN_CHECK = 0.5
"""Seconds between a worker's checks that its supervisor still runs."""


def _orphan_watch(supervisor: int) -> None:
    """SIGTERM this process (a graceful shutdown) once its parent is no longer ``supervisor``."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(ORPHAN_CHECK)
        logger.warning("worker %d: its supervisor %d is gone; shutting down", os.getpid(), supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="caracal-orphan-watch", daemon=True).start()


def _worker(host: str, port: int, log_level: str, shared: socket.socket | None) -> None:
    """One worker process: its own app (:data:`WORKER_APP`) on its own ``SO_REUSEPORT`` socket (or on the
    supervisor's ``shared`` one) until SIGTERM. Exits with :data:`STARTUP_FAILURE` if it never served.

    A worker whose supervisor died (SIGKILL, OOM) shuts down as on SIGTERM (:func:`_orphan_watch`): an
    orphan would go on serving the port (and sending alerts) with nobody to stop or replace it."""
    _orphan_watch(os.getppid())
    server = uvicorn.Server(_config(WORKER_APP, host, port, log_level))
    try:
        sock = shared if shared is not None else _listening_socket(host, port, reuse_port=True)
        server.run(sockets=[sock])
    except Exception as exc:
        if server.started:
            raise
        logger.error("worker %d could not start: %s", os.getpid(), exc)
        sys.exit(STARTUP_FAILURE)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def serve_workers(
    host: str, port: int, workers: int, log_level: str = "info", *, check_every: float = 0.5
) -> None:
    """Serve with ``workers`` processes on one port until SIGTERM or SIGINT (see the module docstring). Each
    worker serves the home of ``$CARACAL_HOME`` (inherited). Raises :class:`ConfigurationError` if a worker
    could not start; the others are stopped then, instead of being restarted in a loop."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: nothing of this one is shared
    multiprocessing.allow_connection_pickling()  # the shared socket, where it is passed to the workers
    # Bound here first (never listening, without SO_REUSEPORT: a server already listening there, even with
    # SO_REUSEPORT, makes it fail) so that a taken port or a bad address fails at once, in this process. It
    # stays bound until the end, which does not keep the workers' SO_REUSEPORT sockets from binding the port
    # too (Linux lets listeners share a port with a bound socket that does not listen, all SO_REUSEADDR).
    probe = _listening_socket(host, port, reuse_port=False)
    shared = None if REUSE_PORT else probe
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker, args=(host, port, log_level, shared), name="caracal-worker", daemon=False
        )
        process.start()
        return process

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    processes: list[multiprocessing.process.BaseProcess] = []
    failed: list[int | None] = []
    try:
        processes = [start() for _ in range(workers)]
        while not stop.wait(check_every):
            for index, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    failed.append(process.pid)
                    stop.set()
                    break
                logger.warning(
                    "worker %s exited with status %s; starting another", process.pid, process.exitcode
                )
                processes[index] = start()
    finally:
        for process in processes:  # each finishes its requests and writes what it queued
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
        probe.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise ConfigurationError(
            f"worker process {', '.join(map(str, failed))} could not start (its error is above); stopped"
        )


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


__all__ = ["WORKER_APP", "ServerThread", "serve", "serve_workers"]
