"""A home with one agent, "bot" (a daily budget in USD), and a price for ``tool.calls`` at 1 USD; and a
script that charges it from another process. For the tests that edit a home's ledger under a client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from caracal.core.windows import parse_window
from caracal.storage.home import EmbeddedHome

CHARGE = """
import sys
from caracal.sdk.client import CaracalClient
with CaracalClient(sys.argv[1]) as client:
    for quantity in sys.argv[2:]:
        client.emit_event("bot", "tool.calls", quantity)
"""


def bot_home(home: Path, limit: str) -> Path:
    """Create the home at ``home``; returns its ledger file."""
    home.mkdir()
    embedded = EmbeddedHome(home)
    bot = embedded.agents.register("bot", "ops@example.com")
    embedded.policies.create(bot.agent_id, limit, parse_window("daily"), "USD")
    embedded.prices.set("tool.calls", "1", "USD")
    ledger = embedded.ledger_path
    embedded.close()
    return ledger


def charge_from_another_process(home: Path, *quantities: str) -> None:
    """``emit_event`` of each quantity of ``tool.calls`` for "bot", by a new Python process."""
    subprocess.run([sys.executable, "-c", CHARGE, str(home), *quantities], check=True, timeout=120)
