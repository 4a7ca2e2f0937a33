"""Enforcement trusts only a ledger that checks out: the replay (and every later read) checks ids, the hash
chain and every signed checkpoint, and a ledger that fails is not used to decide budgets.

The tampers are ``verify``'s own (tests/core/test_verify_tamper.py): for each one the enforcer must deny,
naming the same first bad event ``caracal ledger verify`` names.
"""

from __future__ import annotations

import logging
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.enforcement import Enforcer
from caracal.core.ledger import LedgerWriter
from caracal.core.windows import WindowSpec
from caracal.exceptions import CaracalError, LedgerCorruptError, LedgerVerificationError
from caracal.storage.home import EmbeddedHome
from tests.caches import read_sealed
from tests.core.test_verify_tamper import (
    CHECKPOINTS,
    EVENTS,
    LINE_TAMPERS,
    checkpoint_file,
    edited,
    read_lines,
    rewrite_checkpoints,
    rewrite_with_chain,
    verify,
    write_lines,
)
from tests.core.test_verify_tamper import ledger as ledger

TOTAL = WindowSpec("total", "UTC")


def enforcer_on(ledger_path: Path, caracal_home: Path) -> tuple[Enforcer, LedgerWriter]:
    writer = LedgerWriter(ledger_path, checkpoint_interval=0)
    home = EmbeddedHome(caracal_home)
    return Enforcer(writer, home.directory), writer


def spent_home(caracal_home: Path) -> tuple[str, Path]:
    """A home whose agent ``worker`` spent 0.90 of a 1.00 total budget, closed (snapshot saved): the
    agent's id and the snapshot's path."""
    home = EmbeddedHome(caracal_home)
    agent = home.agents.register("worker", "o@example.com").agent_id
    home.policies.create(agent, "1.00", TOTAL, "USD")
    enforcer = Enforcer(home.writer(), home.directory)
    hold = enforcer.reserve(agent, "0.90")
    enforcer.settle(hold.hold_id, [{"resource_type": "r", "quantity": 1, "cost": "0.90"}])
    enforcer.close()
    home.close()
    return agent, enforcer.snapshot_path


@pytest.mark.parametrize("name", sorted(LINE_TAMPERS))
def test_a_tampered_ledger_is_not_trusted_to_decide(ledger: Path, caracal_home: Path, name: str) -> None:
    tamper, first_bad, _kind = LINE_TAMPERS[name]
    # The process is up before the edit (a server, say); its first read of the budgets is a full replay.
    EmbeddedHome(caracal_home).agents.register("worker", "o@example.com")
    enforcer, writer = enforcer_on(ledger, caracal_home)
    try:
        write_lines(ledger, tamper(read_lines(ledger)))
        assert verify(ledger).first_bad_event_id == first_bad
        with pytest.raises(LedgerVerificationError) as caught:
            enforcer.catch_up()
        assert caught.value.first_bad_event_id == first_bad
        assert f"failed verification at event {first_bad}" in str(caught.value)
        assert "caracal ledger verify" in str(caught.value)
        # Every later decision is denied, and nothing is appended.
        size = ledger.stat().st_size
        for read in (lambda: enforcer.check("worker"), lambda: enforcer.status("worker")):
            with pytest.raises(LedgerVerificationError):
                read()
        for write in (
            lambda: enforcer.reserve("worker", "0.01"),
            lambda: enforcer.release("hold-x"),
            lambda: enforcer.expire(),
        ):
            with pytest.raises(CaracalError):
                write()
        assert ledger.stat().st_size == size
    finally:
        writer.close()


def test_an_untampered_ledger_replays_and_keeps_checking(ledger: Path, caracal_home: Path) -> None:
    enforcer, writer = enforcer_on(ledger, caracal_home)
    try:
        state = enforcer.catch_up()
        assert state.last_event_id == EVENTS
        # Another writer appends (and checkpoints) later; the enforcer reads and checks that too.
        with LedgerWriter(ledger, checkpoint_every=0, checkpoint_interval=0) as other:
            other.append_event("agent-1", "tokens", "1", "0.5")
            other.checkpoint()
            other.append_event("agent-1", "tokens", "1", "0.25")
        assert enforcer.catch_up().last_event_id == EVENTS + 2
        enforcer.close()
        snapshot = read_sealed(enforcer.snapshot_path, "budget")
        assert snapshot["tail"]["tree"]["size"] == EVENTS + 2
    finally:
        writer.close()


def test_an_edit_after_the_snapshot_is_caught_from_the_snapshot_on(ledger: Path, caracal_home: Path) -> None:
    """A process resumes from the (genuine) snapshot; the lines after it were edited: the chain kept in
    the snapshot catches the edit without a full replay."""
    enforcer, writer = enforcer_on(ledger, caracal_home)
    enforcer.close()  # snapshot at event EVENTS
    writer.close()
    with LedgerWriter(ledger, checkpoint_every=0, checkpoint_interval=0) as other:
        for _ in range(3):
            other.append_event("agent-1", "tokens", "1", "0.5")
    lines = read_lines(ledger)
    lines[EVENTS] = edited(lines[EVENTS], cost="0.0")  # event EVENTS + 1, right after the snapshot
    write_lines(ledger, lines)
    enforcer, writer = enforcer_on(ledger, caracal_home)
    try:
        assert enforcer.live.tail.last_event_id == EVENTS  # resumed from the snapshot, not replayed
        with pytest.raises(LedgerVerificationError) as caught:
            enforcer.catch_up()
        assert caught.value.first_bad_event_id == EVENTS + 1
    finally:
        writer.close()


def test_a_rewrite_before_the_snapshot_invalidates_it_and_is_caught(ledger: Path, caracal_home: Path) -> None:
    enforcer, writer = enforcer_on(ledger, caracal_home)
    enforcer.close()
    writer.close()
    write_lines(ledger, LINE_TAMPERS["rewrite-and-rechain"][0](read_lines(ledger)))
    # The writer's sealed state remembers the last event's leaf, which commits to every line before it:
    # the rechained rewrite is refused as soon as the writer opens, before any decision.
    with pytest.raises(LedgerCorruptError, match=f"event {EVENTS} no longer has the bytes"):
        enforcer_on(ledger, caracal_home)
    # verify names the first rewritten event (its signed checkpoint no longer matches)
    assert verify(ledger).first_bad_event_id == CHECKPOINTS[0] + 1


@pytest.mark.parametrize("with_checkpoints", [False, True])
def test_another_homes_ledger_dropped_in_is_not_trusted(
    tmp_path: Path, caracal_home: Path, with_checkpoints: bool
) -> None:
    """Home A spent its budget; someone copies home B's ledger (little spend) over A's. A's checkpoints do
    not match B's lines; B's checkpoints (if copied too) are not signed by A's key."""
    agent, _snapshot = spent_home(caracal_home)
    ours = EmbeddedHome(caracal_home)

    theirs = tmp_path / "other" / "ledger.jsonl"
    with LedgerWriter(theirs, signing_key_path=tmp_path / "other-keys" / "checkpoint.key") as other:
        for _ in range(3):
            other.append_event(agent, "r", "1", "0.01")
        other.checkpoint()
    for path in ours.ledger_path.parent.glob("ledger.jsonl*"):
        if path.name in ("ledger.jsonl.budget", "ledger.jsonl.merkle") or (
            with_checkpoints and path.name == "ledger.jsonl.checkpoints"
        ):
            path.unlink()
    shutil.copy(theirs, ours.ledger_path)
    if with_checkpoints:
        shutil.copy(checkpoint_file(theirs), checkpoint_file(ours.ledger_path))

    again = EmbeddedHome(caracal_home)
    try:
        enforcer = Enforcer(again.writer(), again.directory)
        with pytest.raises(CaracalError) as caught:
            enforcer.reserve(agent, "0.50")  # would fit B's spend, not A's
        assert isinstance(caught.value, LedgerVerificationError)
        assert "failed verification" in str(caught.value)
    finally:
        again.close()


def test_a_forged_checkpoint_record_is_not_trusted(ledger: Path, caracal_home: Path) -> None:
    def alter(records: list) -> list:  # type: ignore[type-arg]
        import dataclasses

        return [dataclasses.replace(records[0], root=b"\x01" * 32), *records[1:]]

    rewrite_checkpoints(ledger, alter)
    enforcer, writer = enforcer_on(ledger, caracal_home)
    try:
        with pytest.raises(LedgerVerificationError, match="signature"):
            enforcer.catch_up()
    finally:
        writer.close()


def test_a_forged_snapshot_is_logged_and_ignored(
    caracal_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent, path = spent_home(caracal_home)
    header, _, payload = path.read_bytes().partition(b"\n")
    path.write_bytes(header + b"\n" + payload.replace(b'"0.90"', b'"0.00"'))

    again = EmbeddedHome(caracal_home)
    try:
        with caplog.at_level(logging.WARNING, logger="caracal.enforcement"):
            fresh = Enforcer(again.writer(), again.directory)
        assert any("ignoring the budget snapshot" in r.getMessage() for r in caplog.records)
        decision = fresh.check(agent)
        assert (decision.spent, decision.remaining) == (Decimal("0.90"), Decimal("0.10"))
    finally:
        again.close()


def appended_checkpointed_and_rewritten(ledger: Path) -> None:
    """Another writer appends three events and signs a checkpoint over them; the new lines are then
    rewritten with a recomputed chain (which the chain alone cannot catch): the first one's cost is 0."""
    with LedgerWriter(ledger, checkpoint_every=0, checkpoint_interval=0) as other:
        for _ in range(3):
            other.append_event("agent-1", "tokens", "1", "0.5")
        other.checkpoint()
    write_lines(ledger, rewrite_with_chain(EVENTS + 1)(read_lines(ledger)))


def test_a_checkpoint_written_later_by_another_process_is_checked_too(
    ledger: Path, caracal_home: Path
) -> None:
    """The enforcer is caught up; another process appends, signs, and the lines are rewritten: the new
    checkpoint catches the rewrite."""
    enforcer, writer = enforcer_on(ledger, caracal_home)
    try:
        assert enforcer.catch_up().last_event_id == EVENTS
        appended_checkpointed_and_rewritten(ledger)
        with pytest.raises(LedgerVerificationError) as caught:
            enforcer.catch_up()
        assert caught.value.first_bad_event_id == EVENTS + 1
    finally:
        writer.close()


def test_lines_appended_while_a_step_waits_are_checked_too(
    ledger: Path, caracal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, while a reserve waits for the ledger's lock: the step reads the new lines (they chain) and
    hands them to the budget state, which still checks them against the new checkpoint and refuses."""
    agent = EmbeddedHome(caracal_home).agents.register("worker", "o@example.com").agent_id
    EmbeddedHome(caracal_home).policies.create(agent, "100", TOTAL, "USD")
    enforcer, writer = enforcer_on(ledger, caracal_home)
    try:
        assert enforcer.catch_up().last_event_id == EVENTS
        begin = writer.store.begin
        sizes: list[int] = []

        def appended_while_waiting() -> None:
            monkeypatch.setattr(writer.store, "begin", begin)
            appended_checkpointed_and_rewritten(ledger)
            sizes.append(ledger.stat().st_size)
            begin()

        monkeypatch.setattr(writer.store, "begin", appended_while_waiting)
        with pytest.raises(LedgerVerificationError) as caught:
            enforcer.reserve(agent, "1")
        assert caught.value.first_bad_event_id == EVENTS + 1
        assert [ledger.stat().st_size] == sizes  # nothing appended
        with pytest.raises(LedgerVerificationError):
            enforcer.check(agent)
    finally:
        writer.close()
