"""Moving a home's data from one backend to another (``caracal migrate --to``), verified.

What it promises:

- **The source is checked first.** The ledger is verified (every line, the chain, every signed checkpoint,
  with the home's key) before anything is copied: a ledger that fails is not carried anywhere.
- **Nothing changes under it.** The source ledger's append lock is held for the whole copy, so no writer of
  the source appends meanwhile (they wait, or time out and deny).
- **Same bytes.** Lines are copied as they are, in order, with their ids; checkpoints are copied as signed.
- **Resumable, never mixed.** The target must be empty, or hold exactly a prefix of this ledger (an earlier
  run that stopped part-way): the copy then continues after it. A target holding anything else is refused.
  Registries must be absent or equal in the target.
- **The target is checked last.** The target is verified like the source, and its event count and Merkle
  root must equal the source's; only then does the migration report success.

The source is left as it was: pointing the home at the target (``[storage] url``) is the caller's step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from caracal.config import Settings
from caracal.core.checkpoint import CheckpointSigner
from caracal.core.store import LedgerStore
from caracal.core.verify import verify_ledger
from caracal.exceptions import MigrationError
from caracal.storage.interface import REGISTRIES, Backend
from caracal.storage.jsonfile import JsonDocument

BATCH = 5_000
"""Lines copied per step (one transaction on a database)."""

Progress = Callable[[int, int], None]


@dataclass
class MigrationReport:
    """What a migration copied and checked."""

    target: str
    events: int = 0
    copied: int = 0
    resumed_from: int = 0
    checkpoints: int = 0
    registries: list[str] = field(default_factory=list)
    root: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "events": self.events,
            "copied": self.copied,
            "resumed_from": self.resumed_from,
            "checkpoints": self.checkpoints,
            "registries": self.registries,
            "root": self.root,
            "verified": True,
        }


def migrate(
    source: Backend,
    target: Backend,
    key_path: Path,
    settings: Settings,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy ``source``'s ledger, checkpoints and registries into ``target`` (see the module docstring)."""
    key = CheckpointSigner.load_or_create(key_path).public_key
    report = MigrationReport(target=target.location)
    target.initialize()
    wait = settings.lock_timeout
    from_store = source.ledger_store(lock_timeout=wait, backup_count=0, backup_min_interval=0)
    to_store = target.ledger_store(lock_timeout=wait, backup_count=0, backup_min_interval=0)
    try:
        from_store.begin()  # hold the source still for the whole copy
        try:
            checked = verify_ledger(from_store, public_key=key)
            if not checked.ok:
                first = checked.problems[0].message if checked.problems else ""
                raise MigrationError(
                    f"the ledger at {source.location} fails verification (first bad event "
                    f"{checked.first_bad_event_id}: {first}); nothing was copied. Run 'caracal ledger "
                    "verify' and repair it first"
                )
            report.events = checked.events
            report.root = checked.root.hex()
            report.registries = _copy_registries(source, target)
            report.resumed_from = _matching_prefix(from_store, to_store, report.events)
            report.copied = _copy_lines(from_store, to_store, report.resumed_from, report.events, progress)
            report.checkpoints = _copy_checkpoints(from_store, to_store)
        finally:
            from_store.finish()
        result = verify_ledger(to_store, public_key=key)
        if not result.ok or result.events != report.events or result.root.hex() != report.root:
            raise MigrationError(
                f"the copy in {target.location} does not verify as the source does ({result.events} events, "
                f"root {result.root.hex()[:16]}…, problems: {[p.message for p in result.problems[:3]]}); "
                "the source is unchanged: keep using it and report this"
            )
    finally:
        from_store.close()
        to_store.close()
    return report


def _copy_registries(source: Backend, target: Backend) -> list[str]:
    copied = []
    for name in REGISTRIES:
        document = source.document(name, dict)
        if isinstance(document, JsonDocument) and not document.path.exists():
            continue
        data = document.read()
        with target.document(name, dict).transaction() as stored:
            if stored and stored != data:
                raise MigrationError(
                    f"the target already holds a different {name} registry ({target.location}); migrate "
                    "into an empty database"
                )
            stored.clear()
            stored.update(data)
        copied.append(name)
    return copied


def _matching_prefix(source: LedgerStore, target: LedgerStore, total: int) -> int:
    """How many lines the target holds, after checking they are exactly this ledger's first lines."""
    count = 0
    theirs = target.iter_lines(0)
    ours = source.iter_lines(0)
    for _position, line in theirs:
        mine = next(ours, None)
        if mine is None or mine[1] != line:
            raise MigrationError(
                f"the target {target.location} already holds a ledger that is not this one (line {count + 1} "
                "differs); migrate into an empty database"
            )
        count += 1
    if count > total:  # pragma: no cover - caught by the comparison above
        raise MigrationError(f"the target {target.location} holds more lines than the source")
    return count


def _copy_lines(
    source: LedgerStore, target: LedgerStore, start: int, total: int, progress: Progress | None
) -> int:
    batch: list[bytes] = []
    copied = 0
    next_id = start + 1

    def flush() -> None:
        nonlocal next_id, copied
        target.begin()
        try:
            after = target.end() if target.positions_are_ids else None
            if after is not None and after != next_id - 1:
                raise MigrationError(
                    f"another writer appended to {target.location} during the migration; stop every "
                    "process using it and run the migration again"
                )
            target.write(batch, next_id)
        finally:
            target.finish()
        next_id += len(batch)
        copied += len(batch)
        batch.clear()
        if progress is not None:
            progress(start + copied, total)

    for index, (_position, line) in enumerate(source.iter_lines(0)):
        if index < start:
            continue
        batch.append(line)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return copied


def _copy_checkpoints(source: LedgerStore, target: LedgerStore) -> int:
    count = 0
    for checkpoint in source.checkpoints:
        target.checkpoints.append(checkpoint)
        count += 1
    return count


__all__ = ["MigrationError", "MigrationReport", "migrate"]
