"""The three frameworks' agent loops through ``caracal serve`` run as an operator runs it: a real process set
up with the CLI, its OpenAI upstream the fake, on the test's backend (files or PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from caracal.core.events import LedgerEvent
from caracal.core.ledger import LedgerReader
from caracal.core.verify import verify_ledger
from caracal.sdk.client import CaracalClient
from tests.cli.test_cli_serve import serving
from tests.integrations.ledger import INPUT_PRICE, OUTPUT_PRICE, assert_calls_billed
from tests.integrations.loops import FRAMEWORKS, MODEL, run_loop
from tests.server.fake_upstream import FakeUpstream, serve_fake_upstream
from tests.server.gateway_env import nonce


def caracal(*args: str) -> str:
    command = [sys.executable, "-m", "caracal", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with serve_fake_upstream() as server:
        yield server


def agent_with_key(client: CaracalClient) -> tuple[str, str]:
    """A new agent with a total policy of 100 USD and an agent key made by the CLI: (name, token)."""
    name = f"agent-{nonce()[:10]}"
    client.register_agent(name, "ops@example.com")
    client.create_policy(name, "100", "total")
    out = caracal("agent", "key", "create", name)
    token = next(line.split()[-1] for line in out.splitlines() if line.startswith("token:"))
    return name, token


def closed_entries(client: CaracalClient, agent: str, holds: int) -> list[LedgerEvent]:
    """The agent's entries once ``holds`` holds are all closed (the server settles after answering)."""
    agent_id = client.get_agent(agent).agent_id
    deadline = time.monotonic() + 30  # a bound on waiting, not a performance assertion
    while True:
        events = [e for e in LedgerReader(client.home.ledger) if e.agent_id == agent_id]
        opened = {e.hold_id for e in events if e.kind == "hold"}
        if len(opened) >= holds and opened <= {e.hold_id for e in events if e.kind == "release"}:
            return events
        assert time.monotonic() < deadline, f"{len(opened)} holds of {agent}, not all closed"
        time.sleep(0.05)


def test_agent_loops_through_a_caracal_serve_process(
    caracal_home: Path, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    caracal("init")
    config = caracal_home / "config.toml"
    text = config.read_text()
    assert 'base_url = "https://api.openai.com/v1"' in text
    config.write_text(text.replace("https://api.openai.com/v1", f"{fake.base_url}/v1"))
    runs = []
    with CaracalClient() as client:
        client.set_price(f"openai.{MODEL}.input_tokens", INPUT_PRICE)
        client.set_price(f"openai.{MODEL}.output_tokens", OUTPUT_PRICE)
        for framework in FRAMEWORKS:
            for stream in (False, True):
                runs.append((framework, stream, *agent_with_key(client)))
    monkeypatch.setenv("OPENAI_API_KEY", fake.api_key)  # the server's provider key (api_key_env)
    with serving(caracal_home) as (base_url, _process):
        markers = []
        for framework, stream, _agent, token in runs:
            marker = nonce()
            answer, ran = run_loop(framework, f"{base_url}/v1", token, marker, stream=stream)
            assert ran == ["tok"] and answer.startswith("tok")
            markers.append(marker)
        with CaracalClient() as client:
            for (_framework, _stream, agent, token), marker in zip(runs, markers, strict=True):
                requests = [r for r in list(fake.requests) if marker in str(r.body)]
                assert len(requests) == 2
                assert all(token not in value for r in requests for value in r.headers.values())
                assert_calls_billed(closed_entries(client, agent, 2), requests, MODEL)
            report = verify_ledger(client.home.ledger)
            assert report.ok, report.problems
