"""The outbox's own promises, on both backends: several OS processes that see the same crossing enqueue
one event; a leased entry is not sent twice until its lease lapses; an entry that keeps failing ends
``failed`` and stays listed; a deleted rule's pending event fails visibly; delivered entries are pruned to
``keep_delivered``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from caracal.core.windows import parse_window
from caracal.exceptions import RegistryError
from caracal.server.alerting import Sender
from caracal.storage.home import EmbeddedHome
from tests.alert_receiver import Receiver, receiving

DETECT = """
import sys
from caracal.server.alerting import Detector
from caracal.storage.home import EmbeddedHome
home = EmbeddedHome(sys.argv[1])
enforcer = home.enforcer()
try:
    sys.stdin.readline()  # all processes start detecting together
    print(Detector(home, enforcer).run_once())
finally:
    enforcer.close()
    home.close()
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


@pytest.fixture
def home(tmp_path: Path, storage: str) -> Iterator[EmbeddedHome]:
    root = tmp_path / "home"
    root.mkdir()
    (root / "config.toml").write_text(
        "[alerts]\nretry_base = 0.01\nretry_max = 0.01\nmax_attempts = 3\nkeep_delivered = 2\n"
    )
    opened = EmbeddedHome(root)
    try:
        yield opened
    finally:
        opened.close()


def test_processes_that_see_the_same_crossing_enqueue_it_once(home: EmbeddedHome) -> None:
    bot = home.agents.register("bot", "ops@example.com")
    home.policies.create(bot.agent_id, "10", parse_window("daily"), "USD")
    enforcer = home.enforcer()
    try:
        hold = enforcer.reserve("bot", "9")
        enforcer.settle(hold.hold_id, [{"resource_type": "tool.calls", "quantity": "9", "cost": "9"}])
    finally:
        enforcer.close()
    for fraction in ("0.5", "0.8"):
        home.alerts.create(name=fraction, url="http://127.0.0.1:9/", on="threshold", threshold=fraction)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", DETECT, str(home.home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(1.0)  # let them open the home (not an assertion: a head start for the race)
    outputs = [process.communicate("go\n", timeout=120)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sum(int(output) for output in outputs) == 2  # one event per rule, whoever enqueued it
    entries = home.alerts.deliveries()
    assert len(entries) == 2 and len({entry["id"] for entry in entries}) == 2


def test_a_leased_entry_waits_for_its_lease(home: EmbeddedHome) -> None:
    rule = home.alerts.create(name="t", url="http://127.0.0.1:9/", on="suspended")
    event = home.alerts.test(rule.rule_id)
    [(entry, found)] = home.alerts.claim("sender-a", lease=60.0)
    assert entry["id"] == event.event_id and found == rule
    assert home.alerts.claim("sender-b", lease=60.0) == []  # leased to a
    home.alerts.finish(
        event.event_id, delivered=False, status=None, error="boom", retry_base=0.0, retry_max=0.0,
        max_attempts=10, keep_delivered=10,
    )  # fmt: skip
    [(again, _)] = home.alerts.claim("sender-b", lease=0.01, margin=0)  # the lease ended with the attempt
    assert again["attempts"] == 1
    time.sleep(0.05)
    [(lapsed, _)] = home.alerts.claim("sender-c", lease=60.0)  # b crashed: its lease lapsed
    assert lapsed["id"] == event.event_id


def test_an_entry_that_keeps_failing_is_kept_as_failed(home: EmbeddedHome, closed_port: int) -> None:
    rule = home.alerts.create(name="down", url=f"http://127.0.0.1:{closed_port}/", on="suspended")
    event = home.alerts.test(rule.rule_id)
    sender = Sender(home)
    try:
        deadline = time.monotonic() + 30
        while home.alerts.delivery(event.event_id)["state"] == "pending":
            assert time.monotonic() < deadline
            sender.deliver_due()
            time.sleep(0.02)
    finally:
        sender.close()
    entry = home.alerts.delivery(event.event_id)
    assert entry["state"] == "failed" and entry["attempts"] == 3 and "Connect" in entry["last_error"]
    assert [e["id"] for e in home.alerts.deliveries(state="failed")] == [event.event_id]
    assert home.alerts.claim("anyone", lease=1.0, only=event.event_id) == []  # never sent again by itself

    retried = home.alerts.retry(event.event_id)  # an operator fixed the receiver
    assert retried["state"] == "pending" and retried["attempts"] == 0
    [(entry_again, _)] = home.alerts.claim("anyone", lease=1.0)
    assert entry_again["id"] == event.event_id


def test_a_deleted_rules_pending_event_fails_visibly(home: EmbeddedHome, receiver: Receiver) -> None:
    rule = home.alerts.create(name="gone", url=receiver.url, on="suspended")
    event = home.alerts.test(rule.rule_id)
    home.alerts.delete(rule.rule_id)
    sender = Sender(home)
    try:
        sender.deliver_due()
    finally:
        sender.close()
    entry = home.alerts.delivery(event.event_id)
    assert entry["state"] == "failed" and "deleted" in entry["last_error"]
    assert receiver.received() == []


def test_delivered_entries_are_pruned_to_keep_delivered(home: EmbeddedHome, receiver: Receiver) -> None:
    rule = home.alerts.create(name="t", url=receiver.url, on="suspended")
    sender = Sender(home)
    try:
        events = []
        for _ in range(4):
            events.append(home.alerts.test(rule.rule_id))
            sender.deliver_due()
    finally:
        sender.close()
    assert len(receiver.received()) == 4
    kept = home.alerts.deliveries()
    assert [entry["id"] for entry in kept] == [events[3].event_id, events[2].event_id]
    assert all(entry["state"] == "delivered" for entry in kept)


def test_an_entry_edited_to_another_url_is_never_signed_and_sent(
    home: EmbeddedHome, receiver: Receiver
) -> None:
    """Whoever can write the outbox must not make Caracal sign a body with a rule's secret and send it to
    an address of their choosing: the sender posts to the rule's URL only, and refuses an entry whose URL
    is not its rule's."""
    rule = home.alerts.create(name="t", url=receiver.url, on="suspended")
    elsewhere = Receiver()
    try:
        event = home.alerts.test(rule.rule_id)
        with home.alerts.outbox.transaction() as document:
            document["entries"][event.event_id]["url"] = elsewhere.url
        sender = Sender(home)
        try:
            sender.deliver_due()
        finally:
            sender.close()
        assert elsewhere.received() == [] and receiver.received() == []
    finally:
        elsewhere.close()
    entry = home.alerts.delivery(event.event_id)
    assert entry["state"] == "failed" and "the outbox was edited" in entry["last_error"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda entry: entry.pop("state"),
        lambda entry: entry.update(attempts="3"),
        lambda entry: entry.update(url=None),
        lambda entry: entry.update(body=[]),
        lambda entry: entry.update(id="other"),
    ],
    ids=["no-state", "text-attempts", "no-url", "list-body", "id-not-key"],
)
def test_a_malformed_outbox_entry_is_refused_by_name(home: EmbeddedHome, edit: object) -> None:
    rule = home.alerts.create(name="t", url="http://127.0.0.1:9/", on="suspended")
    event = home.alerts.test(rule.rule_id)
    with home.alerts.outbox.transaction() as document:
        edit(document["entries"][event.event_id])  # type: ignore[operator]
    for read in (home.alerts.deliveries, lambda: home.alerts.claim("anyone", lease=1.0), home.alerts.fired):
        with pytest.raises(RegistryError, match=f"entry '{event.event_id}'") as caught:
            read()
        assert home.alerts.outbox.label in str(caught.value)
