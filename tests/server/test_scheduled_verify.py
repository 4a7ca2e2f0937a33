"""Scheduled verification (``[ledger] verify_interval``): a real ``caracal serve`` finds an edit of a line
it read long ago, which enforcement never reads again, by verifying the whole ledger on its schedule; it
records the result, fires ``ledger.verification_failed`` and denies every decision from then on, in every
worker. On both backends; the ledger is edited as an attacker with write access to the storage would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from caracal.server.service import Service
from caracal.server.verification import ScheduledVerification, sealed_record
from caracal.storage.home import EmbeddedHome
from tests.alert_receiver import Receiver
from tests.bot_home import charge_from_another_process
from tests.cli.test_cli_serve import serving
from tests.server.test_alerts_restart import bot_home, caracal, wait_until


def configure(home: Path, interval: str) -> None:
    config = home / "config.toml"
    text, count = re.subn(
        r"^verify_interval = .*$",
        f"verify_interval = {interval}",
        config.read_text(),
        count=1,
        flags=re.MULTILINE,
    )
    assert count == 1
    config.write_text(text)


def edit_line(home: Path, storage: str, event_id: int) -> None:
    """Rename the resource of event ``event_id`` (same length, still valid JSON: nothing a running process
    reads again notices it; only its successor's ``prev_hash`` and the checkpoints no longer match)."""
    if storage == "files":
        ledger = home / "data" / "ledger.jsonl"
        lines = ledger.read_bytes().split(b"\n")
        assert b'"tool.calls"' in lines[event_id - 1]
        lines[event_id - 1] = lines[event_id - 1].replace(b'"tool.calls"', b'"tool.callz"')
        with open(ledger, "r+b") as out:  # in place: the inode and every line's offset stay
            out.write(b"\n".join(lines))
        return
    import psycopg

    from caracal.config import load_settings, storage_url

    url = storage_url(load_settings(home))
    assert url is not None
    with psycopg.connect(url, autocommit=True) as conn:
        line = bytes(
            conn.execute("SELECT line FROM caracal_ledger WHERE event_id = %s", (event_id,)).fetchone()[0]
        )
        assert b'"tool.calls"' in line
        conn.execute("ALTER TABLE caracal_ledger DISABLE TRIGGER caracal_ledger_append_only")
        conn.execute(
            "UPDATE caracal_ledger SET line = %s WHERE event_id = %s",
            (line.replace(b'"tool.calls"', b'"tool.callz"'), event_id),
        )
        conn.execute("ALTER TABLE caracal_ledger ENABLE TRIGGER caracal_ledger_append_only")


def last_verify(home: Path) -> dict[str, Any] | None:
    opened = EmbeddedHome(home)
    try:
        found = opened.dashboard.read().get("last_verify")
        return found if isinstance(found, dict) else None
    finally:
        opened.close()


def charge(base_url: str, admin: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/api/v1/events",
        json={"agent_id": "bot", "resource_type": "tool.calls", "quantity": "1"},
        headers={"authorization": f"Bearer {admin}"},
        timeout=30,
    )


def test_a_scheduled_verification_finds_an_old_edit_and_stops_enforcement(
    caracal_home: Path, storage: str
) -> None:
    bot_home(caracal_home)
    configure(caracal_home, "1")
    charge_from_another_process(caracal_home, "1", "1", "1")
    receiver = Receiver()
    try:
        rule = caracal(
            "alert", "create", "--name", "tamper", "--url", receiver.url, "--on", "verification-failed"
        )
        admin = (caracal_home / "keys" / "admin.key").read_text().strip()
        with serving(caracal_home) as (base_url, _process):
            assert charge(base_url, admin).status_code == 201
            first = wait_until(lambda: last_verify(caracal_home), "the first scheduled verification")
            assert first["ok"] is True and first["trigger"] == "schedule"
            assert first["events"] >= 4

            edit_line(caracal_home, storage, 2)
            failed = wait_until(
                lambda: (found := last_verify(caracal_home)) is not None and found["ok"] is False and found,
                "a scheduled verification that finds the edit",
            )
            assert failed["first_bad_event_id"] == 2 and failed["trigger"] == "schedule"
            [request] = receiver.wait_for()
            assert request.verifies(rule["secret"])
            assert request.json["type"] == "ledger.verification_failed"
            denied = charge(base_url, admin)
            assert denied.status_code >= 400
            assert "failed verification at event 2" in denied.json()["error"]["message"], denied.text
    finally:
        receiver.close()
    # The edit is what `caracal ledger verify` names too.
    done = subprocess.run(
        [sys.executable, "-m", "caracal", "ledger", "verify", "--json"], capture_output=True, text=True
    )
    assert done.returncode == 3 and json.loads(done.stdout)["first_bad_event_id"] == 2


def trusted_by_worker(base_url: str, admin: str) -> dict[str, str]:
    """``caracal_ledger_trusted`` of each worker, from ``/metrics`` scraped on fresh connections until both
    answered: ``{pid: value}``."""
    seen: dict[str, str] = {}
    for _ in range(200):
        text = httpx.get(f"{base_url}/metrics", headers={"authorization": f"Bearer {admin}"}).text
        pid = re.search(r'^caracal_server_process\{pid="(\d+)"\}', text, re.MULTILINE)
        value = re.search(r"^caracal_ledger_trusted (\S+)$", text, re.MULTILINE)
        assert pid is not None and value is not None, text
        seen[pid.group(1)] = value.group(1)
        if len(seen) == 2:
            break
    return seen


def test_a_failed_verification_stops_every_worker(caracal_home: Path, storage: str) -> None:
    """One worker verifies (asked through the API; the schedule's hour is far off); the other learns of the
    failure from the shared result and denies too."""
    bot_home(caracal_home)
    charge_from_another_process(caracal_home, "1", "1", "1")
    admin = (caracal_home / "keys" / "admin.key").read_text().strip()
    with serving(caracal_home, "--workers", "2") as (base_url, _process):
        assert set(trusted_by_worker(base_url, admin).values()) == {"1.0"}
        edit_line(caracal_home, storage, 2)
        answer = httpx.post(
            f"{base_url}/api/v1/ledger/verify", headers={"authorization": f"Bearer {admin}"}, timeout=60
        )
        assert answer.status_code == 200 and answer.json()["first_bad_event_id"] == 2
        wait_until(
            lambda: set(trusted_by_worker(base_url, admin).values()) == {"0.0"},
            "both workers to stop trusting the ledger",
        )
        for _ in range(6):  # whichever worker takes it
            denied = charge(base_url, admin)
            assert "failed verification at event 2" in denied.json()["error"]["message"], denied.text
        with httpx.Client(base_url=base_url) as browser:  # the dashboard still shows the ledger's page
            assert browser.post("/ui/login", data={"key": admin}).status_code in (200, 303)
            page = browser.get("/ui/ledger")
            assert page.status_code == 200 and "Last verification: FAILED" in page.text
            assert "first bad event 2" in page.text


def test_a_restarted_server_verifies_at_once_when_the_last_verification_failed(
    caracal_home: Path, storage: str
) -> None:
    bot_home(caracal_home)
    configure(caracal_home, "3600")
    charge_from_another_process(caracal_home, "1", "1", "1")
    edit_line(caracal_home, storage, 2)
    admin = (caracal_home / "keys" / "admin.key").read_text().strip()
    with serving(caracal_home) as (base_url, _process):
        # Started from a genuine snapshot, the server does not read event 2 again; the hour is not over.
        assert charge(base_url, admin).status_code == 201
        answer = httpx.post(
            f"{base_url}/api/v1/ledger/verify", headers={"authorization": f"Bearer {admin}"}, timeout=60
        )
        assert answer.status_code == 200 and answer.json()["ok"] is False
        # A verification that found a problem stops enforcement, whoever asked for it.
        assert "failed verification at event 2" in charge(base_url, admin).json()["error"]["message"]
    assert last_verify(caracal_home)["trigger"] == "request"  # type: ignore[index]
    with serving(caracal_home) as (base_url, _process):
        wait_until(
            lambda: charge(base_url, admin).status_code >= 400,
            "the restarted server to verify again and deny",
        )
        again = last_verify(caracal_home)
        assert again is not None and again["trigger"] == "schedule" and again["ok"] is False


def test_an_edited_claim_or_date_does_not_postpone_verification(caracal_home: Path, storage: str) -> None:
    """The shared document is storage an attacker may edit: a claim held until 2100 and a last
    verification dated in 2100 would postpone every scheduled verification forever if trusted."""
    bot_home(caracal_home)
    configure(caracal_home, "1")
    charge_from_another_process(caracal_home, "1", "1")
    opened = EmbeddedHome(caracal_home)
    try:
        with opened.dashboard.transaction() as document:
            document["verify_claim"] = {"owner": "attacker", "until": "2100-01-01T00:00:00+00:00"}
            document["last_verify"] = {
                "ok": True,
                "events": 2,
                "first_bad_event_id": None,
                "problems": [],
                "started": "2100-01-01T00:00:00+00:00",
                "finished": "2100-01-01T00:00:01+00:00",
                "trigger": "schedule",
            }
    finally:
        opened.close()
    edit_line(caracal_home, storage, 1)
    admin = (caracal_home / "keys" / "admin.key").read_text().strip()
    with serving(caracal_home) as (base_url, _process):
        wait_until(
            lambda: charge(base_url, admin).status_code >= 400,
            "a verification despite the forged claim and date",
        )
    found = last_verify(caracal_home)
    assert found is not None and found["ok"] is False and found["started"] < "2100"


def test_verify_interval_0_turns_the_schedule_off(caracal_home: Path, storage: str) -> None:
    bot_home(caracal_home)
    configure(caracal_home, "0")
    charge_from_another_process(caracal_home, "1")
    admin = (caracal_home / "keys" / "admin.key").read_text().strip()
    with serving(caracal_home) as (base_url, _process):
        edit_line(caracal_home, storage, 1)
        time.sleep(3)  # several ticks of a schedule that would run (interval 1 s elsewhere)
        assert charge(base_url, admin).status_code == 201
    assert last_verify(caracal_home) is None


def test_a_claim_holds_while_its_process_lives_and_lapses_after(tmp_path: Path, storage: str) -> None:
    """The run is claimed in the shared document: another process's live claim (renewed within the last
    two minutes) keeps this one from verifying; a claim whose process stopped renewing it lapses."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[ledger]\nverify_interval = 0\n")  # no schedule thread: driven here
    with Service(home) as service:
        schedule = ScheduledVerification(service, 0.001)
        now = service.home.now()
        for until, runs in ((now + timedelta(seconds=60), False), (now - timedelta(seconds=1), True)):
            with service.home.dashboard.transaction() as document:
                claim = {"owner": "another process", "until": until.isoformat()}
                document["verify_claim"] = sealed_record(service, claim)  # as that process sealed it
            time.sleep(0.01)  # past the 1 ms interval since the schedule began
            assert schedule.run_once() is runs
        found = service.home.dashboard.read()
        assert found["last_verify"]["ok"] is True and found["last_verify"]["trigger"] == "schedule"
        assert "verify_claim" not in found  # released when the run ended
        assert service.enforcer.distrusted is None


def test_a_forged_result_stops_nothing(tmp_path: Path, storage: str) -> None:
    """A failed verification written into the shared document by hand (unsealed, or with a seal that does
    not match) is not adopted: it would otherwise let anyone who can edit the storage stop enforcement."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[ledger]\nverify_interval = 0\n")
    with Service(home) as service:
        schedule = ScheduledVerification(service, 3600)
        forged = {
            "ok": False,
            "events": 1,
            "first_bad_event_id": 1,
            "problems": ["forged"],
            "started": service.home.now().isoformat(),
            "finished": service.home.now().isoformat(),
            "trigger": "schedule",
        }
        for record in (forged, {**forged, "seal": "0" * 64}):
            with service.home.dashboard.transaction() as document:
                document["last_verify"] = record
            assert schedule.run_once() is False  # not due: the hour since this process started is not over
            assert service.enforcer.distrusted is None
        # The same failure, sealed as a server seals it, is adopted.
        with service.home.dashboard.transaction() as document:
            document["last_verify"] = sealed_record(service, forged)
        schedule.run_once()
        assert service.enforcer.distrusted is not None
        assert "forged" in str(service.enforcer.distrusted)
