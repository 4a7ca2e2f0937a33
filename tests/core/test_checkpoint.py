"""Unit tests for signed checkpoints (caracal.core.checkpoint) and how LedgerWriter writes them.

A checkpoint says "the first ``size`` lines of the ledger hash to ``root``", signed with an Ed25519 key kept
with the configuration. These tests check when checkpoints are written, that they describe the file exactly,
that signatures do not verify for anything else, and where the key lives.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from caracal.core.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    CheckpointStore,
    checkpoint_message,
    key_id,
    load_public_key,
    public_key_path,
)
from caracal.core.ledger import LedgerWriter, sidecar_path
from caracal.core.merkle import root_from_leaf_hashes
from caracal.core.verify import read_leaf_hashes
from caracal.exceptions import CheckpointError, ConfigurationError

ITEM: dict[str, Any] = {"agent_id": "agent-1", "resource_type": "tokens", "quantity": "10", "cost": "0.5"}


def sizes(ledger_path: Path) -> list[int]:
    return [checkpoint.size for checkpoint in CheckpointStore(sidecar_path(ledger_path, "checkpoints"))]


def default_key(home: Path) -> Path:
    return home / "keys" / "checkpoint.key"


def assert_describes_the_ledger(checkpoint: Checkpoint, ledger_path: Path, home: Path) -> None:
    """The checkpoint's root is the RFC 9162 root of the first ``size`` lines and its signature is valid."""
    leaves = read_leaf_hashes(ledger_path, checkpoint.size)
    assert len(leaves) == checkpoint.size
    assert checkpoint.root == root_from_leaf_hashes(leaves)
    checkpoint.verify(load_public_key(public_key_path(default_key(home))))


# ----------------------------------------------------------------------------------------------------------
# When the writer signs
# ----------------------------------------------------------------------------------------------------------


def test_a_checkpoint_every_n_events_and_one_on_close(ledger_path: Path, caracal_home: Path) -> None:
    with LedgerWriter(ledger_path, checkpoint_every=10, checkpoint_interval=0) as writer:
        for _ in range(9):
            writer.append_event(**ITEM)
        assert sizes(ledger_path) == []
        writer.append_event(**ITEM)
        assert sizes(ledger_path) == [10]
        for _ in range(15):
            writer.append_event(**ITEM)
        assert sizes(ledger_path) == [10, 20]
    assert sizes(ledger_path) == [10, 20, 25]
    for checkpoint in CheckpointStore(sidecar_path(ledger_path, "checkpoints")):
        assert_describes_the_ledger(checkpoint, ledger_path, caracal_home)


def test_a_batch_crossing_a_boundary_is_checkpointed_once_at_its_end(ledger_path: Path) -> None:
    with LedgerWriter(ledger_path, checkpoint_every=10, checkpoint_interval=0) as writer:
        writer.append_events([ITEM] * 25)
        assert sizes(ledger_path) == [25]
        writer.append_events([ITEM] * 3)  # 28: still inside the third group of ten
        assert sizes(ledger_path) == [25]
        writer.append_events([ITEM] * 2)  # 30
        assert sizes(ledger_path) == [25, 30]
    assert sizes(ledger_path) == [25, 30]  # close() has nothing new to sign


def test_without_automatic_checkpoints_only_explicit_and_close(ledger_path: Path, caracal_home: Path) -> None:
    writer = LedgerWriter(ledger_path, checkpoint_every=0, checkpoint_interval=0)
    writer.append_events([ITEM] * 30)
    assert sizes(ledger_path) == []
    checkpoint = writer.checkpoint()
    assert checkpoint.size == 30
    assert CheckpointStore(sidecar_path(ledger_path, "checkpoints")).latest() == checkpoint
    assert_describes_the_ledger(checkpoint, ledger_path, caracal_home)
    writer.append_event(**ITEM)
    writer.close()
    writer.close()
    assert sizes(ledger_path) == [30, 31]


def test_checkpoints_cover_events_of_other_writers(ledger_path: Path, caracal_home: Path) -> None:
    with (
        LedgerWriter(ledger_path, checkpoint_every=0, checkpoint_interval=0) as first,
        LedgerWriter(ledger_path, checkpoint_every=0, checkpoint_interval=0) as second,
    ):
        first.append_events([ITEM] * 3)
        second.append_events([ITEM] * 4)
        checkpoint = first.checkpoint()
    assert checkpoint.size == 7
    assert_describes_the_ledger(checkpoint, ledger_path, caracal_home)


def test_checkpoint_timestamps_come_from_the_clock(ledger_path: Path) -> None:
    moment = datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    with LedgerWriter(ledger_path, clock=lambda: moment) as writer:
        writer.append_event(**ITEM)
        assert writer.checkpoint().timestamp == "2030-05-06T07:08:09.000000Z"


def test_an_empty_ledger_gets_no_checkpoint_on_close(ledger_path: Path) -> None:
    LedgerWriter(ledger_path).close()
    assert not sidecar_path(ledger_path, "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------------
# The signing key
# ----------------------------------------------------------------------------------------------------------


def test_the_signing_key_is_created_under_caracal_home_owner_only(
    ledger_path: Path, caracal_home: Path
) -> None:
    key = default_key(caracal_home)
    assert not key.exists()
    with LedgerWriter(ledger_path) as writer:
        writer.append_event(**ITEM)
        checkpoint = writer.checkpoint()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub = public_key_path(key)
    assert pub == caracal_home / "keys" / "checkpoint.key.pub"
    assert b"PUBLIC KEY" in pub.read_bytes()
    assert b"PRIVATE" not in pub.read_bytes()
    public = load_public_key(pub)
    checkpoint.verify(public)
    assert checkpoint.key_id == key_id(public)
    assert not list(ledger_path.parent.glob("*.key*"))  # nothing key-like beside the ledger


def test_the_same_key_is_used_again_by_later_writers(ledger_path: Path, caracal_home: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        writer.append_event(**ITEM)
    key_bytes = default_key(caracal_home).read_bytes()
    with LedgerWriter(ledger_path) as writer:
        writer.append_event(**ITEM)
    assert default_key(caracal_home).read_bytes() == key_bytes
    assert (
        len({checkpoint.key_id for checkpoint in CheckpointStore(sidecar_path(ledger_path, "checkpoints"))})
        == 1
    )


def test_an_explicit_signing_key_path_is_used(ledger_path: Path, tmp_path: Path, caracal_home: Path) -> None:
    key = tmp_path / "elsewhere" / "signing.key"
    with LedgerWriter(ledger_path, signing_key_path=key) as writer:
        writer.append_event(**ITEM)
        checkpoint = writer.checkpoint()
    assert key.exists()
    assert not default_key(caracal_home).exists()
    checkpoint.verify(load_public_key(public_key_path(key)))
    checkpoint.verify(load_public_key(key))  # the public half can also be derived from the private key


@pytest.mark.parametrize("where", ["ledger.key", "keys/checkpoint.key", "./sub/../checkpoint.key"])
def test_a_key_inside_the_ledger_folder_is_refused(ledger_path: Path, where: str) -> None:
    with pytest.raises(ConfigurationError, match="inside the ledger's folder"):
        LedgerWriter(ledger_path, signing_key_path=ledger_path.parent / where)
    assert not ledger_path.exists()
    assert not (ledger_path.parent / where).exists()


def test_the_default_key_is_refused_when_the_ledger_folder_contains_caracal_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARACAL_HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigurationError, match="inside the ledger's folder"):
        LedgerWriter(tmp_path / "ledger.jsonl")


def test_an_unreadable_key_is_a_configuration_error(ledger_path: Path, caracal_home: Path) -> None:
    key = default_key(caracal_home)
    key.parent.mkdir(parents=True)
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigurationError, match="signing key"):
        LedgerWriter(ledger_path)


def test_load_or_create_returns_the_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k.key"
    first = CheckpointSigner.load_or_create(path)
    second = CheckpointSigner.load_or_create(path)
    assert first.key_id == second.key_id
    assert len(first.key_id) == 16


LOAD_KEY = """
import json, sys
from pathlib import Path
from caracal.core.checkpoint import CheckpointSigner
from caracal.exceptions import ConfigurationError
try:
    signer = CheckpointSigner.load_or_create(Path(sys.argv[1]))
    result = {"public": signer.public_key.public_bytes_raw().hex()}
except ConfigurationError as exc:
    result = {"error": str(exc)}
result["serialization"] = "cryptography.hazmat.primitives.serialization" in sys.modules
print(json.dumps(result))
"""


def _reencode(pem: bytes, how: str) -> bytes:
    """The key of ``pem`` (as load_or_create writes it) in another encoding, or another key altogether."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = serialization.load_pem_private_key(pem, password=None)
    pkcs8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8)
    if how == "crlf line ends":
        return pem.replace(b"\n", b"\r\n")
    if how == "body split over two lines":
        head, body, tail = pem.split(b"\n")[:3]
        return b"\n".join([head, body[:32], body[32:], tail, b""])
    if how == "encrypted":
        return private.private_bytes(*pkcs8, serialization.BestAvailableEncryption(b"secret"))
    if how == "an EC key":
        return ec.generate_private_key(ec.SECP256R1()).private_bytes(*pkcs8, serialization.NoEncryption())
    if how == "seed cut short":
        return pem.replace(pem.split(b"\n")[1], base64.b64encode(base64.b64decode(pem.split(b"\n")[1])[:47]))
    return pem


@pytest.mark.parametrize(
    "how",
    ["as written", "crlf line ends", "body split over two lines", "encrypted", "an EC key", "seed cut short"],
)
def test_the_signing_key_loads_as_cryptography_reads_it_and_only_odd_encodings_need_its_pem_parser(
    tmp_path: Path, how: str
) -> None:
    """A writer loads the key it wrote without cryptography's serialization package (slow to import, and
    every command that writes opens a writer); any other encoding is read by that package, as before."""
    from cryptography.hazmat.primitives import serialization

    written = tmp_path / "written.key"
    CheckpointSigner.load_or_create(written)
    path = tmp_path / "keys" / "checkpoint.key"
    path.parent.mkdir()
    path.write_bytes(_reencode(written.read_bytes(), how))

    done = subprocess.run(
        [sys.executable, "-c", LOAD_KEY, str(path)], capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout)

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        assert "cannot load the checkpoint signing key" in loaded["error"]
    else:
        if isinstance(key, Ed25519PrivateKey):
            assert loaded["public"] == key.public_key().public_bytes_raw().hex()
        else:
            assert loaded["error"].endswith("is not an Ed25519 private key")
    assert loaded["serialization"] is (how not in ("as written", "crlf line ends"))


def test_load_public_key_refuses_non_keys(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pub"
    with pytest.raises(ConfigurationError):
        load_public_key(missing)
    junk = tmp_path / "junk.pub"
    junk.write_bytes(b"hello")
    with pytest.raises(ConfigurationError):
        load_public_key(junk)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint: signatures and the record format
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate())


@pytest.fixture
def checkpoint(signer: CheckpointSigner) -> Checkpoint:
    return signer.sign(1000, bytes(range(32)), "2026-01-31T12:00:00.000000Z")


def test_a_checkpoint_verifies_with_its_key(checkpoint: Checkpoint, signer: CheckpointSigner) -> None:
    checkpoint.verify(signer.public_key)
    assert checkpoint.key_id == signer.key_id


def test_the_signed_message_is_stable_for_third_parties(
    checkpoint: Checkpoint, signer: CheckpointSigner
) -> None:
    message = checkpoint_message(1000, bytes(range(32)), "2026-01-31T12:00:00.000000Z")
    assert message == (
        b"caracal-ledger-checkpoint-v1\n1000\n"
        + base64.b64encode(bytes(range(32)))
        + b"\n2026-01-31T12:00:00.000000Z\n"
    )
    signer.public_key.verify(checkpoint.signature, message)  # plain Ed25519, no Caracal code involved


def test_a_different_key_does_not_verify(checkpoint: Checkpoint) -> None:
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    with pytest.raises(CheckpointError, match="signed by key"):
        checkpoint.verify(other.public_key)
    # Claiming the other key's id does not help: the signature itself is checked.
    forged = dataclasses.replace(checkpoint, key_id=other.key_id)
    with pytest.raises(CheckpointError, match="invalid signature"):
        forged.verify(other.public_key)


@pytest.mark.parametrize(
    "changes",
    [
        {"size": 999},
        {"size": 1001},
        {"root": bytes(32)},
        {"root": bytes(range(1, 33))},
        {"timestamp": "2026-01-31T12:00:00.000001Z"},
        {"signature": bytes(64)},
    ],
)
def test_an_altered_checkpoint_does_not_verify(
    checkpoint: Checkpoint, signer: CheckpointSigner, changes: dict[str, Any]
) -> None:
    with pytest.raises(CheckpointError, match="invalid signature"):
        dataclasses.replace(checkpoint, **changes).verify(signer.public_key)


def test_to_dict_from_dict_round_trip(checkpoint: Checkpoint, signer: CheckpointSigner) -> None:
    data = orjson.loads(orjson.dumps(checkpoint.to_dict()))
    assert set(data) == {"size", "root", "timestamp", "key_id", "signature"}
    back = Checkpoint.from_dict(data)
    assert back == checkpoint
    back.verify(signer.public_key)


@pytest.mark.parametrize(
    "changes",
    [
        {"size": -1},
        {"size": True},
        {"size": "1000"},
        {"root": "not base64!"},
        {"root": base64.b64encode(bytes(31)).decode()},
        {"signature": "***"},
        {"timestamp": 5},
        {"key_id": None},
        {"root": None},
    ],
)
def test_from_dict_refuses_malformed_records(checkpoint: Checkpoint, changes: dict[str, Any]) -> None:
    data = {**checkpoint.to_dict(), **changes}
    with pytest.raises(CheckpointError):
        Checkpoint.from_dict(data)


@pytest.mark.parametrize("field", ["size", "root", "timestamp", "key_id", "signature"])
def test_from_dict_refuses_a_missing_field(checkpoint: Checkpoint, field: str) -> None:
    data = checkpoint.to_dict()
    del data[field]
    with pytest.raises(CheckpointError):
        Checkpoint.from_dict(data)


def test_from_dict_refuses_non_objects() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.from_dict([1, 2])


# ----------------------------------------------------------------------------------------------------------
# CheckpointStore
# ----------------------------------------------------------------------------------------------------------


def test_a_missing_store_is_empty(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "none.checkpoints")
    assert list(store) == []
    assert store.latest() is None


def test_the_store_keeps_checkpoints_in_order(tmp_path: Path, signer: CheckpointSigner) -> None:
    store = CheckpointStore(tmp_path / "ledger.jsonl.checkpoints")
    written = [signer.sign(size, bytes([size]) * 32, "2026-01-01T00:00:00.000000Z") for size in (1, 5, 9)]
    for checkpoint in written:
        store.append(checkpoint)
    assert list(store) == written
    assert store.latest() == written[-1]
    assert store.path.read_bytes().count(b"\n") == 3


def test_the_store_ignores_a_torn_last_line(tmp_path: Path, signer: CheckpointSigner) -> None:
    store = CheckpointStore(tmp_path / "ledger.jsonl.checkpoints")
    first = signer.sign(3, bytes(32), "2026-01-01T00:00:00.000000Z")
    store.append(first)
    with open(store.path, "ab") as handle:
        handle.write(b'{"size": 7, "root": "AAAA')  # a crash in the middle of the next append
    assert list(store) == [first]
    assert store.latest() == first
    # The next append is not glued to the torn bytes.
    second = signer.sign(8, bytes(32), "2026-01-01T00:00:01.000000Z")
    store.append(second)
    assert list(store) == [first, second]


def test_the_store_reports_a_corrupt_complete_line(tmp_path: Path, signer: CheckpointSigner) -> None:
    store = CheckpointStore(tmp_path / "ledger.jsonl.checkpoints")
    store.append(signer.sign(3, bytes(32), "2026-01-01T00:00:00.000000Z"))
    with open(store.path, "ab") as handle:
        handle.write(b"garbage\n")
    with pytest.raises(CheckpointError, match="line 2"):
        list(store)


def test_a_writer_still_opens_after_a_torn_checkpoint_append(ledger_path: Path, caracal_home: Path) -> None:
    with LedgerWriter(ledger_path) as writer:
        writer.append_events([ITEM] * 4)
    with open(sidecar_path(ledger_path, "checkpoints"), "ab") as handle:
        handle.write(b'{"size": 9')
    with LedgerWriter(ledger_path) as writer:
        writer.append_event(**ITEM)
        checkpoint = writer.checkpoint()
    assert sizes(ledger_path) == [4, 5]
    assert_describes_the_ledger(checkpoint, ledger_path, caracal_home)
