"""Alerts end to end in a server's :class:`Service` (on both backends): charges written by *another OS
process* push a policy over a threshold; the service's detector fires, its sender delivers to a real HTTP
receiver on 127.0.0.1, signed with the rule's secret, exactly once per window crossing; and the REST API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from caracal.core.windows import parse_window
from caracal.server.app import create_app
from caracal.server.runner import ServerThread
from caracal.server.service import Service
from tests.alert_receiver import Receiver, receiving
from tests.bot_home import charge_from_another_process

API = "/api/v1/alerts"
FAST = "[alerts]\ninterval = 0.05\nretry_base = 0.05\nretry_max = 0.2\nmax_attempts = 1000\n"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


@pytest.fixture
def service(tmp_path: Path, storage: str) -> Iterator[Service]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(FAST)
    with Service(home) as service:
        bot = service.home.agents.register("bot", "ops@example.com")
        service.home.policies.create(bot.agent_id, "10", parse_window("daily"), "USD")
        service.home.prices.set("tool.calls", "1", "USD")
        yield service


def policy_of(service: Service) -> str:
    return service.home.policies.list()[0].policy_id


def settle(timeout: float = 1.0) -> None:
    """Give the detector several rounds (0.05 s apart) to fire a second time, if it wrongly would."""
    time.sleep(timeout)


def test_crossing_80_percent_fires_exactly_once(service: Service, receiver: Receiver) -> None:
    rule = service.home.alerts.create(
        name="bot at 80%", url=receiver.url, on="threshold", threshold="0.8", policy_id=policy_of(service)
    )
    charge_from_another_process(service.home.home, "5", "2")  # 70%: below the threshold
    settle()
    assert receiver.received() == []

    charge_from_another_process(service.home.home, "1.5")  # 85%
    [request] = receiver.wait_for()
    assert request.verifies(rule.secret)
    assert not request.verifies("whsec_" + "0" * 64)
    body = request.json
    assert body["type"] == "policy.threshold_crossed"
    assert body["id"] == request.event_id
    assert body["rule"] == {"id": rule.rule_id, "name": "bot at 80%"}
    assert body["agent"]["name"] == "bot"
    assert body["policy"]["id"] == policy_of(service)
    figures = body["figures"]
    assert (figures["spent"], figures["held"], figures["limit"], figures["currency"]) == (
        "8.5",
        "0",
        "10",
        "USD",
    )
    assert figures["fraction"] == "0.85" and figures["threshold"] == "0.8"
    assert figures["window_start"] and figures["window_end"]

    charge_from_another_process(service.home.home, "0.5", "0.5")  # 95%, then 100%: still the same window
    settle()
    assert len(receiver.received()) == 1
    [delivery] = service.home.alerts.deliveries()
    assert delivery["state"] == "delivered" and delivery["id"] == body["id"] and delivery["attempts"] == 1
    metrics = service.metrics.render().decode()
    assert 'caracal_alerts_fired_total{type="policy.threshold_crossed"} 1.0' in metrics
    assert 'caracal_alert_deliveries_total{outcome="delivered"} 1.0' in metrics


def test_rules_at_several_thresholds_each_fire_once(service: Service, receiver: Receiver) -> None:
    rules = {
        fraction: service.home.alerts.create(
            name=f"at {fraction}", url=receiver.url, on="threshold", threshold=fraction, agent_id=None
        )
        for fraction in ("0.5", "1")
    }
    counting_holds = service.home.alerts.create(
        name="held", url=receiver.url, on="threshold", threshold="0.9", count_holds=True
    )
    charge_from_another_process(service.home.home, "6")  # 60%: the 0.5 rule only
    [first] = receiver.wait_for()
    assert first.json["rule"]["id"] == rules["0.5"].rule_id
    hold = service.enforcer.reserve("bot", "3.5")  # 60% spent, 95% spent and held
    second = receiver.wait_for(count=2)[1]
    assert second.json["rule"]["id"] == counting_holds.rule_id
    assert second.json["figures"]["held"] == "3.5" and second.json["figures"]["used"] == "9.5"
    service.enforcer.settle(hold.hold_id, [{"resource_type": "tool.calls", "quantity": "4", "cost": "4"}])
    third = receiver.wait_for(count=3)[2]  # 100% spent
    assert third.json["rule"]["id"] == rules["1"].rule_id
    assert third.verifies(rules["1"].secret) and not third.verifies(rules["0.5"].secret)
    settle()
    assert len(receiver.received()) == 3


def test_a_receiver_that_fails_gets_the_event_again_until_it_answers(
    service: Service, receiver: Receiver
) -> None:
    receiver.status = 500
    rule = service.home.alerts.create(name="r", url=receiver.url, on="threshold", threshold="0.5")
    charge_from_another_process(service.home.home, "6")
    receiver.wait_for(count=3)  # tried again with backoff
    [pending] = service.home.alerts.deliveries()
    assert (
        pending["state"] == "pending"
        and pending["last_status"] == 500
        and "HTTP 500" in pending["last_error"]
    )
    receiver.status = 200
    requests = receiver.wait_for(lambda r: True, count=len(receiver.received()) + 1)
    ids = {request.event_id for request in requests}
    assert ids == {pending["id"]}  # the same event, every time
    assert all(request.verifies(rule.secret) for request in requests)
    deadline = time.monotonic() + 30
    while service.home.alerts.deliveries()[0]["state"] != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_suspension_and_over_hold_fire(service: Service, receiver: Receiver) -> None:
    suspended = service.home.alerts.create(name="s", url=receiver.url, on="suspended")
    over = service.home.alerts.create(name="o", url=receiver.url, on="over-hold", format="slack")
    hold = service.enforcer.reserve("bot", "1")
    service.enforcer.settle(hold.hold_id, [{"resource_type": "tool.calls", "quantity": "2", "cost": "2"}])
    [request] = receiver.wait_for()
    assert request.verifies(over.secret)
    assert set(request.json) == {"text"}  # Slack's incoming-webhook body
    assert hold.hold_id in request.json["text"] and "2" in request.json["text"]
    service.home.agents.suspend("bot")
    second = receiver.wait_for(count=2)[1]
    assert second.json["type"] == "agent.suspended" and second.json["agent"]["name"] == "bot"
    assert second.verifies(suspended.secret)
    service.home.agents.activate("bot")
    settle(0.5)
    assert len(receiver.received()) == 2
    service.home.agents.suspend("bot")  # a new suspension: a new event
    third = receiver.wait_for(count=3)[2]
    assert third.json["type"] == "agent.suspended" and third.event_id != second.event_id


def test_rest_api(service: Service, receiver: Receiver) -> None:
    admin = service.keys.ensure_admin_key(service.home.home / "keys" / "admin.key")
    agent_key = service.keys.create("agent", service.home.agents.get("bot").agent_id, "bot")[1]
    with (
        ServerThread(create_app(service)) as server,
        httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {admin}"}) as client,
    ):
        assert client.get(API, headers={"Authorization": f"Bearer {agent_key}"}).status_code == 403
        refused = client.post(
            API, json={"name": "x", "url": receiver.url, "on": "threshold", "threshold": 0.8}
        )
        assert refused.status_code == 400  # a float is refused
        refused = client.post(API, json={"name": "x", "url": "ftp://x", "on": "suspended"})
        assert refused.status_code == 400
        created = client.post(
            API,
            json={
                "name": "bot 80",
                "url": receiver.url,
                "on": "threshold",
                "threshold": "0.8",
                "agent_id": "bot",
            },
        )
        assert created.status_code == 201, created.text
        rule = created.json()
        assert (
            rule["secret"].startswith("whsec_")
            and rule["agent_id"] == service.home.agents.get("bot").agent_id
        )
        listed = client.get(API).json()
        assert [r["id"] for r in listed] == [rule["id"]] and "secret" not in listed[0]
        assert "secret" not in client.get(f"{API}/{rule['id']}").json()
        tested = client.post(f"{API}/{rule['id']}/test")
        assert tested.status_code == 200 and tested.json()["state"] == "delivered"
        [request] = receiver.received()
        assert request.json["type"] == "test" and request.verifies(rule["secret"])
        deliveries = client.get(f"{API}/deliveries").json()
        assert [d["id"] for d in deliveries] == [request.event_id]
        assert client.delete(f"{API}/{rule['id']}").status_code == 200
        assert client.get(f"{API}/{rule['id']}").status_code == 404
        assert client.delete(f"{API}/{rule['id']}").status_code == 404
        assert (
            client.get(f"{API}/deliveries", params={"state": "delivered"}).json()[0]["id"] == request.event_id
        )


@pytest.mark.files_only("tampers with the ledger file")
def test_a_ledger_that_fails_verification_fires(service: Service, receiver: Receiver) -> None:
    rule = service.home.alerts.create(name="tamper", url=receiver.url, on="verification-failed")
    charge_from_another_process(service.home.home, "1", "2", "3")
    ledger = service.home.ledger_path
    lines = ledger.read_bytes().splitlines(keepends=True)
    charges = [i for i, line in enumerate(lines) if b'"cost":"2"' in line]
    assert len(charges) == 1
    lines[charges[0]] = lines[charges[0]].replace(b'"cost":"2"', b'"cost":"0"')
    tampered = ledger.with_name("tampered")
    tampered.write_bytes(b"".join(lines))
    os.replace(tampered, ledger)  # at once: the server's detector must not see a half-written file
    admin = service.keys.ensure_admin_key(service.home.home / "keys" / "admin.key")
    with (
        ServerThread(create_app(service)) as server,
        httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {admin}"}) as client,
    ):
        report = client.post("/api/v1/ledger/verify").json()
        assert report["ok"] is False
        [request] = receiver.wait_for()
        assert request.json["type"] == "ledger.verification_failed" and request.verifies(rule.secret)
        assert request.json["figures"]["location"] == f"event {report['first_bad_event_id']}"
        client.post("/api/v1/ledger/verify")  # the same failure again: no second alert
        settle(0.5)
        assert len(receiver.received()) == 1


DENY = """
import sys
from caracal.exceptions import BudgetExceededError
from caracal.sdk.client import CaracalClient
with CaracalClient(sys.argv[1]) as client:
    for _ in range(int(sys.argv[2])):
        try:
            client.reserve("bot", "50")
        except BudgetExceededError:
            pass
        else:
            raise SystemExit("allowed")
"""


def test_denials_of_an_agent_fire_once_per_hour(service: Service, receiver: Receiver) -> None:
    rule = service.home.alerts.create(
        name="denied", url=receiver.url, on="denied", agent_id=service.home.agents.get("bot").agent_id
    )
    subprocess.run([sys.executable, "-c", DENY, str(service.home.home), "3"], check=True, timeout=120)
    [request] = receiver.wait_for()
    assert request.verifies(rule.secret)
    body = request.json
    assert body["type"] == "agent.denied" and body["agent"]["name"] == "bot"
    assert body["policy"]["id"] == policy_of(service)
    assert body["figures"]["denials"] == 3 and body["figures"]["amount"] == "50"
    subprocess.run([sys.executable, "-c", DENY, str(service.home.home), "2"], check=True, timeout=120)
    settle()
    same_hour = receiver.received(lambda r: r.json["figures"]["hour"] == body["figures"]["hour"])
    assert len(same_hour) == 1  # the same hour, agent and policy: told once (a new hour is a new event)


OVER_HOLD = """
import sys
from caracal.sdk.client import CaracalClient
with CaracalClient(sys.argv[1]) as client:
    hold = client.reserve("bot", "1")
    client.settle(hold, [{"resource_type": "tool.calls", "quantity": "3", "cost": "3"}])
    print(hold.hold_id)
"""


def test_an_over_hold_in_another_process_is_delivered_by_the_server(
    service: Service, receiver: Receiver
) -> None:
    rule = service.home.alerts.create(name="o", url=receiver.url, on="over-hold")
    done = subprocess.run(
        [sys.executable, "-c", OVER_HOLD, str(service.home.home)], check=True, capture_output=True, text=True
    )
    [request] = receiver.wait_for()
    assert request.verifies(rule.secret)
    figures = request.json["figures"]
    assert figures["hold_id"] == done.stdout.strip()
    assert (figures["held"], figures["charged"], figures["over"]) == ("1", "3", "2")
