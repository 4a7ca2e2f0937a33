"""A cold replay (no budget snapshot) holds one batch of entries at a time, on both backends: replaying ten
times the ledger peaks at about the same traced memory (lines or rows are streamed in batches, each folded
into the aggregates and dropped; before, every entry of a replay was held at once: ~740 bytes each)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from caracal.config import Settings
from caracal.core.enforcement import Enforcer
from caracal.core.ledger import LedgerWriter
from caracal.storage.backends import open_backend
from caracal.storage.home import EmbeddedHome
from tests.pg import database_url_or_skip, storage_config


def replay_peak(folder: Path, url: str | None, events: int) -> tuple[int, int]:
    """``events`` charges appended in batches, then the peak traced memory of a cold replay."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(storage_config(url))
    backend = open_backend(folder, Settings(), url)
    key = folder / "keys" / "checkpoint.key"
    batch = [{"agent_id": "agent-1", "resource_type": "tokens", "quantity": "1", "cost": "0.001"}] * 1000
    store = backend.ledger_store(lock_timeout=10, backup_count=0, backup_min_interval=0)
    with LedgerWriter(store, signing_key_path=key, checkpoint_interval=0) as writer:
        for _ in range(events // 1000):
            writer.append_events(batch)
    backend.close()
    home = EmbeddedHome(folder)
    try:
        enforcer = Enforcer(home.writer(), home.directory)  # no snapshot: a checked replay
        tracemalloc.start()
        replayed = enforcer.catch_up().last_event_id
        _now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        home.close()
    return replayed, peak


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["files", "postgresql"])
def test_replay_memory_does_not_grow_with_the_ledger(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    def url() -> str | None:
        return None if backend == "files" else database_url_or_skip(request)

    small = replay_peak(tmp_path / "small", url(), 20_000)
    large = replay_peak(tmp_path / "large", url(), 200_000)
    assert small[0] == 20_000 and large[0] == 200_000
    assert large[1] < small[1] * 1.5 + (1 << 20), (small, large)
