"""A private PostgreSQL server for tests that stop and start it (an outage under load).

The machine's shared server must never be restarted by a test (other tests use it at the same time), so
:class:`PrivateServer` makes its own cluster with ``initdb`` in a temporary folder, on a free port, with
trust authentication, and runs it with ``pg_ctl``. As root (PostgreSQL refuses to run as root) it runs the
server as the ``postgres`` user. ``available()`` says why it cannot, for a skip (or, under ``CI=true``, a
failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType


def _bindir() -> Path | None:
    try:
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidates = [Path(found.stdout.strip())]
    except (OSError, subprocess.CalledProcessError):
        candidates = []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def available() -> str | None:
    """None when a private server can be made here; else the reason."""
    if _bindir() is None:
        return "initdb and pg_ctl were not found (install PostgreSQL's server package)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL cannot be started as another user"
    return None


class PrivateServer:
    """``with PrivateServer() as server: server.url``; :meth:`stop` and :meth:`start` in between."""

    def __init__(self) -> None:
        bindir = _bindir()
        assert bindir is not None, available()
        self._bindir = bindir
        self._folder = Path(tempfile.mkdtemp(prefix="caracal-pg-"))
        self.data = self._folder / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def __enter__(self) -> PrivateServer:
        if os.geteuid() == 0:
            shutil.chown(self._folder, "postgres", "postgres")
        self._run(
            str(self._bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = "
                f"'{self._folder}'\nfsync = on\nmax_connections = 60\n"
            )
        self.start()
        return self

    def start(self) -> None:
        self._run(str(self._bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self._folder / "log"), "-w",
                  "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions and close connections; ``immediate``: as
        a crash would)."""
        self._run(str(self._bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self._folder, ignore_errors=True)
