"""The Responses API through ``caracal serve --workers 2`` (a real process, as an operator runs it): a
response created through one worker can be continued, read and deleted at once through any other, on
files and on PostgreSQL (the registry is shared by the workers, and written before the response is
answered)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from caracal.core.windows import parse_window
from caracal.storage.home import EmbeddedHome
from tests import homes
from tests.cli.test_cli_serve import serving
from tests.server.fake_upstream import FakeUpstream, serve_fake_upstream

PROVIDER_KEY = "sk-upstream-test"
MODEL = "gpt-4o@ok"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with serve_fake_upstream() as upstream:
        yield upstream


def prepare(home: Path, fake: FakeUpstream) -> str:
    """An initialized home whose OpenAI upstream is the fake; returns an agent key's token."""
    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True)
    config = home / "config.toml"
    config.write_text(config.read_text().replace("https://api.openai.com/v1", f"{fake.base_url}/v1"))
    opened = EmbeddedHome(home)
    try:
        agent = opened.agents.register("worker-bot", "ops@example.com")
        opened.policies.create(agent.agent_id, "100", parse_window("total"), "USD")
        for kind, price in (
            ("input_tokens", "0.001"),
            ("cache_read_tokens", "0.0005"),
            ("output_tokens", "0.002"),
        ):
            opened.prices.set(f"openai.{MODEL}.{kind}", price, "USD")
        _key, token = opened.keys.create("agent", agent.agent_id, "worker-bot key")
    finally:
        opened.close()
    return token


def test_a_response_is_continued_through_any_worker_at_once(
    caracal_home: Path, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    token = prepare(caracal_home, fake)
    auth = {"Authorization": f"Bearer {token}"}
    with serving(caracal_home, "--workers", "2") as (base_url, _process):
        # A new connection per request: the kernel spreads connections over the workers' sockets.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=base_url, timeout=30, limits=limits) as client:
            for turn in range(8):
                body = {"model": MODEL, "input": f"turn {turn}", "max_output_tokens": 3}
                first = client.post("/v1/responses", json=body, headers=auth)
                assert first.status_code == 200, first.text
                first_id = first.json()["id"]
                chained = {**body, "previous_response_id": first_id}
                second = client.post("/v1/responses", json=chained, headers=auth)
                assert second.status_code == 200, second.text
                assert second.json()["usage"]["input_tokens_details"]["cached_tokens"] > 0
                assert client.get(f"/v1/responses/{first_id}", headers=auth).status_code == 200
                assert client.delete(f"/v1/responses/{first_id}", headers=auth).status_code == 200
                gone = client.get(f"/v1/responses/{first_id}", headers=auth)
                assert gone.status_code == 404
    events = homes.events(caracal_home)
    holds = [e for e in events if e.kind == "hold"]
    assert len(holds) == 16 and {e.hold_id for e in events if e.kind == "release"} == {
        h.hold_id for h in holds
    }
    charged = [e for e in events if e.is_charge]
    assert all(e.cost <= Decimal("1") for e in charged)
    assert homes.verify(caracal_home).ok
