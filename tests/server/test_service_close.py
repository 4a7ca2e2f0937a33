"""Closing a service whose ledger fails verification by then (edited under it) closes the home and logs
why no snapshot was saved, instead of raising out of the server's shutdown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from caracal.core.windows import parse_window
from caracal.exceptions import LedgerVerificationError
from caracal.server.service import Service
from tests.bot_home import charge_from_another_process


@pytest.mark.files_only("edits the ledger file")
def test_closing_on_a_ledger_that_fails_verification_logs_and_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[alerts]\ninterval = 3600\n")  # nothing catches up but the test
    service = Service(home)
    bot = service.home.agents.register("bot", "ops@example.com")
    service.home.policies.create(bot.agent_id, "10", parse_window("daily"), "USD")
    service.home.prices.set("tool.calls", "1", "USD")
    charge_from_another_process(home, "1", "2", "3")
    ledger = service.home.ledger_path
    data = ledger.read_bytes()
    assert data.count(b'"cost":"2"') == 1
    ledger.write_bytes(data.replace(b'"cost":"2"', b'"cost":"0"'))
    with pytest.raises(LedgerVerificationError):
        service.enforcer.catch_up()
    with caplog.at_level(logging.ERROR, logger="caracal.server"):
        service.close()
    assert "without saving the budget snapshot" in caplog.text
    service.close()  # a second close is harmless
