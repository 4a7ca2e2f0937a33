"""A long replay checks lines a chunk at a time, and a helper process reads and hashes them
(:mod:`caracal.core.replay_helper`): it must find exactly what the line-by-line check finds, stop at the
same place, and end in the same state; a helper that dies, cannot start or stops early changes nothing but
speed.

The tampers are ``verify``'s own (tests/core/test_verify_tamper.py). Chunks of 7 lines put checkpoints
(40, 80, 119, 120) inside chunks, split the helper's chunks across polls, and put tampered lines at every
position within one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caracal.config import Settings
from caracal.core import live, replay
from caracal.core.enforcement import Enforcer
from caracal.core.ledger import LedgerWriter
from caracal.core.merkle import MerkleFrontier
from caracal.core.replay import VerifiedTail
from caracal.core.replay_helper import HelperFailed, LineStream
from caracal.core.windows import WindowSpec
from caracal.exceptions import LedgerVerificationError
from caracal.storage.backends import open_backend
from caracal.storage.home import EmbeddedHome
from tests.core.test_replay_once import long_home
from tests.core.test_verify_tamper import (
    EVENTS,
    LINE_TAMPERS,
    read_lines,
    verify,
    write_lines,
)
from tests.core.test_verify_tamper import ledger as ledger
from tests.pg import initialized_database


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


def test_the_helper_reads_and_hashes_the_lines(writer: LedgerWriter, chunk: int) -> None:
    tail = new_tail(writer)
    with tail.replaying(helper=True):
        assert len(tail.poll(EVENTS)) == EVENTS
        stream = tail._stream
        assert stream is not None and stream.position == tail.offset  # every line came through it
    assert tail._stream is None  # stopped when the replay ends
    assert stream._child.poll() is not None


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


@pytest.fixture
def long_ledger(tmp_path: Path) -> LedgerWriter:
    """6,000 events (about 1.5 MB: more than the helper's pipe holds), a checkpoint every 500."""
    writer = LedgerWriter(tmp_path / "ledger.jsonl", checkpoint_every=500, checkpoint_interval=0)
    for n in range(12):
        writer.append_events(
            [{"agent_id": f"agent-{n % 3}", "resource_type": "r", "quantity": "1", "cost": "0.01"}] * 500
        )
    return writer


def test_a_helper_killed_mid_replay_changes_nothing(
    long_ledger: LedgerWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "_CHUNK", 100)
    expected = outcome(long_ledger, helper=False)
    tail = new_tail(long_ledger)
    with tail.replaying(helper=True):
        first = tail.poll(150)
        stream = tail._stream
        assert stream is not None
        stream._child.kill()
        stream._child.wait()
        rest = tail.poll(10_000)
        assert tail._stream is None  # dropped: the lines it had not sent were read here
        assert stream.position < tail.offset
    events = [event.to_bytes() for event in first + rest]
    assert len(events) == 6000
    assert ("ok", events, tail.offset, tail.last_event_id, tail.to_dict()) == expected


def test_a_helper_that_cannot_read_changes_nothing(
    writer: LedgerWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source the helper cannot use (here: a file that is not there) ends its stream at once."""
    expected = outcome(writer, helper=False)
    monkeypatch.setattr(
        type(writer.store),
        "line_source",
        lambda self: ("caracal.core.filestore:stream_lines", {"path": "/nonexistent/ledger.jsonl"}),
    )
    assert outcome(writer, helper=True) == expected
    monkeypatch.setattr(type(writer.store), "line_source", lambda self: ("os:system", {}))  # refused
    assert outcome(writer, helper=True) == expected


def test_the_stream_sends_what_hashing_here_gives(long_ledger: LedgerWriter) -> None:
    lines = [line for _, line in long_ledger.store.iter_lines(0)]
    leaves = [hashlib.sha256(b"\x00" + line).digest() for line in lines]
    start = MerkleFrontier()
    start.extend(leaves[:13])
    after = sum(len(line) + 1 for line in lines[:13])
    source = long_ledger.store.line_source()
    stream = LineStream(
        source, after, long_ledger.store.end(), start, [20, 2000, 2001, 9999], ids=False, chunk=997
    )
    got: list[bytes] = []
    roots: dict[int, bytes] = {}
    try:
        while (chunk := stream.next_chunk()) is not None:
            assert chunk.tree is not None and chunk.tree.size == 13 + len(got) + len(chunk.lines)
            assert chunk.lines == lines[13 + len(got) : 13 + len(got) + len(chunk.lines)]
            assert chunk.ends[-1] == sum(len(line) + 1 for line in lines[: 13 + len(got) + len(chunk.lines)])
            got += chunk.leaves
            roots.update(chunk.roots)
    finally:
        stream.close()
    assert got == leaves[13:] and stream.stopped is None
    assert sorted(roots) == [20, 2000, 2001]  # 9999 is beyond the ledger
    for size, root in roots.items():
        expected = MerkleFrontier()
        expected.extend(leaves[:size])
        assert root == expected.root()
    # A stream whose helper is gone fails loudly, never with made-up lines.
    stream = LineStream(source, 0, long_ledger.store.end(), MerkleFrontier(), [], ids=False, chunk=50)
    stream._child.kill()
    with pytest.raises(HelperFailed):
        while stream.next_chunk() is not None:
            pass
    stream.close()


def test_opening_a_home_with_a_long_ledger_uses_the_helper_and_gets_the_same_budgets(
    caracal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the enforcer, as a process opening the home cold: a snapshot saved from a replay with the
    helper equals one saved from a replay without (holds, charges against holds, releases)."""
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
    original = LineStream.__init__

    def counting(self: LineStream, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        started.append(self.position)

    monkeypatch.setattr(LineStream, "__init__", counting)
    states = {}
    for helper_bytes in (1 << 40, 0):  # never, then always
        monkeypatch.setattr(live, "HELPER_BYTES", helper_bytes)
        home = EmbeddedHome(caracal_home)
        snapshot.unlink()
        enforcer = Enforcer(home.writer(), home.directory)
        states[helper_bytes] = enforcer.live.state.to_snapshot()
        enforcer.close()
        home.close()
    assert started == [0]  # the second open replayed with the helper, from the start
    assert states[0] == states[1 << 40]
    assert states[0]["holds"] and states[0]["last_event_id"] == 40 * 3 + 1


@pytest.fixture
def database_ledger(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[LedgerWriter, str]:
    """3,000 events on a fresh PostgreSQL schema, a checkpoint every 500: the writer and the URL."""
    url = initialized_database(request)
    backend = open_backend(tmp_path, Settings(), url)
    request.addfinalizer(backend.close)
    store = backend.ledger_store(lock_timeout=10, backup_count=0, backup_min_interval=0)
    key = tmp_path / "checkpoint.key"
    writer = LedgerWriter(store, signing_key_path=key, checkpoint_every=500, checkpoint_interval=0)
    request.addfinalizer(writer.close)
    for n in range(6):
        writer.append_events(
            [{"agent_id": f"agent-{n % 3}", "resource_type": "r", "quantity": "1", "cost": "0.01"}] * 500
        )
    return writer, url


def on_database(url: str, statement: str) -> None:
    """Edit the ledger table as someone with the database's owner rights could (past its trigger)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE caracal_ledger DISABLE TRIGGER caracal_ledger_append_only")
        conn.execute(statement)


def test_on_postgresql_the_helper_reads_the_rows_itself(
    database_ledger: tuple[LedgerWriter, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, _url = database_ledger
    monkeypatch.setattr(replay, "_CHUNK", 128)
    expected = outcome(writer, helper=False)
    assert expected[0] == "ok" and len(expected[1]) == 3000  # type: ignore[arg-type]
    assert outcome(writer, helper=True) == expected
    tail = new_tail(writer)
    with tail.replaying(helper=True):
        assert len(tail.poll(3000)) == 3000
        assert tail._stream is not None and tail._stream.position == 3000


@pytest.mark.parametrize(
    "edit",
    [
        "DELETE FROM caracal_ledger WHERE event_id = 1234",  # a missing row: the ids do not follow
        # a row that holds a newline: joined with the others, it would read as two lines
        "UPDATE caracal_ledger SET line = overlay(line placing '\\x0a'::bytea from 20 for 0) "
        "WHERE event_id = 1234",
    ],
    ids=["row-deleted", "row-with-a-newline"],
)
def test_on_postgresql_a_row_the_helper_cannot_send_is_read_and_named_here(
    database_ledger: tuple[LedgerWriter, str], monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    writer, url = database_ledger
    monkeypatch.setattr(replay, "_CHUNK", 128)
    on_database(url, edit)
    expected = outcome(writer, helper=False)
    assert expected[:2] == ("failed", 1234)
    stopped: list[str | None] = []
    original = LineStream.close

    def closing(self: LineStream) -> None:
        stopped.append(self.stopped)
        original(self)

    monkeypatch.setattr(LineStream, "close", closing)
    assert outcome(writer, helper=True) == expected
    assert len(stopped) == 1 and stopped[0] is not None and "1233" in stopped[0]  # it stopped there


OPEN_COLD = """
import sys
from pathlib import Path
from caracal.core.enforcement import Enforcer
from caracal.storage.home import EmbeddedHome
home = EmbeddedHome(Path(sys.argv[1]))
Enforcer(home.writer(), home.directory).catch_up()
print("done", flush=True)
"""


def helpers_marked(mark: str) -> list[int]:
    """Pids of replay helpers started under the environment marker ``mark`` (they inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (
                b"caracal.core.replay_helper" in (entry / "cmdline").read_bytes()
                and mark.encode() in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the helper through /proc (Linux)")
def test_a_process_killed_mid_replay_leaves_no_helper_behind(caracal_home: Path) -> None:
    """SIGKILL the process replaying a long ledger while its helper runs: the helper ends too (its next
    write finds no reader), and the next process to open the home replays it whole."""
    ledger = long_home(caracal_home, 160_000)  # about 43 MB: over the helper's 32 MiB
    assert ledger.stat().st_size >= live.HELPER_BYTES
    mark = f"replay-kill-{secrets.token_hex(4)}"
    child = subprocess.Popen(
        [sys.executable, "-c", OPEN_COLD, str(caracal_home)],
        stdout=subprocess.PIPE,
        env={**os.environ, "CARACAL_TEST_MARK": mark},
    )
    try:
        deadline = time.monotonic() + 60
        while not helpers_marked(mark):
            assert child.poll() is None, "the replay ended before its helper was seen"
            assert time.monotonic() < deadline, "no helper started"
            time.sleep(0.005)
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 20
        while helpers := helpers_marked(mark):
            assert time.monotonic() < deadline, f"helpers outlived their killed replay: {helpers}"
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
    home = EmbeddedHome(caracal_home)
    try:
        state = Enforcer(home.writer(), home.directory).catch_up()
        assert state.last_event_id == 160_000
    finally:
        home.close()
