"""The control-plane commands (init, agent, policy, pricebook, budget, backup), run as a user would: real
files in a temporary home (``tests/conftest.py``), real exit codes, real output."""

from __future__ import annotations

import fcntl
import importlib.util
import inspect
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from caracal.cli import backup as backup_module
from caracal.cli.main import main
from caracal.config import Settings, load_settings
from caracal.core.budget import DEFAULT_IDEMPOTENCY_WINDOW
from caracal.core.enforcement import DEFAULT_TTL
from caracal.core.ledger import LedgerEvent, LedgerWriter
from caracal.core.validation import format_timestamp
from caracal.core.windows import WindowSpec, window_bounds
from caracal.exceptions import ConfigurationError
from caracal.sdk.client import CaracalClient
from caracal.storage.prices import PriceRegistry

GPT4_INPUT = "openai.gpt4.input_tokens"


HAS_GENAI = importlib.util.find_spec("genai_prices") is not None
"""genai-prices (LLM prices) needs Python 3.11+; on 3.10 an LLM resource is refused for that reason."""


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.stdout, result.stderr)
    return result


def run_json(*args: str, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code).stdout)


def data_snapshot(home: Path) -> dict[str, bytes | None]:
    """The bytes of everything that holds data (not locks or caches)."""
    names = ["agents.json", "policies.json", "prices.json", "ledger.jsonl", "ledger.jsonl.checkpoints"]
    files = {name: home / "data" / name for name in names}
    files["config.toml"] = home / "config.toml"
    files["checkpoint.key"] = home / "keys" / "checkpoint.key"
    return {name: path.read_bytes() if path.exists() else None for name, path in files.items()}


@pytest.fixture
def populated(caracal_home: Path) -> dict[str, str]:
    """An initialized home with a parent agent, a child, a policy each, a price and one charge."""
    run("init")
    parent = run_json("agent", "register", "--name", "my-agent", "--owner", "user@example.com")
    child = run_json(
        "agent", "register", "--name", "child", "--owner", "user@example.com", "--parent", "my-agent"
    )
    parent_policy = run_json("policy", "create", "--agent-id", "my-agent", "--limit", "10.00")
    child_policy = run_json("policy", "create", "--agent-id", child["agent_id"], "--limit", "5")
    run("pricebook", "set", "tool.search.calls", "0.25")
    with CaracalClient() as client:
        client.emit_event(agent_id="child", resource_type="tool.search.calls", quantity=2)
    return {
        "parent": parent["agent_id"],
        "child": child["agent_id"],
        "parent_policy": parent_policy["policy_id"],
        "child_policy": child_policy["policy_id"],
    }


# ----------------------------------------------------------------------------------- the quick start


QUICK_START = [
    "caracal init",
    'caracal agent register --name "my-agent" --owner "user@example.com"',
    "caracal policy create --agent-id <agent-id> --limit 100.00 --window daily",
    "caracal ledger query --agent-id <agent-id>",
    "caracal ledger query --start 2024-01-01 --end 2024-01-31",
    "caracal ledger summary --agent-id <agent-id>",
]


def test_the_original_quick_start_works_verbatim(caracal_home: Path) -> None:
    pytest.importorskip("genai_prices", reason="LLM prices come from genai-prices (Python 3.11+)")
    agent_id = None
    for line in QUICK_START:
        if "<agent-id>" in line:
            assert agent_id is not None
            line = line.replace("<agent-id>", agent_id)
        argv = shlex.split(line)
        assert argv[0] == "caracal"
        result = run(*argv[1:])
        if argv[1:3] == ["agent", "register"]:
            match = re.search(r"with id ([0-9a-f-]{36})", result.stdout)
            assert match, result.stdout
            agent_id = match.group(1)

    # The python part of the quick start, as written.
    from caracal.sdk.client import CaracalClient

    client = CaracalClient()
    with client.budget_check(agent_id="my-agent"):
        ...
    client.emit_event(agent_id="my-agent", resource_type="openai.gpt4.input_tokens", quantity=1000)
    client.close()

    assert agent_id is not None
    (charge,) = run_json("ledger", "query", "--agent-id", agent_id)
    assert charge["resource_type"] == GPT4_INPUT
    assert Decimal(charge["cost"]) == Decimal("0.03")  # GPT-4 input: $30 per million tokens (genai-prices)
    assert charge["cost"] == "0.030000"  # exact: 1000 x 0.000030, never rounded
    table = run("ledger", "query", "--agent-id", agent_id).stdout
    assert GPT4_INPUT in table and "0.030000" in table
    priced = run_json("pricebook", "price", GPT4_INPUT, "--quantity", "1000")
    assert priced["cost"] == "0.030000"
    assert priced["price"]["source"] == "genai-prices"
    assert priced["price"]["metadata"]["model"] == "gpt-4"
    assert run("ledger", "verify").exit_code == 0


@pytest.mark.files_only("checks the registry files a subprocess wrote")
def test_python_m_caracal_runs_in_a_real_process(tmp_path: Path) -> None:
    home = tmp_path / "subprocess-home"
    env = {**os.environ, "CARACAL_HOME": str(tmp_path / "not-this-one")}

    def caracal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "caracal", "--home", str(home), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    created = caracal("init")
    assert created.returncode == 0, created.stderr
    assert "Caracal Core initialized successfully" in created.stdout
    steps = created.stdout.split("Next steps:\n", 1)[1].splitlines()
    assert steps[0].strip().startswith("caracal agent register --name")
    for step in steps:  # the next steps it prints work, as printed
        done = caracal(*shlex.split(step)[1:])
        assert done.returncode == 0, (step, done.stderr)
    listed = json.loads(caracal("agent", "list", "--json").stdout)
    assert [agent["name"] for agent in listed] == ["my-agent"]
    duplicate = caracal("agent", "register", "--name", "my-agent", "--owner", "x")
    assert duplicate.returncode == 1
    assert duplicate.stderr.startswith("error: ") and "already exists" in duplicate.stderr
    assert (home / "data" / "agents.json").exists()
    assert not (tmp_path / "not-this-one").exists()  # --home wins over $CARACAL_HOME


# ---------------------------------------------------------------------------------------------- init


@pytest.mark.files_only(
    "the layout of a home's data folder (on PostgreSQL: tests/storage/postgres and test_cli_migrate)"
)
def test_init_creates_the_home_layout(caracal_home: Path) -> None:
    report = run_json("init")
    assert report["ok"] is True and report["home"] == str(caracal_home)
    statuses = {item["item"]: item["status"] for item in report["items"]}
    assert statuses.pop("home") == "exists"  # the fixture made the (empty) folder
    assert set(statuses.values()) == {"created"}
    assert set(statuses) >= {"config", "signing key", "ledger", "agents", "policies", "prices"}
    assert (caracal_home / "data" / "ledger.jsonl").read_bytes() == b""
    assert json.loads((caracal_home / "data" / "agents.json").read_bytes()) == {"agents": {}}
    assert json.loads((caracal_home / "data" / "policies.json").read_bytes()) == {"policies": {}}
    seeded = run_json("pricebook", "list")
    assert {p["resource_type"] for p in seeded} == {
        "tool.web_search.calls",
        "tool.http_request.calls",
        "tool.code_execution.seconds",
    }
    key = caracal_home / "keys" / "checkpoint.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) & 0o077 == 0
    assert (caracal_home / "keys" / "checkpoint.key.pub").exists()
    assert run_json("agent", "list") == []
    assert run_json("policy", "list", "--all") == []


def test_config_is_documented_and_its_values_are_the_code_defaults(caracal_home: Path) -> None:
    run("init")
    text = (caracal_home / "config.toml").read_text()
    for word in ("backup_count", "checkpoint_every", "checkpoint_interval", "backup_min_interval"):
        assert f"\n{word} = " in text
    assert "use_llm_prices = true" in text and "default_ttl = " in text
    assert "HOW IT IS READ" in text and "data/ledger.jsonl" in text and "keys/checkpoint.key" in text
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads(text)
    defaults = inspect.signature(LedgerWriter.__init__).parameters
    for name, value in config["ledger"].items():
        default = defaults[name].default if name in defaults else getattr(Settings(), name)
        assert value == default, name
    prices = inspect.signature(PriceRegistry.__init__).parameters
    assert config["pricing"]["use_llm_prices"] == prices["use_llm_prices"].default
    assert config["pricing"]["tiered_llm_prices"] == prices["tiered_llm_prices"].default
    assert config["holds"]["default_ttl"] == DEFAULT_TTL.total_seconds()
    assert config["metering"]["idempotency_window"] == DEFAULT_IDEMPOTENCY_WINDOW.total_seconds()
    written = load_settings(caracal_home)  # the server and gateway sections state the code's defaults
    assert written == Settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nport = 0\n", "server.port must be between 1 and 65535"),
        ('[server]\nport = "8787"\n', "server.port must be int"),
        ("[gateway]\nmax_output_tokens = -1\n", "must not be negative"),
        ("[gateway]\nmax_output_tokens = 0\n", "gateway.max_output_tokens must be more than 0"),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes must be more than 0"),
        ('[gateway.openai]\nbase_url = "api.openai.com"\n', "must start with http:// or https://"),
        ('[gateway.openai]\napi_kye = "sk"\n', "unknown setting gateway.openai.api_kye"),
        ('[gateway.mistral]\nbase_url = "https://x"\n', "unknown setting gateway.mistral"),
        ('[gateway.anthropic]\napi_key = ""\n', "must be a non-empty string"),
    ],
)
def test_bad_server_and_gateway_settings_fail_closed(caracal_home: Path, text: str, message: str) -> None:
    (caracal_home / "config.toml").write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        load_settings(caracal_home)


def test_gateway_upstreams_take_their_defaults_where_the_file_is_silent(caracal_home: Path) -> None:
    (caracal_home / "config.toml").write_text(
        '[gateway.openai]\nbase_url = "http://127.0.0.1:9999/v1/"\napi_key = "sk-test"\n'
    )
    settings = load_settings(caracal_home)
    assert settings.openai.base_url == "http://127.0.0.1:9999/v1"  # the trailing slash is dropped
    assert settings.openai.api_key == "sk-test" and settings.openai.api_key_env == "OPENAI_API_KEY"
    assert settings.anthropic == Settings().anthropic


def test_a_second_init_keeps_everything(caracal_home: Path, populated: dict[str, str]) -> None:
    config = caracal_home / "config.toml"
    config.write_text(config.read_text() + "\n# my own note\n")
    before = data_snapshot(caracal_home)
    report = run_json("init")
    assert report["ok"] is True
    assert {item["status"] for item in report["items"]} == {"exists"}
    details = {item["item"]: item["detail"] for item in report["items"]}
    assert details["agents"] == "2 agents" and details["policies"] == "2 policies"
    assert details["ledger"] == "1 entry"
    assert data_snapshot(caracal_home) == before
    human = run("init").stdout
    assert "already exists; nothing was changed" in human
    assert data_snapshot(caracal_home) == before


@pytest.mark.files_only("a registry file made unreadable")
def test_init_reports_an_unreadable_registry_and_leaves_it(caracal_home: Path) -> None:
    run("init")
    agents = caracal_home / "data" / "agents.json"
    agents.write_text("{broken")
    result = run("init", code=1)
    assert "error: agents" in result.stderr and "not valid JSON" in result.stderr
    assert agents.read_text() == "{broken"


@pytest.mark.files_only("three homes; $CARACAL_DATABASE_URL points every home of the test at one database")
def test_home_option_selects_the_home_for_every_command(tmp_path: Path, caracal_home: Path) -> None:
    other = tmp_path / "other-home"
    run("--home", str(other), "init")
    run("init", "--home", str(tmp_path / "third"))
    assert (tmp_path / "third" / "config.toml").exists()
    run("--home", str(other), "agent", "register", "--name", "elsewhere", "--owner", "o")
    assert [a["name"] for a in run_json("--home", str(other), "agent", "list")] == ["elsewhere"]
    assert os.environ["CARACAL_HOME"] == str(caracal_home)  # restored after the command
    assert not (caracal_home / "data").exists()
    with CaracalClient(other) as client:
        client.create_policy("elsewhere", "1")
        client.emit_event("elsewhere", "tool.web_search.calls", 3)
    (event,) = run_json("--home", str(other), "ledger", "query")  # existing commands follow --home
    assert event["cost"] == "0.03"


# ------------------------------------------------------------------------------------ agents, policies


def test_agent_commands(populated: dict[str, str]) -> None:
    listed = run_json("agent", "list")
    assert [a["name"] for a in listed] == ["child", "my-agent"]
    assert run_json("agent", "list", "--parent", "my-agent")[0]["agent_id"] == populated["child"]
    shown = run_json("agent", "show", "child")
    assert shown["parent_id"] == populated["parent"] and shown["ancestors"] == [populated["parent"]]
    assert shown["policies"][0]["policy_id"] == populated["child_policy"]
    assert "my-agent" in run("agent", "show", populated["child"]).stdout

    meta = run_json("agent", "register", "--name", "tagged", "--owner", "o", "--metadata", '{"team": "r"}')
    assert meta["metadata"] == {"team": "r"} and meta["status"] == "active"

    assert run_json("agent", "suspend", "my-agent")["status"] == "suspended"
    assert [a["name"] for a in run_json("agent", "list", "--status", "suspended")] == ["my-agent"]
    denied = run_json("budget", "check", "--agent-id", "child", code=1)
    assert denied["allowed"] is False and "suspended" in denied["reason"]
    assert run_json("agent", "activate", "my-agent")["status"] == "active"
    assert run_json("budget", "check", "--agent-id", "child")["allowed"] is True


def test_policy_lifecycle_keeps_an_audit_trail(populated: dict[str, str]) -> None:
    policy_id = populated["child_policy"]
    updated = run_json("policy", "update", policy_id, "--limit", "7.50", "--reason", "raised for launch")
    assert updated["limit"] == "7.50" and updated["revision"] == 2
    run("policy", "deactivate", policy_id, "--reason", "project over")
    assert policy_id not in [p["policy_id"] for p in run_json("policy", "list")]
    assert policy_id in [p["policy_id"] for p in run_json("policy", "list", "--all")]
    again = run("policy", "deactivate", policy_id)
    assert "already inactive; nothing changed" in again.stdout
    history = run_json("policy", "history", policy_id)
    assert [(p["revision"], p["limit"], p["active"], p.get("reason")) for p in history] == [
        (1, "5", True, "created"),
        (2, "7.50", True, "raised for launch"),
        (3, "7.50", False, "project over"),
    ]
    assert "raised for launch" in run("policy", "history", policy_id).stdout
    mine = run_json("policy", "list", "--agent-id", "my-agent")
    assert [p["policy_id"] for p in mine] == [populated["parent_policy"]]


def test_policy_windows_rolling_and_time_zones(populated: dict[str, str]) -> None:
    rolling = run_json("policy", "create", "--agent-id", "child", "--limit", "1", "--rolling", "24h")
    assert rolling["window"] == {"kind": "rolling", "duration_seconds": 86400}
    same = run_json(
        "policy", "create", "--agent-id", "child", "--limit", "1", "--window", "rolling", "--rolling", "30m"
    )
    assert same["window"]["kind"] == "rolling"
    berlin = run_json(
        "policy", "create", "--agent-id", "child", "--limit", "3", "--window", "weekly",
        "--timezone", "Europe/Berlin", "--currency", "EUR",
    )  # fmt: skip
    assert berlin["window"] == {"kind": "weekly", "timezone": "Europe/Berlin"}
    assert berlin["currency"] == "EUR"
    statuses = {s["policy_id"]: s for s in run_json("budget", "status", "--agent-id", "child")}
    _start, end = window_bounds(WindowSpec.calendar("weekly", "Europe/Berlin"), datetime.now(timezone.utc))
    assert statuses[berlin["policy_id"]]["resets_at"] == format_timestamp(end)  # Monday 00:00 in Berlin
    assert statuses[rolling["policy_id"]]["resets_at"] is None
    total = run_json("policy", "create", "--agent-id", "child", "--limit", "3", "--window", "total")
    assert total["window"]["kind"] == "total"


# ------------------------------------------------------------------------------------------- pricebook


@pytest.mark.files_only("two homes; $CARACAL_DATABASE_URL points every home of the test at one database")
def test_pricebook_set_list_price_export_import(populated: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("genai_prices", reason="LLM prices come from genai-prices (Python 3.11+)")
    price = run_json(
        "pricebook", "set", "tool.search.calls", "0.3", "--effective-from", "2099-01-01", "--note", "later"
    )
    assert price["unit_price"] == "0.3" and price["effective_from"].startswith("2099-01-01T00:00:00")
    search = run_json("pricebook", "list", "--resource-type", "tool.search.calls")
    assert [(p["unit_price"], p["in_effect"]) for p in search] == [("0.25", True), ("0.3", False)]
    now = run_json("pricebook", "price", "tool.search.calls", "--quantity", "4")
    assert (now["cost"], now["price"]["source"]) == ("1.00", "user")
    later = run_json("pricebook", "price", "tool.search.calls", "--at", "2099-06-01")
    assert later["cost"] == "0.3"
    assert "genai-prices" in run("pricebook", "price", "anthropic.claude-3-5-sonnet.output_tokens").stdout

    exported = run("pricebook", "export").stdout
    assert exported.startswith("resource_type,unit_price,currency,effective_from,note\n")
    assert "tool.search.calls,0.25,USD," in exported
    target = tmp_path / "prices.csv"
    run("pricebook", "export", str(target))
    assert target.read_text() == exported
    fresh = tmp_path / "fresh"
    run("--home", str(fresh), "pricebook", "import", str(target))
    assert run("--home", str(fresh), "pricebook", "export").stdout == exported

    sheet = tmp_path / "more.csv"
    sheet.write_text("resource_type,unit_price\ntool.a.calls,1\ntool.b.calls,0.002\n")
    imported = run_json("pricebook", "import", str(sheet))
    assert [p["resource_type"] for p in imported] == ["tool.a.calls", "tool.b.calls"]


# ---------------------------------------------------------------------------------------------- budget


def test_budget_status_after_reserve_and_settle(populated: dict[str, str]) -> None:
    # The fixture already charged the child 2 x 0.25 = 0.50.
    with CaracalClient() as client:
        hold = client.reserve("child", "3.00")
        client.settle(hold, [{"resource_type": "tool.search.calls", "quantity": "8", "cost": "2.00"}])
        client.reserve("child", "1.25")  # left open
    statuses = {s["policy_id"]: s for s in run_json("budget", "status", "--agent-id", "child")}
    child, parent = statuses[populated["child_policy"]], statuses[populated["parent_policy"]]
    assert (child["limit"], child["spent"], child["held"], child["remaining"]) == (
        "5",
        "2.50",
        "1.25",
        "1.25",
    )
    assert (parent["limit"], parent["spent"], parent["held"], parent["remaining"]) == (
        "10.00",
        "2.50",
        "1.25",
        "6.25",
    )
    assert parent["agent_name"] == "my-agent" and child["agent_name"] == "child"
    _start, end = window_bounds(WindowSpec.calendar("daily"), datetime.now(timezone.utc))
    assert child["resets_at"] == format_timestamp(end)
    # The parent sees only its own policy, not its child's.
    assert [s["policy_id"] for s in run_json("budget", "status", "--agent-id", "my-agent")] == [
        populated["parent_policy"]
    ]
    table = run("budget", "status", "--agent-id", "child").stdout
    assert "REMAINING" in table and "6.25" in table and "1.25" in table

    allowed = run_json("budget", "check", "--agent-id", "child", "--amount", "1.25")
    assert allowed["allowed"] is True and allowed["remaining"] == "1.25"
    denied = run_json("budget", "check", "--agent-id", "child", "--amount", "1.26", code=1)
    assert denied["allowed"] is False and denied["policy_id"] == populated["child_policy"]
    human = run("budget", "check", "--agent-id", "child", "--amount", "1.26", code=1).stdout
    assert human.startswith("DENIED: ")


def test_budget_without_a_policy_denies(caracal_home: Path) -> None:
    run("init")
    run("agent", "register", "--name", "lonely", "--owner", "o")
    assert "no active policy" in run("budget", "status", "--agent-id", "lonely").stdout
    assert run_json("budget", "status", "--agent-id", "lonely") == []
    decision = run_json("budget", "check", "--agent-id", "lonely", code=1)
    assert "no active policy" in decision["reason"]


def test_budget_status_without_an_agent_shows_every_agents_policies(populated: dict[str, str]) -> None:
    # The fixture charged the child 0.50; a hold of 1.25 stays open. A grandchild is covered by its
    # ancestors' policies; a loner has no policy over it at all.
    with CaracalClient() as client:
        client.reserve("child", "1.25")
    run("agent", "register", "--name", "grandchild", "--owner", "o", "--parent", "child")
    run("agent", "register", "--name", "loner", "--owner", "o")

    statuses = run_json("budget", "status")
    assert [(s["agent_name"], s["policy_id"]) for s in statuses] == [
        ("child", populated["child_policy"]),
        ("my-agent", populated["parent_policy"]),
    ]
    child, parent = statuses
    assert child == run_json("budget", "status", "--agent-id", "child")[0]  # the same figures and shape
    assert (parent["agent_id"], parent["spent"], parent["held"], parent["remaining"]) == (
        populated["parent"],
        "0.50",
        "1.25",
        "8.25",
    )

    lines = run("budget", "status").stdout.splitlines()
    assert (
        " ".join(lines[0].split()) == "AGENT AGENT ID POLICY WINDOW LIMIT SPENT HELD REMAINING CUR RESETS AT"
    )
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert rows["child"][1:8] == [
        populated["child"],
        populated["child_policy"],
        "daily",
        "5",
        "0.50",
        "1.25",
        "3.25",
    ]
    assert rows["my-agent"][1:3] == [populated["parent"], populated["parent_policy"]]
    assert lines[4:] == [
        "",
        "no active policy over 'loner' (nor over an ancestor): every action is denied; create one with "
        "'caracal policy create --agent-id NAME --limit ... --window daily'",
    ]


@pytest.mark.files_only("appends to data/ledger.jsonl with a raw LedgerWriter")
def test_ledger_query_shows_the_names_of_the_homes_agents(
    caracal_home: Path, populated: dict[str, str]
) -> None:
    # The fixture charged the child; an entry for an id the home does not know (written by a library user
    # straight into the ledger) has no name.
    with LedgerWriter(
        caracal_home / "data" / "ledger.jsonl", signing_key_path=caracal_home / "keys" / "checkpoint.key"
    ) as w:
        w.append_event("a1", "tool.x", "1", "1")
    lines = run("ledger", "query").stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "TIMESTAMP", "AGENT", "NAME", "RESOURCE"]
    assert [line.split()[2:4] for line in lines[2:]] == [[populated["child"], "child"], ["a1", "-"]]
    assert run("ledger", "query", "--agent-id", "child").stdout.splitlines()[2].split()[2:4] == [
        populated["child"],
        "child",
    ]

    charge, unknown = run_json("ledger", "query")
    assert list(charge)[:3] == ["event_id", "agent_id", "agent_name"]
    assert (charge["agent_id"], charge["agent_name"]) == (populated["child"], "child")
    assert (unknown["agent_id"], unknown["agent_name"]) == ("a1", None)
    # Beside the name, each row is still the event (readers ignore fields they do not know).
    assert LedgerEvent.from_dict(charge).to_dict() == {k: v for k, v in charge.items() if k != "agent_name"}


def test_ledger_query_of_a_ledger_without_a_home_shows_ids_only(
    caracal_home: Path, ledger_path: Path
) -> None:
    run("ledger", "append", "--ledger", str(ledger_path), "--agent-id", "a1", "--resource-type", "r",
        "--quantity", "1", "--cost", "1")  # fmt: skip
    assert run("ledger", "query", "--ledger", str(ledger_path)).stdout.splitlines()[0].split() == [
        "ID", "TIMESTAMP", "AGENT", "RESOURCE", "QUANTITY", "COST", "CUR",
    ]  # fmt: skip
    assert run_json("ledger", "query", "--ledger", str(ledger_path))[0]["agent_name"] is None


def test_budget_status_of_a_home_without_agents_or_policies(caracal_home: Path) -> None:
    run("init")
    assert run("budget", "status").stdout.startswith("no agents: register one with 'caracal agent register")
    assert run_json("budget", "status") == []
    run("agent", "register", "--name", "lonely", "--owner", "o")
    assert run("budget", "status").stdout.startswith("no active policy over 'lonely'")
    assert run_json("budget", "status") == []


# ------------------------------------------------------------------------------------------- bad input


BAD_INPUT = [
    # agents
    (["agent", "register", "--name", "my-agent", "--owner", "x"], "already exists"),
    (["agent", "register", "--name", "", "--owner", "x"], "empty"),
    (["agent", "register", "--name", "two\nlines", "--owner", "x"], "name"),
    (["agent", "register", "--name", "n", "--owner", "x", "--parent", "ghost"], "no parent named 'ghost'"),
    (["agent", "register", "--name", "n", "--owner", "x", "--metadata", "[1]"], "JSON object"),
    (["agent", "register", "--name", "n", "--owner", "x", "--metadata", "{bad"], "not valid JSON"),
    (["agent", "show", "ghost"], "no agent named 'ghost'"),
    (["agent", "show", "00000000-0000-0000-0000-000000000000"], "no agent with id"),
    (["agent", "suspend", "ghost"], "ghost"),
    (["agent", "activate", "ghost"], "ghost"),
    (["agent", "list", "--parent", "ghost"], "ghost"),
    # policies
    (["policy", "create", "--agent-id", "ghost", "--limit", "1"], "no agent named 'ghost'"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "-5"], "negative"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "abc"], "limit"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "nan"], "finite"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "inf"], "finite"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "1.2.3"], "limit"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "1", "--window", "fortnightly"], "window"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "1", "--timezone", "Mars/Olympus"], "zone"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "1", "--timezone", "localtime"], "zone"),
    (
        [
            "policy",
            "create",
            "--agent-id",
            "my-agent",
            "--limit",
            "1",
            "--window",
            "daily",
            "--rolling",
            "1h",
        ],
        "not both",
    ),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "1", "--rolling", "24"], "unit"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "1", "--window", "rolling"], "duration"),
    (["policy", "create", "--agent-id", "my-agent", "--limit", "1", "--currency", "usd"], "currency"),
    (["policy", "list", "--agent-id", "ghost"], "ghost"),
    (["policy", "update", "pol-nope", "--limit", "1"], "no policy 'pol-nope'"),
    (["policy", "update", "<child_policy>", "--limit", "-1"], "negative"),
    (["policy", "update", "<child_policy>", "--limit", "1", "--reason", "a\nb"], "reason"),
    (["policy", "deactivate", "pol-nope"], "no policy"),
    (["policy", "activate", "pol-nope"], "no policy"),
    (["policy", "history", "pol-nope"], "no policy"),
    # pricebook
    (["pricebook", "set", "tool.x.calls", "nan"], "finite"),
    (["pricebook", "set", "tool.x.calls", "inf"], "finite"),
    (["pricebook", "set", "tool.x.calls", "--", "-0.5"], "negative"),
    (["pricebook", "set", "tool.x.calls", "1.5.3"], "number"),
    (["pricebook", "set", "tool.x.calls", "0x10"], "number"),
    (["pricebook", "set", "tool.x.calls", "1,5"], "number"),
    (["pricebook", "set", "tool.x.calls", "1_000"], "plain decimal"),
    (["pricebook", "set", "tool.x.calls", " 1"], "plain decimal"),
    (["pricebook", "set", "tool.x.calls", "1", "--currency", "XYZ"], "currency"),
    (["pricebook", "set", "tool.x.calls", "1", "--effective-from", "yesterday"], "effective_from"),
    (["pricebook", "set", "bad\tname", "1"], "resource_type"),
    (["pricebook", "import", "/nonexistent/prices.csv"], "cannot read"),
    (["pricebook", "price", "tool.unknown.calls"], "no price for 'tool.unknown.calls'"),
    (["pricebook", "price", "openai.nope.input_tokens"], "no model" if HAS_GENAI else "genai-prices"),
    (["pricebook", "price", "tool.search.calls", "--quantity", "-1"], "negative"),
    # budget
    (["budget", "status", "--agent-id", "ghost"], "no agent named 'ghost'"),
    (["budget", "check", "--agent-id", "ghost"], "no agent named 'ghost'"),
    (["budget", "check", "--agent-id", "child", "--amount", "nan"], "finite"),
    (["budget", "check", "--agent-id", "child", "--amount", "1", "--currency", "dollars"], "currency"),
    # backup
    (["backup", "restore", "/nonexistent/backup", "--yes"], "not a folder"),
    (["backup", "restore", "<home>/keys", "--yes"], "not a Caracal backup"),
    (["backup", "restore", "<home>", "--yes"], "own data folder"),
    (["backup", "restore", "<home>/data", "--yes"], "own data folder"),
    (["backup", "create", "--output", "<home>/data/inside"], "inside the data folder"),
    (["backup", "create", "--output", "<home>"], "not an empty folder"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_INPUT, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_bad_input_exits_1_with_a_message_and_changes_nothing(
    caracal_home: Path, populated: dict[str, str], args: list[str], message: str, storage: str
) -> None:
    if storage == "postgresql" and args[0] == "backup":  # a database is backed up with its own tools
        message = "back it up with the database's own tools"
    names = {"<home>": str(caracal_home), **{f"<{key}>": value for key, value in populated.items()}}
    argv = []
    for arg in args:
        for placeholder, value in names.items():
            arg = arg.replace(placeholder, value)
        argv.append(arg)
    before = data_snapshot(caracal_home)
    entries = sorted(p.name for p in caracal_home.iterdir())
    result = run(*argv, code=1)
    assert result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert data_snapshot(caracal_home) == before
    assert sorted(p.name for p in caracal_home.iterdir()) == entries


def test_import_is_all_or_nothing(populated: dict[str, str], tmp_path: Path) -> None:
    before = run("pricebook", "export").stdout
    sheet = tmp_path / "bad.csv"
    sheet.write_text("resource_type,unit_price\ntool.ok.calls,1\ntool.bad.calls,1e\ntool.nan.calls,NaN\n")
    result = run("pricebook", "import", str(sheet), code=1)
    assert "line 3" in result.stderr and "line 4" in result.stderr and "Nothing was imported" in result.stderr
    assert run("pricebook", "export").stdout == before


def test_export_does_not_overwrite_without_force(populated: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "mine.csv"
    target.write_text("precious\n")
    assert "exists" in run("pricebook", "export", str(target), code=1).stderr
    assert target.read_text() == "precious\n"
    run("pricebook", "export", str(target), "--force")
    assert target.read_text().startswith("resource_type,")


def test_a_duplicate_effective_time_is_refused(populated: dict[str, str]) -> None:
    run("pricebook", "set", "tool.x.calls", "1", "--effective-from", "2025-01-01")
    result = run("pricebook", "set", "tool.x.calls", "2", "--effective-from", "2025-01-01", code=1)
    assert "never overwritten" in result.stderr
    assert [p["unit_price"] for p in run_json("pricebook", "list", "--resource-type", "tool.x.calls")] == [
        "1"
    ]


# ---------------------------------------------------------------------------------------------- backup


@pytest.mark.files_only(
    "backups copy data/; on a database: test_bad_input_exits_1_with_a_message_and_changes_nothing"
)
def test_backup_create_and_restore_round_trip(caracal_home: Path, populated: dict[str, str]) -> None:
    made = run_json("backup", "create")
    folder = Path(made["backup"])
    assert folder.parent == caracal_home / "backups"
    assert made["verification"]["ok"] is True and made["verification"]["events"] == 1
    assert (folder / "data" / "ledger.jsonl").read_bytes() == (
        caracal_home / "data/ledger.jsonl"
    ).read_bytes()
    assert not list((folder / "data").glob("*.lock"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"ledger.jsonl", "agents.json", "policies.json", "prices.json"} <= {
        f["name"] for f in manifest["files"]
    }
    assert (folder / "checkpoint.key.pub").exists()
    backed_up = data_snapshot(caracal_home)

    # Life goes on after the backup ...
    run("agent", "register", "--name", "late", "--owner", "o")
    with CaracalClient() as client:
        client.emit_event("child", "tool.search.calls", 1)
    after = data_snapshot(caracal_home)

    # ... a restore without --yes refuses and changes nothing ...
    refused = run("backup", "restore", str(folder), code=1)
    assert refused.stderr.startswith("error: ") and "--yes" in refused.stderr
    assert data_snapshot(caracal_home) == after

    # ... and with --yes brings the backup back, keeping the newer data aside.
    restored = run_json("backup", "restore", str(folder), "--yes")
    assert restored["restored"] is True and restored["verification"]["ok"] is True
    assert restored["verification"]["events"] == 1
    assert data_snapshot(caracal_home) == backed_up
    assert [a["name"] for a in run_json("agent", "list")] == ["child", "my-agent"]
    aside = Path(restored["previous_data"])
    assert aside.name.startswith("data.before-restore-") and aside.parent == caracal_home
    assert b'"late"' in (aside / "agents.json").read_bytes()
    assert run("ledger", "verify").exit_code == 0
    # The restored home keeps working: new charges continue the ledger's ids.
    with CaracalClient() as client:
        assert client.emit_event("child", "tool.search.calls", 1).event_id == 2
    assert run("ledger", "verify").exit_code == 0

    human = run("backup", "restore", str(folder), "--yes").stdout
    assert "previous data kept in" in human and "OK: the ledger is intact" in human


@pytest.mark.files_only("backups copy data/")
def test_backup_to_an_output_folder_and_a_tampered_backup_is_refused(
    caracal_home: Path, populated: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "offsite"
    text = run("backup", "create", "--output", str(output)).stdout
    assert f"backup: {output}" in text and "OK: the ledger is intact" in text
    before = data_snapshot(caracal_home)

    agents = output / "data" / "agents.json"
    agents.write_bytes(agents.read_bytes().replace(b"my-agent", b"my-agenT"))
    result = run("backup", "restore", str(output), "--yes", code=1)
    assert "agents.json does not match its SHA-256" in result.stderr
    assert data_snapshot(caracal_home) == before
    assert not [p for p in caracal_home.iterdir() if p.name.startswith((".data", "data."))]

    ledger = output / "data" / "ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes().replace(b'"cost":"0.50"', b'"cost":"0.05"'))
    result = run("backup", "restore", str(output), "--yes", code=3)
    assert "fails verification" in result.stderr
    assert data_snapshot(caracal_home) == before


@pytest.mark.files_only("backups copy data/ under the ledger file's lock")
def test_backup_waits_for_the_ledger_lock(
    caracal_home: Path, populated: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = os.open(caracal_home / "data" / "ledger.jsonl.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        monkeypatch.setattr(backup_module, "LOCK_TIMEOUT", 0.2)
        result = run("backup", "create", code=1)
        assert "timed out" in result.stderr
        assert not (caracal_home / "backups").exists() or not any((caracal_home / "backups").iterdir())

        monkeypatch.setattr(backup_module, "LOCK_TIMEOUT", 30.0)
        threading.Timer(0.3, fcntl.flock, (lock, fcntl.LOCK_UN)).start()
        started = time.monotonic()
        made = run_json("backup", "create")
        assert time.monotonic() - started >= 0.2  # it waited for the writer's lock
        assert made["verification"]["ok"] is True
    finally:
        os.close(lock)


@pytest.mark.files_only("an uninitialized home has no data/ledger.jsonl to back up")
def test_backup_of_an_uninitialized_home_is_refused(caracal_home: Path) -> None:
    result = run("backup", "create", code=1)
    assert "caracal init" in result.stderr
    assert not caracal_home.joinpath("backups").exists()
