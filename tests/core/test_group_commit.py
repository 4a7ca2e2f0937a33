"""Group commit: operations of many callers share one lock hold and one fsync, and every promise holds.

Real files (an EmbeddedHome in a temporary home), real threads. Failures are injected at the OS call the
ledger uses for its sync (as in test_ledger_faults.py).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import caracal.core.filestore as ledger_module
from caracal.core.enforcement import Enforcer, Hold
from caracal.core.group_commit import GroupCommitter
from caracal.core.ledger import LedgerReader
from caracal.core.verify import verify_ledger
from caracal.core.windows import WindowSpec
from caracal.exceptions import BudgetExceededError, ConfigurationError, HoldNotFoundError, LedgerWriteError
from caracal.storage.home import EmbeddedHome

REAL_FDATASYNC = ledger_module._os_fdatasync


class Groups:
    """The observer: the size of every group the committer ran."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, size: int, seconds: float) -> None:
        self.sizes.append(size)


@pytest.fixture
def home(caracal_home: Path) -> Iterator[EmbeddedHome]:
    home = EmbeddedHome(caracal_home)
    yield home
    home.close()


def setup(home: EmbeddedHome, limit: str = "10") -> tuple[Enforcer, str]:
    agent = home.agents.register("worker", "team@example.com").agent_id
    home.policies.create(agent, limit, WindowSpec.calendar("daily"), "USD")
    return Enforcer(home.writer(), home.directory), agent


def test_one_group_holds_the_budget_exactly(home: EmbeddedHome) -> None:
    enforcer, agent = setup(home, "10")
    # Twelve holds of 1 in one group: later ones see earlier ones, so exactly ten are granted.
    results = enforcer.run_group([enforcer.reserve_op(agent, "1") for _ in range(12)])
    granted = [r for r in results if isinstance(r, Hold)]
    denied = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(granted) == 10 and len(denied) == 2
    assert all(d.decision.remaining == 0 for d in denied)
    events = list(LedgerReader(home.ledger_path))
    assert [e.event_id for e in events] == list(range(1, 11))
    assert enforcer.check(agent).allowed is False


def test_a_failing_operation_does_not_affect_the_others(home: EmbeddedHome) -> None:
    enforcer, agent = setup(home)
    hold = enforcer.reserve(agent, "2")
    results = enforcer.run_group(
        [
            enforcer.release_op("hold-unknown"),  # False: nothing to release, not an error
            enforcer.settle_op("hold-unknown", []),
            enforcer.settle_op(hold.hold_id, [{"resource_type": "t", "quantity": "1", "cost": "1.5"}]),
            enforcer.settle_op(hold.hold_id, []),  # already closed by the one before it
        ]
    )
    assert results[0] is False
    assert isinstance(results[1], HoldNotFoundError)
    assert results[2].total == Decimal("1.5")
    assert isinstance(results[3], HoldNotFoundError)
    assert verify_ledger(home.ledger_path).ok


def test_concurrent_callers_share_fsyncs_and_never_overspend(home: EmbeddedHome) -> None:
    enforcer, agent = setup(home, "50")
    groups = Groups()
    committer = GroupCommitter(enforcer, observer=groups)
    outcomes: list[object] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            try:
                hold = committer.run(enforcer.reserve_op(agent, "1"))
            except BudgetExceededError as exc:
                result: object = exc
            else:
                result = committer.run(
                    enforcer.settle_op(hold.hold_id, [{"resource_type": "t", "quantity": "1", "cost": "1"}])
                )
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    committer.close()
    settled = [o for o in outcomes if not isinstance(o, BudgetExceededError)]
    assert len(outcomes) == 160
    assert len(settled) == 50  # every unit of the budget used, none beyond it
    spent = sum(e.cost for e in LedgerReader(home.ledger_path) if e.is_charge)
    assert spent == Decimal(50)
    assert sum(groups.sizes) == 160 + 50  # every reserve and every settle ran in some group
    assert max(groups.sizes) > 1  # and some of them shared a group (16 threads at once)
    assert verify_ledger(home.ledger_path).ok


def test_a_deferred_operation_rides_with_the_next_one(home: EmbeddedHome) -> None:
    enforcer, agent = setup(home)
    groups = Groups()
    committer = GroupCommitter(enforcer, observer=groups)
    hold = committer.run(enforcer.reserve_op(agent, "1"))
    deferred = committer.submit(enforcer.release_op(hold.hold_id), defer=60)
    second = committer.run(enforcer.reserve_op(agent, "1"))  # not deferred: runs now, with the release
    assert deferred.result() is True and isinstance(second, Hold)
    committer.close()  # the observer runs after the futures complete: wait for the thread
    assert groups.sizes == [1, 2]


def test_a_deferred_operation_runs_on_its_own_after_its_deadline(home: EmbeddedHome) -> None:
    enforcer, agent = setup(home)
    groups = Groups()
    committer = GroupCommitter(enforcer, observer=groups)
    hold = committer.run(enforcer.reserve_op(agent, "1"))
    assert committer.submit(enforcer.release_op(hold.hold_id), defer=0.01).result(timeout=30) is True
    committer.close()
    assert groups.sizes == [1, 1]


def test_close_finishes_what_was_queued_then_refuses(home: EmbeddedHome) -> None:
    enforcer, agent = setup(home)
    committer = GroupCommitter(enforcer)
    futures = [committer.submit(enforcer.reserve_op(agent, "1"), defer=3600) for _ in range(3)]
    committer.close()
    assert all(isinstance(f.result(timeout=0), Hold) for f in futures)
    with pytest.raises(ConfigurationError, match="closed"):
        committer.submit(enforcer.reserve_op(agent, "1"))
    committer.close()  # idempotent


def test_a_failed_group_write_acknowledges_nothing_and_the_state_recovers(
    home: EmbeddedHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    enforcer, agent = setup(home, "3")
    enforcer.reserve(agent, "1")
    failed = {"left": 1}

    def sync(fd: int) -> None:
        if failed["left"]:
            failed["left"] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        REAL_FDATASYNC(fd)

    monkeypatch.setattr(ledger_module, "_os_fdatasync", sync)
    results = enforcer.run_group([enforcer.reserve_op(agent, "1"), enforcer.reserve_op(agent, "1")])
    assert all(isinstance(r, LedgerWriteError) for r in results)
    assert len(list(LedgerReader(home.ledger_path))) == 1  # rolled back: only the first hold
    # The state forgot the two holds it had folded in before the write failed: two units remain.
    assert enforcer.check(agent, "2").allowed is True
    assert enforcer.check(agent, "2.01").allowed is False
    assert isinstance(enforcer.run_group([enforcer.reserve_op(agent, "2")])[0], Hold)
    assert verify_ledger(home.ledger_path).ok


def test_max_group_must_be_a_positive_integer(home: EmbeddedHome) -> None:
    enforcer, _ = setup(home)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigurationError):
            GroupCommitter(enforcer, max_group=bad)  # type: ignore[arg-type]
