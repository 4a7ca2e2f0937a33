"""A live server over a fresh home, with agents, keys, policies and a price, for the REST API tests.

The ``server`` fixture serves :func:`caracal.server.app.create_app` in a thread (real HTTP through httpx):

- agents ``team`` (a parent), ``worker`` (its child) and ``other`` (unrelated), each with an agent key, an
  active daily policy and the price of ``RESOURCE``;
- the admin key, and a revoked key of ``worker``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from caracal.server.app import create_app
from caracal.server.runner import ServerThread
from caracal.server.service import Service
from tests.pg import storage_config

RESOURCE = "tool.search"
UNIT_PRICE = "0.25"
LIMITS = {"team": "100.00", "worker": "10.00", "other": "10.00"}


@dataclass
class Live:
    base_url: str
    home: Path
    service: Service
    admin_token: str
    client: httpx.Client
    agent_ids: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)
    policy_ids: dict[str, str] = field(default_factory=dict)
    revoked_token: str = ""
    revoked_key_id: str = ""

    def auth(self, who: str | None) -> dict[str, str]:
        """Headers for ``who``: "admin", an agent's name, or None (no key)."""
        if who is None:
            return {}
        token = self.admin_token if who == "admin" else self.tokens[who]
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, who: str | None = "admin", **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(who), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, who: str | None = "admin", **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, who, **kwargs)

    def post(self, path: str, who: str | None = "admin", **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, who, **kwargs)


def populate(live: Live) -> None:
    """Agents, keys, policies and a price, made through the library (not the API under test)."""
    service = live.service
    home = service.home
    team = home.agents.register("team", "ops@example.com")
    worker = home.agents.register("worker", "ops@example.com", team.agent_id)
    other = home.agents.register("other", "someone@example.com")
    for agent in (team, worker, other):
        live.agent_ids[agent.name] = agent.agent_id
        key, token = service.keys.create("agent", agent.agent_id, f"{agent.name} key")
        live.tokens[agent.name] = token
        live.key_ids[agent.name] = key.key_id
        policy = home.policies.create(agent.agent_id, LIMITS[agent.name], _window("daily"), "USD")
        live.policy_ids[agent.name] = policy.policy_id
    revoked, token = service.keys.create("agent", worker.agent_id, "revoked")
    service.keys.revoke(revoked.key_id)
    live.revoked_token = token
    live.revoked_key_id = revoked.key_id
    home.prices.set(RESOURCE, UNIT_PRICE, "USD")


def _window(kind: str) -> Any:
    from caracal.core.windows import parse_window

    return parse_window(kind, None, "UTC")


def start(home: Path, database_url: str | None = None, **app_options: Any) -> Generator[Live, None, None]:
    if database_url is not None:  # a module's shared home on PostgreSQL (see tests.pg.home_database)
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(storage_config(database_url))
    service = Service(home)
    admin_token = service.keys.ensure_admin_key(home / "keys" / "admin.key")
    assert admin_token is not None
    with (
        ServerThread(create_app(service, own_service=True, **app_options)) as server,
        httpx.Client(base_url=server.base_url, timeout=30.0) as client,
    ):
        live = Live(server.base_url, home, service, admin_token, client)
        populate(live)
        yield live


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Live]:
    yield from start(tmp_path / "home")
