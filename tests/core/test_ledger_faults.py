"""Fault injection: the OS calls of an append fail (ENOSPC, EIO, short writes, failed syncs).

The file store module (caracal.core.filestore) exposes them as ``_os_write``, ``_os_fdatasync`` and
``_os_ftruncate`` so these tests can replace them. Whatever fails, an append either returns (durable) or
raises LedgerWriteError having left the file exactly as it was; when even the rollback fails, the writer
refuses further appends and a new writer repairs the file. One test fills a real (tmpfs) file system.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import caracal.core.filestore as ledger_module
from caracal.core.ledger import LedgerReader, LedgerWriter
from caracal.core.verify import default_public_key, verify_ledger
from caracal.exceptions import LedgerWriteError

REAL_WRITE = ledger_module._os_write
REAL_FDATASYNC = ledger_module._os_fdatasync
REAL_FTRUNCATE = ledger_module._os_ftruncate

ITEM: dict[str, Any] = {"agent_id": "agent", "resource_type": "tokens", "quantity": "1000", "cost": "0.030"}


def raising(code: int) -> Callable[..., Any]:
    def fail(*args: object) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def short_write(fraction: float) -> Callable[[int, bytes], int]:
    """Write only part of the bytes for real, then report the short count (as a nearly full disk does)."""

    def write(fd: int, data: bytes) -> int:
        return REAL_WRITE(fd, bytes(data[: int(len(data) * fraction)]))

    return write


class SyncFailsAfterWrite:
    """fdatasync fails once the bytes are in the file; later calls (the rollback's own sync) succeed."""

    def __init__(self, code: int = errno.EIO, times: int = 1):
        self.code, self.left = code, times

    def __call__(self, fd: int) -> None:
        if self.left:
            self.left -= 1
            raise OSError(self.code, os.strerror(self.code))
        REAL_FDATASYNC(fd)


def append(writer: LedgerWriter, kind: str, tag: int) -> list[int]:
    if kind == "single":
        return [writer.append_event(**ITEM, metadata={"tag": tag}).event_id]
    return [
        event.event_id
        for event in writer.append_events([{**ITEM, "metadata": {"tag": tag, "k": k}} for k in range(3)])
    ]


@pytest.fixture
def writer(ledger_path: Path) -> Iterator[LedgerWriter]:
    """A writer over a ledger of 10 events, checkpointed."""
    with LedgerWriter(ledger_path, checkpoint_every=0, checkpoint_interval=0) as opened:
        opened.append_events([{**ITEM, "metadata": {"seed": i}} for i in range(10)])
        opened.checkpoint()
        yield opened


def assert_healthy(path: Path, events: int) -> None:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "a partial line was left behind"
    assert [event.event_id for event in LedgerReader(path)] == list(range(1, events + 1))
    report = verify_ledger(path, public_key=default_public_key())
    assert report.ok, report.problems
    assert report.events == events and report.torn_tail_bytes == 0 and report.signatures_checked


FAULTS: dict[str, tuple[str, Callable[[], Callable[..., Any]], str]] = {
    "write-enospc": ("_os_write", lambda: raising(errno.ENOSPC), "No space left on device"),
    "write-eio": ("_os_write", lambda: raising(errno.EIO), "Input/output error"),
    "short-write": ("_os_write", lambda: short_write(0.5), "short write"),
    "zero-write": ("_os_write", lambda: short_write(0.0), "short write"),
    "almost-all-written": ("_os_write", lambda: short_write(0.999), "short write"),
    "fdatasync-eio": ("_os_fdatasync", lambda: SyncFailsAfterWrite(errno.EIO), "Input/output error"),
    "fdatasync-enospc": (
        "_os_fdatasync",
        lambda: SyncFailsAfterWrite(errno.ENOSPC),
        "No space left on device",
    ),
}


@pytest.mark.parametrize("kind", ["single", "batch"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_failed_append_leaves_nothing_and_the_next_one_continues(
    writer: LedgerWriter, ledger_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, kind: str
) -> None:
    name, make, reason = FAULTS[fault]
    before = ledger_path.read_bytes()
    monkeypatch.setattr(ledger_module, name, make())
    with pytest.raises(LedgerWriteError) as caught:
        append(writer, kind, 1)
    message = str(caught.value)
    assert reason in message and str(ledger_path) in message and "Nothing was recorded" in message
    assert isinstance(caught.value.__cause__, OSError)
    # Nothing acknowledged, nothing left behind: the file is byte for byte what it was.
    assert ledger_path.read_bytes() == before
    assert writer.last_event_id == 10
    assert not ledger_path.with_name(ledger_path.name + ".torn").exists()

    # While the fault lasts, every attempt fails the same clean way (the writer does not wedge itself).
    monkeypatch.setattr(ledger_module, name, make())
    with pytest.raises(LedgerWriteError):
        append(writer, "batch" if kind == "single" else "single", 2)
    assert ledger_path.read_bytes() == before

    monkeypatch.setattr(ledger_module, name, REAL_WRITE if name == "_os_write" else REAL_FDATASYNC)
    ids = append(writer, kind, 3)
    assert ids == list(range(11, 11 + len(ids)))
    writer.checkpoint()  # the in-memory tree was not polluted by the failed write
    assert_healthy(ledger_path, 10 + len(ids))
    with LedgerWriter(ledger_path) as again:
        assert again.append_event(**ITEM).event_id == 11 + len(ids)


ROLLBACK_FAULTS: dict[
    str,
    tuple[tuple[str, Callable[[], Callable[..., Any]]], tuple[str, int] | None, tuple[int, int]],
] = {
    # fault on the append, fault on the rollback (None: the fault itself hits the rollback too), and how many
    # complete, unacknowledged lines of a single / a 3-event batch stay in the file
    "short-write+ftruncate": (("_os_write", lambda: short_write(0.5)), ("_os_ftruncate", errno.EIO), (0, 1)),
    "enospc+ftruncate": (("_os_write", lambda: raising(errno.ENOSPC)), ("_os_ftruncate", errno.EIO), (0, 0)),
    "fdatasync+ftruncate": (
        ("_os_fdatasync", lambda: SyncFailsAfterWrite(errno.EIO)),
        ("_os_ftruncate", errno.EIO),
        (1, 3),
    ),
    "fdatasync-always": (("_os_fdatasync", lambda: SyncFailsAfterWrite(errno.EIO, times=99)), None, (0, 0)),
}


@pytest.mark.parametrize("kind", ["single", "batch"])
@pytest.mark.parametrize("fault", sorted(ROLLBACK_FAULTS))
def test_failed_rollback_refuses_and_a_new_writer_repairs(
    writer: LedgerWriter, ledger_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, kind: str
) -> None:
    (name, make), rollback, left = ROLLBACK_FAULTS[fault]
    before = ledger_path.read_bytes()
    monkeypatch.setattr(ledger_module, name, make())
    if rollback is not None:
        monkeypatch.setattr(ledger_module, rollback[0], raising(rollback[1]))
    with pytest.raises(LedgerWriteError) as caught:
        append(writer, kind, 1)
    message = str(caught.value)
    assert "rolling the file back failed" in message and "refuses" in message
    assert "Nothing was recorded" not in message  # it may well have been: do not invite a blind retry

    monkeypatch.setattr(ledger_module, "_os_write", REAL_WRITE)
    monkeypatch.setattr(ledger_module, "_os_fdatasync", REAL_FDATASYNC)
    monkeypatch.setattr(ledger_module, "_os_ftruncate", REAL_FTRUNCATE)
    # Fail closed: this writer no longer trusts its view of the file, even with the OS healthy again.
    for attempt in (
        lambda: append(writer, "single", 2),
        lambda: append(writer, "batch", 3),
        writer.checkpoint,
    ):
        with pytest.raises(LedgerWriteError, match=r"refuses writes.*rolling it back failed"):
            attempt()
    writer.close()  # closing a refusing writer is quiet and writes no checkpoint

    data = ledger_path.read_bytes()
    assert data.startswith(before)
    tail_lines = data[len(before) :].split(b"\n")
    kept = len(tail_lines) - 1  # complete unacknowledged lines of the failed write still in the file
    assert kept == left[kind == "batch"]
    torn = tail_lines[-1]
    if name == "_os_write" and fault.startswith("short"):
        assert torn, "the short write left a partial line"
    with LedgerWriter(ledger_path) as fresh:  # repairs (moves a torn tail aside) and opens
        assert fresh.last_event_id == 10 + kept
        assert fresh.append_event(**ITEM).event_id == 11 + kept
    assert_healthy(ledger_path, 11 + kept)
    if torn:
        assert ledger_path.with_name(ledger_path.name + ".torn").read_bytes() == torn + b"\n"


def test_torn_tail_that_cannot_be_repaired_refuses_to_open(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LedgerWriter(ledger_path) as writer:
        writer.append_events([ITEM] * 3)
    intact = ledger_path.read_bytes()
    with open(ledger_path, "ab") as handle:
        handle.write(b'{"event_id":4,"agent')
    monkeypatch.setattr(ledger_module, "_os_ftruncate", raising(errno.EIO))
    with pytest.raises(LedgerWriteError, match="torn"):
        LedgerWriter(ledger_path)
    monkeypatch.setattr(ledger_module, "_os_ftruncate", REAL_FTRUNCATE)
    with LedgerWriter(ledger_path) as writer:
        assert ledger_path.read_bytes() == intact
        assert writer.append_event(**ITEM).event_id == 4
    assert_healthy(ledger_path, 4)


def test_failure_in_one_thread_does_not_disturb_the_others(
    writer: LedgerWriter, ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every third write fails; the survivors get contiguous ids and the file holds exactly them."""
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return REAL_WRITE(fd, data)

    monkeypatch.setattr(ledger_module, "_os_write", flaky)
    import threading

    acked: list[int] = []
    failures: list[int] = []
    lock = threading.Lock()

    def run(t: int) -> None:
        for i in range(15):
            try:
                ids = append(writer, "batch" if i % 2 else "single", t * 100 + i)
            except LedgerWriteError:
                with lock:
                    failures.append(t)
            else:
                with lock:
                    acked.extend(ids)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures and acked
    assert sorted(acked) == list(range(11, 11 + len(acked)))
    monkeypatch.setattr(ledger_module, "_os_write", REAL_WRITE)
    writer.checkpoint()
    assert_healthy(ledger_path, 10 + len(acked))


# ---------------------------------------------------------------------------------------- a real full disk


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted in tmp_path; skips where mounting is not permitted; always unmounted."""
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount are not installed")
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip() or result.returncode}")
    try:
        yield mountpoint
    finally:
        unmounted = subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def test_real_enospc_on_a_full_tmpfs(small_tmpfs: Path, caracal_home: Path) -> None:
    ledger = small_tmpfs / "ledger.jsonl"
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * 32 * 1024)  # freed later, to show the ledger recovers once there is space
    acked: list[bytes] = []
    failure: LedgerWriteError | None = None
    writer = LedgerWriter(ledger, checkpoint_every=25)  # the signing key stays in $CARACAL_HOME
    try:
        assert (caracal_home / "keys" / "checkpoint.key").exists()  # not on the full disk
        for i in range(5000):  # bounded: 256 KiB cannot hold this many ~1.5 KB events
            try:
                if i % 4 == 3:
                    events = writer.append_events(
                        [{**ITEM, "metadata": {"i": i, "k": k, "pad": "p" * 1500}} for k in range(3)]
                    )
                else:
                    events = [writer.append_event(**ITEM, metadata={"i": i, "pad": "p" * 1500})]
            except LedgerWriteError as exc:
                failure = exc
                break
            acked.extend(event.to_bytes() for event in events)
        assert failure is not None, "the file system never filled up"
        assert "Nothing was recorded" in str(failure) and "disk space" in str(failure)
        # Every acknowledged event is intact, in order, and nothing else (no partial line) is in the file.
        assert ledger.read_bytes() == b"".join(line + b"\n" for line in acked)
        assert_healthy(ledger, len(acked))
        # Still full: still refused cleanly, still nothing partial (8 events: more than any failed write).
        with pytest.raises(LedgerWriteError):
            writer.append_events([{**ITEM, "metadata": {"pad": "q" * 1500}}] * 8)
        assert ledger.read_bytes() == b"".join(line + b"\n" for line in acked)
        # Space comes back: the same writer continues with the next id.
        filler.unlink()
        event = writer.append_event(**ITEM, metadata={"after": "space"})
        assert event.event_id == len(acked) + 1
        acked.append(event.to_bytes())
    finally:
        writer.close()
    assert ledger.read_bytes() == b"".join(line + b"\n" for line in acked)
    assert_healthy(ledger, len(acked))
    with LedgerWriter(ledger) as reopened:
        assert reopened.last_event_id == len(acked)
