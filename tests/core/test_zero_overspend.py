"""No overspend: 8 real processes x 4 threads race to reserve against the same budgets.

Child A and child B each have a $10 daily policy; their parent has a $15 daily policy they share. Every
worker reserves random amounts, then settles a random actual at or below its hold (or releases it), until
the budgets turn it away. Afterwards the settled totals must be within every limit, the budgets nearly used
up (holds were closed correctly, none left open), every acknowledged settlement on record, and the ledger
must verify.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.core.ledger import LedgerQuery
from caracal.core.verify import default_public_key, verify_ledger
from caracal.sdk.client import CaracalClient

WORKER = textwrap.dedent(
    """
    import json, random, sys, threading
    from decimal import Decimal
    from caracal.exceptions import BudgetExceededError
    from caracal.sdk.client import CaracalClient

    agent, seed = sys.argv[1], int(sys.argv[2])
    client = CaracalClient()
    client.check(agent)  # build the client's state before the threads share it
    out = threading.Lock()

    def work(n):
        rng = random.Random(seed * 100 + n)
        denials = 0
        for _ in range(60):
            amount = Decimal(rng.randint(5, 150)) / 100
            try:
                hold = client.reserve(agent, amount, ttl=120)
            except BudgetExceededError:
                denials += 1
                if denials >= 4:
                    return
                continue
            if rng.random() < 0.2:
                client.release(hold)
                continue
            actual = Decimal(rng.randint(0, int(amount * 100))) / 100
            charge = {"resource_type": "tool.work.units", "quantity": "1", "cost": actual}
            settlement = client.settle(hold, [charge])
            with out:
                print(json.dumps({"hold": hold.hold_id, "total": str(settlement.total)}), flush=True)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    """
)


@pytest.mark.slow
def test_eight_processes_by_four_threads_never_overspend(caracal_home: Path, tmp_path: Path) -> None:
    setup = CaracalClient()
    setup.register_agent("parent", "ops@example.com")
    for child in ("child-a", "child-b"):
        setup.register_agent(child, "ops@example.com", parent="parent")
        setup.create_policy(child, "10", "daily")
    setup.create_policy("parent", "15", "daily")
    ids = {name: setup.get_agent(name).agent_id for name in ("parent", "child-a", "child-b")}
    setup.close()

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), "child-a" if n % 2 == 0 else "child-b", str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    acknowledged = {}
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        for line in out.splitlines():
            record = json.loads(line)
            acknowledged[record["hold"]] = Decimal(record["total"])

    charges = LedgerQuery(caracal_home / "data" / "ledger.jsonl").get_events(charges_only=True)
    by_hold = {}
    for event in charges:
        by_hold[event.hold_id] = by_hold.get(event.hold_id, Decimal(0)) + event.cost
    assert len(acknowledged) >= 10  # the race really happened
    assert acknowledged.items() <= by_hold.items()  # every acknowledged settlement is on record, exactly

    spent = {name: sum((e.cost for e in charges if e.agent_id == ids[name]), Decimal(0)) for name in ids}
    assert spent["child-a"] <= 10 and spent["child-b"] <= 10
    assert spent["child-a"] + spent["child-b"] <= 15

    check = CaracalClient()
    for name in ("child-a", "child-b"):
        decision = check.check(name)
        assert decision.held == 0  # every hold was settled or released
    parent = next(s for s in check.budget_status("child-a") if s.policy.agent_id == ids["parent"])
    assert parent.spent == spent["child-a"] + spent["child-b"]
    # Nearly used up: what is left of the tightest budget is less than the largest single request; with
    # actuals at or below holds, the shared $15 is the one that runs out.
    tightest = min(s.remaining for name in ("child-a", "child-b") for s in check.budget_status(name))
    assert tightest < Decimal("1.50")
    check.close()
    assert verify_ledger(caracal_home / "data" / "ledger.jsonl", public_key=default_public_key()).ok
