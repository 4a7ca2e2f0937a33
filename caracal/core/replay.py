"""Reading the ledger to decide budgets, trusting only what checks out.

Enforcement derives every budget from the ledger's lines, so a line an attacker edited (a cost set to 0, a
charge deleted, another home's ledger dropped in) must not be believed. :class:`VerifiedTail` follows a
ledger like :class:`caracal.core.ledger.LedgerTail` and checks every line as it reads it:

1. ids run on without a gap (a deleted, inserted or reordered line breaks this);
2. each line's ``prev_hash`` is the leaf hash of the line before it (an edited line breaks the next
   line's chain);
3. whenever the tree reaches the size of a signed checkpoint, the RFC 9162 root of the lines read so far
   equals the signed root, and every checkpoint must carry a valid signature of this home's key (an edit
   that recomputed the chain, or a foreign ledger, is caught at the first checkpoint after it);
4. the ledger holds at least as many lines as every checkpoint covers (a truncated tail is caught).

A problem raises :class:`LedgerVerificationError` naming the first event known to be bad; the enforcer then
denies every decision until a person has run ``caracal ledger verify`` and repaired the ledger (fail
closed). Lines after the last checkpoint are protected by the chain only: an edit there that recomputes the
chain is found by the next checkpoint that covers it.

Memory does not grow with the ledger: the tree is kept as its frontier (at most 64 hashes), leaf hashes
wait in a bounded buffer until a checkpoint needs the root, and only checkpoints ahead of the tail are kept.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

import orjson

from caracal.core.events import LedgerEvent, parse_line, validate_event_dict
from caracal.core.merkle import EMPTY_ROOT, MerkleFrontier
from caracal.core.replay_helper import CHUNK, HashedChunk, HelperFailed, LineStream
from caracal.core.store import CheckpointLog, LedgerStore
from caracal.exceptions import (
    CaracalError,
    CheckpointError,
    InvalidLedgerEventError,
    LedgerCorruptError,
    LedgerVerificationError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

logger = logging.getLogger("caracal.replay")

_FOLD_EVERY = 1 << 16
"""Leaf hashes buffered before they are folded into the frontier (bounds the buffer's memory)."""
_CHUNK = CHUNK
"""Lines checked together (:meth:`VerifiedTail._checked_chunk`), as the helper sends them."""


def failed(event_id: int, reason: str) -> LedgerVerificationError:
    """The error every decision gets while the ledger does not verify."""
    return LedgerVerificationError(
        f"the ledger failed verification at event {event_id}: {reason}. Budgets cannot be proven, so every "
        f"action is denied; run 'caracal ledger verify' and restore the ledger from a backup",
        first_bad_event_id=event_id,
    )


class VerifiedTail:
    """Follows a ledger as it grows, checking each line (see the module docstring) before returning it.

    ``offset`` and ``last_event_id`` say where it stands, as for ``LedgerTail``; :meth:`to_dict` and
    :meth:`resume` carry the rest of its position (the chain hash and the Merkle frontier) through the
    budget snapshot, so a process that resumes from a snapshot goes on checking from there.
    """

    def __init__(self, store: LedgerStore, checkpoints: CheckpointLog, key: Ed25519PublicKey):
        self.store = store
        self.offset = 0  # the store's position after the last line read (bytes, or an event id)
        self.last_event_id = 0
        self._checkpoints = checkpoints
        self._key = key
        self._last_leaf = EMPTY_ROOT
        self._tree = MerkleFrontier()
        self._unhashed: list[bytes] = []
        self._pending: list[int] = []  # sizes of signed checkpoints ahead of the tail, ascending
        self._roots: dict[int, bytes] = {}
        self._checkpoints_read = 0  # how far the checkpoint file has been read
        self._matched = 0  # the largest checkpoint size whose root matched
        self._replaying = False
        self._want_helper = False  # start the helper at this replay's first poll
        self._stream: LineStream | None = None
        self._carried: HashedChunk | None = None  # the rest of a helper's chunk a poll did not take
        self._lines: Iterator[tuple[int, bytes]] | None = None  # kept between the polls of a replay
        self._lines_at = 0  # the tail's offset when they were kept

    # ------------------------------------------------------------------ position

    def to_dict(self) -> dict[str, Any]:
        """The position beyond ``offset``/``last_event_id``: the chain hash and the frontier."""
        return {"last_leaf": self._last_leaf.hex(), "tree": self._folded().to_dict()}

    def resume(self, offset: int, last_event_id: int, data: Mapping[str, Any]) -> None:
        """Continue from a saved position (trusted: it comes from a sealed snapshot). Raises ValueError or
        ProofError when ``data`` is malformed, and changes nothing then."""
        tree = MerkleFrontier.from_dict(data["tree"])
        last_leaf = bytes.fromhex(data["last_leaf"])
        if tree.size != last_event_id or len(last_leaf) != 32:
            raise ValueError("the saved tail position does not match its event id")
        self.offset, self.last_event_id = offset, last_event_id
        self._tree, self._unhashed, self._last_leaf = tree, [], last_leaf
        self._matched = last_event_id
        self._pending, self._roots, self._checkpoints_read = [], {}, 0

    def skip(self, start: int, end: int, last_event_id: int, leaves: list[bytes]) -> None:
        """Move past lines this process wrote itself (bytes ``start``..``end``, with these leaf hashes):
        they were built from what the tail had checked, so they are not read back."""
        if start != self.offset or last_event_id != self.last_event_id + len(leaves):
            return  # another writer's lines came first: the next poll reads everything in order
        self.offset, self.last_event_id = end, last_event_id
        self._add_leaves(leaves)

    def take(self, read: HashedChunk) -> list[LedgerEvent]:
        """The lines of ``read`` (read from this tail's store by someone else, in order, with their leaf
        hashes: the writer's append step) that follow the tail, checked as :meth:`poll` checks them, as
        events. Lines the tail has passed are left out; if ``read`` does not reach the tail, or starts past
        it, nothing is taken (the next poll reads them)."""
        ends = read.ends
        if not ends:
            return []
        first = bisect.bisect_right(ends, self.offset)
        if first == len(ends):
            return []
        if first == 0 and self._next_after(read) != ends[0]:
            return []  # starts past the tail: it was read from elsewhere
        if first:
            if ends[first - 1] != self.offset:
                return []  # not a line boundary of this store (never the case for the same store)
            read = read.after(first)
        self._read_checkpoints()
        checked = self._checked_chunk(read)
        events = checked if checked is not None else self._checked_lines(read)
        self._check_covered()
        return events

    # ------------------------------------------------------------------ reading

    def poll(self, max_events: int = 1 << 62) -> list[LedgerEvent]:
        """The complete lines appended since the last call, checked, as events in order: at most
        ``max_events`` of them (call again for the rest), so that a replay holds one batch at a time."""
        size = self.store.end()
        if size < self.offset:
            unit = "events" if self.store.positions_are_ids else "bytes"
            raise failed(
                self.last_event_id,
                f"the ledger shrank from {self.offset} to {size} {unit} (it was truncated or replaced)",
            )
        if size == self.offset:
            return []  # the common case on a budget check: one stat, nothing to read
        self._read_checkpoints()
        if self._want_helper:
            self._start_helper(size)
        events = self._read_lines(max_events)
        if len(events) < max_events:
            self._check_covered()
        return events

    def _check_covered(self) -> None:
        """At the end of the ledger: it must hold every event a signed checkpoint covers."""
        if self._pending and self._pending[-1] > self.last_event_id:
            covered = self._pending[-1]
            raise failed(
                self.last_event_id + 1,
                f"the ledger holds {self.last_event_id} events but a signed checkpoint covers {covered}: "
                f"events {self.last_event_id + 1}..{covered} were removed from its tail",
            )

    def _read_lines(self, max_events: int) -> list[LedgerEvent]:
        """Up to ``max_events`` checked events, a chunk at a time (from the replay's helper while it has
        lines to send, else read here): each chunk is checked as a whole (:meth:`_checked_chunk`), and one
        with anything unusual in it (a bad line, a line without a chain hash) is checked again line by line
        (:meth:`_checked_lines`), which names the first bad line and leaves the tail just before it."""
        events: list[LedgerEvent] = []
        lines: Iterator[tuple[int, bytes]] | None = None  # read here, once the helper has sent all it will
        try:
            while len(events) < max_events:
                want = min(_CHUNK, max_events - len(events))
                chunk = self._from_helper(want)
                if chunk is None:
                    if lines is None:
                        lines = self._own_lines()
                    pairs = list(islice(lines, want))
                    if not pairs:
                        break
                    chunk = HashedChunk([end for end, _ in pairs], [line for _, line in pairs], [], {}, None)
                checked = self._checked_chunk(chunk)
                events += checked if checked is not None else self._checked_lines(chunk)
        except LedgerCorruptError as exc:  # the store found its lines changed under this reader
            if lines is not None:
                _close(lines)
            raise failed(self.last_event_id + 1, str(exc)) from None
        except BaseException:
            if lines is not None:
                _close(lines)
            raise
        if lines is not None:
            if self._replaying and len(events) == max_events:
                self._lines, self._lines_at = lines, self.offset  # the next poll of the replay reads on here
            else:
                _close(lines)  # a generator stopped early: release its file or cursor now
        return events

    def _own_lines(self) -> Iterator[tuple[int, bytes]]:
        """The store's lines after the tail: those a previous poll of this replay left open, if they still
        start at the tail (nothing moved it since: a skip, a resume), else a new read."""
        lines, self._lines = self._lines, None
        if lines is not None and self._lines_at == self.offset:
            return lines
        if lines is not None:
            _close(lines)
        return self.store.iter_lines(self.offset)

    def _from_helper(self, want: int) -> HashedChunk | None:
        """Up to ``want`` lines from the helper, starting at the tail; None when it has no more for this
        replay (it ended, stopped, failed, or the tail moved under it: it is closed then)."""
        stream = self._stream
        if stream is None:
            return None
        chunk = self._carried
        self._carried = None
        if chunk is None:
            try:
                chunk = stream.next_chunk()
            except HelperFailed as exc:
                logger.info("the replay helper of %s failed (%s); reading here", self.store.location, exc)
                chunk = None
            if chunk is None:
                if stream.stopped:
                    logger.info("the replay helper of %s stopped: %s", self.store.location, stream.stopped)
                self._stop_helper()
                return None
        if chunk.ends[0] != self._next_after(chunk):
            self._stop_helper()  # not where the tail is: never the case within one replay, but never trusted
            return None
        if len(chunk.lines) > want:
            chunk, self._carried = chunk.split(want)
        return chunk

    def _next_after(self, chunk: HashedChunk) -> int:
        """Where ``chunk``'s first line would end if it followed the tail."""
        return self.offset + (1 if self.store.positions_are_ids else len(chunk.lines[0]) + 1)

    def _checked_chunk(self, chunk: HashedChunk) -> list[LedgerEvent] | None:
        """The events of ``chunk`` (lines following the tail) if every line is a valid event with the next
        id and the chain hash of the line before it; then the tail has moved past them, and the
        checkpoints they reach were compared. None, with nothing changed, for anything else.

        The same checks as :meth:`_checked_lines`, made on lists (one comparison of the chunk's chain
        hashes with its leaves) rather than one line at a time: a replay reads millions of lines. The leaf
        hashes, the roots at checkpoint sizes and the tree after the chunk come from the helper when it
        read the chunk; otherwise they are computed here."""
        loads, validate = orjson.loads, validate_event_dict
        lines = chunk.lines
        first = self.last_event_id + 1
        count = len(lines)
        parsed = chunk.events
        try:  # parse_line, inlined: its errors are named by the line-by-line check
            if parsed is None:
                events = [LedgerEvent(*validate(loads(line))) for line in lines]
            else:  # (the writer's step parsed and validated these lines: exactly this, on the same bytes)
                events = [
                    LedgerEvent(*validate(loads(line))) if event is None else event
                    for event, line in zip(parsed, lines, strict=True)
                ]
        except (orjson.JSONDecodeError, InvalidLedgerEventError):
            return None
        if [event.event_id for event in events] != list(range(first, first + count)):
            return None
        chain = [event.prev_hash for event in events]
        if None in chain:
            return None  # a line from before the chain existed: checked one at a time
        leaves = chunk.leaves or [hashlib.sha256(b"\x00" + line).digest() for line in lines]
        if "".join(chain) != (self._last_leaf + b"".join(leaves[:-1])).hex():  # type: ignore[arg-type]
            return None
        # Valid and chained: move past them, comparing each signed checkpoint they reach on the way.
        sizes = [size for size in self._pending if size < first + count]
        ends = chunk.ends
        done = 0
        tree = chunk.tree
        if tree is not None and tree.size == first + count - 1 and all(size in chunk.roots for size in sizes):
            # The helper's roots and tree: nothing to hash here. The leaves are still buffered as the tail
            # moves, so that a failed checkpoint leaves it as consistent as the line-by-line check does.
            for size in sizes:
                upto = size - first + 1
                self._unhashed += leaves[done:upto]
                self.offset, self.last_event_id, self._last_leaf = ends[upto - 1], size, leaves[upto - 1]
                self._check_checkpoint(size, chunk.roots[size])
                done = upto
            self.offset, self.last_event_id, self._last_leaf = ends[-1], first + count - 1, leaves[-1]
            self._tree = tree.copy()
            self._unhashed.clear()  # (in place: the line-by-line check holds a reference) all in the tree
            return events
        for size in sizes:
            upto = size - first + 1
            self._advance(ends[upto - 1], size, leaves[done:upto])
            self._check_checkpoint(size)
            done = upto
        self._advance(ends[-1], first + count - 1, leaves[done:])
        return events

    @contextlib.contextmanager
    def replaying(self, helper: bool) -> Iterator[None]:
        """A long replay: successive polls in this block read on from one stream of the store's lines
        (a database's next batch is already being fetched when a poll ends, not fetched again by the
        next); with ``helper``, a helper process reads and hashes the lines while they are parsed here
        (:mod:`caracal.core.replay_helper`; for a machine with a second core). Without the helper (the store
        has no line source, it cannot start, it stops) lines are read and hashed here, with the same
        result."""
        self._replaying, self._want_helper = True, helper
        try:
            yield
        finally:
            self._replaying = self._want_helper = False
            if self._lines is not None:
                _close(self._lines)
                self._lines = None
            self._stop_helper()

    def _start_helper(self, end: int) -> None:
        """Start the helper on the lines after the tail, up to ``end`` (once per replay)."""
        self._want_helper = False
        try:
            source = self.store.line_source()
            if source is None:
                return
            self._stream = LineStream(
                source,
                self.offset,
                end,
                self._folded(),
                list(self._pending),
                ids=self.store.positions_are_ids,
                chunk=_CHUNK,
            )
        except (HelperFailed, CaracalError) as exc:
            logger.info("replaying %s without a helper: %s", self.store.location, exc)

    def _stop_helper(self) -> None:
        self._carried = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _advance(self, offset: int, last_event_id: int, leaves: list[bytes]) -> None:
        """Move the tail past checked lines with these leaf hashes (ending at ``offset``, the last one
        ``last_event_id``)."""
        if leaves:
            self.offset, self.last_event_id, self._last_leaf = offset, last_event_id, leaves[-1]
            self._unhashed += leaves
            if len(self._unhashed) >= _FOLD_EVERY:
                self._folded()

    def _checked_lines(self, chunk: HashedChunk) -> list[LedgerEvent]:
        events: list[LedgerEvent] = []
        expected = self.last_event_id + 1
        prev_hex = self._last_leaf.hex()
        sha256 = hashlib.sha256
        next_checkpoint = self._pending[0] if self._pending else 0
        unhashed = self._unhashed
        for end, line in zip(chunk.ends, chunk.lines, strict=True):
            try:
                event = parse_line(line, expected)
            except LedgerCorruptError as exc:
                raise failed(expected, str(exc)) from None
            if event.event_id != expected:  # deleted, inserted or moved lines: name the earliest
                raise failed(
                    max(1, min(expected, event.event_id)),
                    f"the line after event {expected - 1} holds event {event.event_id}",
                )
            if event.prev_hash is not None and event.prev_hash != prev_hex:
                raise failed(
                    max(expected - 1, 1),
                    f"event {expected} does not chain to event {expected - 1}: one of them was modified",
                )
            leaf = sha256(b"\x00" + line).digest()
            prev_hex = leaf.hex()
            unhashed.append(leaf)
            events.append(event)
            # Advance only over checked lines: a failure leaves the tail before the bad line.
            self.offset, self.last_event_id, self._last_leaf = end, expected, leaf
            if expected == next_checkpoint:
                self._check_checkpoint(expected)
                next_checkpoint = self._pending[0] if self._pending else 0
            elif len(unhashed) >= _FOLD_EVERY:
                self._folded()
            expected += 1
        return events

    # ------------------------------------------------------------------ checkpoints

    def _add_leaves(self, leaves: list[bytes]) -> None:
        if leaves:
            self._last_leaf = leaves[-1]
        self._unhashed += leaves
        # Checkpoints this skip passed over were written with these lines, by this process: nothing to check.
        index = bisect.bisect_right(self._pending, self.last_event_id)
        for size in self._pending[:index]:
            del self._roots[size]
        del self._pending[:index]
        if len(self._unhashed) >= _FOLD_EVERY:
            self._folded()

    def _folded(self) -> MerkleFrontier:
        if self._unhashed:
            self._tree.extend(self._unhashed)
            self._unhashed.clear()  # in place: the read loop holds a reference to this list
        return self._tree

    def _check_checkpoint(self, size: int, root: bytes | None = None) -> None:
        """Compare the tree's root at ``size`` (the tail is there; ``root`` if already computed) with the
        signed checkpoint of that size."""
        if root is None:
            root = self._folded().root()
        signed = self._roots.pop(size)
        self._pending.pop(0)
        if root != signed:
            raise failed(
                self._matched + 1,
                f"the first {size} events do not hash to the root of the signed checkpoint at size {size}: "
                f"an event after {self._matched} was rewritten, or the ledger was replaced",
            )
        self._matched = size

    def _read_checkpoints(self) -> None:
        """Learn the signed checkpoints ahead of the tail, reading only records appended since last time."""
        try:
            checkpoints, self._checkpoints_read = self._checkpoints.read_from(self._checkpoints_read)
        except CheckpointError as exc:
            raise failed(self.last_event_id + 1, f"the checkpoint file is unreadable ({exc})") from None
        here = self.last_event_id
        for checkpoint in checkpoints:
            if checkpoint.size <= here or checkpoint.size in self._roots:
                continue  # behind the tail: checked when it was passed, or written by this process
            try:
                checkpoint.verify(self._key)
            except CheckpointError as exc:
                raise failed(
                    here + 1, f"{exc}: the checkpoint file was edited, or belongs to another home"
                ) from None
            self._roots[checkpoint.size] = checkpoint.root
            bisect.insort(self._pending, checkpoint.size)


def _close(lines: Iterator[tuple[int, bytes]]) -> None:
    close = getattr(lines, "close", None)
    if close is not None:
        close()


__all__ = ["VerifiedTail", "failed"]
