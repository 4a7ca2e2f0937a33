"""``caracal --config FILE backup create|list|restore``: v0.1's backup archives of a configuration's files.

An archive is ``<backup_dir>/<name>.tar.gz`` holding ``agents.json``, ``policies.json``, ``ledger.jsonl``,
``pricebook.csv`` and ``config.yaml`` (the configuration given), with ``<name>.tar.gz.sha256`` beside it,
as v0.1 made them (so v0.1's archives restore here, and ours in v0.1).

Where v0.1 differs, ours holds:

- **Consistent copies.** The ledger's exclusive lock (the one every writer takes) is held while the files
  are read, so no charge is appended meanwhile; registries are replaced atomically by their writers, so
  each copy is one whole version. The archive is written to a temporary name, fsynced, then renamed: a
  crash never leaves a partial archive under the final name, and an existing archive is never overwritten.
- **Restore checks first.** The checksum must match, and the archive may hold only those five regular
  files; each file is then replaced atomically, under the ledger lock, after a safety archive of the
  current files. Only the automatic ``caracal_backup_*`` archives are pruned to ``backup_count``.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from caracal.cli.backup import file_sha256, ledger_locked
from caracal.cli.render import emit_json
from caracal.cli.v01.common import session, v01_errors
from caracal.core.fileio import fsync_directory, write_atomically
from caracal.exceptions import BackupError, RestoreError
from caracal.v01.home import V01Home

AUTO_PREFIX = "caracal_backup_"
SUFFIX = ".tar.gz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


KNOWN = ("agents.json", "policies.json", "ledger.jsonl", "pricebook.csv", "config.yaml")
_SIDECAR = re.compile(r"^ledger\.jsonl\.([a-z]+)$")
"""The ledger's signed checkpoints and caches (``ledger.jsonl.checkpoints``, ``.merkle``, ...): they travel
with the ledger, since checkpoints of a longer ledger would make a restored one refuse writes."""


def _files(home: V01Home, config_path: Path) -> dict[str, Path]:
    """Archive member name -> the file it is a copy of (the five files, then the ledger's sidecars)."""
    storage = home.config.storage
    files = dict(
        zip(
            KNOWN,
            (Path(storage.agent_registry), Path(storage.policy_store), home.ledger_path,
             Path(storage.pricebook), config_path.expanduser()),
            strict=True,
        )
    )  # fmt: skip
    files.update(_sidecars(home.ledger_path))
    return files


def _sidecars(ledger: Path) -> dict[str, Path]:
    """The ledger's sidecars that exist now, by member name (not its lock, backups or temporary files)."""
    found = {}
    for path in ledger.parent.glob(f"{glob.escape(ledger.name)}.*"):
        match = _SIDECAR.match("ledger.jsonl" + path.name[len(ledger.name) :])
        if match and match.group(1) != "lock" and path.is_file():
            found[match.group(0)] = path
    return found


@contextmanager
def _ledger_locked(home: V01Home) -> Iterator[None]:
    with ledger_locked(home.ledger_path):  # the lock every ledger writer takes
        yield


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def write_archive(home: V01Home, config_path: Path, archive: Path) -> int:
    """Archive the configuration's files (those that exist) into ``archive``, which must not exist; returns
    how many files it holds. Read under the ledger lock; written to a temporary name, fsynced, renamed."""
    temporary = archive.with_name(f".{archive.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with _ledger_locked(home), tarfile.open(temporary, "x:gz") as tar:
            for name, path in _files(home, config_path).items():
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
                tar.addfile(info, io.BytesIO(data))
                count += 1
        if count == 0:
            raise BackupError(f"No data files found to back up (none of {config_path}'s files exist)")
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(temporary, archive)  # fails if the archive exists: never overwritten
        except FileExistsError:
            raise BackupError(f"{archive} already exists; choose another --name") from None
        fsync_directory(archive.parent)
    except OSError as exc:
        raise BackupError(f"Failed to create backup {archive}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    write_atomically(Path(f"{archive}.sha256"), f"{file_sha256(archive)}  {archive.name}\n".encode())
    return count


def _prune(folder: Path, keep: int) -> None:
    """Keep the ``keep`` newest automatic archives (named ones are the user's to delete)."""
    automatic = sorted(folder.glob(f"{AUTO_PREFIX}*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in automatic[keep:] if keep > 0 else []:
        old.unlink(missing_ok=True)
        Path(f"{old}.sha256").unlink(missing_ok=True)


def _backup_dir(home: V01Home) -> Path:
    folder = Path(home.config.storage.backup_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the backup folder {folder}: {exc.strerror or exc}") from exc
    return folder


@click.group("backup")
def backup_group() -> None:
    """Backup and restore operations."""


@backup_group.command("create")
@click.option("--name", "-n", default=None, help="Archive name (default: caracal_backup_<time>).")
@v01_errors
def create_command(name: str | None) -> None:
    """Create a backup archive of the configuration's files (consistent: taken under the ledger lock)."""
    current = session()
    home = current.home()
    stem = name if name is not None else AUTO_PREFIX + datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    if not _NAME.match(stem):
        raise BackupError(f"invalid backup name {stem!r}: use letters, digits, '.', '_' or '-' (no '/')")
    folder = _backup_dir(home)
    archive = folder / f"{stem}{SUFFIX}"
    count = write_archive(home, current.config_path, archive)
    _prune(folder, home.config.storage.backup_count)
    click.echo(f"✓ Backup created: {archive}")
    click.echo(f"  Size: {_size(archive.stat().st_size)}")
    click.echo(f"  Files: {count}")
    click.echo(f"  Hash: {file_sha256(archive)[:16]}...")


def _listing(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for archive in sorted(folder.glob(f"*{SUFFIX}"), reverse=True):
        stat = archive.stat()
        rows.append(
            {
                "name": archive.name[: -len(SUFFIX)],
                "path": str(archive),
                "size": stat.st_size,
                "size_human": _size(stat.st_size),
                "created": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(),
                "verified": Path(f"{archive}.sha256").exists(),
            }
        )
    return rows


@backup_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@v01_errors
def list_command(as_json: bool) -> None:
    """List the backup archives, newest name first, with their sizes and times."""
    folder = _backup_dir(session().home())
    rows = _listing(folder)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"No backups found.\nBackup directory: {folder}")
        return
    click.echo(f"Available backups ({len(rows)}):\n")
    click.echo(f"{'Name':<40} {'Size':<10} {'Created':<20} Verified")
    click.echo("-" * 80)
    for row in rows:
        created = row["created"][:19].replace("T", " ")
        click.echo(
            f"{row['name']:<40} {row['size_human']:<10} {created:<20} {'✓' if row['verified'] else '-'}"
        )
    click.echo(f"\nBackup directory: {folder}")


def read_archive(archive: Path) -> dict[str, bytes]:
    """The archive's files, checked: its checksum (when it has one) matches, and it holds only the known
    names (and ledger sidecars) as regular files: nothing else is ever written."""
    checksum = Path(f"{archive}.sha256")
    if checksum.exists():
        expected = checksum.read_text(encoding="utf-8").split()[0]
        if expected != file_sha256(archive):
            raise RestoreError(f"Backup archive integrity check failed: {archive} does not match {checksum}")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if (member.name not in KNOWN and not _SIDECAR.match(member.name)) or not member.isfile():
                    raise RestoreError(f"{archive} holds {member.name!r}, which is not a Caracal data file")
                reader = tar.extractfile(member)
                files[member.name] = reader.read() if reader is not None else b""
    except (OSError, tarfile.TarError) as exc:
        raise RestoreError(f"cannot read the backup {archive}: {exc}") from exc
    return files


@backup_group.command("restore")
@click.argument("backup_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", "-f", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-safety-backup", is_flag=True, help="Do not archive the current files first.")
@v01_errors
def restore_command(backup_file: Path, force: bool, no_safety_backup: bool) -> None:
    """Restore the configuration's files from a backup archive (checked first; the current files are
    archived first unless --no-safety-backup). Stop every process using these files before restoring."""
    current = session()
    home = current.home()
    files = read_archive(backup_file)
    click.echo(f"Backup contains {len(files)} files: {', '.join(sorted(files))}")
    if not force and not click.confirm("This replaces the current files. Continue?"):
        click.echo("Restore cancelled.")
        return
    if not no_safety_backup:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S_%f")
        safety = _backup_dir(home) / f"safety_backup_{stamp}{SUFFIX}"
        write_archive(home, current.config_path, safety)
        click.echo(f"✓ Safety backup created: {safety}")
    targets = _files(home, current.config_path)
    ledger = home.ledger_path
    current.close()  # nothing of ours keeps the old files open (or signs them) while they are replaced
    with _ledger_locked(home):
        for name, path in _sidecars(ledger).items():  # the current ledger's (in the safety archive)
            if name not in files:
                path.unlink()
        for name, data in sorted(files.items()):
            target = targets.get(name) or ledger.with_name(ledger.name + name[len("ledger.jsonl") :])
            write_atomically(target, data)
            click.echo(f"  Restored: {name}")
    click.echo("\n✓ Restore completed successfully!")


__all__ = ["backup_group", "read_archive", "write_archive"]
