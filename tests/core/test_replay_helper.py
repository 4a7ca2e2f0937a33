"""A long replay checks lines a chunk at a time and hashes them in a helper process
(:mod:`caracal.core.leaf_hasher`): it must find exactly what the line-by-line check finds, stop at the same
place, and end in the same state; a helper that dies or cannot split a chunk changes nothing but speed.

The tampers are ``verify``'s own (tests/core/test_verify_tamper.py). Chunks of 7 lines put checkpoints
(40, 80, 119, 120) inside chunks and tampered lines at every position within one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from caracal.core import live, replay
from caracal.core.enforcement import Enforcer
from caracal.core.leaf_hasher import HelperFailed, LeafHasher
from caracal.core.ledger import LedgerWriter
from caracal.core.merkle import MerkleFrontier, leaf_hash
from caracal.core.replay import VerifiedTail
from caracal.core.windows import WindowSpec
from caracal.exceptions import LedgerVerificationError
from caracal.storage.home import EmbeddedHome
from tests.core.test_verify_tamper import (
    EVENTS,
    LINE_TAMPERS,
    read_lines,
    verify,
    write_lines,
)
from tests.core.test_verify_tamper import ledger as ledger


def new_tail(writer: LedgerWriter) -> VerifiedTail:
    return VerifiedTail(writer.store, writer.checkpoints, writer.public_key)


def replay_all(writer: LedgerWriter, *, helper: bool, batch: int = 50) -> tuple[VerifiedTail, list[object]]:
    """A fresh tail over the writer's ledger, polled ``batch`` events at a time to the end; raises what it
    raises. (The writer is opened before any tamper: opening one refuses a broken ledger.)"""
    tail = new_tail(writer)
    events: list[object] = []
    with tail.replaying(helper=helper):
        while True:
            got = tail.poll(batch)
            events += [event.to_bytes() for event in got]
            if len(got) < batch:
                return tail, events


def outcome(writer: LedgerWriter, *, helper: bool) -> tuple[object, ...]:
    """What a replay ends with: the error's first bad event (or the events and position it reached)."""
    try:
        tail, events = replay_all(writer, helper=helper)
    except LedgerVerificationError as exc:
        return ("failed", exc.first_bad_event_id, str(exc))
    return ("ok", events, tail.offset, tail.last_event_id, tail.to_dict())


@pytest.fixture
def writer(ledger: Path) -> LedgerWriter:
    return LedgerWriter(ledger, checkpoint_interval=0)


@pytest.fixture(params=[7, 2000], ids=["chunks-of-7", "one-chunk"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(replay, "_CHUNK", request.param)
    return int(request.param)


def test_a_clean_ledger_replays_the_same_with_and_without_the_helper(
    ledger: Path, writer: LedgerWriter, chunk: int
) -> None:
    without = outcome(writer, helper=False)
    assert without[0] == "ok" and len(without[1]) == EVENTS  # type: ignore[arg-type]
    assert without[1] == read_lines(ledger)  # every line, as written, in order
    assert outcome(writer, helper=True) == without
    # The tree the helper folded is the ledger's: its root is the one verify computes.
    tail, _ = replay_all(writer, helper=True)
    assert MerkleFrontier.from_dict(tail.to_dict()["tree"]).root() == verify(ledger).root


def test_the_helper_does_the_hashing(writer: LedgerWriter, chunk: int) -> None:
    tail = new_tail(writer)
    with tail.replaying(helper=True):
        hasher = tail._hasher
        assert hasher is not None
        assert len(tail.poll(EVENTS)) == EVENTS
        assert tail._hasher is hasher  # used to the end, never dropped on a clean ledger
    assert tail._hasher is None  # stopped when the replay ends
    assert hasher._child.poll() is not None


@pytest.mark.parametrize("name", sorted(LINE_TAMPERS))
def test_a_tampered_ledger_fails_at_the_same_event_with_the_helper(
    ledger: Path, writer: LedgerWriter, chunk: int, name: str
) -> None:
    tamper, first_bad, _kind = LINE_TAMPERS[name]
    write_lines(ledger, tamper(read_lines(ledger)))
    slow = outcome(writer, helper=False)
    fast = outcome(writer, helper=True)
    assert fast == slow
    assert slow[:2] == ("failed", first_bad)


def test_a_tail_stopped_by_a_bad_line_stands_just_before_it(
    ledger: Path, writer: LedgerWriter, chunk: int
) -> None:
    lines = read_lines(ledger)
    lines[52] = lines[52].replace(b'"cost":"', b'"cost":"9', 1)  # event 53 edited: 54 no longer chains
    write_lines(ledger, lines)
    tail = new_tail(writer)
    with tail.replaying(helper=True), pytest.raises(LedgerVerificationError) as caught:
        tail.poll(EVENTS)
    assert caught.value.first_bad_event_id == 53
    assert tail.last_event_id == 53  # 54's chain names 53: the tail read 53, not 54
    assert tail.offset == sum(len(line) + 1 for line in lines[:53])


def test_a_helper_that_dies_mid_replay_changes_nothing(writer: LedgerWriter, chunk: int) -> None:
    expected = outcome(writer, helper=False)
    tail = new_tail(writer)
    with tail.replaying(helper=True):
        first = tail.poll(30)
        assert tail._hasher is not None
        tail._hasher._child.kill()
        tail._hasher._child.wait()
        rest = tail.poll(EVENTS)
        assert tail._hasher is None  # dropped: the rest was hashed here
    events = [event.to_bytes() for event in first + rest]
    assert ("ok", events, tail.offset, tail.last_event_id, tail.to_dict()) == expected


def test_the_helper_returns_what_hashing_here_gives() -> None:
    lines = [b'{"n":%d}' % n for n in range(100)]
    leaves = [hashlib.sha256(b"\x00" + line).digest() for line in lines]
    start = MerkleFrontier()
    start.extend(leaves[:13])
    hasher = LeafHasher(start)
    try:
        hasher.submit(lines[13:60], [20, 59, 60])
        got, roots, tree = hasher.result()
        assert got == leaves[13:60]
        for size, root in zip([20, 59, 60], roots, strict=True):
            expected = MerkleFrontier()
            expected.extend(leaves[:size])
            assert root == expected.root()
        assert tree.size == 60 and tree.root() == roots[-1]
        # A chunk whose bytes do not split into its lines (a database row holding a newline): refused,
        # and the caller goes on without it.
        hasher.submit([b"one\ntwo"], [])
        with pytest.raises(HelperFailed):
            hasher.result()
    finally:
        hasher.close()
    with pytest.raises(HelperFailed):
        hasher.submit(lines[60:], [])
        hasher.result()
    assert leaf_hash(lines[0]) == leaves[0]


def test_opening_a_home_with_a_long_ledger_uses_the_helper_and_gets_the_same_budgets(
    caracal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the enforcer, as a process opening the home cold: a snapshot saved from a replay with the
    helper equals one saved from a replay without (holds, keyed charges, plain charges, releases)."""
    home = EmbeddedHome(caracal_home)
    agent = home.agents.register("worker", "o@example.com").agent_id
    home.policies.create(agent, "100.00", WindowSpec("total", "UTC"), "USD")
    enforcer = Enforcer(home.writer(), home.directory)
    for n in range(40):
        hold = enforcer.reserve(agent, "0.10")
        enforcer.settle(hold.hold_id, [{"resource_type": "r", "quantity": 1, "cost": f"0.0{n % 10}"}])
    enforcer.reserve(agent, "0.25")  # left open
    enforcer.close()
    home.close()
    snapshot = enforcer.snapshot_path
    assert snapshot is not None
    monkeypatch.setattr(live, "REPLAY_LOCK_BYTES", 0)
    monkeypatch.setattr(replay, "_CHUNK", 9)
    started: list[int] = []
    original = LeafHasher.__init__

    def counting(self: LeafHasher, tree: MerkleFrontier) -> None:
        started.append(tree.size)
        original(self, tree)

    monkeypatch.setattr(LeafHasher, "__init__", counting)
    states = {}
    for helper_bytes in (1 << 40, 0):  # never, then always
        monkeypatch.setattr(live, "HELPER_BYTES", helper_bytes)
        home = EmbeddedHome(caracal_home)
        snapshot.unlink()
        enforcer = Enforcer(home.writer(), home.directory)
        states[helper_bytes] = enforcer.live.state.to_snapshot()
        status = enforcer.status("worker")
        enforcer.close()
        home.close()
    assert started == [0]  # the second open replayed with the helper, from the start
    assert states[0] == states[1 << 40]
    assert states[0]["holds"] and states[0]["last_event_id"] == 40 * 3 + 1
    assert status is not None
