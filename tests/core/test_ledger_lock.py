"""The writer's lock wait: bounded by the timeout, handed over on release, safe after a timeout."""

from __future__ import annotations

import fcntl
import os
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.ledger import LedgerWriter
from caracal.exceptions import LedgerLockTimeoutError


def hold_lock(ledger_path: Path) -> int:
    fd = os.open(ledger_path.with_name(ledger_path.name + ".lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another process would
    return fd


def test_a_timed_out_writer_recovers_and_keeps_the_lock_exclusive(ledger_path: Path) -> None:
    writer = LedgerWriter(ledger_path, lock_timeout=0.2)
    writer.append_event("a", "r", Decimal(1), Decimal(1))
    other = hold_lock(ledger_path)
    with pytest.raises(LedgerLockTimeoutError):
        writer.append_event("a", "r", Decimal(1), Decimal(1))
    os.close(other)  # the abandoned wait now gets the lock and gives it back at once
    writer.append_event("a", "r", Decimal(1), Decimal(1))
    # While this writer holds the lock (inside transact), nobody else may take it.
    seen = []

    def inside() -> None:
        probe = os.open(ledger_path.with_name(ledger_path.name + ".lock"), os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(probe)

    writer.transact(lambda: inside())
    assert seen == ["held"]
    writer.close()
    assert [line.count(b'"event_id"') for line in ledger_path.read_bytes().splitlines()] == [1, 1]


def test_a_waiting_writer_gets_the_lock_when_it_is_released(ledger_path: Path) -> None:
    writer = LedgerWriter(ledger_path, lock_timeout=30)
    other = hold_lock(ledger_path)
    threading.Timer(0.2, os.close, args=(other,)).start()
    event = writer.append_event("a", "r", Decimal(1), Decimal(1))  # waits, then gets it
    assert event.event_id == 1
    writer.close()
