"""Full verification of a ledger file, and Merkle proofs over it.

:func:`verify_ledger` reads the whole file once and checks, in file order:

1. every complete line is a valid event (corruption anywhere is found, not only at the tail);
2. event ids run 1, 2, 3, ... (a deleted line leaves a gap, an inserted or reordered one breaks the order);
3. each line's ``prev_hash`` equals the leaf hash of the line before it (a modified line is named exactly by
   the next line's chain);
4. the RFC 9162 root over the first ``size`` lines equals every signed checkpoint's root, and each
   checkpoint's Ed25519 signature is valid (a rewrite that also recomputed the chain is still caught);
5. the ledger is at least as long as its last checkpoint (a truncated tail is caught).

Problems are collected in file order, so ``first_bad_event_id`` names the first bad event. A torn last line
(an unacknowledged write cut by a crash, repaired by the next writer) is reported but is not a problem.

Memory does not grow with the number of events: leaf hashes are folded into a :class:`MerkleFrontier` as
lines are scanned (in batches of :data:`_FOLD_BATCH`), and each checkpoint's root is compared the moment the
tree reaches its size, so no more than one batch of leaves is ever held. Large ledgers are checked in two
processes: a file's second half by bytes, a database's by event ids (the child reads those rows on a
connection of its own, from the store's ``line_source``; the URL goes to it on its input, never on its
command line, where other users of the machine could read a password). In parallel mode the child writes
the second half's leaf hashes (32 bytes each) to a temporary file (in ``$TMPDIR``, not in the ledger's
folder, which a verifier may not be allowed to write), which the parent folds in batches after the first half
and then deletes. What is held still grows with the number of signed checkpoints, all read
at the start (under a kilobyte each; one per 1,000 events by default). Only the proofs
(:func:`prove_inclusion`, :func:`prove_consistency`) read every leaf into memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from caracal.core.checkpoint import Checkpoint, CheckpointStore, key_id, load_public_key
from caracal.core.events import (
    canonical_line_fields,
    complete_end,
    iter_lines,
    parse_line,
    validate_event_dict,
)
from caracal.core.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleFrontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from caracal.core.replay_helper import can_start_python, read_with, split_hashes
from caracal.core.store import CheckpointLog, LedgerStore
from caracal.exceptions import (
    CheckpointError,
    InvalidLedgerEventError,
    LedgerCorruptError,
    LedgerReadError,
    LedgerVerificationError,
    ProofError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

Progress = Callable[[int, int], None]
"""Called with ``(bytes_done, bytes_total)`` now and then during long work."""

_PROGRESS_STEP = 8 << 20
_PARALLEL_MIN_BYTES = 32 << 20
_PARALLEL_MIN_EVENTS = 1 << 17
"""The same for a store whose positions are event ids (about 32 MiB of lines)."""
_SOURCE = "--source"
"""A child's first argument when it reads a store's line source (given as JSON on its input), not a file."""
_FOLD_BATCH = 1 << 14
"""Leaves held before they are folded into the tree: the bound on verify's memory for leaves (half a MiB of
hashes plus their list), large enough that folding in bulk costs nothing per line."""

Fold = Callable[[list[bytes]], None]
"""Takes the next leaf hashes in file order; the list is reused by the caller once this returns."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a ledger. ``kind`` is a stable word scripts can match on."""

    kind: str
    message: str
    event_id: int | None = None
    line_number: int | None = None
    exact: bool = True
    """False when ``event_id`` is only the start of a range known to hold a bad event (a checkpoint
    mismatch says *some* event from there on was rewritten, not which)."""


@dataclass
class VerificationReport:
    ledger_path: Path
    """The ledger file; for a store of another backend, its location as a path (see :attr:`location`)."""
    events: int = 0
    bytes_checked: int = 0
    root: bytes = EMPTY_ROOT
    checkpoints_total: int = 0
    checkpoints_matched: int = 0
    signatures_checked: bool = False
    key_id: str | None = None
    torn_tail_bytes: int = 0
    unchained_events: int = 0
    problems: list[Problem] = field(default_factory=list)
    problems_omitted: int = 0
    location: str = ""
    """Where the ledger is, as a person reads it: the file, or a database's redacted URL."""
    unit: str = "bytes"
    """What :attr:`bytes_checked` and :attr:`torn_tail_bytes` count: ``bytes`` of a file, or ``events``
    where positions are event ids (a database has no torn tail)."""

    def __post_init__(self) -> None:
        if not self.location:
            self.location = str(self.ledger_path)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_event_id(self) -> int | None:
        """The first bad event named exactly; else the start of the first range known to hold one."""
        exact = [p.event_id for p in self.problems if p.event_id is not None and p.exact]
        if exact:
            return min(exact)
        ranges = [p.event_id for p in self.problems if p.event_id is not None]
        return min(ranges) if ranges else None

    @property
    def first_bad_event_is_exact(self) -> bool:
        """Whether :attr:`first_bad_event_id` is a bad event itself, not the start of a range holding one."""
        return any(p.event_id is not None and p.exact for p in self.problems)

    def raise_if_failed(self) -> None:
        if self.problems:
            first = self.problems[0]
            more = len(self.problems) + self.problems_omitted - 1
            raise LedgerVerificationError(
                first.message + (f" (and {more} more problems)" if more else ""),
                first_bad_event_id=self.first_bad_event_id,
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "ledger": self.location,
            "events": self.events,
            "bytes": self.bytes_checked if self.unit == "bytes" else None,
            "root": self.root.hex(),
            "checkpoints": self.checkpoints_total,
            "checkpoints_matched": self.checkpoints_matched,
            "signatures_checked": self.signatures_checked,
            "key_id": self.key_id,
            "torn_tail_bytes": self.torn_tail_bytes,
            "unchained_events": self.unchained_events,
            "first_bad_event_id": self.first_bad_event_id,
            "problems": [problem.__dict__ for problem in self.problems],
            "problems_omitted": self.problems_omitted,
        }


def default_public_key(path: str | os.PathLike[str] | None = None) -> Ed25519PublicKey | None:
    """The public half of the signing key at ``path`` (default: the configured one), or None when there is
    no key there yet."""
    from caracal.config import default_signing_key_path

    key_path = Path(path) if path is not None else default_signing_key_path()
    return load_public_key(key_path) if key_path.exists() else None


def verify_ledger(
    ledger: str | os.PathLike[str] | LedgerStore,
    *,
    public_key: Ed25519PublicKey | None = None,
    progress: Progress | None = None,
    max_problems: int = 50,
    parallel: bool | None = None,
    remembered: tuple[int, bytes] | None = None,
) -> VerificationReport:
    """Check the whole ledger (see the module docstring) and return a report; never raises for findings.

    Without ``public_key`` the checkpoints' roots are still compared, but their signatures are not checked
    (the report says so). ``parallel`` (default: for files over 32 MiB on a machine with several cores)
    checks the second half of the file in another process. Raises :class:`LedgerReadError` only when the
    file cannot be read at all. ``ledger`` may be a :class:`LedgerStore` of any backend: the same checks run
    over its lines (the same bytes), streamed; a long one (over 131,072 events) has its second half read and
    checked by a child on a connection of its own, when the store says how (``line_source``).

    ``remembered`` is ``(size, root)`` of the home writer's sealed Merkle state
    (:func:`caracal.core.ledger.remembered_root`): compared like a checkpoint, it covers the lines written
    since the last signed checkpoint, which nothing else does (the last line has no successor whose
    ``prev_hash`` names it).
    """
    source: LedgerStore | None = None
    if isinstance(ledger, (str, os.PathLike)):
        path = Path(ledger)
    elif getattr(ledger, "path", None) is not None:
        path = Path(ledger.path)  # type: ignore[attr-defined]  # a file store: verify its file
    else:
        source, path = ledger, Path(ledger.location)
    report = VerificationReport(ledger_path=path)
    if source is not None:
        report.location, report.unit = source.location, "events"
    store: CheckpointLog = (
        source.checkpoints
        if source is not None
        else CheckpointStore(path.with_name(path.name + ".checkpoints"))
    )

    def found(problem: Problem) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(problem)
        else:
            report.problems_omitted += 1

    checkpoints: list[Checkpoint] = []
    try:
        checkpoints = list(store)
    except CheckpointError as exc:
        found(Problem("checkpoint-file", f"the checkpoint file is unreadable: {exc}"))
    report.checkpoints_total = len(checkpoints)
    trusted = checkpoints
    if public_key is not None:
        report.signatures_checked = True
        report.key_id = key_id(public_key)
        trusted = []
        for checkpoint in checkpoints:
            try:
                checkpoint.verify(public_key)
            except CheckpointError as exc:  # a forged checkpoint says nothing about the ledger's lines
                found(Problem("checkpoint-signature", f"{exc}; the checkpoint is ignored"))
            else:
                trusted.append(checkpoint)
    signed = sorted(trusted, key=lambda c: c.size)
    next_cp = 0
    while next_cp < len(signed) and signed[next_cp].size == 0:
        _compare_root(signed[next_cp], EMPTY_ROOT, report, found, 0)
        next_cp += 1
    pending: list[Checkpoint | _Remembered] = [*signed[next_cp:]]
    if remembered is not None and remembered[0] > 0:
        pending = sorted([*pending, _Remembered(*remembered)], key=lambda c: c.size)

    checker = _RootChecker(pending, report)
    if source is not None:
        total = source.end()  # positions are event ids: "bytes" below count lines
        segments = _scan_store(source, path, total, progress, parallel, checker.fold)
    else:
        try:
            total = path.stat().st_size
        except FileNotFoundError:
            total = 0
        except OSError as exc:
            raise LedgerReadError(f"cannot read the ledger {path}: {exc.strerror}") from exc
        segments = _scan(path, total, progress, parallel, checker.fold)
    expected, last_leaf = 1, EMPTY_ROOT
    for segment in segments:
        if segment.count:
            _check_boundary(segment, expected, last_leaf, report.events, found)
        for problem in segment.problems:
            found(replace(problem, line_number=(problem.line_number or 0) + report.events))
        report.events += segment.count
        report.unchained_events += segment.unchained
        if segment.count:
            expected, last_leaf = segment.next_expected, segment.last_leaf
        report.bytes_checked = segment.stop
    report.torn_tail_bytes = total - report.bytes_checked
    checker.finish(report.events)
    for problem in checker.problems:  # after the lines' problems, as found when all leaves were kept
        found(problem)
    report.root = checker.tree.root()
    # Problems were found per stage; present them in file order so the first names the first bad event.
    report.problems.sort(key=lambda p: (not p.exact, p.event_id is None, p.event_id or 0))
    return report


@dataclass
class _Segment:
    """What scanning the complete lines in ``[start, stop)`` found; line numbers are segment-local."""

    start: int
    stop: int = 0
    count: int = 0
    first_id: object = None
    first_chain: object = None
    next_expected: int = 1
    unchained: int = 0
    last_leaf: bytes = EMPTY_ROOT
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class _Remembered:
    """The home writer's sealed Merkle state, compared like a checkpoint (but not counted as one)."""

    size: int
    root: bytes


class _RootChecker:
    """Folds leaf hashes, in file order, into a :class:`MerkleFrontier` and compares the root the moment the
    tree reaches each checkpoint's size.

    Holds only the frontier (at most 64 hashes) and the checkpoints, never the leaves: this is what keeps
    verify's memory independent of the ledger's length. ``pending`` must be sorted by size, all sizes > 0.
    Its findings go to :attr:`problems` (in the order the checkpoints are compared) so the caller can report
    them after the lines' own problems, as before.
    """

    def __init__(self, pending: Sequence[Checkpoint | _Remembered], report: VerificationReport) -> None:
        self.tree = MerkleFrontier()
        self.problems: list[Problem] = []
        self._pending = pending
        self._next = 0
        self._report = report
        self._last_matched = 0
        self._compared: set[tuple[int, bytes]] = set()

    def fold(self, leaves: list[bytes]) -> None:
        """Append the next ``leaves``, comparing the root at every checkpoint size they reach."""
        tree, pending = self.tree, self._pending
        done, count = 0, len(leaves)
        while self._next < len(pending):
            take = pending[self._next].size - tree.size
            if take > count - done:
                break
            if take:
                tree.extend(leaves[done : done + take])
                done += take
            self._compare_all_of_this_size()
        if done < count:
            tree.extend(leaves[done:] if done else leaves)

    def _compare_all_of_this_size(self) -> None:
        pending, tree = self._pending, self.tree
        root = tree.root()
        while self._next < len(pending) and pending[self._next].size == tree.size:
            checkpoint = pending[self._next]
            self._next += 1
            if isinstance(checkpoint, _Remembered):
                if checkpoint.root != root:
                    first = self._last_matched + 1
                    which, exact = _changed(first, checkpoint.size, "modified since")
                    self.problems.append(
                        Problem(
                            "writer-state",
                            f"the first {checkpoint.size} events do not hash to the root this home's writer "
                            f"recorded when it wrote them (its sealed Merkle state): {which}",
                            first,
                            first,
                            exact=exact,
                        )
                    )
                continue
            if (checkpoint.size, checkpoint.root) in self._compared:
                self._report.checkpoints_matched += checkpoint.root == root
                continue
            self._compared.add((checkpoint.size, checkpoint.root))
            if _compare_root(checkpoint, root, self._report, self.problems.append, self._last_matched):
                self._last_matched = checkpoint.size

    def finish(self, events: int) -> None:
        """After the last leaf: a checkpoint the tree never reached means the ledger's tail was cut."""
        if self._next < len(self._pending):
            size = self._pending[self._next].size
            whose = (
                "this home's writer recorded"
                if all(isinstance(c, _Remembered) for c in self._pending[self._next :])
                else "a signed checkpoint covers"
            )
            self.problems.append(
                Problem(
                    "truncated",
                    f"the ledger holds {events} events but {whose} "
                    f"{size}: events {events + 1}..{size} were removed from "
                    f"its tail",
                    events + 1,
                    events + 1,
                )
            )
            self._next = len(self._pending)


def _scan(
    path: Path, total: int, progress: Progress | None, parallel: bool | None, fold: Fold
) -> list[_Segment]:
    """Scan the file in one process, or (large files, several cores) in two processes at once, handing every
    leaf hash to ``fold`` in file order."""
    if total == 0:
        return []
    if parallel is None:
        parallel = total >= _PARALLEL_MIN_BYTES and (os.cpu_count() or 1) > 1 and can_start_python()
    if not parallel:
        return [_scan_segment(path, 0, total, progress, total, fold)]
    with open(path, "rb") as handle:
        middle = complete_end(handle, total // 2)
        first_line = next(iter_lines(handle, middle, total), (0, b""))[1]
    if middle == 0 or not _anchors(first_line):
        # The second half must start with a line whose id anchors its numbering; a corrupt line there
        # would make the child number everything after it wrongly. Rare (corrupt files): scan in one go.
        return [_scan_segment(path, 0, total, progress, total, fold)]
    return _with_child(
        [os.fspath(path), str(middle), str(total)],
        lambda: _scan_segment(path, 0, middle, progress, total, fold),
        fold,
        f"the second half of {path}",
        progress,
        total,
    )


def _scan_store(
    source: LedgerStore, path: Path, total: int, progress: Progress | None, parallel: bool | None, fold: Fold
) -> list[_Segment]:
    """:func:`_scan` for a store whose positions are event ids: the same, with the second half read by the
    child on a connection of its own (the store's :meth:`~caracal.core.store.LedgerStore.line_source`)."""
    if total == 0:
        return []
    middle = total // 2
    spec = None
    if parallel is None:
        parallel = total >= _PARALLEL_MIN_EVENTS and (os.cpu_count() or 1) > 1 and can_start_python()
    if parallel:
        spec = source.line_source()
    if spec is not None and middle and _anchors(source.line_at(middle + 1) or b""):
        segments = _with_child(
            [_SOURCE, str(middle), str(total)],
            lambda: _scan_segment(
                path, 0, middle, progress, total, fold, _starts(source.iter_lines(0, middle))
            ),
            fold,
            f"the second half of {source.location}",
            progress,
            total,
            orjson.dumps(list(spec)),  # its input, not its command line: a database URL may hold a password
        )
        segments[0].stop = middle
    else:
        segments = [
            _scan_segment(path, 0, total, progress, total, fold, _starts(source.iter_lines(0, total)))
        ]
    segments[-1].stop = total
    return segments


def _starts(lines: Iterable[tuple[int, bytes]]) -> Iterable[tuple[int, bytes]]:
    """A store's ``(position after, line)`` pairs as :func:`_scan_segment` takes them: ``(position before,
    line)``; where positions are event ids, the id before."""
    return ((end - 1, line) for end, line in lines)


def _anchors(line: bytes) -> bool:
    """Whether ``line`` (the first of a second half) has an integer ``event_id`` to number the half from."""
    try:
        return type(orjson.loads(line)["event_id"]) is int
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return False


def _with_child(
    args: list[str],
    first_half: Callable[[], _Segment],
    fold: Fold,
    what: str,
    progress: Progress | None,
    total: int,
    given: bytes = b"",
) -> list[_Segment]:
    """Scan the second half in a child (``args``: what to read, where it starts and stops; ``given``: its
    input) while this process scans the first (``first_half``, which folds its leaves as it goes); then fold
    the child's leaves.

    A child interpreter (not multiprocessing, which would re-import the caller's main module). Its leaf hashes
    go to a temporary file, not through memory: the parent folds them after the first half's, in batches, and
    deletes the file."""
    descriptor, leaves_name = tempfile.mkstemp(prefix="caracal-verify-", suffix=".leaves")
    os.close(descriptor)
    leaves_path = Path(leaves_name)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "caracal.core.verify", *args, leaves_name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdin is not None
        with contextlib.suppress(OSError):
            child.stdin.write(given)
            child.stdin.close()
        child.stdin = None  # closed: communicate() below only reads
        try:
            first = first_half()
        finally:
            output, errors = child.communicate()
        if child.returncode != 0:
            raise LedgerReadError(f"verifying {what} failed: {errors.decode(errors='replace')}")
        rest: _Segment = pickle.loads(output)
        _fold_leaf_file(leaves_path, rest.count, fold)
    finally:
        leaves_path.unlink(missing_ok=True)
    if progress is not None:
        progress(total, total)
    return [first, rest]


def _fold_leaf_file(leaves_path: Path, count: int, fold: Fold) -> None:
    """Hand the ``count`` 32-byte leaf hashes stored in ``leaves_path`` to ``fold``, a batch at a time."""
    size = HASH_SIZE
    chunk_bytes = _FOLD_BATCH * size
    seen = 0
    try:
        with open(leaves_path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                if len(chunk) % size:
                    break
                fold(split_hashes(chunk))
                seen += len(chunk) // size
    except OSError as exc:
        raise LedgerReadError(
            f"cannot read the leaf hashes of the second half ({leaves_path}): {exc.strerror}"
        ) from exc
    if seen != count:  # fail closed: a root compared over missing leaves would prove nothing
        raise LedgerReadError(
            f"the second half of the ledger was checked ({count} lines) but only {seen} of its leaf hashes "
            f"came back through {leaves_path}; is the temporary directory full? Run verify again."
        )


def _scan_segment(
    path: Path,
    start: int,
    stop: int,
    progress: Progress | None,
    total: int,
    fold: Fold,
    lines: Iterable[tuple[int, bytes]] | None = None,
) -> _Segment:
    """Check every complete line in ``[start, stop)``: valid event, ids in order, chain intact; hand each
    line's leaf hash to ``fold`` in order, :data:`_FOLD_BATCH` at a time (so memory stays bounded).

    The hot loop of ``verify``: it runs once per line, so it binds everything it calls to locals. The
    first line's id and chain are taken as given and checked against the previous segment by the caller.
    ``lines`` (``(start, line)`` pairs, for a ledger that is not a file) replaces reading ``path``.
    """
    segment = _Segment(start=start, stop=start)
    leaves: list[bytes] = []
    batch = _FOLD_BATCH
    problems = segment.problems
    loads = orjson.loads
    validate = validate_event_dict
    canonical = canonical_line_fields
    sha256 = hashlib.sha256
    expected: int | None = 1 if start == 0 else None
    prev_hex: str | None = EMPTY_ROOT.hex() if start == 0 else None
    number = 0
    unchained = 0
    next_progress = start + _PROGRESS_STEP
    try:
        with contextlib.ExitStack() as stack:
            if lines is None:
                lines = iter_lines(stack.enter_context(open(path, "rb")), start, stop)
            for offset, line in lines:
                number += 1
                leaf = sha256(b"\x00" + line).digest()
                leaves.append(leaf)
                if len(leaves) == batch:
                    fold(leaves)
                    leaves.clear()
                fast = canonical(line)
                if fast is not None and fast[0] == expected:  # the common case: a valid plain line, in order
                    expected += 1
                    if fast[1] != prev_hex and prev_hex is not None:
                        problems.append(_chain_problem(expected - 2, number - 1))
                    prev_hex = leaf.hex()
                    continue
                try:
                    data = loads(line)
                    event_id = data["event_id"]
                    chain = data.get("prev_hash")
                except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
                    data, event_id, chain = None, None, None
                if expected is None:  # first line of a later segment
                    segment.first_id, segment.first_chain = event_id, chain
                    expected = event_id if type(event_id) is int else 1
                    prev_hex = chain if type(chain) is str else None
                # A line out of place (deleted, inserted or moved neighbours) breaks the chain as a matter of
                # course; its order problem names it, and a chain problem would name an innocent neighbour.
                misplaced = type(event_id) is int and event_id != expected
                if event_id != expected or type(event_id) is not int:
                    problems.append(_order_problem(line, number, expected, event_id))
                    expected = event_id + 1 if type(event_id) is int else expected + 1
                else:
                    try:
                        validate(data)
                    except InvalidLedgerEventError as exc:
                        problems.append(
                            Problem(
                                "corrupt-line",
                                f"ledger line {number} is not a valid event: {exc}",
                                event_id,
                                number,
                            )
                        )
                    expected += 1
                if chain is None:
                    unchained += 1
                elif chain != prev_hex and prev_hex is not None and not misplaced:
                    problems.append(_chain_problem(expected - 2, number - 1))
                prev_hex = leaf.hex()
                if progress is not None and offset >= next_progress:
                    progress(offset, total)
                    next_progress = offset + _PROGRESS_STEP
            if number:
                segment.stop = offset + len(line) + 1
                segment.last_leaf = leaf
            if leaves:
                fold(leaves)
                leaves.clear()
    except OSError as exc:
        raise LedgerReadError(f"cannot read the ledger {path}: {exc.strerror}") from exc
    segment.count = number
    segment.unchained = unchained
    segment.next_expected = expected or 1
    if start == 0 and number:
        segment.first_id = 1
    return segment


def _chain_problem(bad: int, line_number: int) -> Problem:
    return Problem(
        "chain",
        f"event {bad} does not match the hash recorded by the line after it: event {bad} was modified, "
        f"or the line after it was",
        bad,
        line_number,
    )


def _check_boundary(
    segment: _Segment, expected: int, last_leaf: bytes, lines_before: int, found: Callable[[Problem], None]
) -> None:
    """Check the first line of a later segment against the end of the one before it."""
    if segment.start == 0:
        return
    number = lines_before + 1
    misplaced = type(segment.first_id) is int and segment.first_id != expected
    if misplaced:
        found(_order_problem(b"", number, expected, segment.first_id))
    if not misplaced and isinstance(segment.first_chain, str) and segment.first_chain != last_leaf.hex():
        found(_chain_problem(expected - 1, number - 1))


def _order_problem(line: bytes, number: int, expected: int, event_id: object) -> Problem:
    if type(event_id) is not int:
        try:
            parse_line(line, number)
            message = f"ledger line {number} has no valid event_id"
        except LedgerCorruptError as exc:
            message = str(exc)
        return Problem("corrupt-line", message, expected, number)
    if event_id > expected:
        what = (
            f"events {expected}..{event_id - 1} are missing"
            if event_id > expected + 1
            else (f"event {expected} is missing")
        )
        return Problem(
            "gap", f"line {number} holds event {event_id}: {what} (deleted lines)", expected, number
        )
    return Problem(
        "order",
        f"line {number} holds event {event_id} but event {expected} was expected: a line was inserted, "
        f"duplicated or moved",
        event_id if event_id >= 1 else expected,  # the duplicated or moved event, not its innocent successor
        number,
    )


def _compare_root(
    checkpoint: Checkpoint,
    root: bytes,
    report: VerificationReport,
    found: Callable[[Problem], None],
    last_matched: int,
) -> bool:
    if checkpoint.root == root:
        report.checkpoints_matched += 1
        return True
    first = last_matched + 1
    which, exact = _changed(first, checkpoint.size, "rewritten")
    found(
        Problem(
            "checkpoint",
            f"the first {checkpoint.size} events do not hash to the root signed at {checkpoint.timestamp}: "
            f"{which}",
            first,
            first,
            exact=exact,
        )
    )
    return False


def _changed(first: int, last: int, how: str) -> tuple[str, bool]:
    """What a root that no longer matches says: which events may have changed (exact when only one can:
    the ones before ``first`` still match an earlier root)."""
    if first == last:
        return f"event {first} was {how}", True
    return f"some event from {first} to {last} was {how}", False


# ====================================================================== proofs


def read_leaf_hashes(ledger: str | os.PathLike[str] | LedgerStore, limit: int | None = None) -> list[bytes]:
    """RFC 9162 leaf hashes of the first ``limit`` complete lines (all when None), of a ledger file or a
    store of any backend."""
    leaves: list[bytes] = []
    if not isinstance(ledger, (str, os.PathLike)):
        file = getattr(ledger, "path", None)
        if file is None:  # positions are event ids: the first ``limit`` lines end at position ``limit``
            for _position, line in ledger.iter_lines(0, limit):
                leaves.append(leaf_hash(line))
            return leaves
        ledger = Path(file)
    path = Path(ledger)
    try:
        with open(path, "rb") as handle:
            for _offset, line in iter_lines(handle):
                if limit is not None and len(leaves) >= limit:
                    break
                leaves.append(leaf_hash(line))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LedgerReadError(f"cannot read the ledger {path}: {exc.strerror}") from exc
    return leaves


@dataclass(frozen=True)
class InclusionProof:
    """Proof that event ``event_id`` (leaf ``event_id - 1``) is in the ``size``-leaf tree with ``root``."""

    event_id: int
    size: int
    leaf_hash: bytes
    root: bytes
    proof: list[bytes]

    def verify(self) -> None:
        verify_inclusion(self.leaf_hash, self.event_id - 1, self.size, self.proof, self.root)


@dataclass(frozen=True)
class ConsistencyProof:
    """Proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2`` leaves."""

    size1: int
    size2: int
    root1: bytes
    root2: bytes
    proof: list[bytes]

    def verify(self) -> None:
        verify_consistency(self.size1, self.size2, self.root1, self.root2, self.proof)


def prove_inclusion(
    ledger_path: str | os.PathLike[str] | LedgerStore, event_id: int, size: int | None = None
) -> InclusionProof:
    """An inclusion proof for ``event_id`` in the tree of the first ``size`` events (default: all)."""
    if type(event_id) is not int or event_id < 1:
        raise ProofError(f"event_id must be a positive integer, got {event_id!r}")
    leaves = read_leaf_hashes(ledger_path, size)
    size = len(leaves) if size is None else size
    if size > len(leaves):
        raise ProofError(f"the ledger holds {len(leaves)} events, fewer than the requested size {size}")
    if event_id > size:
        raise ProofError(f"event {event_id} is not within the first {size} events")
    proof = inclusion_proof(leaves, event_id - 1, size)
    return InclusionProof(event_id, size, leaves[event_id - 1], root_from_leaf_hashes(leaves[:size]), proof)


def prove_consistency(
    ledger_path: str | os.PathLike[str] | LedgerStore, size1: int, size2: int | None = None
) -> ConsistencyProof:
    """A consistency proof between the trees of the first ``size1`` and ``size2`` events (default: all)."""
    leaves = read_leaf_hashes(ledger_path, size2)
    size2 = len(leaves) if size2 is None else size2
    if size2 > len(leaves):
        raise ProofError(f"the ledger holds {len(leaves)} events, fewer than the requested size {size2}")
    if type(size1) is not int or not 0 < size1 <= size2:
        raise ProofError(f"size1 must be between 1 and {size2}, got {size1!r}")
    proof = consistency_proof(leaves, size1, size2)
    return ConsistencyProof(
        size1, size2, root_from_leaf_hashes(leaves[:size1]), root_from_leaf_hashes(leaves[:size2]), proof
    )


def _worker_main(argv: list[str]) -> None:
    """Entry point of the child that checks a later segment: writes its leaf hashes to the file ``argv[3]``
    and prints the pickled :class:`_Segment` (small: its findings, not its leaves)."""
    from caracal.core import verify  # this file runs as __main__; pickle must name the importable module

    target, start, stop, leaves_path = argv[0], int(argv[1]), int(argv[2]), argv[3]
    path, lines = Path(target), None
    if target == _SOURCE:  # a store's line source (on this process's input), positions event ids
        name, args = orjson.loads(sys.stdin.buffer.read())
        path = Path(name)
        lines = verify._starts(read_with(name)(after=start, end=stop, **args))
    with open(leaves_path, "wb") as out:

        def write(leaves: list[bytes]) -> None:
            out.write(b"".join(leaves))

        segment = verify._scan_segment(path, start, stop, None, stop, write, lines)
    sys.stdout.buffer.write(pickle.dumps(segment, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
