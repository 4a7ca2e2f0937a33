"""``caracal alert ...`` as a user runs it: a real process per command, on a home without a server, with a
real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.alert_receiver import Receiver, receiving


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caracal", *args], capture_output=True, text=True, timeout=120
    )


def ok(*args: str) -> Any:
    done = run(*args, "--json")
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # e.g. click's "--format is used more than once"
    return json.loads(done.stdout)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


@pytest.fixture
def home(caracal_home: Path) -> Path:
    assert run("init").returncode == 0
    assert run("agent", "register", "--name", "bot", "--owner", "ops@example.com").returncode == 0
    return caracal_home


def test_create_list_test_delete(home: Path, receiver: Receiver) -> None:
    rule = ok(
        "alert", "create", "--name", "bot 80%", "--url", receiver.url, "--threshold", "0.8", "--agent", "bot"
    )
    assert rule["on"] == "threshold" and rule["threshold"] == "0.8" and rule["secret"].startswith("whsec_")
    other = ok(
        "alert",
        "create",
        "--name",
        "suspended",
        "--url",
        receiver.url,
        "--on",
        "suspended",
        "--format",
        "slack",
    )
    listed = ok("alert", "list")
    assert [r["id"] for r in listed] == [rule["id"], other["id"]]
    assert all("secret" not in r for r in listed)
    table = run("alert", "list").stdout
    assert (
        "bot 80%" in table
        and "threshold 0.8" in table
        and "agent bot" in table
        and rule["secret"] not in table
    )

    done = run("alert", "test", rule["id"])
    assert done.returncode == 0, done.stderr
    assert "delivered test event" in done.stdout
    [request] = receiver.received()
    assert request.json["type"] == "test" and request.json["rule"]["id"] == rule["id"]
    assert request.verifies(rule["secret"]) and not request.verifies(other["secret"])

    ok("alert", "test", other["id"])
    slack = receiver.received()[1]
    assert "text" in slack.json and slack.verifies(other["secret"])

    deliveries = ok("alert", "deliveries")
    assert [d["state"] for d in deliveries] == ["delivered", "delivered"]
    assert {d["id"] for d in deliveries} == {request.event_id, slack.event_id}

    delivered = run("alert", "retry", request.event_id)
    assert delivered.returncode == 1 and "was delivered" in delivered.stderr

    deleted = ok("alert", "delete", rule["id"])
    assert deleted["deleted"] is True
    assert [r["id"] for r in ok("alert", "list")] == [other["id"]]
    missing = run("alert", "delete", rule["id"])
    assert missing.returncode == 1 and "no alert rule" in missing.stderr


def test_a_test_that_cannot_be_delivered_stays_in_the_outbox(home: Path, closed_port: int) -> None:
    rule = ok(
        "alert", "create", "--name", "down", "--url", f"http://127.0.0.1:{closed_port}/", "--on", "denied"
    )
    done = run("alert", "test", rule["id"])
    assert done.returncode == 1
    assert "not delivered" in done.stderr and "caracal serve" in done.stderr
    [entry] = ok("alert", "deliveries", "--state", "pending")
    assert entry["type"] == "test" and entry["attempts"] == 1 and "Connect" in entry["last_error"]
    assert "pending" in run("alert", "deliveries").stdout
    again = ok("alert", "retry", entry["id"])
    assert again["state"] == "pending" and again["id"] == entry["id"]
    assert run("alert", "retry", "evt_nope").returncode == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--threshold", "0"), 1, "more than 0"),
        (("--threshold", "eighty"), 1, "decimal"),
        (("--threshold", "0.8", "--on", "denied"), 2, "either"),
        ((), 2, "either"),
        (("--on", "suspended", "--count-holds"), 2, "--threshold"),
        (("--threshold", "0.8", "--agent", "nobody"), 1, "nobody"),
        (("--threshold", "0.8", "--policy", "pol-missing"), 1, "pol-missing"),
    ],
)
def test_bad_rules_are_refused_and_change_nothing(
    home: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    done = run("alert", "create", "--name", "x", "--url", "http://127.0.0.1:9/", *args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert ok("alert", "list") == []


def test_a_bad_url_is_refused(home: Path) -> None:
    done = run("alert", "create", "--name", "x", "--url", "ftp://example.com/", "--on", "suspended")
    assert done.returncode == 1 and "http://" in done.stderr
    assert ok("alert", "list") == []
