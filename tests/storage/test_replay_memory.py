"""A cold replay (no budget snapshot) holds one batch of entries at a time, on both backends: replaying ten
times the ledger peaks at about the same traced memory (lines or rows are streamed in batches, each folded
into the aggregates and dropped; before, every entry of a replay was held at once: ~740 bytes each)."""

from __future__ import annotations

import tracemalloc
import uuid
from pathlib import Path

import pytest

from caracal.config import Settings
from caracal.core.enforcement import Enforcer
from caracal.core.ledger import LedgerWriter
from caracal.storage.backends import open_backend
from caracal.storage.home import EmbeddedHome
from tests.pg import database_url_or_skip, storage_config


def gateway_batch() -> list[dict[str, object]]:
    """999 entries as the gateway writes them: 333 calls, each a hold (charged if it expires), the charge
    against it with the call's usage, and its release."""
    expires = "2099-01-01T00:00:00.000000Z"
    items: list[dict[str, object]] = []
    for _ in range(333):
        hold = f"hold-{uuid.uuid4()}"
        items += [
            {"agent_id": "agent-1", "resource_type": "caracal.hold", "quantity": "0", "cost": "0.01",
             "kind": "hold", "hold_id": hold, "expires_at": expires, "on_expiry": "charge"},
            {"agent_id": "agent-1", "resource_type": "tokens", "quantity": "10", "cost": "0.001",
             "hold_id": hold, "metadata": {"input_tokens": 8, "output_tokens": 2}},
            {"agent_id": "agent-1", "resource_type": "caracal.hold", "quantity": "0", "cost": "0",
             "kind": "release", "hold_id": hold, "metadata": {"reason": "settled"}},
        ]  # fmt: skip
    return items


def replay_peak(folder: Path, url: str | None, events: int, shape: str = "charges") -> tuple[int, int]:
    """``events`` entries appended in batches (plain charges, or the gateway's holds, charges against them
    and releases), then the peak traced memory of a cold replay."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(storage_config(url))
    backend = open_backend(folder, Settings(), url)
    key = folder / "keys" / "checkpoint.key"
    plain = [{"agent_id": "agent-1", "resource_type": "tokens", "quantity": "1", "cost": "0.001"}] * 1000
    store = backend.ledger_store(lock_timeout=10, backup_count=0, backup_min_interval=0)
    with LedgerWriter(store, signing_key_path=key, checkpoint_interval=0) as writer:
        while writer.last_event_id < events:
            batch = plain if shape == "charges" else gateway_batch()
            writer.append_events(batch[: events - writer.last_event_id])
    backend.close()
    home = EmbeddedHome(folder)
    try:
        writer = home.writer()
        tracemalloc.start()  # before the enforcer: opening it replays a long ledger
        enforcer = Enforcer(writer, home.directory)  # no snapshot: a checked replay
        replayed = enforcer.catch_up().last_event_id
        _now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        home.close()
    return replayed, peak


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["charges", "gateway"])
@pytest.mark.parametrize("backend", ["files", "postgresql"])
def test_replay_memory_does_not_grow_with_the_ledger(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, shape: str
) -> None:
    """Also for the gateway's entries: every hold of those is charged if it expires, and the index of
    such holds' expiries once kept an entry for every hold ever opened (about 200 bytes each)."""

    def url() -> str | None:
        return None if backend == "files" else database_url_or_skip(request)

    small = replay_peak(tmp_path / "small", url(), 20_000, shape)
    large = replay_peak(tmp_path / "large", url(), 200_000, shape)
    assert small[0] == 20_000 and large[0] == 200_000
    assert large[1] < small[1] * 1.2 + (1 << 20), (small, large)  # ten times the ledger, the same memory
