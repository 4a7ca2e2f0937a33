"""``caracal --config FILE ...``: a v0.1 script of CLI commands runs unchanged on a v0.1 configuration's
files, with v0.1's output, and our promises underneath (exact money, all-or-nothing imports, consistent
backups that restore to a ledger that still accepts charges, no command run on another home)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from caracal.cli.main import main
from tests.v01.test_v01_program import v01_config

SCRIPT = """\
set -eu
caracal() { "$PYTHON" -m caracal "$@"; }
C="$1"
caracal --config "$C" init
caracal --config "$C" agent register --name researcher --owner ops@example.com -m team=ml
ID=$(caracal --config "$C" agent list --format json \
     | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[0]["agent_id"])')
caracal --config "$C" agent get --agent-id "$ID"
caracal --config "$C" policy create --agent-id "$ID" --limit 0.10 --window daily --currency USD
caracal --config "$C" policy get --agent-id "$ID" --format json > policies.json.out
caracal --config "$C" pricebook set --resource custom.api.calls --price 0.000030
caracal --config "$C" pricebook import --file prices.json
caracal --config "$C" pricebook get --resource custom.api.calls --format json > price.json.out
"$PYTHON" - "$C" "$ID" <<'EOF'
import sys
from decimal import Decimal
from caracal.sdk.client import CaracalClient
client = CaracalClient(config_path=sys.argv[1])
client.emit_event(agent_id=sys.argv[2], resource_type="custom.api.calls", quantity=Decimal("1000"))
client.emit_event(agent_id=sys.argv[2], resource_type="custom.batch.calls", quantity=Decimal("3"))
EOF
caracal --config "$C" ledger query --agent-id "$ID"
caracal --config "$C" ledger query --resource custom.api.calls --format json > events.json.out
caracal --config "$C" ledger summary --agent-id "$ID" --start 2000-01-01 --end 2999-12-31 --format json \
  > summary.json.out
caracal --config "$C" backup create --name before-upgrade
caracal --config "$C" backup list --json > backups.json.out
"""


def test_a_v01_script_of_cli_commands_runs_unchanged(tmp_path: Path) -> None:
    (tmp_path / "prices.json").write_text(
        json.dumps({"custom.batch.calls": {"price": "0.01", "currency": "USD"}})
    )
    config = tmp_path / "v01" / "config.yaml"
    (tmp_path / "script.sh").write_text(SCRIPT)
    done = subprocess.run(
        ["bash", "script.sh", str(config)],
        cwd=tmp_path,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "✓ Caracal Core initialized successfully!" in out and "✓ Agent registered successfully!" in out
    assert "Agent Details" in out and "team: ml" in out
    assert "✓ Policy created successfully!" in out and "Limit:        0.10 USD" in out
    assert "✓ Price set successfully!" in out and "✓ Successfully imported 1 prices!" in out
    assert "Total events: 2" in out
    policies = json.loads((tmp_path / "policies.json.out").read_text())
    assert [p["limit_amount"] for p in policies] == ["0.10"]
    assert json.loads((tmp_path / "price.json.out").read_text())["price_per_unit"] == "0.000030"
    events = json.loads((tmp_path / "events.json.out").read_text())
    assert [(e["quantity"], e["cost"]) for e in events] == [("1000", "0.030000")]  # exact text, never a float
    summary = json.loads((tmp_path / "summary.json.out").read_text())
    assert Decimal(summary["total_spending"]) == Decimal("0.060000")
    assert summary["breakdown_by_resource"] == {"custom.api.calls": "0.030000", "custom.batch.calls": "0.03"}
    backups = json.loads((tmp_path / "backups.json.out").read_text())
    assert [b["name"] for b in backups] == ["before-upgrade"] and backups[0]["verified"] is True
    # The files are v0.1's: a JSON list of agents and the pricebook CSV with v0.1's header.
    folder = config.parent
    assert isinstance(json.loads((folder / "agents.json").read_text()), list)
    header = (folder / "pricebook.csv").read_text().splitlines()[0]
    assert header.startswith("resource_type,price_per_unit,currency,updated_at")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return v01_config(tmp_path)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def agent(config: Path, name: str = "a") -> str:
    done = cli("--config", str(config), "agent", "register", "--name", name, "--owner", "o@example.com")
    assert done.exit_code == 0, done.output
    return done.output.split("Agent ID:")[1].split()[0]


def charge(config: Path, agent_id: str, quantity: str = "1000") -> None:
    from caracal.sdk.client import CaracalClient

    client = CaracalClient(config_path=str(config))
    try:
        client.emit_event(
            agent_id=agent_id, resource_type="openai.gpt4.input_tokens", quantity=Decimal(quantity)
        )
    finally:
        client.close()


def test_commands_v01_did_not_have_are_refused_with_a_configuration(config: Path) -> None:
    done = CliRunner().invoke(main, ["--config", str(config), "budget", "status", "x"])
    assert done.exit_code == 2 and "a v0.1 configuration has only the commands" in done.output
    assert not (config.parent / "agents.json").exists()  # nothing was opened, let alone written


def test_a_missing_configuration_runs_only_init(tmp_path: Path) -> None:
    missing = tmp_path / "new" / "config.yaml"
    refused = CliRunner().invoke(main, ["--config", str(missing), "agent", "list"])
    assert refused.exit_code == 1 and "does not exist" in refused.output
    assert cli("--config", str(missing), "init").exit_code == 0
    again = cli("--config", str(missing), "init")
    assert "Configuration already exists" in again.output and "Agent registry already exists" in again.output
    assert cli("--config", str(missing), "agent", "list").output.strip() == "No agents registered."


def test_pricebook_import_is_all_or_nothing(config: Path, tmp_path: Path) -> None:
    before = (config.parent / "pricebook.csv").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"good.resource": {"price": "0.01"}, "bad.resource": {"price": "-1"}}))
    done = CliRunner().invoke(main, ["--config", str(config), "pricebook", "import", "--file", str(bad)])
    assert done.exit_code == 1 and "Error:" in done.output and "non-negative" in done.output
    assert (config.parent / "pricebook.csv").read_bytes() == before
    floats = tmp_path / "float.json"
    floats.write_text('{"x.y": {"price": 0.1}}')  # a JSON number: parsed exactly, never via a float
    assert cli("--config", str(config), "pricebook", "import", "--file", str(floats)).exit_code == 0
    shown = json.loads(
        cli("--config", str(config), "pricebook", "get", "-r", "x.y", "--format", "json").output
    )
    assert shown["price_per_unit"] == "0.1"


def test_a_v01_pricebook_csv_is_read_as_it_is(config: Path) -> None:
    listed = json.loads(cli("--config", str(config), "pricebook", "list", "--format", "json").output)
    assert listed["openai.gpt4.input_tokens"]["price_per_unit"] == "0.000030"
    assert listed["openai.gpt4.input_tokens"]["updated_at"].startswith("2024-01-15T10:00:00")
    unknown = CliRunner().invoke(main, ["--config", str(config), "pricebook", "get", "-r", "no.such"])
    assert unknown.exit_code == 1 and "refused" in unknown.output  # never "a price of 0"


def test_ledger_summary_is_exact_and_refuses_to_mix_currencies(config: Path) -> None:
    agent_id = agent(config)
    for quantity in ("1", "2", "4"):
        charge(config, agent_id, quantity)
    args = ["--config", str(config), "ledger", "summary", "--start", "2000-01-01", "--end", "2999-12-31"]
    summary = json.loads(cli(*args, "--format", "json").output)
    assert summary["agents"] == {agent_id: "0.000210"}  # 7 x 0.000030, exactly
    from caracal.core.ledger import LedgerWriter

    with LedgerWriter(config.parent / "ledger.jsonl") as writer:
        writer.append_event(agent_id, "other", Decimal("1"), Decimal("1"), currency="EUR")
    mixed = CliRunner().invoke(main, args)
    assert mixed.exit_code == 1 and "several currencies" in mixed.output


def test_a_restored_backup_still_accepts_charges(config: Path) -> None:
    agent_id = agent(config)
    charge(config, agent_id)
    assert cli("--config", str(config), "backup", "create", "--name", "one").exit_code == 0
    charge(config, agent_id)
    charge(config, agent_id)
    archive = config.parent / "backups" / "one.tar.gz"
    restored = cli("--config", str(config), "backup", "restore", "--force", str(archive))
    assert "✓ Restore completed successfully!" in restored.output
    # Without the ledger's checkpoints restored with it, the ledger would refuse every write (a signed
    # checkpoint of 3 events over a ledger of 1 looks like a truncated tail).
    charge(config, agent_id)
    events = json.loads(cli("--config", str(config), "ledger", "query", "--format", "json").output)
    assert [e["event_id"] for e in events] == [1, 2]
    safety = sorted((config.parent / "backups").glob("safety_backup_*.tar.gz"))
    with tarfile.open(safety[0]) as tar:
        assert "ledger.jsonl" in tar.getnames()  # the replaced files were kept


def test_a_backup_is_never_overwritten_nor_restored_when_altered(config: Path) -> None:
    agent(config)
    assert cli("--config", str(config), "backup", "create", "--name", "same").exit_code == 0
    archive = config.parent / "backups" / "same.tar.gz"
    original = archive.read_bytes()
    again = CliRunner().invoke(main, ["--config", str(config), "backup", "create", "--name", "same"])
    assert again.exit_code == 1 and "already exists" in again.output and archive.read_bytes() == original
    sneaky = CliRunner().invoke(main, ["--config", str(config), "backup", "create", "--name", "../x"])
    assert sneaky.exit_code == 1 and not (config.parent / "x.tar.gz").exists()
    archive.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    agents_before = (config.parent / "agents.json").read_bytes()
    refused = CliRunner().invoke(
        main, ["--config", str(config), "backup", "restore", "--force", str(archive)]
    )
    assert refused.exit_code == 1 and "integrity check failed" in refused.output
    assert (config.parent / "agents.json").read_bytes() == agents_before


def test_format_json_is_json_on_our_commands_too(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    assert cli("--home", home, "init").exit_code == 0
    assert cli("--home", home, "agent", "register", "--name", "n", "--owner", "o").exit_code == 0
    as_json = cli("--home", home, "agent", "list", "--json").output
    assert cli("--home", home, "agent", "list", "--format", "json").output == as_json
    assert json.loads(as_json)
    assert not cli("--home", home, "agent", "list", "--format", "table").output.lstrip().startswith("[")


def test_v01_errors_and_messages(config: Path) -> None:
    agent_id = agent(config)
    base = ["--config", str(config)]
    cases = [
        (["policy", "create", "-a", agent_id, "-l", "abc"], "Invalid limit amount"),
        (["policy", "create", "-a", agent_id, "-l", "0"], "must be positive"),
        (["policy", "create", "-a", "00000000-0000-0000-0000-000000000000", "-l", "1"], "does not exist"),
        (["pricebook", "set", "-r", " ", "-p", "1"], "cannot be empty"),
        (["pricebook", "set", "-r", "x", "-p", "0.0000001"], "at most 6 decimal places"),
        (["ledger", "query", "--start", "yesterday"], "Invalid start time"),
        (["ledger", "query", "--start", "2024-02-01", "--end", "2024-01-01"], "Start time must be before"),
        (["agent", "get", "-a", "nobody"], "Agent not found"),
    ]
    for args, message in cases:
        done = CliRunner().invoke(main, base + args)
        assert done.exit_code == 1 and "Error: " in done.output and message in done.output, (
            args,
            done.output,
        )
    assert not (config.parent / "policies.json").exists()  # nothing refused was written
    hourly = cli(*base, "policy", "create", "-a", agent_id, "-l", "1.50", "-w", "hourly", "-c", "eur")
    assert "Limit:        1.50 EUR" in hourly.output and "Time Window:  hourly" in hourly.output


def test_pricebook_import_takes_a_flat_resource_to_price_object(config: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat.json"
    flat.write_text('{"tool.a": "0.25", "tool.b": 0.5}')
    assert cli("--config", str(config), "pricebook", "import", "--file", str(flat)).exit_code == 0
    for resource, price in (("tool.a", "0.25"), ("tool.b", "0.5")):
        shown = json.loads(
            cli("--config", str(config), "pricebook", "get", "-r", resource, "--format", "json").output
        )
        assert (shown["price_per_unit"], shown["currency"]) == (price, "USD")
    refused = tmp_path / "refused.json"
    refused.write_text('{"tool.c": true}')
    done = CliRunner().invoke(main, ["--config", str(config), "pricebook", "import", "--file", str(refused)])
    assert done.exit_code == 1 and "missing 'price'" in done.output
