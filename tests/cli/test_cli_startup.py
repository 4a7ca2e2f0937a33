"""First contact: ``caracal --help`` and the everyday commands import only what they use.

Speed itself is measured by ``bench/bench_startup.py`` (tests never time anything); these tests check the
cause: which modules a fresh ``caracal`` process imports, in a real subprocess. They also hold the lazily
loaded command list to the commands it stands for, so ``caracal --help`` reads exactly as if every
command had been imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from caracal.sdk.client import CaracalClient

SERVER_MODULES = ("fastapi", "uvicorn", "httpx", "genai_prices", "prometheus_client", "starlette")
"""What only ``caracal serve`` (and LLM pricing) needs."""

COMMAND_MODULES = tuple(
    f"caracal.cli.{name}"
    for name in ("agents", "backup", "budget", "demo", "home", "ledger", "ledger_demo", "policies", "serve")
)

PROBE = """
import json, sys
from caracal.cli.main import main
code = None
try:
    main(sys.argv[1:], prog_name="caracal")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def imported_by(*args: str) -> set[str]:
    """The modules a fresh process has imported once ``caracal ARGS`` has run (and it exited 0)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, check=False
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), done
    return set(report["modules"])


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_help_imports_no_command_and_no_heavy_library() -> None:
    modules = imported_by("--help")
    assert not top_level(modules) & {*SERVER_MODULES, "cryptography", "asyncio"}
    assert not modules & {*COMMAND_MODULES, "caracal.core.ledger", "caracal.sdk.client"}


@pytest.fixture
def home_with_spend(caracal_home: Path) -> Path:
    with CaracalClient(caracal_home) as client:
        client.register_agent("lead", "ops@example.com")
        client.create_policy("lead", "10", "daily")
        client.set_price("tool.search.calls", "0.25")
        client.emit_event("lead", "tool.search.calls", 2)
    return caracal_home


@pytest.mark.parametrize(
    "args",
    [
        ("budget", "status", "--agent-id", "lead"),
        ("budget", "status"),
        ("ledger", "query"),
        ("agent", "list"),
    ],
    ids=" ".join,
)
def test_common_commands_import_neither_the_server_nor_asyncio(
    home_with_spend: Path, args: tuple[str, ...]
) -> None:
    modules = imported_by(*args)
    assert not top_level(modules) & {*SERVER_MODULES, "asyncio"}
    assert "cryptography.hazmat.primitives.serialization" not in modules  # the key is read without it
    assert "caracal.cli.serve" not in modules and "caracal.server" not in top_level(modules)


def test_reading_the_ledger_loads_no_signing_library(home_with_spend: Path) -> None:
    assert "cryptography" not in top_level(imported_by("ledger", "query"))


def test_each_lazy_summary_is_the_first_sentence_of_its_command() -> None:
    from caracal.cli.lazy import LazyGroup
    from caracal.cli.ledger import ledger_group
    from caracal.cli.main import main

    assert isinstance(main, LazyGroup) and isinstance(ledger_group, LazyGroup)
    context = click.Context(main)
    for group in (main, ledger_group):
        for name, spec in group.lazy_commands.items():
            command = group.get_command(context, name)
            assert command is not None, name
            assert spec.summary == command.get_short_help_str(limit=10_000), name


HELP_BEFORE_AND_AFTER_LOADING = """
import click, json, sys
from caracal.cli.main import main
pages = []
for width in (40, 80, 200):
    context = click.Context(main, info_name="caracal", terminal_width=width, max_content_width=width)
    lazy = main.get_help(context)
    for name in main.list_commands(context):
        main.get_command(context, name)
    pages.append([lazy, main.get_help(context)])
    main.commands.clear()
print(json.dumps(pages))
"""


def test_help_lists_every_command_as_the_loaded_commands_would() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_BEFORE_AND_AFTER_LOADING], capture_output=True, text=True, check=True
    )
    pages = json.loads(done.stdout)
    assert len(pages) == 3
    for lazy, loaded in pages:
        assert lazy == loaded
        assert all(f"\n  {name} " in lazy for name in ("agent", "budget", "ledger", "serve"))
