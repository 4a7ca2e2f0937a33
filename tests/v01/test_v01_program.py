"""A Caracal Core v0.1 program runs unchanged: its configuration file, its library objects and its SDK calls,
on real files (and in a real subprocess), with our promises underneath (exact money, refused unknown prices,
a malformed ledger line is corruption, denials before the block runs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from caracal.exceptions import (
    BudgetExceededError,
    LedgerCorruptError,
    PricebookLoadError,
    ServerUnreachableError,
    UnknownPriceError,
)

PRICES = (
    "resource_type,price_per_unit,currency,updated_at\n"
    "openai.gpt4.input_tokens,0.000030,USD,2024-01-15T10:00:00Z\n"
)


def v01_config(folder: Path) -> Path:
    (folder / "pricebook.csv").write_text(PRICES)
    config = folder / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            storage:
              agent_registry: {folder}/agents.json
              policy_store: {folder}/policies.json
              ledger: {folder}/ledger.jsonl
              pricebook: {folder}/pricebook.csv
              backup_dir: {folder}/backups
              backup_count: 3
            defaults:
              currency: USD
              time_window: daily
              default_budget: 100.10
            """
        )
    )
    return config


PROGRAM = """
import json, sys
from decimal import Decimal
from caracal.sdk.client import CaracalClient
from caracal.exceptions import BudgetExceededError

client = CaracalClient(config_path=sys.argv[1])
agent = client.agent_registry.register_agent(name="researcher", owner="ops@example.com")
client.policy_store.create_policy(agent_id=agent.agent_id, limit_amount=Decimal("0.05"), time_window="daily")
ran = []
with client.budget_check(agent_id=agent.agent_id):
    client.emit_event(agent_id=agent.agent_id, resource_type="openai.gpt4.input_tokens",
                      quantity=Decimal("1000"), metadata={"model": "gpt-4"})
    ran.append("first")
remaining = client.get_remaining_budget(agent.agent_id)
client.emit_event(agent_id=agent.agent_id, resource_type="openai.gpt4.input_tokens", quantity=Decimal("1000"))
try:
    with client.budget_check(agent_id=agent.agent_id):
        ran.append("second")
except BudgetExceededError as exc:
    denied = str(exc)
decision = client.policy_evaluator.check_budget(agent.agent_id)
print(json.dumps({"ran": ran, "remaining": str(remaining), "denied": denied, "allowed": decision.allowed,
                  "reason": decision.reason, "check": client.check_budget(agent.agent_id)}))
"""


def test_a_v01_sdk_program_runs_unchanged(tmp_path: Path) -> None:
    config = v01_config(tmp_path)
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    done = subprocess.run(
        [sys.executable, str(script), str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ran"] == ["first"]  # the denied block never ran
    assert out["remaining"] == "0.020000"  # 0.05 - 1000 x 0.000030, exact
    assert "Budget check failed for agent" in out["denied"] and "Budget exceeded" in out["denied"]
    assert out["allowed"] is False and out["reason"].startswith(
        "Budget exceeded: spent 0.060000 >= limit 0.05"
    )
    assert out["check"] is False
    # The files are v0.1's: a JSON list of agents and of policies, the ledger's charges with exact costs.
    agents = json.loads((tmp_path / "agents.json").read_text())
    policies = json.loads((tmp_path / "policies.json").read_text())
    assert [a["name"] for a in agents] == ["researcher"]
    assert policies[0]["limit_amount"] == "0.05" and policies[0]["time_window"] == "daily"
    charges = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [c["cost"] for c in charges] == ["0.030000", "0.030000"]


def test_a_v01_install_at_the_default_home_runs(tmp_path: Path) -> None:
    """v0.1's default layout keeps everything in ``~/.caracal``, which is also our default home: the program
    runs there with no ``$CARACAL_HOME``, and the ledger's signing key is kept outside that folder (under
    ``~/.config/caracal/keys``), the same key on every run."""
    import os

    folder = tmp_path / ".caracal"
    folder.mkdir()
    config = v01_config(folder)
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k not in ("CARACAL_HOME", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(script), str(config)], capture_output=True, text=True, timeout=120, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ran"] == ["first"]
    keys = list((tmp_path / ".config" / "caracal" / "keys").glob("*/checkpoint.key"))
    assert len(keys) == 1 and not list(folder.rglob("*.key"))
    again = subprocess.run(
        [sys.executable, "-c", "import sys; from caracal.sdk.client import CaracalClient; "
         "c = CaracalClient(config_path=sys.argv[1]); print(len(c.ledger_query.get_events())); c.close()",
         str(config)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr  # the same key: its checkpoints still verify
    assert again.stdout.split() == ["2"]
    assert list((tmp_path / ".config" / "caracal" / "keys").glob("*/checkpoint.key")) == keys


def test_the_v01_library_objects_share_one_set_of_files(tmp_path: Path) -> None:
    from caracal.core.identity import AgentRegistry
    from caracal.core.ledger import LedgerQuery, LedgerWriter
    from caracal.core.metering import MeteringCollector, MeteringEvent
    from caracal.core.policy import PolicyEvaluator, PolicyStore
    from caracal.core.pricebook import Pricebook

    (tmp_path / "pricebook.csv").write_text(PRICES)
    registry = AgentRegistry(str(tmp_path / "agents.json"))
    parent = registry.register_agent("team", "ops@example.com")
    child = registry.register_agent("worker", "ops@example.com", parent_id=parent.agent_id)
    store = PolicyStore(str(tmp_path / "policies.json"), registry)
    store.create_policy(parent.agent_id, Decimal("0.04"))
    store.create_policy(child.agent_id, Decimal("5.00"))
    writer = LedgerWriter(str(tmp_path / "ledger.jsonl"))
    collector = MeteringCollector(Pricebook(str(tmp_path / "pricebook.csv")), writer)
    evaluator = PolicyEvaluator(store, LedgerQuery(str(tmp_path / "ledger.jsonl")))
    assert evaluator.check_budget(child.agent_id).remaining_budget == Decimal("0.04")  # the parent's, tighter
    event = collector.collect_event(
        MeteringEvent(child.agent_id, "openai.gpt4.input_tokens", Decimal("1000"))
    )
    assert event.cost == Decimal("0.030000") and event.cost != "0.030000"  # money is Decimal, never a string
    assert evaluator.check_budget(child.agent_id).remaining_budget == Decimal("0.010000")
    collector.collect_event(MeteringEvent(child.agent_id, "openai.gpt4.input_tokens", Decimal("1000")))
    denied = evaluator.check_budget(child.agent_id)
    assert not denied.allowed and denied.remaining_budget == Decimal("0")  # never negative
    with pytest.raises(UnknownPriceError):  # never recorded at $0, as v0.1 did
        collector.collect_event(MeteringEvent(child.agent_id, "no.such.resource", Decimal("1")))
    assert len(LedgerQuery(str(tmp_path / "ledger.jsonl")).get_events()) == 2


def test_a_malformed_ledger_line_is_corruption_not_skipped(tmp_path: Path) -> None:
    from caracal.core.ledger import LedgerQuery

    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(
        '{"event_id":1,"agent_id":"a","timestamp":"2024-01-15T10:00:00Z","resource_type":"t","quantity":"1",'
        '"cost":"1.00","currency":"USD"}\nthis is not valid json\n'
    )
    with pytest.raises(LedgerCorruptError, match="line 2"):
        LedgerQuery(str(ledger)).get_events()


def test_a_v01_pricebook_keeps_history_and_refuses_bad_files(tmp_path: Path) -> None:
    from caracal.core.pricebook import Pricebook

    path = tmp_path / "pricebook.csv"
    path.write_text(PRICES)
    book = Pricebook(str(path))
    book.set_price("openai.gpt4.input_tokens", Decimal("0.000035"))
    assert book.get_price("openai.gpt4.input_tokens") == Decimal("0.000035")
    rows = path.read_text().splitlines()
    assert rows[0].startswith("resource_type,price_per_unit,currency,updated_at")
    assert [row.split(",")[1] for row in rows[1:]] == ["0.000030", "0.000035"]  # both versions, latest last
    path.write_text("resource_type,price_per_unit,currency\nx,1,USD\n")
    with pytest.raises(PricebookLoadError, match="Missing required columns: updated_at"):
        Pricebook(str(path))


def test_a_v01_configuration_keeps_money_exact_and_fails_closed(tmp_path: Path) -> None:
    from caracal.config.settings import load_config
    from caracal.sdk.client import CaracalClient

    config = load_config(v01_config(tmp_path))
    assert config.defaults.default_budget == Decimal("100.10")
    assert str(config.defaults.default_budget) == "100.10"  # from the file's text, not a binary float
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"storage:\n  ledger: {tmp_path}/missing-folder/ledger.jsonl\n")
    with pytest.raises(ServerUnreachableError, match="Failed to initialize"):
        CaracalClient(config_path=broken)
    assert not (tmp_path / "missing-folder").exists()


def test_a_denied_budget_check_is_v01_worded_and_carries_our_decision(tmp_path: Path) -> None:
    from caracal.sdk.client import CaracalClient
    from caracal.sdk.context import BudgetCheckContext

    client = CaracalClient(config_path=v01_config(tmp_path))
    agent = client.agent_registry.register_agent("lonely", "ops@example.com")
    block = client.budget_check(agent.agent_id)
    assert isinstance(block, BudgetCheckContext) and block.client is client
    with pytest.raises(BudgetExceededError, match="No active policy") as denied, block:
        pytest.fail("the block ran without a budget")
    assert denied.value.decision is not None and not denied.value.decision.allowed


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caracal", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_cli_global_v01_options(tmp_path: Path) -> None:
    config = v01_config(tmp_path)
    assert run_cli("--config", str(config), "--log-level", "DEBUG", "--help", cwd=tmp_path).returncode == 0
    refused = run_cli(
        "--home", str(tmp_path / "home"), "--config", str(config), "agent", "list", cwd=tmp_path
    )
    assert refused.returncode == 2 and "v0.1 configuration" in refused.stderr  # never another home's files
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  currency: USD\n")
    failed = run_cli("--config", str(bad), "agent", "list", cwd=tmp_path)
    assert failed.returncode == 1 and "Missing required 'storage' section" in failed.stderr
