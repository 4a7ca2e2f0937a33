"""RFC 9162 (RFC 6962) Merkle tree hashing for the Caracal ledger: roots, proofs and an incremental frontier.

RFC 6962 ("Certificate Transparency") defines the Merkle Tree Hash (MTH) that transparency logs use, and
RFC 9162 (CT version 2.0) restates the same tree with the verification algorithms spelled out. Given an
ordered list of ``n`` entries ``D[n]``:

* ``MTH({}) = SHA-256()`` -- the hash of the empty string (:data:`EMPTY_ROOT`);
* ``MTH({d0}) = SHA-256(0x00 || d0)`` -- a *leaf hash* (:func:`leaf_hash`);
* for ``n > 1``, with ``k`` the largest power of two strictly smaller than ``n``,
  ``MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` -- an *interior node* (:func:`node_hash`).

Invariants this module relies on and preserves:

* The tree is left-balanced: the left subtree of every node is a perfect tree of ``2**j`` leaves, so a
  tree of ``size`` leaves is exactly the perfect subtrees given by the set bits of ``size`` (largest,
  leftmost first) joined along the right edge. :class:`MerkleFrontier` stores just those subtree roots
  (at most 64 for any 64-bit size), which is why appending a leaf never rehashes older entries.
* The tree is append-only: the tree of the first ``m`` leaves is a prefix of every larger tree, which is
  what a consistency proof (:func:`consistency_proof`) demonstrates for two published roots.
* Every hash is :data:`HASH_SIZE` (32) bytes; functions here refuse anything else with
  :class:`~caracal.exceptions.ProofError` rather than hashing it.

Why leaves are hashed with a ``0x00`` prefix and interior nodes with ``0x01``: domain separation. Without
it the 64 bytes ``left || right`` of an interior node could be presented as the data of a single leaf,
giving a second tree (a "second preimage") with the same root but different contents, so a proof could
claim a leaf that was never logged. With distinct prefixes a leaf hash can never equal an interior node
hash unless SHA-256 itself collides.

Functions that work on whole trees take the already-hashed leaves (``leaf_hashes``), as the ledger
stores them, and are iterative: roots and proofs for a million leaves cost O(n) hashes, no recursion on
``n``. The verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 and match the edge-case behaviour of the
transparency-dev/merkle Go verifier (see :func:`verify_consistency`). Everything is pure and uses only
:mod:`hashlib`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, cast

from caracal.exceptions import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleFrontier",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""Root of the empty tree: SHA-256 of the empty string."""

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_MAX_FRONTIER_SIZE = 1 << 64


# ----------------------------------------------------------------------------------------------------------
# Hashing primitives
# ----------------------------------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || data)`` of one entry's bytes."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``.

    Raises :class:`ProofError` unless both children are 32-byte hashes.
    """
    _check_hash(left, "left child hash")
    _check_hash(right, "right child hash")
    return _sha256(_NODE_PREFIX + left + right).digest()


# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_hashes(values: Sequence[object], what: str) -> None:
    # Fast path in C: every element is bytes of the right length; otherwise find the first bad one.
    if all(map(isinstance, values, repeat(bytes))) and all(
        map(HASH_SIZE.__eq__, map(len, cast("Sequence[bytes]", values)))
    ):
        return
    for i, value in enumerate(values):
        _check_hash(value, f"{what}[{i}]")


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{what} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ProofError(f"{what} must not be negative, got {value}")
    return value


def _as_list(leaf_hashes: Sequence[bytes]) -> list[bytes]:
    return leaf_hashes if isinstance(leaf_hashes, list) else list(leaf_hashes)


# ----------------------------------------------------------------------------------------------------------
# Roots
# ----------------------------------------------------------------------------------------------------------


def _mth(level: list[bytes]) -> bytes:
    """MTH of already-checked leaf hashes, bottom-up.

    Pairing neighbours level by level and carrying an odd last node up unchanged builds exactly the
    RFC 6962 left-balanced tree: O(n) hashes, O(n) temporary memory, no recursion.
    """
    n = len(level)
    if n == 0:
        return EMPTY_ROOT
    sha = _sha256
    prefix = _NODE_PREFIX
    while n > 1:
        it = iter(level)
        nxt = [sha(prefix + left + right).digest() for left, right in zip(it, it, strict=False)]
        if n & 1:
            nxt.append(level[-1])
        level = nxt
        n = len(level)
    return level[0]


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the RFC 9162 Merkle Tree Hash of the given leaf hashes (:data:`EMPTY_ROOT` for none).

    ``leaf_hashes`` are already leaf-hashed entries (see :func:`leaf_hash`). Iterative, O(n) hashes.
    Raises :class:`ProofError` if any element is not a 32-byte hash.
    """
    leaves = _as_list(leaf_hashes)
    _check_hashes(leaves, "leaf_hashes")
    return _mth(leaves)


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 6962: the largest power of two strictly smaller than ``n`` (requires n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


# ----------------------------------------------------------------------------------------------------------
# Incremental tree
# ----------------------------------------------------------------------------------------------------------


class MerkleFrontier:
    """The right edge of a growing RFC 9162 tree (a compact range starting at leaf 0).

    Holds the tree ``size`` and the roots of the perfect subtrees that make it up, one per set bit of
    ``size``, largest (leftmost) first -- at most 64. Appending a leaf merges equal-sized subtrees like a
    binary counter, so :meth:`append` costs amortized one hash and never touches older leaves, and
    :meth:`root` combines at most 64 stored nodes. The ledger writer keeps one of these beside the file;
    verification rebuilds one by appending every leaf hash.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        """Create the frontier of the empty tree (size 0)."""
        self._size: int = 0
        self._nodes: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """The stored perfect-subtree roots, largest (leftmost) first."""
        return tuple(self._nodes)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash (32 bytes) to the right of the tree. Amortized O(1): one hash on average."""
        if type(leaf_hash) is not bytes or len(leaf_hash) != HASH_SIZE:
            _check_hash(leaf_hash, "leaf hash")
        size = self._size
        nodes = self._nodes
        h = leaf_hash
        s = size
        while s & 1:
            h = _sha256(_NODE_PREFIX + nodes.pop() + h).digest()
            s >>= 1
        nodes.append(h)
        self._size = size + 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append each leaf hash in order (same result as calling :meth:`append` for each).

        If an element is not a 32-byte hash, :class:`ProofError` is raised and the leaves before it
        stay appended.

        Hashes a level of the tree at a time (a replay extends by thousands of leaves at once): the same
        interior nodes as appending one by one, computed in one comprehension per level instead of a
        Python loop per leaf.
        """
        leaves = leaf_hashes if isinstance(leaf_hashes, list) else list(leaf_hashes)
        for index, h in enumerate(leaves):
            if type(h) is not bytes or len(h) != HASH_SIZE:
                if index:
                    self.extend(leaves[:index])  # the leaves before it stay appended
                _check_hash(h, "leaf hash")
        if len(leaves) < 8:
            for h in leaves:
                self.append(h)
            return
        sha = _sha256
        prefix = _NODE_PREFIX
        nodes = self._nodes
        position = self._size  # in units of the current level's subtrees: where ``level`` starts
        level = leaves
        tops: list[bytes] = []  # subtree roots left unpaired, one per level, lowest level first
        while level:
            if position & 1:  # the frontier's subtree of this level completes the first node
                level = [nodes.pop(), *level]
                position -= 1
            count = len(level)
            if count & 1:
                tops.append(level[-1])
            level = [sha(prefix + level[i] + level[i + 1]).digest() for i in range(0, count - 1, 2)]
            position >>= 1
        nodes.extend(reversed(tops))
        self._size += len(leaves)

    def root(self) -> bytes:
        """Return the RFC 9162 root of the current tree (:data:`EMPTY_ROOT` when size is 0)."""
        nodes = self._nodes
        if not nodes:
            return EMPTY_ROOT
        sha = _sha256
        prefix = _NODE_PREFIX
        r = nodes[-1]
        for i in range(len(nodes) - 2, -1, -1):
            r = sha(prefix + nodes[i] + r).digest()
        return r

    def copy(self) -> MerkleFrontier:
        """Return an independent copy (appending to one does not affect the other)."""
        other = MerkleFrontier.__new__(MerkleFrontier)
        other._size = self._size
        other._nodes = list(self._nodes)
        return other

    @classmethod
    def from_parts(cls, size: int, nodes: list[bytes]) -> MerkleFrontier:
        """A frontier from its size and its nodes (largest subtree first), as :attr:`size` and :attr:`nodes`
        give them. Raises :class:`ProofError` unless there is one 32-byte node per set bit of ``size``."""
        if type(size) is not int or not 0 <= size < _MAX_FRONTIER_SIZE or len(nodes) != size.bit_count():
            raise ProofError(f"a frontier of size {size!r} needs one node per set bit of its size")
        _check_hashes(nodes, "frontier nodes")
        tree = cls.__new__(cls)
        tree._size, tree._nodes = size, list(nodes)
        return tree

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly form: ``{"size": int, "nodes": [hex strings, largest subtree first]}``."""
        return {"size": self._size, "nodes": [n.hex() for n in self._nodes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MerkleFrontier:
        """Rebuild a frontier from :meth:`to_dict` output, validating it.

        Raises :class:`ProofError` if ``d`` is not a mapping with an integer ``size`` (0 <= size < 2**64)
        and a list ``nodes`` of exactly popcount(size) hex strings of 32 bytes each.
        """
        if not isinstance(d, Mapping):
            raise ProofError(f"frontier must be a mapping with 'size' and 'nodes', got {type(d).__name__}")
        if "size" not in d or "nodes" not in d:
            raise ProofError("frontier must have both 'size' and 'nodes'")
        size = _check_count(d["size"], "frontier size")
        if size >= _MAX_FRONTIER_SIZE:
            raise ProofError(f"frontier size must be below 2**64, got {size}")
        raw_nodes = d["nodes"]
        if not isinstance(raw_nodes, (list, tuple)):
            raise ProofError(f"frontier nodes must be a list of hex strings, got {type(raw_nodes).__name__}")
        want = size.bit_count()
        if len(raw_nodes) != want:
            raise ProofError(
                f"frontier of size {size} must have {want} node(s) (one per set bit of the size), "
                f"got {len(raw_nodes)}"
            )
        nodes: list[bytes] = []
        for i, item in enumerate(raw_nodes):
            if not isinstance(item, str):
                raise ProofError(f"frontier node {i} must be a hex string, got {type(item).__name__}")
            try:
                node = bytes.fromhex(item)
            except ValueError as exc:
                raise ProofError(f"frontier node {i} is not valid hex: {item!r}") from exc
            if len(node) != HASH_SIZE:
                raise ProofError(f"frontier node {i} must be {HASH_SIZE} bytes, got {len(node)}")
            nodes.append(node)
        frontier = cls.__new__(cls)
        frontier._size = size
        frontier._nodes = nodes
        return frontier

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleFrontier):
            return NotImplemented
        return self._size == other._size and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"MerkleFrontier(size={self._size}, root={self.root().hex()})"


# ----------------------------------------------------------------------------------------------------------
# Proof generation
# ----------------------------------------------------------------------------------------------------------


def _prepare(leaf_hashes: Sequence[bytes], size: int | None) -> tuple[list[bytes], int]:
    leaves = _as_list(leaf_hashes)
    if size is None:
        size = len(leaves)
    size = _check_count(size, "tree size")
    if size > len(leaves):
        raise ProofError(f"tree size {size} is larger than the {len(leaves)} leaf hashes given")
    leaves = leaves[:size] if size < len(leaves) else leaves
    _check_hashes(leaves, "leaf_hashes")
    return leaves, size


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """Return the RFC 9162 §2.1.3.1 inclusion proof PATH(index, D[size]), lowest level first.

    ``size`` defaults to ``len(leaf_hashes)``; only the first ``size`` leaf hashes are used. Costs O(size)
    hashes (each sibling subtree is hashed once, iteratively). Raises :class:`ProofError` unless
    ``0 <= index < size <= len(leaf_hashes)`` and every leaf hash is 32 bytes.
    """
    leaves, size = _prepare(leaf_hashes, size)
    index = _check_count(index, "leaf index")
    if index >= size:
        raise ProofError(f"leaf index {index} is beyond the tree: it must be below the tree size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        mid = start + k
        if index < mid:
            path.append(_mth(leaves[mid:end]))
            end = mid
        else:
            path.append(_mth(leaves[start:mid]))
            start = mid
    path.reverse()
    return path


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int, size2: int | None = None) -> list[bytes]:
    """Return the RFC 9162 §2.1.4.1 consistency proof PROOF(size1, D[size2]).

    ``size2`` defaults to ``len(leaf_hashes)``. Requires ``0 < size1 <= size2 <= len(leaf_hashes)``
    (a proof from the empty tree is meaningless); ``size1 == size2`` gives ``[]``. Costs O(size2)
    hashes. Raises :class:`ProofError` on bad sizes or a leaf hash that is not 32 bytes.
    """
    leaves, size2 = _prepare(leaf_hashes, size2)
    size1 = _check_count(size1, "size1")
    if size1 == 0:
        raise ProofError("consistency proof from the empty tree is meaningless: size1 must be at least 1")
    if size1 > size2:
        raise ProofError(f"size1 ({size1}) must not exceed size2 ({size2})")
    proof: list[bytes] = []
    start, end, m = 0, size2, size1
    complete = True  # the "b" flag of SUBPROOF: is the current subtree the whole old tree?
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        mid = start + k
        if m <= k:
            proof.append(_mth(leaves[mid:end]))
            end = mid
        else:
            proof.append(_mth(leaves[start:mid]))
            start = mid
            m -= k
            complete = False
    if not complete:
        proof.append(_mth(leaves[start:end]))
    proof.reverse()
    return proof


# ----------------------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------------------


def _decomp_inclusion(index: int, size: int) -> tuple[int, int]:
    """Split the proof for ``index`` in a tree of ``size`` into (inner, border) lengths.

    ``inner`` levels lie below the point where the paths to ``index`` and ``size - 1`` diverge; ``border``
    hashes are left siblings along the right border above it. Their sum is the exact proof length.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check an inclusion proof with the RFC 9162 §2.1.3.2 algorithm.

    Returns ``None`` when ``proof`` shows that ``leaf_hash`` is leaf number ``index`` (0-based) of the tree
    of ``size`` leaves whose root is ``root``. Raises :class:`ProofError` naming what failed: a negative
    or out-of-range index (``index >= size``), a hash that is not 32 bytes, a proof of the wrong length
    for (index, size), or a computed root that does not match ``root``.
    """
    index = _check_count(index, "leaf index")
    size = _check_count(size, "tree size")
    if index >= size:
        raise ProofError(f"leaf index {index} is beyond the tree: it must be below the tree size {size}")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    path = list(proof)
    _check_hashes(path, "proof")
    inner, border = _decomp_inclusion(index, size)
    if len(path) != inner + border:
        raise ProofError(
            f"wrong inclusion proof length for leaf {index} of a tree of size {size}: "
            f"got {len(path)} hashes, want {inner + border}"
        )
    sha = _sha256
    prefix = _NODE_PREFIX
    fn, sn = index, size - 1
    r = leaf_hash
    for p in path:
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = sha(prefix + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha(prefix + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError(
            f"inclusion proof does not verify: leaf {index} of a tree of size {size} gives root "
            f"{r.hex()}, expected {root.hex()}"
        )


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Check a consistency proof with the RFC 9162 §2.1.4.2 algorithm.

    Returns ``None`` when ``proof`` shows that the tree of ``size1`` leaves with root ``root1`` is a
    prefix of the tree of ``size2`` leaves with root ``root2``; raises :class:`ProofError` otherwise.
    Edge cases follow the transparency-dev/merkle Go verifier (and its test vectors):

    * negative sizes, or ``size1 > size2``: error;
    * ``size1 == 0``: error, even when ``size2 == 0`` -- a proof from the empty tree is meaningless;
    * ``size1 == size2``: the proof must be empty and ``root1 == root2`` (compared as given, with no
      length check, as in the Go verifier);
    * otherwise the proof must be non-empty, of the exact expected length, and every hash 32 bytes.
    """
    size1 = _check_count(size1, "size1")
    size2 = _check_count(size2, "size2")
    path = list(proof)
    if size1 > size2:
        raise ProofError(f"size1 ({size1}) must not exceed size2 ({size2}): a log cannot shrink")
    if size1 == 0:
        raise ProofError("consistency proof from the empty tree is meaningless: size1 must be at least 1")
    if size1 == size2:
        if path:
            raise ProofError(f"size1 equals size2 ({size1}) but the proof is not empty ({len(path)} hashes)")
        if root1 != root2:
            raise ProofError(f"size1 equals size2 ({size1}) but the roots differ")
        return
    if not path:
        raise ProofError(f"empty consistency proof between different sizes {size1} and {size2}")
    _check_hash(root1, "root1")
    _check_hash(root2, "root2")
    _check_hashes(path, "proof")

    # Expected length (as in the Go verifier): the proof is, apart from an optional seed, a suffix of the
    # inclusion proof of leaf size1 - 1 in the tree of size2, starting at level `shift`.
    inner, border = _decomp_inclusion(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zero bits of size1
    inner -= shift
    seeded = size1 == 1 << shift  # size1 is a power of two: root1 itself is the starting node
    want = (0 if seeded else 1) + inner + border
    if len(path) != want:
        raise ProofError(
            f"wrong consistency proof length between sizes {size1} and {size2}: "
            f"got {len(path)} hashes, want {want}"
        )

    # RFC 9162 §2.1.4.2.
    if seeded:
        path.insert(0, root1)
    sha = _sha256
    prefix = _NODE_PREFIX
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = sha(prefix + c + fr).digest()
            sr = sha(prefix + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha(prefix + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofError("consistency proof is shorter than the path to the root")
    if fr != root1:
        raise ProofError(
            f"consistency proof does not verify: it gives {fr.hex()} for the tree of size {size1}, "
            f"expected root1 {root1.hex()}"
        )
    if sr != root2:
        raise ProofError(
            f"consistency proof does not verify: it gives {sr.hex()} for the tree of size {size2}, "
            f"expected root2 {root2.hex()}"
        )
