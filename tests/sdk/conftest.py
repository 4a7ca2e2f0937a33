"""The SDK tests run once per transport: embedded (the local home) and remote (a server on that home).

A test takes the ``sdk`` fixture (a :class:`Transport`) and makes its clients with ``sdk.client()``. Tests
that are about the embedded client's own machinery (its files, its config, its process) carry
``@pytest.mark.embedded_only("why")``: their remote run is skipped with that reason, so the gap shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from caracal.core.store import LedgerStore
from caracal.sdk.client import CaracalClient
from caracal.server.app import create_app
from caracal.server.runner import ServerThread
from caracal.server.service import Service
from caracal.storage.home import EmbeddedHome

TRANSPORTS = ("embedded", "remote")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "embedded_only(reason): an SDK test about the embedded client only (remote run skipped)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sdk" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("embedded_only")
    params = [
        pytest.param(kind, marks=pytest.mark.skip(reason=f"embedded only: {marker.args[0]}"))
        if marker is not None and kind == "remote"
        else kind
        for kind in TRANSPORTS
    ]
    metafunc.parametrize("sdk", params, indirect=True)


class Transport:
    """Clients of one transport on the test's home. The remote server starts on the first ``client()``
    (so a test can write ``config.toml`` first) and serves the home with the admin key."""

    def __init__(self, kind: str, home: Path):
        self.kind = kind
        self.home = home
        self.service: Service | None = None
        self.server: ServerThread | None = None
        self.admin_token: str | None = None
        self._port = 0
        self._clients: list[CaracalClient] = []
        self._reader: EmbeddedHome | None = None

    @property
    def remote(self) -> bool:
        return self.kind == "remote"

    @property
    def ledger_path(self) -> Path:
        return self.home / "data" / "ledger.jsonl"

    @property
    def ledger(self) -> Path | LedgerStore:
        """The home's ledger as readers see it: its file, or (on PostgreSQL) a store of the database."""
        if self._reader is None:
            self._reader = EmbeddedHome(self.home)
        return self._reader.ledger

    def client(self, api_key: str | None = None) -> CaracalClient:
        if self.kind == "embedded":
            client = CaracalClient()
        else:
            server = self.start()
            client = CaracalClient(base_url=server.base_url, api_key=api_key or self.admin_token)
        self._clients.append(client)
        return client

    def start(self) -> ServerThread:
        if self.server is None:
            self.service = Service(self.home)
            token = self.service.keys.ensure_admin_key(self.home / "keys" / "admin.key")
            if token is not None:
                self.admin_token = token
            app = create_app(self.service, own_service=True)
            self.server = ServerThread(app, port=self._port).start()
            self._port = self.server.port  # a restart comes back on the same address
        return self.server

    def restart(self) -> None:
        """Remote: stop the server (closing its service) and start a new one on the same home and port.
        Embedded: nothing (each client is its own "process")."""
        if self.server is not None:
            self.stop()
            self.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.service = None

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.stop()
        if self._reader is not None:
            self._reader.close()


@pytest.fixture
def sdk(request: pytest.FixtureRequest, caracal_home: Path) -> Iterator[Transport]:
    transport = Transport(request.param, caracal_home)
    yield transport
    transport.close()


@pytest.fixture
def client(sdk: Transport) -> CaracalClient:
    """A client of the test's transport on a home with ``my-agent`` (a 1.00 USD daily policy) and a price
    of 0.10 per ``tool.search.calls``."""
    client = sdk.client()
    client.register_agent("my-agent", "user@example.com")
    client.create_policy("my-agent", "1.00", "daily")
    client.set_price("tool.search.calls", "0.10")
    return client  # closed by the transport
