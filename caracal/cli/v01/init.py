"""``caracal --config FILE init``: v0.1's layout, in the folder of ``FILE``.

Creates what is missing and never overwrites anything (each file is created exclusively; one that exists
is reported and left as it is), so running it again is always safe::

    FILE                 the configuration (v0.1's sections; paths next to it)
    agents.json          []
    policies.json        []
    ledger.jsonl         (empty)
    pricebook.csv        v0.1's sample prices (illustrative: set your own)
    backups/

When ``FILE`` already exists, the files it names are created where it names them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from caracal.cli.v01.common import session, v01_errors
from caracal.core.fileio import write_atomically
from caracal.exceptions import ConfigurationError

CONFIG_TEMPLATE = """\
# Caracal Core configuration (v0.1 format), written by `caracal --config {config} init`.

storage:
  agent_registry: {agents}
  policy_store: {policies}
  ledger: {ledger}
  pricebook: {pricebook}
  backup_dir: {backups}
  backup_count: 3

defaults:
  currency: USD
  time_window: daily
  default_budget: 100.00

logging:
  level: INFO
  file: {caracal}
  format: "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
"""

SAMPLE_PRICEBOOK = """\
resource_type,price_per_unit,currency,updated_at
openai.gpt4.input_tokens,0.000030,USD,2024-01-15T10:00:00Z
openai.gpt4.output_tokens,0.000060,USD,2024-01-15T10:00:00Z
openai.gpt35.input_tokens,0.000001,USD,2024-01-15T10:00:00Z
openai.gpt35.output_tokens,0.000002,USD,2024-01-15T10:00:00Z
anthropic.claude3.input_tokens,0.000015,USD,2024-01-15T10:00:00Z
anthropic.claude3.output_tokens,0.000075,USD,2024-01-15T10:00:00Z
"""
"""v0.1's sample prices (its 2024 figures, illustrative): what its ``caracal init`` wrote."""


def config_text(config_path: Path) -> str:
    """v0.1's default configuration with every file next to ``config_path`` (paths quoted for YAML)."""
    files = ("agents", "policies", "ledger", "pricebook", "backups", "caracal")
    suffixes = (".json", ".json", ".jsonl", ".csv", "", ".log")
    paths = {
        name: json.dumps(str(config_path.parent / (name + suffix)))
        for name, suffix in zip(files, suffixes, strict=True)
    }
    return CONFIG_TEMPLATE.format(config=config_path, **paths)


def _create(path: Path, text: str, what: str) -> None:
    """Create ``path`` with ``text`` unless it exists (never replaced); say which happened."""
    try:
        write_atomically(path, text.encode(), exclusive=True)
    except FileExistsError:
        click.echo(f"{what} already exists: {path}")
    except OSError as exc:
        raise ConfigurationError(f"cannot create {what.lower()} {path}: {exc.strerror or exc}") from exc
    else:
        click.echo(f"Created {what.lower()}: {path}")


@click.command("init")
@v01_errors
def init_command() -> None:
    """Create the files of a v0.1 configuration (config.yaml, agents, policies, ledger, pricebook)."""
    current = session()
    config_path = current.config_path.expanduser().absolute()
    folder = config_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    click.echo(f"Created directory: {folder}")
    if not current.exists:
        _create(config_path, config_text(config_path), "Configuration")
        from caracal.config.settings import load_config

        current.config = load_config(config_path)
    else:
        click.echo(f"Configuration already exists: {config_path}")
    storage = current.config.storage
    backups = Path(storage.backup_dir)
    try:
        backups.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {backups}: {exc.strerror or exc}") from exc
    _create(Path(storage.agent_registry), "[]", "Agent registry")
    _create(Path(storage.policy_store), "[]", "Policy store")
    _create(Path(storage.ledger), "", "Ledger")
    _create(Path(storage.pricebook), SAMPLE_PRICEBOOK, "Pricebook (sample prices: set your own)")
    click.echo("\n✓ Caracal Core initialized successfully!")
    click.echo(f"\nConfiguration: {config_path}")
    click.echo("\nNext steps:")
    run = f"caracal --config {config_path}"
    click.echo(f"  1. Register an agent: {run} agent register --name my-agent --owner user@example.com")
    click.echo(f"  2. Create a policy: {run} policy create --agent-id <uuid> --limit 100.00")
    click.echo(f"  3. Query the ledger: {run} ledger query")


__all__ = ["init_command"]
