"""Signed checkpoints: Ed25519 signatures over ``(size, root)`` of the ledger's RFC 9162 Merkle tree.

A checkpoint says "the first ``size`` lines of the ledger hash to ``root``", signed with a key that lives with
the configuration, never beside the ledger (someone who can rewrite the ledger should not also be able to
re-sign it). Verification against a checkpoint detects any rewrite of the covered lines, and a ledger with
fewer lines than its last checkpoint has lost its tail.

Checkpoints are kept in a JSON Lines sidecar (``<ledger>.checkpoints``), one record a line::

    {"size": 1000, "root": "<base64>", "timestamp": "2026-...Z", "key_id": "<hex>", "signature": "<base64>"}

The signed message is :func:`checkpoint_message`: a versioned, newline-separated text, so a signature can be
checked by third parties with any Ed25519 implementation.

``cryptography`` is imported by the functions that sign, verify or load keys, not with this module: the
ledger imports it, and a command that only reads the ledger (``caracal ledger query``) never touches a key.
Loading the signing key a writer opens with reads the one encoding this module writes (PKCS#8 PEM of an
Ed25519 key) directly (:func:`_ed25519_seed`), without ``cryptography``'s serialization package, which
costs more to import than everything else a short command like ``caracal budget status`` does; any
other encoding goes through that package as before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from caracal.core.events import complete_end, read_last_lines
from caracal.core.fileio import append_durably, write_atomically
from caracal.exceptions import CheckpointError, ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CHECKPOINT_DOMAIN = b"caracal-ledger-checkpoint-v1"

# DER of an RFC 8410 OneAsymmetricKey for Ed25519 (version 0, no attributes, no public key) up to the
# 32-byte private key: what PrivateFormat.PKCS8 writes for an Ed25519 key, 48 bytes in all.
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


def checkpoint_message(size: int, root: bytes, timestamp: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return (
        b"\n".join([CHECKPOINT_DOMAIN, str(size).encode(), base64.b64encode(root), timestamp.encode()])
        + b"\n"
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the ledger's first ``size`` lines have Merkle root ``root``."""

    size: int
    root: bytes
    timestamp: str
    key_id: str
    signature: bytes

    def to_dict(self) -> dict[str, object]:
        return {
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "timestamp": self.timestamp,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint:
        if not isinstance(data, dict):
            raise CheckpointError("a checkpoint record must be a JSON object")
        try:
            size = data["size"]
            root = base64.b64decode(data["root"], validate=True)
            signature = base64.b64decode(data["signature"], validate=True)
            timestamp = data["timestamp"]
            kid = data["key_id"]
        except (KeyError, TypeError, binascii.Error) as exc:
            raise CheckpointError(f"malformed checkpoint record: {exc!r}") from exc
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CheckpointError(f"checkpoint size must be a non-negative integer, got {size!r}")
        if len(root) != 32 or not isinstance(timestamp, str) or not isinstance(kid, str):
            raise CheckpointError("malformed checkpoint record: bad root, timestamp or key_id")
        return cls(size=size, root=root, timestamp=timestamp, key_id=kid, signature=signature)

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise :class:`CheckpointError` unless the signature is valid under ``public_key``."""
        from cryptography.exceptions import InvalidSignature

        if self.key_id != key_id(public_key):
            raise CheckpointError(
                f"checkpoint at size {self.size} was signed by key {self.key_id}, "
                f"not by the configured key {key_id(public_key)}"
            )
        try:
            public_key.verify(self.signature, checkpoint_message(self.size, self.root, self.timestamp))
        except InvalidSignature as exc:
            raise CheckpointError(f"checkpoint at size {self.size} has an invalid signature") from exc


class CheckpointSigner:
    """An Ed25519 private key that signs checkpoints."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> CheckpointSigner:
        """Load the PEM key at ``path``, creating it (owner-only permissions) with its ``.pub`` if missing."""
        key_path = Path(path)
        if key_path.exists():
            return cls(load_private_key(key_path))
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_key = Ed25519PrivateKey.generate()
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            write_atomically(key_path, pem, mode=0o600, exclusive=True)
        except FileExistsError:
            return cls(load_private_key(key_path))  # another process created it first: use theirs
        write_atomically(public_key_path(key_path), public_pem, mode=0o644)
        return cls(private_key)

    def cache_key(self, purpose: str) -> bytes:
        """A 32-byte HMAC key for sealing the caches of ``purpose`` (see :mod:`caracal.core.sealed`).

        Derived from the private key (HMAC-SHA256 with a domain-separated label), so it lives where the
        signing key lives, in ``keys/``, and never beside the ledger: whoever can edit the data folder
        cannot forge a cache. One key per purpose, so one cache can never pass for another.
        """
        raw = self.private_key.private_bytes_raw()
        return hmac.new(raw, b"caracal-cache-key-v1:" + purpose.encode(), hashlib.sha256).digest()

    def sign(self, size: int, root: bytes, timestamp: str) -> Checkpoint:
        signature = self.private_key.sign(checkpoint_message(size, root, timestamp))
        return Checkpoint(size=size, root=root, timestamp=timestamp, key_id=self.key_id, signature=signature)


def public_key_path(private_key_path: Path) -> Path:
    """Where the public half of a signing key is published: ``<key>.pub``."""
    return private_key_path.with_name(private_key_path.name + ".pub")


def _ed25519_seed(pem: bytes) -> bytes | None:
    """The 32-byte private key of an unencrypted PKCS#8 PEM Ed25519 key in exactly the form
    :meth:`CheckpointSigner.load_or_create` writes; None for anything else (left to ``cryptography``)."""
    parts = pem.split()
    if len(parts) != 7 or parts[:3] != [b"-----BEGIN", b"PRIVATE", b"KEY-----"]:
        return None
    if parts[4:] != [b"-----END", b"PRIVATE", b"KEY-----"]:
        return None
    try:
        der = base64.b64decode(parts[3], validate=True)
    except binascii.Error:
        return None
    if len(der) != len(_PKCS8_ED25519_PREFIX) + 32 or not der.startswith(_PKCS8_ED25519_PREFIX):
        return None
    return der[len(_PKCS8_ED25519_PREFIX) :]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
        seed = _ed25519_seed(data)
        if seed is not None:
            return Ed25519PrivateKey.from_private_bytes(seed)
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot load the checkpoint signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a public key from a PEM public key, or derive it from a PEM private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key_path = Path(path)
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the checkpoint key {key_path}: {exc}") from exc
    if b"PRIVATE KEY" in data:
        return load_private_key(key_path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigurationError(f"{key_path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{key_path} is not an Ed25519 public key")
    return key


def matches_signed(roots: dict[int, bytes], size: int, root: bytes) -> bool | None:
    """Whether ``root`` is the signed root of a tree of ``size`` (None: no checkpoint of that size)."""
    return roots[size] == root if size in roots else None


class CheckpointStore:
    """The JSON Lines file of checkpoints beside a ledger. Appends are fsynced before they return."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def append(self, checkpoint: Checkpoint) -> None:
        """Append one record, fsynced. Callers hold the ledger's lock.

        A torn last line (a crash mid-append, never acknowledged) is cut off first: a record appended after
        it would share its line, and that line would make the whole file unreadable.
        """
        try:
            with open(self.path, "r+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                end = complete_end(handle, size)
                if end != size:
                    handle.truncate(end)
                    os.fsync(handle.fileno())
        except FileNotFoundError:
            pass
        append_durably(self.path, orjson.dumps(checkpoint.to_dict()) + b"\n")

    def __iter__(self) -> Iterator[Checkpoint]:
        """Every checkpoint in file order; a torn last line (a crash mid-append) is ignored."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoints {self.path}: {exc}") from exc
        lines = data.split(b"\n")
        for number, line in enumerate(lines[:-1], start=1):  # the last piece is b"" or a torn line
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise CheckpointError(f"{self.path} line {number} is not valid JSON: {exc}") from exc
            yield Checkpoint.from_dict(record)

    def read_from(self, offset: int) -> tuple[list[Checkpoint], int]:
        """The complete records from byte ``offset`` on (a record boundary an earlier call returned), and
        the offset after them: followers read only what was appended since they last looked. A file
        shorter than ``offset`` (replaced) is read from the start."""
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < offset:
                    offset = 0
                handle.seek(offset)
                data = handle.read(size - offset)
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoints {self.path}: {exc}") from exc
        end = data.rfind(b"\n") + 1  # a torn last record (a crash mid-append) waits for its newline
        records = []
        for line in data[:end].split(b"\n")[:-1]:
            try:
                records.append(Checkpoint.from_dict(orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                raise CheckpointError(f"{self.path} has a record that is not valid JSON: {exc}") from exc
        return records, offset + end

    def roots(self) -> dict[int, bytes]:
        """The signed root of each checkpointed tree size."""
        return {checkpoint.size: checkpoint.root for checkpoint in self}

    def latest(self) -> Checkpoint | None:
        """The last complete checkpoint, reading only the end of the file (opening a writer needs it)."""
        try:
            with open(self.path, "rb") as handle:
                end = complete_end(handle, os.fstat(handle.fileno()).st_size)
                last = read_last_lines(handle, end, 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoints {self.path}: {exc}") from exc
        if not last:
            return None
        try:
            return Checkpoint.from_dict(orjson.loads(last[0][1]))
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"the last line of {self.path} is not valid JSON: {exc}") from exc
