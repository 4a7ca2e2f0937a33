"""No overspend under real concurrency (DESIGN.md promise 4).

Twelve processes of four threads each, every process with its own EmbeddedHome on one shared home, reserve
random amounts as fast as they can: eight processes for agent ``a`` ($10 a day), four for its sibling ``b``
($10 a day), both under ``team`` ($15 a day). Each granted hold is settled at or below its amount, or
released. The run is repeated over several (simulated) days, all processes moving to the next day together,
so that the budget is fought over several times. Afterwards the ledger must show that no limit was passed
on any day, not even for an instant (replaying it entry by entry), that each day's budget was used up, that
no hold is left open, that every settlement a worker was told about is on disk, and that it verifies.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from caracal.core.budget import BudgetState
from caracal.core.enforcement import Enforcer, policy_status
from caracal.core.ledger import LedgerQuery, LedgerReader
from caracal.core.verify import verify_ledger
from caracal.core.windows import WindowSpec
from caracal.storage.home import EmbeddedHome
from tests.caches import read_home_cache

pytestmark = pytest.mark.slow

ANCHOR = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)
"""Every process's clock is ANCHOR + (wall time - the test's start): one shared, steadily moving clock that
stays far from midnight, so the daily window cannot reset in the middle of the run."""
MIN_AMOUNT, MAX_AMOUNT = Decimal("0.05"), Decimal("1.50")
PROCESSES = {"a": 8, "b": 4}
THREADS = 4
ROUNDS = 5  # days
MAX_ATTEMPTS = 3000  # per thread; a worker that needs more is stuck, and the test says so

WORKER = r"""
import json, random, sys, threading, time, traceback
from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from caracal.core.enforcement import Enforcer
from caracal.exceptions import BudgetExceededError
from caracal.storage.home import EmbeddedHome

home_dir, agent, index, threads, t0, folder, rounds = sys.argv[1:8]
threads, t0, index, rounds, folder = int(threads), float(t0), int(index), int(rounds), Path(folder)
ANCHOR = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)
MIN, MAX, CENT = Decimal("0.05"), Decimal("1.50"), Decimal("0.01")


day = [0]  # the round: every process moves to the next day together, between rounds


def clock():
    return ANCHOR + timedelta(days=day[0], seconds=time.time() - t0)


home = EmbeddedHome(Path(home_dir))
enforcer = Enforcer(home.writer(), home.directory, clock=clock)
enforcer.check(agent)  # warm up (open the ledger, read the registries) before the start signal
(folder / f"ready-{agent}-{index}").touch()
results = []


def work(thread):
    rng = random.Random(f"{agent}-{index}-{thread}-{day[0]}")
    mine = {"settled": [], "released": [], "denied": 0, "attempts": 0, "stopped": None, "error": None}
    results.append(mine)
    try:
        while mine["attempts"] < __MAX_ATTEMPTS__:
            mine["attempts"] += 1
            amount = Decimal(rng.randint(5, 150)) * CENT
            try:
                hold = enforcer.reserve(agent, amount, ttl=300)
            except BudgetExceededError as exc:
                decision = exc.decision
                mine["denied"] += 1
                if decision.limit is None:
                    raise
                if decision.limit - decision.spent < MAX:  # spend only grows: this policy is used up
                    mine["stopped"] = [decision.policy_id, str(decision.limit - decision.spent)]
                    return
                time.sleep(rng.uniform(0.0005, 0.003))
                continue
            if rng.random() < 0.15:
                assert enforcer.release(hold.hold_id) is True
                mine["released"].append(hold.hold_id)
                continue
            actual = (amount * Decimal(rng.randint(30, 100)) / 100).quantize(CENT, ROUND_DOWN)
            if rng.random() < 0.5:
                parts = [actual]
            else:  # two charges that add up to the actual cost
                half = (actual / 2).quantize(CENT, ROUND_DOWN)
                parts = [half, actual - half]
            items = [{"resource_type": "llm.tokens", "quantity": "1", "cost": str(p)} for p in parts]
            settlement = enforcer.settle(hold.hold_id, items)
            assert not settlement.over_hold and not settlement.after_expiry
            mine["settled"].append({
                "hold_id": hold.hold_id,
                "held": str(amount),
                "events": [[e.event_id, str(e.cost)] for e in settlement.charges],
            })
    except BaseException:
        mine["error"] = traceback.format_exc()


for round_ in range(rounds):
    while not (folder / f"start-{round_}").exists():
        time.sleep(0.002)
    day[0] = round_
    results = []
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out = folder / f"result-{round_}-{agent}-{index}.json"
    out.with_suffix(".tmp").write_text(json.dumps(results))
    out.with_suffix(".tmp").rename(out)
enforcer.close()  # saves the budget snapshot: twelve processes race to write it, the next open trusts it
home.close()
""".replace("__MAX_ATTEMPTS__", str(MAX_ATTEMPTS))


def result_files(folder: Path, round_: int) -> list[Path]:
    return [
        folder / f"result-{round_}-{agent}-{index}.json"
        for agent, count in PROCESSES.items()
        for index in range(count)
    ]


def test_concurrent_workers_cannot_overspend(caracal_home: Path, tmp_path: Path) -> None:
    home = EmbeddedHome(caracal_home)
    agents = home.agents
    team = agents.register("team", "ops@example.com").agent_id
    ids = {"team": team}
    for name in ("a", "b"):
        ids[name] = agents.register(name, "ops@example.com", parent=team).agent_id
    daily = WindowSpec.calendar("daily")
    limits = {"team": Decimal(15), "a": Decimal(10), "b": Decimal(10)}
    policies = [home.policies.create(ids[name], str(limit), daily) for name, limit in limits.items()]

    script = tmp_path / "overspend_worker.py"
    script.write_text(WORKER)
    t0 = time.time()
    started = time.monotonic()
    procs = []
    for agent, count in PROCESSES.items():
        for index in range(count):
            args = [str(caracal_home), agent, str(index), str(THREADS), repr(t0), str(tmp_path), str(ROUNDS)]
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
            )

    def wait_for(paths: list[Path], what: str) -> None:
        deadline = time.monotonic() + 90
        while not all(path.exists() for path in paths):
            for proc in procs:
                if proc.poll() is not None:  # a worker died early: show why
                    assert proc.returncode == 0, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, f"the workers did not {what} in time"
            time.sleep(0.005)

    try:
        wait_for([tmp_path / f"ready-{a}-{i}" for a, n in PROCESSES.items() for i in range(n)], "start")
        for round_ in range(ROUNDS):
            (tmp_path / f"start-{round_}").touch()
            wait_for(result_files(tmp_path, round_), f"finish day {round_}")
        for proc in procs:
            output = proc.communicate(timeout=60)[0].decode()
            assert proc.returncode == 0, output
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - started

    # --- what the workers were told
    acknowledged: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    released = denied = attempts = 0
    for round_ in range(ROUNDS):
        for path in result_files(tmp_path, round_):
            agent = path.name.split("-")[2]
            for thread in json.loads(path.read_text()):
                assert thread["error"] is None, thread["error"]
                assert thread["stopped"] is not None, f"a worker of {agent} hit {MAX_ATTEMPTS} attempts"
                acknowledged[agent] += thread["settled"]
                released += len(thread["released"])
                denied += thread["denied"]
                attempts += thread["attempts"]
    assert acknowledged["a"] and acknowledged["b"] and released and denied

    # --- what the ledger holds
    events = list(LedgerReader(home.ledger).iter_events())
    by_id = {event.event_id: event for event in events}
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    for agent, settlements in acknowledged.items():
        for settlement in settlements:
            for event_id, cost in settlement["events"]:
                event = by_id[event_id]
                assert (event.agent_id, event.hold_id, event.cost) == (
                    ids[agent],
                    settlement["hold_id"],
                    Decimal(cost),
                )
                assert event.is_charge and not event.metadata
    charges = [e for e in events if e.is_charge]
    assert len(charges) == sum(len(s["events"]) for group in acknowledged.values() for s in group)
    holds = {str(e.hold_id) for e in events if e.kind == "hold"}
    closed = [str(e.hold_id) for e in events if e.kind == "release"]
    assert sorted(closed) == sorted(holds), "every hold is closed exactly once"

    query = LedgerQuery(home.ledger)
    days = []
    for round_ in range(ROUNDS):
        day = (ANCHOR + timedelta(days=round_)).date()
        spent = {
            name: sum(
                (e.cost for e in charges if e.agent_id == ids[name] and e.time.date() == day), Decimal(0)
            )
            for name in "ab"
        }
        spent["team"] = spent["a"] + spent["b"]
        days.append(spent)
        for name, limit in limits.items():
            assert spent[name] <= limit, (day, name, spent[name])
        for name in "ab":
            assert query.sum_spending(ids[name], day, day) == spent[name]

    # --- replayed entry by entry, spend plus live holds never passed any limit, not even for an instant
    state = BudgetState(home.directory.chain)
    peak = {policy.policy_id: Decimal(0) for policy in policies}
    for event in events:
        state.apply(event)
        if event.kind == "hold":
            for policy in policies:
                status = policy_status(policy, state, event.time)
                assert status.remaining >= 0, (event.event_id, policy.agent_id, status)
                peak[policy.policy_id] = max(peak[policy.policy_id], status.spent + status.held)

    # --- each day's budget was used up, nothing is held, and the ledger verifies
    snapshot = read_home_cache(home, "budget")
    assert 0 < snapshot["state"]["last_event_id"] <= len(events) and snapshot["line_sha256"]
    for round_ in range(ROUNDS):
        moment = ANCHOR + timedelta(days=round_, hours=6)  # later that day
        enforcer = Enforcer(home.writer(), home.directory, clock=functools.partial(lambda m: m, moment))
        resumed = enforcer.catch_up()  # from a snapshot a worker saved, then the entries after it
        assert resumed.open_holds(team) == []
        for policy in policies:  # the same numbers as the full replay above
            assert policy_status(policy, resumed, moment) == policy_status(policy, state, moment)
        for name in ("a", "b"):
            decision = enforcer.check(name)
            assert decision.held == 0
            assert decision.remaining is not None and decision.remaining < MAX_AMOUNT, (
                round_,
                name,
                decision,
            )
    assert verify_ledger(home.ledger).ok
    home.close()
    print(
        f"\n{sum(PROCESSES.values())} processes x {THREADS} threads x {ROUNDS} days, {elapsed:.1f}s: "
        f"{attempts} attempts, {len(holds)} holds, {denied} denials, {released} releases; spent per day "
        f"{[(str(d['a']), str(d['b'])) for d in days]}; "
        f"peak spent+held {sorted(str(p) for p in peak.values())}"
    )
