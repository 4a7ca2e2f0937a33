"""``caracal backup ...``: consistent copies of a home's ``data/`` folder, and restoring one.

``backup create`` copies ``data/`` into a new folder (default ``$CARACAL_HOME/backups/<UTC time>/``)::

    <backup>/data/...          the copy: ledger.jsonl (+ sidecars), agents.json, policies.json, prices.json
    <backup>/manifest.json     when, from where, each file's size and SHA-256, the ledger's size and root

Consistency: the ledger's exclusive lock (``data/ledger.jsonl.lock``, the one every writer takes) is held
while everything is copied, so no entry is appended meanwhile and the ledger, its checkpoints and its
Merkle state match. The registries are replaced atomically by their writers (temp file and rename), so each
copy is one whole version; they are copied after the ledger in the order prices, policies, agents, so
every agent that the copied ledger or policies name is in the copied agents (an agent is registered before
anything refers to it). The copy is then verified like ``caracal ledger verify``.

The signing key (``keys/``) is not part of ``data/`` and is not copied: it lives apart from the data on
purpose. Keep it (or at least ``keys/checkpoint.key.pub``) safe separately.

``backup restore DIR --yes`` copies the backup into a staging folder beside ``data/``, checks it against the
manifest and verifies its ledger; only then moves the current ``data/`` aside to
``data.before-restore-<time>/`` (never deleting it) and renames the staged copy into place, under the ledger
lock. Stop every process that uses the home (servers, agents) before restoring: a process that keeps the
old ledger open would go on writing to the folder that was moved aside.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import orjson

from caracal import __version__
from caracal.cli.ledger import print_report
from caracal.cli.options import json_option
from caracal.cli.render import EXIT_VERIFY_FAILED, emit_json, handle_errors
from caracal.config import caracal_home
from caracal.core.checkpoint import key_id, load_public_key, public_key_path
from caracal.core.fileio import flock_within, fsync_directory, write_atomically
from caracal.core.ledger import sidecar_path
from caracal.core.validation import format_timestamp
from caracal.core.verify import VerificationReport, verify_ledger
from caracal.exceptions import CaracalError, ConfigurationError, LedgerLockTimeoutError
from caracal.storage.home import EmbeddedHome

MANIFEST = "manifest.json"
FORMAT = 1
LOCK_TIMEOUT = 30.0
_COPY_ORDER = ("ledger.jsonl", "prices.json", "policies.json", "agents.json")


class BackupError(ConfigurationError):
    """A backup could not be made or restored (the message says why; nothing was changed)."""


class RestoreRefused(BackupError):
    """The backup failed its checks (manifest or ledger verification); nothing was changed."""

    def __init__(self, message: str, report: VerificationReport):
        super().__init__(message)
        self.report = report


# ------------------------------------------------------------------------------------------------ locking


@contextlib.contextmanager
def ledger_locked(ledger: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive ``flock`` that every :class:`~caracal.core.ledger.LedgerWriter` takes to append
    (waiting at most ``timeout`` seconds, default :data:`LOCK_TIMEOUT`)."""
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    lock_path = sidecar_path(ledger, "lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BackupError(f"cannot open the ledger lock {lock_path}: {exc.strerror or exc}") from exc
    try:
        if not flock_within(fd, timeout):
            raise LedgerLockTimeoutError(
                f"timed out after {timeout}s waiting for the lock on {ledger}; a writer holds it"
            )
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------------------ copying


def _wanted(name: str) -> bool:
    """Files of ``data/`` worth copying: not locks, not writers' temporary files."""
    return not (name.endswith(".lock") or name.startswith(".") or ".tmp-" in name)


def _order(name: str) -> tuple[int, str]:
    for rank, prefix in enumerate(_COPY_ORDER):
        if name == prefix or name.startswith(prefix + "."):
            return rank, name
    return len(_COPY_ORDER), name


def _copy_file(source: Path, target: Path) -> dict[str, Any]:
    """Copy one file (fsynced), returning its manifest entry; FileNotFoundError if it vanished."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while block := reader.read(1 << 20):
            digest.update(block)
            writer.write(block)
            size += len(block)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copymode(source, target)
    return {"name": source.name, "bytes": size, "sha256": digest.hexdigest()}


def _copy_data(source: Path, target: Path) -> list[dict[str, Any]]:
    """Copy the files of ``source`` into the new folder ``target`` (the caller holds the ledger lock)."""
    target.mkdir(parents=True)
    entries = []
    names = sorted((p.name for p in source.iterdir() if p.is_file() and _wanted(p.name)), key=_order)
    for name in names:
        try:
            entries.append(_copy_file(source / name, target / name))
        except FileNotFoundError:  # a registry backup rotated away meanwhile: not part of this version
            continue
    fsync_directory(target)
    return entries


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while block := reader.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _home_key_id(home: EmbeddedHome) -> str | None:
    return key_id(load_public_key(home.key_path)) if home.key_path.exists() else None


def _verify(ledger: Path, home: EmbeddedHome, check_signatures: bool = True) -> VerificationReport:
    key = load_public_key(home.key_path) if check_signatures and home.key_path.exists() else None
    return verify_ledger(ledger, public_key=key)


def _new_folder(parent: Path, stem: str) -> Path:
    """A folder name under ``parent`` that does not exist yet (``stem``, else ``stem-2``, ...)."""
    candidate = parent / stem
    index = 1
    while candidate.exists():
        index += 1
        candidate = parent / f"{stem}-{index}"
    return candidate


def _time_stem(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ------------------------------------------------------------------------------------------------ create


@dataclass
class BackupResult:
    folder: Path
    files: list[dict[str, Any]]
    report: VerificationReport

    def to_dict(self) -> dict[str, Any]:
        return {"backup": str(self.folder), "files": self.files, "verification": self.report.to_dict()}


def _files_only(home: EmbeddedHome) -> None:
    """Backups copy a home's ``data/`` folder; a home on a database is backed up with the database's tools."""
    if not home.on_files:
        raise BackupError(
            f"this home keeps its ledger and registries in the database {home.backend.location}: back it up "
            "with the database's own tools (pg_dump, or its backups and replicas); 'caracal ledger export "
            "FILE' writes a verifiable copy of the ledger"
        )


def create_backup(
    home: EmbeddedHome, output: Path | None = None, now: datetime | None = None
) -> BackupResult:
    """Copy ``home``'s ``data/`` consistently into ``output`` (default: a new folder under ``backups/``)."""
    moment = now or datetime.now(timezone.utc)
    _files_only(home)
    if not home.ledger_path.exists():
        raise BackupError(f"no ledger at {home.ledger_path}: nothing to back up (run 'caracal init' first)")
    if output is None:
        (home.home / "backups").mkdir(exist_ok=True)
        folder = _new_folder(home.home / "backups", _time_stem(moment))
    else:
        folder = output.expanduser().absolute()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise BackupError(f"{folder} exists and is not an empty folder; choose a new one")
        data = home.data.resolve()
        if folder.resolve() == data or folder.resolve().is_relative_to(data):
            raise BackupError(f"{folder} is inside the data folder {data}; choose a folder outside it")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with ledger_locked(home.ledger_path):
            files = _copy_data(home.data, folder / "data")
        report = _verify(folder / "data" / home.ledger_path.name, home)
        manifest = {
            "format": FORMAT,
            "created_at": format_timestamp(moment),
            "caracal_version": __version__,
            "home": str(home.home),
            "key_id": _home_key_id(home),
            "files": files,
            "ledger": {"events": report.events, "bytes": report.bytes_checked, "root": report.root.hex()},
            "verified": report.ok,
        }
        write_atomically(folder / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        public = public_key_path(home.key_path)
        if (
            public.exists()
        ):  # public, so safe to keep with the data: lets anyone verify the copy's checkpoints
            write_atomically(folder / public.name, public.read_bytes())
    except BaseException as exc:
        if created:  # leave no half-made backup behind
            shutil.rmtree(folder, ignore_errors=True)
        else:
            shutil.rmtree(folder / "data", ignore_errors=True)
            with contextlib.suppress(OSError):
                (folder / MANIFEST).unlink()
        if isinstance(exc, OSError):
            raise BackupError(f"cannot write the backup {folder}: {exc.strerror or exc}") from exc
        raise
    return BackupResult(folder, files, report)


# ----------------------------------------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    source: Path
    data: Path
    previous: Path | None
    report: VerificationReport
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "restored_from": str(self.source),
            "data": str(self.data),
            "previous_data": str(self.previous) if self.previous else None,
            "notes": self.notes,
            "verification": self.report.to_dict(),
        }


def _backup_data(folder: Path) -> tuple[Path, dict[str, Any] | None]:
    """The data folder of a backup (``<folder>/data``, or ``folder`` itself if it holds a ledger) and its
    manifest, if any."""
    if not folder.is_dir():
        raise BackupError(f"{folder} is not a folder; give a backup folder made by 'caracal backup create'")
    data = folder / "data" if (folder / "data").is_dir() else folder
    if not (data / "ledger.jsonl").is_file():
        raise BackupError(f"{folder} is not a Caracal backup: found no data/ledger.jsonl in it")
    manifest = None
    if (folder / MANIFEST).is_file():
        try:
            manifest = orjson.loads((folder / MANIFEST).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise BackupError(f"the backup's {MANIFEST} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise BackupError(f"the backup's {MANIFEST} is malformed (no file list)")
    return data, manifest


def _check_manifest(staged: Path, manifest: dict[str, Any]) -> list[str]:
    problems = []
    for entry in manifest["files"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            problems.append(f"malformed manifest entry {entry!r}")
            continue
        path = staged / name
        if not path.is_file():
            problems.append(f"{name} is listed in the manifest but missing")
        elif file_sha256(path) != entry.get("sha256"):
            problems.append(f"{name} does not match its SHA-256 in the manifest (changed since the backup)")
    return problems


def restore_backup(
    home: EmbeddedHome, folder: Path, *, force: bool = False, now: datetime | None = None
) -> RestoreResult:
    """Replace ``home``'s ``data/`` with the backup in ``folder`` (see the module docstring).

    Refuses (changing nothing) when the backup does not match its manifest or its ledger fails verification,
    unless ``force``.
    """
    moment = now or datetime.now(timezone.utc)
    _files_only(home)
    folder = folder.expanduser().absolute()
    source, manifest = _backup_data(folder)
    if home.data.exists() and source.resolve() == home.data.resolve():
        raise BackupError(f"{folder} is the home's own data folder; give a backup folder")
    home.home.mkdir(parents=True, exist_ok=True)
    staged = home.home / f".data.restore-{_time_stem(moment)}-{os.getpid()}"
    notes: list[str] = []
    try:
        try:
            _copy_data(source, staged)
        except OSError as exc:
            raise BackupError(f"cannot copy the backup into {staged}: {exc.strerror or exc}") from exc
        problems = _check_manifest(staged, manifest) if manifest is not None else []
        if manifest is None:
            notes.append(f"the backup has no {MANIFEST}: its files could not be checked against one")
        signed_by = manifest.get("key_id") if manifest is not None else None
        home_key = _home_key_id(home)
        same_key = signed_by is None or home_key is None or signed_by == home_key
        if not same_key:
            notes.append(
                f"the backup's checkpoints were signed by key {signed_by}, this home's key is {home_key}: "
                f"their roots were checked but not their signatures; verify them with `caracal ledger verify "
                f"--public-key {folder / 'checkpoint.key.pub'}`"
            )
        report = _verify(staged / "ledger.jsonl", home, check_signatures=same_key)
        if not report.ok:
            problems.append(f"its ledger fails verification ({len(report.problems)} problem(s))")
        if problems:
            why = "; ".join(problems)
            if not force:
                raise RestoreRefused(
                    f"refusing to restore {folder}: {why}; nothing was changed (--force restores it anyway)",
                    report,
                )
            notes.append(f"restored despite: {why} (--force)")
        previous = None
        with contextlib.ExitStack() as stack:
            if home.ledger_path.exists():
                stack.enter_context(ledger_locked(home.ledger_path))
            if home.data.exists():
                previous = _new_folder(home.home, f"data.before-restore-{_time_stem(moment)}")
                os.rename(home.data, previous)
            os.rename(staged, home.data)
            fsync_directory(home.home)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    report.ledger_path = home.ledger_path
    return RestoreResult(folder, home.data, previous, report, notes)


# ---------------------------------------------------------------------------------------------- commands


@click.group("backup")
def backup_group() -> None:
    """Consistent copies of the home's data (ledger, registries) and restoring them."""


@backup_group.command("create")
@json_option
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="New (or empty) folder to write the backup to (default: $CARACAL_HOME/backups/<UTC time>/).",
)
@handle_errors
def create_command(as_json: bool, output: Path | None) -> None:
    """Copy data/ consistently (under the ledger lock) into a new folder, then verify the copy."""
    result = create_backup(EmbeddedHome(caracal_home()), output)
    if as_json:
        emit_json(result.to_dict())
    else:
        total = sum(entry["bytes"] for entry in result.files)
        click.echo(f"backup: {result.folder}")
        click.echo(f"files:  {len(result.files)} ({total} bytes), listed with SHA-256 in {MANIFEST}")
        click.echo("note:   the signing key (keys/) is not included; keep it safe separately")
        print_report(result.report)
    if not result.report.ok:
        click.echo("warning: the backed-up ledger does not verify (the copy was kept)", err=True)
        sys.exit(EXIT_VERIFY_FAILED)


@backup_group.command("restore")
@json_option
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--yes", is_flag=True, help="Really replace the home's data/ (the current one is kept aside).")
@click.option("--force", is_flag=True, help="Restore even if the backup fails its checks.")
def restore_command(as_json: bool, folder: Path, yes: bool, force: bool) -> None:
    """Replace data/ with the backup in DIR; the current data/ is moved aside, never deleted."""
    home = EmbeddedHome(caracal_home())
    if not yes:
        click.echo(
            f"error: restoring replaces {home.data} with the backup in {folder} (the current data is moved "
            f"aside to data.before-restore-<time>/); stop every process using this home, then re-run with "
            f"--yes",
            err=True,
        )
        sys.exit(1)
    try:
        result = restore_backup(home, folder, force=force)
    except RestoreRefused as exc:
        if as_json:
            emit_json({"restored": False, "error": str(exc), "verification": exc.report.to_dict()})
        else:
            print_report(exc.report)
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_VERIFY_FAILED if not exc.report.ok else 1)
    except CaracalError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        emit_json({"restored": True, **result.to_dict()})
        return
    click.echo(f"restored {result.data} from {result.source}")
    if result.previous is not None:
        click.echo(f"previous data kept in {result.previous}")
    for note in result.notes:
        click.echo(f"note: {note}")
    print_report(result.report)
