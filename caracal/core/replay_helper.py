"""A helper process that reads and hashes ledger lines for a long replay.

A replay of a long ledger does two independent things with every line: it parses and validates it (for the
budgets), and it hashes it (for the chain and the Merkle tree that the signed checkpoints are compared
with). Reading the lines (a file, or rows from a database) and hashing them are about a third of the work;
:class:`LineStream` moves them to a second process. The helper reads the lines after a position, hashes
them, folds them into the tree, and sends them on a chunk at a time: the lines, their leaf hashes, the
Merkle roots at the checkpoint sizes it was asked for, and the tree's frontier after the chunk. The replay
parses each chunk while the helper prepares the next.

Invariants:

- **The bytes hashed are the bytes parsed.** The helper sends the lines it hashed; the replay parses what
  it received, never a second read of the store (a line edited between two reads cannot be parsed in one
  form and hashed in another).
- **The helper decides nothing.** It returns lines and hashes; every check (ids, chain, checkpoint roots,
  validity) is made by the replay, exactly as without it.
- **It sends only what the replay can place.** A line holding a newline (a database row edited to hold
  one) or a position that does not follow the one before (a missing row) ends the stream there; the replay
  reads on from that point itself and reports what it finds, as without the helper.
- **Nothing depends on it.** It is an accelerator: if it cannot start, dies or answers malformed,
  :meth:`LineStream.next_chunk` raises :class:`HelperFailed`, and the replay reads and hashes in process
  from where it stands.

Where the lines come from is the store's to say (:meth:`caracal.core.store.LedgerStore.line_source`): a
``module:function`` the helper imports and its keyword arguments, so this module knows no backend.

The protocol: the parent writes one JSON request (``source``, ``args``, ``after``, ``end``, ``ids``,
``tree``, ``roots``, ``chunk``) and closes the helper's input. The helper answers with records: ``C`` and
a chunk (``lines:u32 bytes:u32 roots:u16``, the lines joined by ``\\n``, ``32*lines`` of leaf hashes,
``roots`` of ``size:u64 root:32``, the frontier as ``size:u64 count:u8 nodes:32*count``), ``E`` (all sent),
or ``S`` and a reason (``length:u32`` then UTF-8: stopped early).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import IO, TYPE_CHECKING, Any

import orjson

from caracal.core.merkle import HASH_SIZE, MerkleFrontier
from caracal.exceptions import ProofError

if TYPE_CHECKING:
    from caracal.core.events import LedgerEvent

CHUNK = 2_000
"""Lines per chunk: large enough that a chunk's fixed costs are nothing per line, small enough that the
replay never waits long for the first."""
_HEADER = struct.Struct("<IIH")
_ROOT = struct.Struct("<Q32s")
_FRONTIER = struct.Struct("<QB")
_LENGTH = struct.Struct("<I")
_PIPE_BYTES = 1 << 20
"""Pipe capacity asked for (Linux): the helper can have a whole chunk ready while the replay parses."""

LineSource = tuple[str, dict[str, Any]]
"""How another process reads a store's lines: ``("module:function", keyword arguments)``; the function
takes ``after`` and ``end`` too and yields ``(position after the line, line)`` like ``iter_lines``."""


class HelperFailed(Exception):
    """The helper is gone or answered something unusable; read and hash in process instead."""


@dataclass
class HashedChunk:
    """Lines the helper read, in order, with what it computed for them."""

    ends: list[int]
    """The position after each line (the store's positions: byte offsets or event ids)."""
    lines: list[bytes]
    leaves: list[bytes]
    roots: dict[int, bytes]
    """The tree's root at each requested size reached within this chunk."""
    tree: MerkleFrontier | None
    """The frontier after the chunk's last line (None for the first part of a split chunk)."""
    events: list[LedgerEvent | None] | None = None
    """Each line's event where the reader already parsed and validated the line (the writer's append
    step does, for lines other than its plain ones), so the tail does not parse it again; None: none."""

    def split(self, count: int) -> tuple[HashedChunk, HashedChunk]:
        """The first ``count`` lines (with no frontier: it is known only at the chunk's end), and the rest."""
        return self.after(0, count), self.after(count)

    def after(self, first: int, stop: int | None = None) -> HashedChunk:
        """Lines ``first``..``stop``; to the end, with the roots and frontier (they are at the end)."""
        end = stop is None
        events = None if self.events is None else self.events[first:stop]
        return HashedChunk(
            self.ends[first:stop], self.lines[first:stop], self.leaves[first:stop],
            self.roots if end else {}, self.tree if end else None, events,
        )  # fmt: skip


def _read_exact(stream: IO[bytes], count: int) -> bytes:
    data = stream.read(count)
    if data is None or len(data) != count:
        raise HelperFailed(f"the helper's stream ended after {len(data or b'')} of {count} bytes")
    return data


def _frontier_bytes(tree: MerkleFrontier) -> bytes:
    nodes = tree.nodes
    return _FRONTIER.pack(tree.size, len(nodes)) + b"".join(nodes)


def split_hashes(blob: bytes) -> list[bytes]:
    """Concatenated 32-byte hashes (as a helper process or verify's child hands them over), one by one."""
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


class LineStream:
    """The replay's side: start the helper on the lines after ``after`` (up to ``end``), then take its
    chunks (of ``chunk`` lines) in order with :meth:`next_chunk`. ``tree`` is the Merkle frontier up to
    ``after``; ``roots`` the tree sizes whose roots are wanted. ``ids``: positions are event ids (else byte
    offsets)."""

    def __init__(
        self,
        source: LineSource,
        after: int,
        end: int,
        tree: MerkleFrontier,
        roots: list[int],
        *,
        ids: bool,
        chunk: int = CHUNK,
    ) -> None:
        request = {
            "chunk": chunk,
            "source": source[0],
            "args": source[1],
            "after": after,
            "end": end,
            "ids": ids,
            "tree": tree.to_dict(),
            "roots": roots,
        }
        if not can_start_python():
            raise HelperFailed("this process cannot start a Python interpreter (a frozen application)")
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "caracal.core.replay_helper"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # its failures show as the stream ending early
            )
        except OSError as exc:
            raise HelperFailed(f"cannot start the replay helper: {exc}") from exc
        assert self._child.stdin is not None and self._child.stdout is not None
        self._out: IO[bytes] = self._child.stdout
        with contextlib.suppress(ImportError, AttributeError, OSError):
            import fcntl

            fcntl.fcntl(self._out.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        try:
            self._child.stdin.write(orjson.dumps(request))
            self._child.stdin.close()
        except OSError as exc:
            self.close()
            raise HelperFailed(f"the replay helper stopped: {exc}") from exc
        self._ids = ids
        self.position = after
        """The position after the last line received."""
        self.stopped: str | None = None
        """Why the helper stopped before ``end``, once it has."""

    def next_chunk(self) -> HashedChunk | None:
        """The next chunk, or None once the helper has sent everything it will (see :attr:`stopped`)."""
        try:
            kind = _read_exact(self._out, 1)
            if kind == b"E":
                return None
            if kind == b"S":
                (length,) = _LENGTH.unpack(_read_exact(self._out, _LENGTH.size))
                self.stopped = _read_exact(self._out, length).decode(errors="replace")
                return None
            if kind != b"C":
                raise HelperFailed(f"the replay helper sent {kind!r}")
            count, size, roots = _HEADER.unpack(_read_exact(self._out, _HEADER.size))
            payload = _read_exact(self._out, size)
            leaves = split_hashes(_read_exact(self._out, count * HASH_SIZE))
            found = dict(_ROOT.iter_unpack(_read_exact(self._out, roots * _ROOT.size)))
            tree_size, nodes = _FRONTIER.unpack(_read_exact(self._out, _FRONTIER.size))
            node_blob = _read_exact(self._out, nodes * HASH_SIZE)
            tree = MerkleFrontier.from_parts(tree_size, split_hashes(node_blob))
        except (OSError, ValueError, struct.error, ProofError) as exc:
            raise HelperFailed(f"the replay helper stopped: {exc}") from exc
        lines = payload.split(b"\n") if count else []
        if len(lines) != count or not count:
            raise HelperFailed(f"the replay helper sent {len(lines)} lines for a chunk of {count}")
        start = self.position
        if self._ids:
            ends = list(range(start + 1, start + count + 1))
        else:
            ends = list(accumulate((len(line) + 1 for line in lines), initial=start))[1:]
        self.position = ends[-1]
        return HashedChunk(ends, lines, leaves, found, tree)

    def close(self) -> None:
        """Stop the helper (whatever it was doing) and reap it."""
        with contextlib.suppress(OSError):
            self._out.close()
        if self._child.poll() is None:
            self._child.kill()
        self._child.wait()


def can_start_python() -> bool:
    """Whether ``sys.executable -m ...`` starts a Python interpreter: not in a frozen application (where
    it is the application itself, which would do whatever it does with those arguments)."""
    return bool(sys.executable) and not getattr(sys, "frozen", False)


def read_with(name: str) -> Callable[..., Iterator[tuple[int, bytes]]]:
    """The line source function a :data:`LineSource` names (only one of Caracal's own)."""
    module, _, function = name.partition(":")
    if not module.startswith("caracal.") or not function:
        raise HelperFailed(f"not a line source of Caracal's: {name!r}")
    source: Callable[..., Iterator[tuple[int, bytes]]] = getattr(importlib.import_module(module), function)
    return source


def _serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The helper's side (see the module docstring)."""
    request = orjson.loads(source.read())
    tree = MerkleFrontier.from_dict(request["tree"])
    wanted = sorted(size for size in request["roots"] if size > tree.size)
    ids, position, chunk = bool(request["ids"]), int(request["after"]), max(1, int(request["chunk"]))
    lines_of = read_with(request["source"])(after=position, end=request["end"], **request["args"])
    sha256 = hashlib.sha256
    stopped = ""
    lines: list[bytes] = []

    def send() -> None:
        leaves = [sha256(b"\x00" + line).digest() for line in lines]
        roots: list[bytes] = []
        done, base = 0, tree.size
        while wanted and wanted[0] <= base + len(leaves):
            size = wanted.pop(0)
            tree.extend(leaves[done : size - base])
            roots.append(_ROOT.pack(size, tree.root()))
            done = size - base
        tree.extend(leaves[done:])
        payload = b"\n".join(lines)
        sink.write(b"C" + _HEADER.pack(len(lines), len(payload), len(roots)) + payload)
        sink.write(b"".join(leaves) + b"".join(roots) + _frontier_bytes(tree))
        lines.clear()

    for end, line in lines_of:
        follows = end == position + 1 if ids else end == position + len(line) + 1
        if not follows or b"\n" in line:
            stopped = f"the line ending at {end} does not follow position {position} as a line of its own"
            break
        lines.append(line)
        position = end
        if len(lines) == chunk:
            send()
    if lines:
        send()
    if stopped:
        reason = stopped.encode()
        sink.write(b"S" + _LENGTH.pack(len(reason)) + reason)
    else:
        sink.write(b"E")
    sink.flush()


if __name__ == "__main__":
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except BaseException:  # any failure: the parent sees the stream end early and reads on itself
        os._exit(1)
