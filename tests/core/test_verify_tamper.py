"""Tamper evidence: every edit, deletion, insertion, reordering or truncation of the ledger is found by
``verify_ledger``, which names the first bad event; signed checkpoints catch what the hash chain cannot.

Also: the parallel scan finds exactly what the sequential one finds, and Merkle proofs verify (and stop
verifying when a byte of them changes).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from caracal.core.checkpoint import Checkpoint, CheckpointSigner, CheckpointStore
from caracal.core.events import complete_end
from caracal.core.ledger import LedgerWriter
from caracal.core.merkle import leaf_hash, root_from_leaf_hashes
from caracal.core.verify import (
    VerificationReport,
    default_public_key,
    prove_consistency,
    prove_inclusion,
    read_leaf_hashes,
    verify_ledger,
)
from caracal.exceptions import LedgerVerificationError, ProofError

EVENTS = 120
CHECKPOINTS = (40, 80, 119, 120)  # signed checkpoints at these sizes
MIDDLE = 60

Lines = list[bytes]


def encode(data: dict[str, object]) -> bytes:
    return orjson.dumps(data)  # compact, key order kept: what the writer writes


def edited(line: bytes, **changes: object) -> bytes:
    data = orjson.loads(line)
    data.update(changes)
    return encode(data)


@pytest.fixture
def ledger(ledger_path: Path) -> Path:
    """120 events of varied shape, checkpointed at 40, 80, 119 and 120; the key is in $CARACAL_HOME."""
    with LedgerWriter(ledger_path, checkpoint_every=0, checkpoint_interval=0) as writer:
        for i in range(1, EVENTS + 1):
            if i % 10 == 0:
                writer.append_events(
                    [
                        {
                            "agent_id": f"agent-{i % 3}",
                            "resource_type": "gpu-seconds",
                            "quantity": "2.5",
                            "cost": "0.5",
                        }
                    ]
                )
            else:
                writer.append_event(
                    f"agent-{i % 3}", "tokens", i * 10, f"0.{i:03d}", metadata={"i": i, "note": "x" * (i % 7)}
                )
            if i in CHECKPOINTS:
                writer.checkpoint()
    assert [c.size for c in CheckpointStore(checkpoint_file(ledger_path))] == list(CHECKPOINTS)
    return ledger_path


def checkpoint_file(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoints")


def read_lines(path: Path) -> Lines:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: Lines) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def verify(path: Path, parallel: bool = False) -> VerificationReport:
    return verify_ledger(path, public_key=default_public_key(), parallel=parallel)


def findings(report: VerificationReport) -> tuple[object, ...]:
    problems = sorted((p.kind, p.event_id, p.line_number, p.exact) for p in report.problems)
    return report.ok, report.first_bad_event_id, report.events, problems


# ------------------------------------------------------------------------------------------ line tampers


def edit_cost(k: int) -> Callable[[Lines], Lines]:
    def tamper(lines: Lines) -> Lines:
        lines[k - 1] = edited(lines[k - 1], cost="0.000")
        return lines

    return tamper


def edit_agent(k: int) -> Callable[[Lines], Lines]:
    def tamper(lines: Lines) -> Lines:
        lines[k - 1] = edited(lines[k - 1], agent_id="someone-else")
        return lines

    return tamper


def delete(k: int) -> Callable[[Lines], Lines]:
    def tamper(lines: Lines) -> Lines:
        del lines[k - 1]
        return lines

    return tamper


def insert_forged(k: int) -> Callable[[Lines], Lines]:
    """A forged copy of event k (cheaper, correctly chained to k - 1) put in front of the real one."""

    def tamper(lines: Lines) -> Lines:
        lines.insert(k - 1, edited(lines[k - 1], cost="0.001"))
        return lines

    return tamper


def swap(k: int) -> Callable[[Lines], Lines]:
    def tamper(lines: Lines) -> Lines:
        lines[k - 1], lines[k] = lines[k], lines[k - 1]
        return lines

    return tamper


def garbage(k: int) -> Callable[[Lines], Lines]:
    def tamper(lines: Lines) -> Lines:
        lines[k - 1] = b'{"event_id": oops' + b"x" * (len(lines[k - 1]) - 17)  # same length: same split
        return lines

    return tamper


def truncate(count: int) -> Callable[[Lines], Lines]:
    return lambda lines: lines[:-count]


def rewrite_with_chain(k: int) -> Callable[[Lines], Lines]:
    """An attacker without the key: rewrites event k and recomputes every prev_hash after it."""

    def tamper(lines: Lines) -> Lines:
        lines[k - 1] = edited(lines[k - 1], cost="0.000")
        for j in range(k, len(lines)):
            lines[j] = edited(lines[j], prev_hash=leaf_hash(lines[j - 1]).hex())
        return lines

    return tamper


# (tamper, first bad event, the kind of problem that names it exactly or None when only a range is known)
LINE_TAMPERS: dict[str, tuple[Callable[[Lines], Lines], int, str | None]] = {
    "edit-cost-middle": (edit_cost(MIDDLE), MIDDLE, "chain"),
    "edit-agent-early": (edit_agent(7), 7, "chain"),
    "edit-first": (edit_cost(1), 1, "chain"),
    # no line after it: the checkpoint at 120, with the one at 119 matching, names it
    "edit-last": (edit_cost(EVENTS), EVENTS, "checkpoint"),
    "delete-middle": (delete(MIDDLE), MIDDLE, "gap"),
    "delete-first": (delete(1), 1, "gap"),
    "insert-forged": (insert_forged(MIDDLE), MIDDLE, "order"),
    "swap": (swap(MIDDLE), MIDDLE, "gap"),
    "garbage-line": (garbage(MIDDLE), MIDDLE, "corrupt-line"),
    "truncate-tail-3": (truncate(3), EVENTS - 2, "truncated"),
    "truncate-tail-1": (truncate(1), EVENTS, "truncated"),
    "rewrite-and-rechain": (rewrite_with_chain(MIDDLE), CHECKPOINTS[0] + 1, None),  # after the last matching
    "rewrite-and-rechain-early": (rewrite_with_chain(5), 1, None),  # before the first checkpoint
}


def test_untampered_ledger_verifies(ledger: Path) -> None:
    report = verify(ledger)
    assert report.ok, report.problems
    assert report.first_bad_event_id is None
    assert report.events == EVENTS and report.torn_tail_bytes == 0 and report.unchained_events == 0
    assert report.signatures_checked and report.key_id
    assert report.checkpoints_total == len(CHECKPOINTS) == report.checkpoints_matched
    assert report.root == CheckpointStore(checkpoint_file(ledger)).latest().root  # type: ignore[union-attr]
    unsigned = verify_ledger(ledger)  # without a key: roots compared, signatures not
    assert unsigned.ok and not unsigned.signatures_checked


@pytest.mark.parametrize("name", sorted(LINE_TAMPERS))
def test_line_tampering_is_found_and_named(ledger: Path, name: str) -> None:
    tamper, first_bad, exact_kind = LINE_TAMPERS[name]
    write_lines(ledger, tamper(read_lines(ledger)))
    report = verify(ledger)
    assert not report.ok
    assert report.first_bad_event_id == first_bad, report.problems
    exact = [p for p in report.problems if p.event_id is not None and p.exact]
    if exact_kind is None:
        # Only a signed checkpoint notices: it says some event from first_bad on was rewritten.
        assert exact == [], report.problems
        assert {p.kind for p in report.problems} == {"checkpoint"}
    else:
        assert min(exact, key=lambda p: p.event_id or 0).kind == exact_kind, report.problems
    with pytest.raises(LedgerVerificationError) as caught:
        report.raise_if_failed()
    assert caught.value.first_bad_event_id == first_bad
    # The same findings without the key (signatures unchecked, roots still compared).
    unsigned = verify_ledger(ledger)
    assert not unsigned.ok and unsigned.first_bad_event_id == first_bad


def test_rechained_rewrite_is_caught_only_by_the_checkpoints(ledger: Path) -> None:
    write_lines(ledger, rewrite_with_chain(MIDDLE)(read_lines(ledger)))
    report = verify(ledger)
    # Chain and ids are perfect; the checkpoints after the rewrite disagree, the one before agrees.
    assert report.checkpoints_matched == 1
    assert [p.kind for p in report.problems] == ["checkpoint"] * 3
    assert report.first_bad_event_id == CHECKPOINTS[0] + 1
    # Without any checkpoint covering the rewrite, nothing could tell: that is what signing is for.
    checkpoint_file(ledger).unlink()
    assert verify(ledger).ok


# ------------------------------------------------------------------------------------- checkpoint forgery


def rewrite_checkpoints(path: Path, change: Callable[[list[Checkpoint]], list[Checkpoint]]) -> None:
    records = change(list(CheckpointStore(checkpoint_file(path))))
    checkpoint_file(path).write_bytes(b"".join(encode(c.to_dict()) + b"\n" for c in records))


def test_checkpoint_with_an_altered_root_is_refused(ledger: Path) -> None:
    def alter(records: list[Checkpoint]) -> list[Checkpoint]:
        records[1] = dataclasses.replace(records[1], root=bytes(32))
        return records

    rewrite_checkpoints(ledger, alter)
    report = verify(ledger)
    assert not report.ok
    assert "checkpoint-signature" in {p.kind for p in report.problems}
    # The lines are intact: no problem names an event exactly; at most the forged checkpoint's range.
    assert not [p for p in report.problems if p.event_id is not None and p.exact]
    assert report.first_bad_event_id in (None, CHECKPOINTS[0] + 1)


@pytest.mark.parametrize("alter_root", [False, True], ids=["same-root", "altered-root"])
def test_checkpoint_re_signed_with_another_key_is_refused(ledger: Path, alter_root: bool) -> None:
    intruder = CheckpointSigner(Ed25519PrivateKey.generate())

    def forge(records: list[Checkpoint]) -> list[Checkpoint]:
        old = records[1]
        records[1] = intruder.sign(old.size, bytes(32) if alter_root else old.root, old.timestamp)
        return records

    rewrite_checkpoints(ledger, forge)
    report = verify(ledger)
    assert not report.ok
    signature_problems = [p for p in report.problems if p.kind == "checkpoint-signature"]
    assert len(signature_problems) == 1 and intruder.key_id in signature_problems[0].message
    assert not [p for p in report.problems if p.event_id is not None and p.exact]
    # A forged root may be reported as a range too (debatable: the checkpoint is untrusted), never more.
    assert report.first_bad_event_id in ((None, CHECKPOINTS[0] + 1) if alter_root else (None,))
    # Without the key the forged signature cannot be noticed; a forged root still can.
    assert verify_ledger(ledger).ok is (not alter_root)


def test_full_forgery_rewrite_rechain_and_re_sign_is_refused(ledger: Path) -> None:
    """The attacker rewrites an event, recomputes the chain and re-signs every checkpoint with their own key:
    only the configured public key tells their signatures apart from ours."""
    write_lines(ledger, rewrite_with_chain(MIDDLE)(read_lines(ledger)))
    intruder = CheckpointSigner(Ed25519PrivateKey.generate())
    leaves = read_leaf_hashes(ledger)
    rewrite_checkpoints(
        ledger,
        lambda records: [
            intruder.sign(c.size, root_from_leaf_hashes(leaves[: c.size]), c.timestamp) for c in records
        ],
    )
    report = verify(ledger)
    assert not report.ok
    assert [p.kind for p in report.problems] == ["checkpoint-signature"] * len(CHECKPOINTS)
    assert report.checkpoints_matched == 0  # forged checkpoints are ignored, not compared
    assert verify_ledger(ledger).ok  # which is why verify must be given the public key


def test_checkpoint_file_garbage_is_reported(ledger: Path) -> None:
    with open(checkpoint_file(ledger), "ab") as handle:
        handle.write(b"not a checkpoint\n")
    report = verify(ledger)
    assert not report.ok and "checkpoint-file" in {p.kind for p in report.problems}


# ------------------------------------------------------------------------------------- parallel = serial


def split_line(path: Path) -> int:
    """The number of the first line the parallel scan hands to the second process."""
    data = path.read_bytes()
    with open(path, "rb") as handle:
        middle = complete_end(handle, len(data) // 2)
    return data[:middle].count(b"\n") + 1


PARALLEL_TAMPERS = {
    "edit": edit_cost,
    "delete": delete,
    "insert-forged": insert_forged,
    "swap": swap,
    "garbage": garbage,
    "rewrite-and-rechain": rewrite_with_chain,
}


def test_parallel_verify_of_a_clean_ledger(ledger: Path) -> None:
    assert findings(verify(ledger, parallel=True)) == findings(verify(ledger, parallel=False))
    assert verify(ledger, parallel=True).ok


@pytest.mark.parametrize("offset", [-2, -1, 0, 1])
@pytest.mark.parametrize("name", sorted(PARALLEL_TAMPERS))
def test_parallel_verify_finds_the_same_as_serial(ledger: Path, name: str, offset: int) -> None:
    """Tamper right around the line where the file is split between the two processes."""
    k = split_line(ledger) + offset
    write_lines(ledger, PARALLEL_TAMPERS[name](k)(read_lines(ledger)))
    serial = verify(ledger, parallel=False)
    parallel = verify(ledger, parallel=True)
    assert not serial.ok
    assert findings(parallel) == findings(serial)
    expected = CHECKPOINTS[0] + 1 if name == "rewrite-and-rechain" else k
    assert serial.first_bad_event_id == expected, serial.problems


@pytest.mark.parametrize("name", ["truncate-tail-3", "edit-last", "edit-cost-middle"])
def test_parallel_verify_other_tampers(ledger: Path, name: str) -> None:
    tamper, first_bad, _ = LINE_TAMPERS[name]
    write_lines(ledger, tamper(read_lines(ledger)))
    assert findings(verify(ledger, parallel=True)) == findings(verify(ledger, parallel=False))
    assert verify(ledger, parallel=True).first_bad_event_id == first_bad


def test_parallel_verify_with_a_torn_tail(ledger: Path) -> None:
    torn = b'{"event_id":121,"agent_id":"a","times'
    with open(ledger, "ab") as handle:
        handle.write(torn)
    serial, parallel = verify(ledger), verify(ledger, parallel=True)
    assert serial.ok and parallel.ok
    assert serial.torn_tail_bytes == parallel.torn_tail_bytes == len(torn)
    assert findings(serial) == findings(parallel)


# ----------------------------------------------------------------------------------------------- proofs


def flip(value: bytes, index: int = 0) -> bytes:
    return value[:index] + bytes([value[index] ^ 0x01]) + value[index + 1 :]


@pytest.mark.parametrize(
    ("event_id", "size"), [(1, None), (17, 80), (60, None), (64, 64), (80, 80), (120, None)]
)
def test_inclusion_proofs_verify_and_break_when_flipped(
    ledger: Path, event_id: int, size: int | None
) -> None:
    proof = prove_inclusion(ledger, event_id, size)
    proof.verify()
    assert proof.size == (size or EVENTS)
    assert proof.leaf_hash == leaf_hash(read_lines(ledger)[event_id - 1])
    signed = {c.size: c.root for c in CheckpointStore(checkpoint_file(ledger))}
    if proof.size in signed:
        assert proof.root == signed[proof.size]  # the proof ties the event to a signed root
    assert proof.proof, "a tree of more than one leaf needs a non-empty path"
    for index in range(len(proof.proof)):
        hashes = list(proof.proof)
        hashes[index] = flip(hashes[index], index % 32)
        with pytest.raises(ProofError):
            dataclasses.replace(proof, proof=hashes).verify()
    for broken in (
        dataclasses.replace(proof, root=flip(proof.root, 31)),
        dataclasses.replace(proof, leaf_hash=flip(proof.leaf_hash, 5)),
        dataclasses.replace(proof, proof=proof.proof[:-1]),
        dataclasses.replace(proof, proof=[*proof.proof, proof.root]),
        dataclasses.replace(proof, event_id=event_id % proof.size + 1),
    ):
        with pytest.raises(ProofError):
            broken.verify()


@pytest.mark.parametrize(("size1", "size2"), [(40, 80), (1, 120), (64, 120), (80, 119), (119, 120), (3, 5)])
def test_consistency_proofs_verify_and_break_when_flipped(ledger: Path, size1: int, size2: int) -> None:
    proof = prove_consistency(ledger, size1, size2)
    proof.verify()
    signed = {c.size: c.root for c in CheckpointStore(checkpoint_file(ledger))}
    for size, root in ((size1, proof.root1), (size2, proof.root2)):
        if size in signed:
            assert root == signed[size]
    for index in range(len(proof.proof)):
        hashes = list(proof.proof)
        hashes[index] = flip(hashes[index], (7 * index) % 32)
        with pytest.raises(ProofError):
            dataclasses.replace(proof, proof=hashes).verify()
    for broken in (
        dataclasses.replace(proof, root1=flip(proof.root1)),
        dataclasses.replace(proof, root2=flip(proof.root2, 31)),
        dataclasses.replace(proof, proof=proof.proof[1:]),
        dataclasses.replace(proof, size1=size1 + 1 if size1 + 1 < size2 else size1 - 1),
    ):
        with pytest.raises(ProofError):
            broken.verify()


def test_consistency_proof_of_equal_sizes(ledger: Path) -> None:
    proof = prove_consistency(ledger, 80, 80)
    proof.verify()
    assert proof.proof == [] and proof.root1 == proof.root2
    with pytest.raises(ProofError):
        dataclasses.replace(proof, root2=flip(proof.root2)).verify()


def test_proofs_refuse_impossible_requests(ledger: Path) -> None:
    for request in (
        lambda: prove_inclusion(ledger, 0),
        lambda: prove_inclusion(ledger, EVENTS + 1),
        lambda: prove_inclusion(ledger, 5, EVENTS + 1),
        lambda: prove_inclusion(ledger, 50, 40),
        lambda: prove_consistency(ledger, 0, 10),
        lambda: prove_consistency(ledger, 11, 10),
        lambda: prove_consistency(ledger, 10, EVENTS + 1),
    ):
        with pytest.raises(ProofError):
            request()


def test_a_tampered_ledger_cannot_prove_consistency_with_its_signed_past(ledger: Path) -> None:
    """After a chain-recomputing rewrite, the file's own proofs are self-consistent but their roots are
    not the signed ones: a third party holding the signed checkpoint sees the rewrite."""
    signed = {c.size: c.root for c in CheckpointStore(checkpoint_file(ledger))}
    write_lines(ledger, rewrite_with_chain(MIDDLE)(read_lines(ledger)))
    proof = prove_consistency(ledger, 40, 80)
    proof.verify()
    assert proof.root1 == signed[40] and proof.root2 != signed[80]
    with pytest.raises(ProofError):
        dataclasses.replace(proof, root2=signed[80]).verify()
    inclusion = prove_inclusion(ledger, MIDDLE, 80)
    with pytest.raises(ProofError):
        dataclasses.replace(inclusion, root=signed[80]).verify()


def test_base64_roots_in_the_checkpoint_file_are_what_is_signed(ledger: Path) -> None:
    record = orjson.loads(checkpoint_file(ledger).read_bytes().split(b"\n")[0])
    assert base64.b64decode(record["root"]) == prove_inclusion(ledger, 1, 40).root
