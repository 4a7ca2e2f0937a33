"""A ``caracal serve`` killed (SIGKILL) under gateway load: every call that got a 200, and every call the
upstream saw, must end billed exactly once: at its reported usage, or at its bound marked estimated when
the server died before settling it. Real processes, a real fake upstream, real sockets on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import orjson

from caracal.core.enforcement import ESTIMATED_RESOURCE
from caracal.core.windows import parse_window
from caracal.storage.home import EmbeddedHome
from tests import homes
from tests.cli.test_cli_serve import serving
from tests.server.fake_upstream import serve_fake_upstream

HOLD_TTL = 2
"""Seconds a gateway hold lives in this home: short, so a restart soon after the kill finds them expired."""
FAST, SLOW = 8, 8


def wait_until(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a bound on waiting, not a performance assertion
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_killed_server_leaves_no_answered_or_sent_call_unbilled(caracal_home: Path) -> None:
    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True)
    with serve_fake_upstream(delay_ms=30_000) as fake:  # "slow" calls are still in flight at the kill
        (caracal_home / "config.toml").write_text(
            f"[gateway]\nmax_output_tokens = 64\nhold_ttl = {HOLD_TTL}\nupstream_timeout = 60\n\n"
            f'[gateway.openai]\nbase_url = "{fake.base_url}/v1"\napi_key = "{fake.api_key}"\n'
        )
        home = EmbeddedHome(caracal_home)
        calls: list[tuple[str, str, str]] = []  # (agent_id, token, model): one agent per call
        for index in range(FAST + SLOW):
            model = "gpt-4o@ok" if index < FAST else "gpt-4o@slow"
            agent = home.agents.register(f"caller-{index}", "ops@example.com")
            home.policies.create(agent.agent_id, "100", parse_window("total"), "USD")
            _key, token = home.keys.create("agent", agent.agent_id, "test")
            calls.append((agent.agent_id, token, model))
        for model in ("gpt-4o@ok", "gpt-4o@slow"):
            home.prices.set(f"openai.{model}.input_tokens", "0.001", "USD")
            home.prices.set(f"openai.{model}.output_tokens", "0.002", "USD")
        home.close()

        statuses: dict[str, int] = {}

        def call(agent_id: str, token: str, model: str) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": f"hello {agent_id}"}]}
            try:
                answer = httpx.post(
                    f"{base_url}/v1/chat/completions",
                    content=orjson.dumps(body),
                    headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
                    timeout=60,
                )
                statuses[agent_id] = answer.status_code
            except httpx.HTTPError:
                statuses[agent_id] = 0  # the server died under it

        def seen_upstream() -> set[str]:
            return {
                agent_id
                for agent_id, _token, _model in calls
                if any(agent_id in orjson.dumps(r.body).decode() for r in list(fake.requests))
            }

        with serving(caracal_home) as (base_url, process):
            threads = [threading.Thread(target=call, args=c) for c in calls]
            for thread in threads:
                thread.start()
            wait_until(lambda: len(statuses) >= FAST and len(seen_upstream()) == FAST + SLOW, "the calls")
            process.send_signal(signal.SIGKILL)
            process.wait()
            for thread in threads:
                thread.join(timeout=60)
        answered = {agent_id for agent_id, status in statuses.items() if status == 200}
        sent = seen_upstream()
        assert len(answered) == FAST and len(sent) == FAST + SLOW  # some answered, some in flight

        time.sleep(HOLD_TTL + 0.5)  # let every hold the dead server left expire
        with serving(caracal_home) as (_base_url, process):  # the restarted server bills them at start
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)

    assert homes.verify(caracal_home).ok
    events = homes.events(caracal_home)
    for agent_id in answered | sent:
        mine = [e for e in events if e.agent_id == agent_id]
        holds = [e for e in mine if e.kind == "hold"]
        assert len(holds) == 1, agent_id
        hold = holds[0]
        assert hold.on_expiry == "charge"
        charges = [e for e in mine if e.is_charge]
        assert charges and all(e.hold_id == hold.hold_id for e in charges), f"call of {agent_id} unbilled"
        estimated = [e for e in charges if e.resource_type == ESTIMATED_RESOURCE]
        if estimated:  # billed at its bound because the server died before settling it: once, never twice
            assert len(charges) == 1 and estimated[0].cost == hold.cost
            assert estimated[0].metadata is not None and estimated[0].metadata["estimated"] is True
        else:
            assert sum((e.cost for e in charges), Decimal(0)) > 0
        assert [e.kind for e in mine].count("release") == 1
    # The calls in flight at the kill were never answered: their bound is what the ledger can prove.
    in_flight = sent - answered
    assert in_flight and all(
        any(e.resource_type == ESTIMATED_RESOURCE for e in events if e.agent_id == agent_id)
        for agent_id in in_flight
    )
