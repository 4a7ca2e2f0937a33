"""A helper process that hashes ledger lines while a replay parses them.

A replay of a long ledger does two independent things with every line: it parses and validates it (for the
budgets), and it hashes it (for the chain and the Merkle tree that the signed checkpoints are compared
with). Parsing is most of the work, hashing about a fifth. :class:`LeafHasher` moves the hashing to a
second process, one chunk of lines at a time: the replay hands it a chunk's bytes, parses the chunk while
the helper hashes it, then collects the chunk's leaf hashes, the Merkle roots at the checkpoint sizes it
asked for, and the tree's frontier after the chunk.

Invariants:

- **Exactly the bytes parsed are hashed.** The replay sends the lines it read, in the form it read them;
  the helper never reads the ledger itself (a line edited between two reads cannot be parsed in one form
  and hashed in another).
- **The helper decides nothing.** It returns hashes; every comparison (chain, checkpoint roots, ids) is
  made by the replay, exactly as without it. A chunk whose line count does not come back intact is
  reported as such, and the replay goes on without the helper.
- **Nothing depends on it being there.** It is an accelerator: if it cannot be started, dies or answers
  malformed, :meth:`LeafHasher.result` raises :class:`HelperFailed` and the caller hashes in process.

The protocol (stdin and stdout of ``python -m caracal.core.leaf_hasher``, little-endian):

- start: the frontier, as ``size:u64 count:u8 nodes:32*count``;
- request: ``lines:u32 bytes:u32 roots:u16``, then ``roots`` sizes as ``u64``, then the lines joined by
  ``\\n``;
- reply: ``status:u8`` (0: done; 1: the bytes did not split into that many lines, nothing changed), then on
  0 the leaf hashes (``32*lines``), the roots (``32*roots``) and the frontier after the chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import subprocess
import sys
from typing import IO

from caracal.core.merkle import HASH_SIZE, MerkleFrontier
from caracal.exceptions import ProofError

_REQUEST = struct.Struct("<IIH")
_SIZE = struct.Struct("<Q")
_FRONTIER = struct.Struct("<QB")
_PIPE_BYTES = 1 << 20
"""Pipe capacity asked for (Linux), so that handing over a chunk does not wait for the helper to read it."""


class HelperFailed(Exception):
    """The helper is gone or answered something unusable; hash in process instead."""


def _read_exact(stream: IO[bytes], count: int) -> bytes:
    data = stream.read(count)
    if data is None or len(data) != count:
        raise HelperFailed(f"the helper's stream ended after {len(data or b'')} of {count} bytes")
    return data


def _frontier_bytes(tree: MerkleFrontier) -> bytes:
    nodes = tree.nodes
    return _FRONTIER.pack(tree.size, len(nodes)) + b"".join(nodes)


def _read_frontier(stream: IO[bytes]) -> MerkleFrontier:
    size, count = _FRONTIER.unpack(_read_exact(stream, _FRONTIER.size))
    blob = _read_exact(stream, count * HASH_SIZE)
    return MerkleFrontier.from_parts(size, [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)])


class LeafHasher:
    """The parent's side: :meth:`submit` a chunk, parse it, then :meth:`result`. One chunk in flight.

    Raises :class:`HelperFailed` (from the constructor too) whenever the helper cannot do its part; the
    caller then stops using it (:meth:`close`) and hashes in process.
    """

    def __init__(self, tree: MerkleFrontier) -> None:
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "caracal.core.leaf_hasher"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        except OSError as exc:
            raise HelperFailed(f"cannot start the hashing helper: {exc}") from exc
        assert self._child.stdin is not None and self._child.stdout is not None
        self._in, self._out = self._child.stdin, self._child.stdout
        for pipe in (self._in, self._out):
            try:
                import fcntl

                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            except (ImportError, AttributeError, OSError):
                pass  # a smaller pipe only means waiting for the helper to read
        self._pending: tuple[int, int] | None = None
        self._send(_frontier_bytes(tree))

    def _send(self, data: bytes) -> None:
        try:
            self._in.write(data)
            self._in.flush()
        except (OSError, ValueError) as exc:
            raise HelperFailed(f"the hashing helper stopped: {exc}") from exc

    def submit(self, lines: list[bytes], root_sizes: list[int]) -> None:
        """Hand over a chunk (and the tree sizes within it whose roots are wanted, ascending)."""
        payload = b"\n".join(lines)
        header = _REQUEST.pack(len(lines), len(payload), len(root_sizes))
        self._send(header + b"".join(_SIZE.pack(size) for size in root_sizes) + payload)
        self._pending = (len(lines), len(root_sizes))

    def result(self) -> tuple[list[bytes], list[bytes], MerkleFrontier]:
        """The submitted chunk's leaf hashes, the roots asked for, and the frontier after the chunk."""
        if self._pending is None:
            raise HelperFailed("no chunk was submitted")
        lines, roots = self._pending
        self._pending = None
        try:
            status = _read_exact(self._out, 1)
            if status != b"\x00":
                raise HelperFailed("the helper could not split the chunk into its lines")
            blob = _read_exact(self._out, lines * HASH_SIZE)
            root_blob = _read_exact(self._out, roots * HASH_SIZE)
            tree = _read_frontier(self._out)
        except (OSError, ValueError, struct.error, ProofError) as exc:
            raise HelperFailed(f"the hashing helper stopped: {exc}") from exc
        leaves = [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
        found = [root_blob[i : i + HASH_SIZE] for i in range(0, len(root_blob), HASH_SIZE)]
        return leaves, found, tree

    def close(self) -> None:
        """Stop the helper (it exits when its input closes; killed if it does not within a second)."""
        for stream in (self._in, self._out):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self._child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()


def _serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The helper's loop (see the module docstring); returns when its input ends."""
    sha256 = hashlib.sha256
    tree = _read_frontier(source)
    while True:
        header = source.read(_REQUEST.size)
        if not header:
            return
        if len(header) != _REQUEST.size:
            raise HelperFailed("a request was cut short")
        count, size, roots = _REQUEST.unpack(header)
        sizes = [_SIZE.unpack(_read_exact(source, _SIZE.size))[0] for _ in range(roots)]
        payload = _read_exact(source, size)
        lines = payload.split(b"\n") if count else []
        if len(lines) != count:
            sink.write(b"\x01")
            sink.flush()
            continue
        leaves = [sha256(b"\x00" + line).digest() for line in lines]
        found: list[bytes] = []
        done, base = 0, tree.size
        for wanted in sizes:
            upto = min(max(wanted - base, done), count)
            tree.extend(leaves[done:upto])
            found.append(tree.root())
            done = upto
        tree.extend(leaves[done:])
        sink.write(b"\x00" + b"".join(leaves) + b"".join(found) + _frontier_bytes(tree))
        sink.flush()


if __name__ == "__main__":
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except (HelperFailed, BrokenPipeError, KeyboardInterrupt):
        os._exit(1)
