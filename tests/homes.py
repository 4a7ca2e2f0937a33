"""Reading a test home's ledger and caches on whichever backend the test runs (files or PostgreSQL).

Each helper opens the home, reads, and closes it again (a database connection left open by every test
would exhaust the server's connections). None opens a ledger writer: reading must not change the home (a
writer checkpoints when it closes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from caracal.core.checkpoint import CheckpointStore, load_public_key
from caracal.core.events import LedgerEvent
from caracal.core.filestore import sidecar_path
from caracal.core.ledger import LedgerQuery, LedgerReader
from caracal.core.sealed import unseal
from caracal.core.verify import VerificationReport, verify_ledger
from caracal.storage.home import EmbeddedHome
from tests.caches import cache_key


def events(home: Path) -> list[LedgerEvent]:
    """Every entry of the home's ledger (charges, holds, releases)."""
    opened = EmbeddedHome(home)
    try:
        return list(LedgerReader(opened.ledger).iter_events())
    finally:
        opened.close()


def charges(home: Path) -> list[LedgerEvent]:
    opened = EmbeddedHome(home)
    try:
        return LedgerQuery(opened.ledger).get_events(charges_only=True)
    finally:
        opened.close()


def verify(home: Path) -> VerificationReport:
    """``caracal ledger verify`` of the home's ledger, signatures checked with the home's key."""
    opened = EmbeddedHome(home)
    try:
        return verify_ledger(opened.ledger, public_key=load_public_key(opened.key_path))
    finally:
        opened.close()


def sealed_cache(home: Path, purpose: str) -> Any | None:
    """The home's sealed cache of ``purpose`` (``budget``, ``merkle``), unsealed; None when absent."""
    opened = EmbeddedHome(home)
    try:
        ledger = opened.ledger
        if isinstance(ledger, Path):
            cache = sidecar_path(ledger, purpose)
            data = cache.read_bytes() if cache.exists() else None
        else:
            data = ledger.load_cache(purpose)
    finally:
        opened.close()
    if data is None:
        return None
    return orjson.loads(unseal(cache_key(purpose, home / "keys" / "checkpoint.key"), purpose, data))


def latest_checkpoint(home: Path) -> Any:
    """The home's latest signed checkpoint (None when there is none)."""
    opened = EmbeddedHome(home)
    try:
        ledger = opened.ledger
        if isinstance(ledger, Path):
            return CheckpointStore(sidecar_path(ledger, "checkpoints")).latest()
        return ledger.checkpoints.latest()
    finally:
        opened.close()
