"""Verify streams: its memory does not grow with the ledger's length, in one process or two.

Leaf hashes are folded into the Merkle frontier as lines are scanned, a bounded batch at a time, and every
checkpoint's root is compared when the tree reaches its size; the parallel child hands its leaves back
through a temporary file, not through memory. Before, every leaf hash was kept until the end (about 73
bytes of Python objects per event), so verifying ten times the ledger took about ten times the memory.
"""

from __future__ import annotations

import tempfile
import tracemalloc
from pathlib import Path

import orjson
import pytest

from caracal.core.ledger import LedgerWriter
from caracal.core.merkle import leaf_hash
from caracal.core.verify import VerificationReport, default_public_key, verify_ledger

CHECKPOINT_FRACTIONS = (0.3, 0.55, 0.8)  # sizes that fall inside fold batches, not on their edges


def build_ledger(path: Path, key: Path, events: int) -> int:
    """Write ``events`` charges in batches of 1000, signed checkpoints at a few sizes and at the end;
    return the number of checkpoints."""
    batch = [{"agent_id": "agent-1", "resource_type": "tokens", "quantity": "1", "cost": "0.001"}] * 1000
    marks = {int(events * fraction) // 1000 * 1000 + 500 for fraction in CHECKPOINT_FRACTIONS}
    written = 0
    with LedgerWriter(path, signing_key_path=key, checkpoint_every=0, checkpoint_interval=0) as writer:
        while written < events:
            mark = min((m for m in marks if m > written), default=events)
            take = min(len(batch), mark - written)
            writer.append_events(batch[:take])
            written += take
            if written in marks:
                writer.checkpoint()
        writer.checkpoint()
    return len(marks) + 1


def verify_peak(path: Path, key: Path, parallel: bool) -> tuple[VerificationReport, int]:
    """Verify ``path`` (signatures checked against ``key``'s public half) and return the report and the
    peak traced memory in bytes."""
    public_key = default_public_key(key)
    tracemalloc.start()
    try:
        report = verify_ledger(path, public_key=public_key, parallel=parallel)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return report, peak


Ledgers = dict[int, tuple[Path, int]]


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "checkpoint.key"


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory, signing_key: Path) -> Ledgers:
    """A 20,000-event and a 200,000-event ledger with their checkpoint counts, built once for the module."""
    folder = tmp_path_factory.mktemp("ledgers")
    return {
        events: (path, build_ledger(path, signing_key, events))
        for events in (20_000, 200_000)
        for path in [folder / f"ledger-{events}.jsonl"]
    }


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_verify_memory_does_not_grow_with_the_ledger(
    ledgers: Ledgers, signing_key: Path, parallel: bool
) -> None:
    """Verifying ten times the ledger peaks at about the same traced memory, and still checks every
    checkpoint (their sizes fall inside fold batches) and signature. Before: ~73 bytes more per event
    (serial), and the parallel child's leaves came back pickled in memory."""
    peaks = {}
    for events, (path, checkpoints) in ledgers.items():
        report, peaks[events] = verify_peak(path, signing_key, parallel)
        assert report.ok, report.problems
        assert report.events == events
        assert report.signatures_checked
        assert report.checkpoints_total == report.checkpoints_matched == checkpoints
    assert peaks[200_000] < peaks[20_000] * 1.25 + (1 << 20), peaks


@pytest.mark.slow
def test_parallel_verify_leaves_no_temporary_file(ledgers: Ledgers) -> None:
    """The second half's leaf hashes pass through a temporary file that is deleted afterwards."""
    path, _checkpoints = ledgers[20_000]
    temporary = Path(tempfile.gettempdir())
    before = set(temporary.glob("caracal-verify-*"))
    assert verify_ledger(path, parallel=True).ok
    assert set(temporary.glob("caracal-verify-*")) == before


def rewrite_and_rechain(path: Path, event_id: int) -> None:
    """Change event ``event_id``'s cost and recompute every later ``prev_hash``: the hash chain holds, only
    the signed checkpoints can tell."""
    lines = path.read_bytes().split(b"\n")[:-1]
    data = orjson.loads(lines[event_id - 1])
    data["cost"] = "0.002"
    lines[event_id - 1] = orjson.dumps(data)
    for index in range(event_id, len(lines)):
        data = orjson.loads(lines[index])
        data["prev_hash"] = leaf_hash(lines[index - 1]).hex()
        lines[index] = orjson.dumps(data)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_checkpoints_across_fold_batches_catch_a_rechained_rewrite(
    tmp_path: Path, signing_key: Path, parallel: bool
) -> None:
    """Roots are compared as leaves stream past, at sizes on a fold batch's edge (16,384), inside later
    batches, and in the parallel child's half: a rechained rewrite of event 30,000 is caught by the first
    checkpoint after it and blamed on the range since the last one that matched."""
    path = tmp_path / "ledger" / "ledger.jsonl"
    item = {"agent_id": "agent-1", "resource_type": "tokens", "quantity": "1", "cost": "0.001"}
    with LedgerWriter(
        path, signing_key_path=signing_key, checkpoint_every=0, checkpoint_interval=0
    ) as writer:
        for size in (16_384, 20_000, 32_000, 40_000):
            while writer.last_event_id < size:
                writer.append_events([item] * min(1000, size - writer.last_event_id))
            writer.checkpoint()
    public_key = default_public_key(signing_key)
    clean = verify_ledger(path, public_key=public_key, parallel=parallel)
    assert clean.ok and clean.checkpoints_matched == 4, clean.problems
    rewrite_and_rechain(path, 30_000)
    report = verify_ledger(path, public_key=public_key, parallel=parallel)
    assert [(p.kind, p.event_id, p.exact) for p in report.problems] == [
        ("checkpoint", 20_001, False),
        ("checkpoint", 20_001, False),
    ]
    assert "some event from 20001 to 32000 was rewritten" in report.problems[0].message
    assert report.first_bad_event_id == 20_001
    assert report.checkpoints_matched == 2
