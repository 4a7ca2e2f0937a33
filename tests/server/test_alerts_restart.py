"""Nothing lost: a real ``caracal serve`` process fires an alert while the receiver refuses connections,
is killed (SIGKILL) with the alert undelivered, and another crossing happens while no server runs; once
the receiver is up and the server started again, both alerts arrive (the first with the id it had before
the crash), signed with their rules' secrets. On both backends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from caracal.core.windows import parse_window
from caracal.storage.home import EmbeddedHome
from tests.alert_receiver import Receiver
from tests.bot_home import charge_from_another_process
from tests.cli.test_cli_serve import serving


def caracal(*args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "caracal", *args, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fast_alerts(home: Path) -> None:
    config = home / "config.toml"
    text = config.read_text()
    for key, value in (("interval", "0.05"), ("retry_base", "0.05"), ("retry_max", "0.3"), ("timeout", "2")):
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
        assert count == 1, key
    config.write_text(text)


def outbox(home: Path) -> list[dict[str, Any]]:
    opened = EmbeddedHome(home)
    try:
        return opened.alerts.deliveries()
    finally:
        opened.close()


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout  # a bound on waiting, not a timing assertion
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def bot_home(caracal_home: Path) -> None:
    """A home (fast alert settings) whose agent ``bot`` has a 10 USD daily budget; a call costs 1 USD."""
    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True)
    fast_alerts(caracal_home)
    home = EmbeddedHome(caracal_home)
    try:
        bot = home.agents.register("bot", "ops@example.com")
        home.policies.create(bot.agent_id, "10", parse_window("daily"), "USD")
        home.prices.set("tool.calls", "1", "USD")
    finally:
        home.close()


def test_undelivered_alerts_survive_a_killed_server(caracal_home: Path) -> None:
    bot_home(caracal_home)
    receiver = Receiver(up=False)  # refuses connections
    try:
        url = receiver.url
        at_80 = caracal(
            "alert", "create", "--name", "80", "--url", url, "--threshold", "0.8", "--agent", "bot"
        )
        at_100 = caracal("alert", "create", "--name", "100", "--url", url, "--threshold", "1")
        with serving(caracal_home) as (_base_url, process):
            charge_from_another_process(caracal_home, "8.5")
            tried = wait_until(
                lambda: [e for e in outbox(caracal_home) if e["attempts"] >= 2],
                "the server to try the 80% alert twice",
            )
            process.kill()  # SIGKILL: no graceful stop
            process.wait()
        [first] = tried
        assert first["state"] == "pending" and first["rule_id"] == at_80["id"]
        assert "Connect" in first["last_error"]

        charge_from_another_process(caracal_home, "2")  # 105% while no server runs
        receiver.up()
        assert receiver.received() == []
        with serving(caracal_home):
            requests = receiver.wait_for(count=2)
            wait_until(
                lambda: (
                    all(e["state"] == "delivered" for e in outbox(caracal_home))
                    and len(outbox(caracal_home)) == 2
                ),
                "both alerts to be recorded as delivered",
            )
        by_rule = {request.json["rule"]["id"]: request for request in requests}
        assert set(by_rule) == {at_80["id"], at_100["id"]}
        assert by_rule[at_80["id"]].event_id == first["id"]  # the same event, delivered after the restart
        assert by_rule[at_80["id"]].verifies(at_80["secret"])
        assert by_rule[at_100["id"]].verifies(at_100["secret"])
        assert by_rule[at_100["id"]].json["figures"]["spent"] == "10.5"
        assert len({request.event_id for request in receiver.received()}) == 2
    finally:
        receiver.close()


def test_several_server_processes_fire_a_crossing_once(caracal_home: Path) -> None:
    """Two worker processes detect and send; the outbox's transaction and leases let one event through."""
    bot_home(caracal_home)
    receiver = Receiver()
    try:
        rule = caracal("alert", "create", "--name", "80", "--url", receiver.url, "--threshold", "0.8")
        with serving(caracal_home, "--workers", "2"):
            for _ in range(3):  # each crossing step is seen by both workers
                charge_from_another_process(caracal_home, "3")
            receiver.wait_for()
            wait_until(
                lambda: [e for e in outbox(caracal_home) if e["state"] == "delivered"],
                "the delivery to be recorded",
            )
            time.sleep(1.0)  # both workers look many times (every 0.05 s) more
        [request] = receiver.received()
        assert request.verifies(rule["secret"]) and request.json["figures"]["spent"] == "9"
        [entry] = outbox(caracal_home)
        assert entry["state"] == "delivered" and entry["attempts"] == 1
    finally:
        receiver.close()
