"""Shared fixtures: every test runs with its own Caracal home, so keys and default ledgers never touch ~."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def caracal_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$CARACAL_HOME`` for each test (inherited by subprocesses the test starts)."""
    home = tmp_path_factory.mktemp("caracal-home")
    monkeypatch.setenv("CARACAL_HOME", str(home))
    return home


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Where a test's ledger lives: a folder apart from the home (the signing key must not sit beside it)."""
    return tmp_path / "ledger" / "ledger.jsonl"
