"""Tests for caracal.core.merkle: RFC 9162 roots, the incremental frontier, and proofs.

Three kinds of evidence:

* the transparency-dev/merkle JSON vectors in ``../shared/testdata/rfc9162`` (one test per file);
* known answers for the RFC 6962 reference tree (roots, compact-range nodes, proofs) as published in
  transparency-dev/merkle ``testonly/constants.go`` and ``proof/verify_test.go``, and the larger-tree
  roots of the certificate-transparency compact tree tests;
* Hypothesis properties against a slow recursive reference MTH written here from the RFC text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caracal.core.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleFrontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from caracal.exceptions import ProofError

# ----------------------------------------------------------------------------------------------------------
# Reference implementation (deliberately naive: RFC 6962 §2.1 transcribed)
# ----------------------------------------------------------------------------------------------------------


def ref_mth(leaf_hashes: list[bytes]) -> bytes:
    n = len(leaf_hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaf_hashes[:k]) + ref_mth(leaf_hashes[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def flip(h: bytes, bit: int = 0) -> bytes:
    out = bytearray(h)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def distinct_leaves(n: int, seed: bytes = b"") -> list[bytes]:
    return [leaf_hash(seed + i.to_bytes(4, "big")) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------
# Known answers: the RFC 6962 reference tree
# ----------------------------------------------------------------------------------------------------------

RFC_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
RFC_LEAF_HASHES = [leaf_hash(d) for d in RFC_LEAVES]

# transparency-dev/merkle testonly/constants.go RootHashes() (from the certificate-transparency C++ tests).
RFC_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]

# testonly/constants.go NodeHashes(): [level][index] of every perfect subtree of the 8-leaf tree.
NH = [
    [
        bytes.fromhex(h)
        for h in [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        ]
    ],
    [
        bytes.fromhex(h)
        for h in [
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ]
    ],
    [
        bytes.fromhex(h)
        for h in [
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ]
    ],
    [bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# testonly/constants.go CompactTrees(): frontier nodes (largest subtree first) for sizes 0..8.
COMPACT_TREES = [
    [],
    [NH[0][0]],
    [NH[1][0]],
    [NH[1][0], NH[0][2]],
    [NH[2][0]],
    [NH[2][0], NH[0][4]],
    [NH[2][0], NH[1][2]],
    [NH[2][0], NH[1][2], NH[0][6]],
    [NH[3][0]],
]

# proof/verify_test.go inclusionProofs (there 1-based leaf numbers; here 0-based indices).
KNOWN_INCLUSION = [
    (0, 1, []),
    (0, 8, [NH[0][1], NH[1][1], NH[2][1]]),
    (5, 8, [NH[0][4], NH[1][3], NH[2][0]]),
    (2, 3, [NH[1][0]]),
    (1, 5, [NH[0][0], NH[1][1], NH[0][4]]),
]

# proof/verify_test.go consistencyProofs.
KNOWN_CONSISTENCY = [
    (1, 1, []),
    (1, 8, [NH[0][1], NH[1][1], NH[2][1]]),
    (6, 8, [NH[1][2], NH[1][3], NH[2][0]]),
    (2, 5, [NH[1][1], NH[0][4]]),
    (6, 7, [NH[1][2], NH[0][6], NH[2][0]]),
]

# certificate-transparency / trillian compact tree test TestRootHashForVariousTreeSizes: leaf i is the two
# bytes (i & 0xff, (i >> 8) & 0xff).
LARGER_ROOTS = {
    10: "VjWMPSYNtCuCNlF/RLnQy6HcwSk6CIipfxm+hettA+4=",
    15: "j4SulYmocFuxdeyp12xXCIgK6PekBcxzAIj4zbQzNEI=",
    16: "c+4Uc6BCMOZf/v3NZK1kqTUJe+bBoFtOhP+P3SayKRE=",
    100: "dUh9hYH88p0CMoHkdr1wC2szbhcLAXOejWpINIooKUY=",
    255: "SmdsuKUqiod3RX2jyF2M6JnbdE4QuTwwipfAowI4/i0=",
    256: "qFI0t/tZ1MdOYgyPpPzHFiZVw86koScXy9q3FU5casA=",
    1000: "RXrgb8xHd55Y48FbfotJwCbV82Kx22LZfEbmBGAvwlQ=",
    4095: "cWRFdQhPcjn9WyBXE/r1f04ejxIm5lvg40DEpRBVS0w=",
    4096: "6uU/phfHg1n/GksYT6TO9aN8EauMCCJRl3dIK0HDs2M=",
    10000: "VZcav65F9haHVRk3wre2axFoBXRNeUh/1d9d5FQfxIg=",
    65535: "iPuVYJhP6SEE4gUFp8qbafd2rYv9YTCDYqAxCj8HdLM=",
}


def test_constants() -> None:
    assert HASH_SIZE == 32
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == RFC_ROOTS[0]
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert MerkleFrontier().root() == EMPTY_ROOT


def test_leaf_and_node_hash_domain_separation() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest() == NH[0][0]
    a, b = RFC_LEAF_HASHES[0], RFC_LEAF_HASHES[1]
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest() == NH[1][0]
    # The bytes of an interior node, presented as a leaf, do not hash to that node.
    assert leaf_hash(a + b) != node_hash(a, b)


def test_reference_tree_root_matches_inclusion_vectors() -> None:
    assert (
        base64.b64encode(root_from_leaf_hashes(RFC_LEAF_HASHES))
        == b"XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="
    )


@pytest.mark.parametrize("size", range(9))
def test_reference_tree_roots(size: int) -> None:
    prefix = RFC_LEAF_HASHES[:size]
    assert root_from_leaf_hashes(prefix) == RFC_ROOTS[size]
    assert ref_mth(prefix) == RFC_ROOTS[size]
    frontier = MerkleFrontier()
    frontier.extend(prefix)
    assert frontier.root() == RFC_ROOTS[size]
    assert list(frontier.nodes) == COMPACT_TREES[size]
    assert frontier.size == size


def test_reference_tree_node_hashes() -> None:
    for level, row in enumerate(NH):
        width = 1 << level
        for i, expected in enumerate(row):
            assert root_from_leaf_hashes(RFC_LEAF_HASHES[i * width : (i + 1) * width]) == expected


@pytest.mark.parametrize(("index", "size", "proof"), KNOWN_INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_proof(RFC_LEAF_HASHES, index, size) == proof
    verify_inclusion(RFC_LEAF_HASHES[index], index, size, proof, RFC_ROOTS[size])


@pytest.mark.parametrize(("size1", "size2", "proof"), KNOWN_CONSISTENCY)
def test_known_consistency_proofs(size1: int, size2: int, proof: list[bytes]) -> None:
    assert consistency_proof(RFC_LEAF_HASHES, size1, size2) == proof
    verify_consistency(size1, size2, RFC_ROOTS[size1], RFC_ROOTS[size2], proof)


def test_larger_known_roots() -> None:
    leaves = [leaf_hash(bytes([i & 0xFF, (i >> 8) & 0xFF])) for i in range(max(LARGER_ROOTS))]
    frontier = MerkleFrontier()
    for size in sorted(LARGER_ROOTS):
        want = base64.b64decode(LARGER_ROOTS[size])
        assert root_from_leaf_hashes(leaves[:size]) == want, size
        frontier.extend(leaves[frontier.size : size])
        assert frontier.root() == want, size


# ----------------------------------------------------------------------------------------------------------
# transparency-dev/merkle JSON vectors
# ----------------------------------------------------------------------------------------------------------

VECTOR_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "rfc9162"
MISSING_REASON = f"RFC 9162 test vectors not found at {VECTOR_DIR} (expected ../shared beside the checkout)"


def _vector_params(kind: str) -> list[Any]:
    if not (VECTOR_DIR / kind).is_dir():
        return [
            pytest.param(None, id=f"{kind}-vectors-missing", marks=pytest.mark.skip(reason=MISSING_REASON))
        ]
    files = sorted((VECTOR_DIR / kind).rglob("*.json"))
    return [pytest.param(p, id=p.relative_to(VECTOR_DIR).as_posix()) for p in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(h) for h in value or []]


@pytest.mark.parametrize("path", _vector_params("inclusion"))
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _vector_params("consistency"))
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], _b64(v["root1"]), _b64(v["root2"]), _proof(v["proof"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_vector_happy_paths_are_what_we_generate() -> None:
    """Every accepted vector built on the reference tree is exactly the proof our generator produces."""
    if not VECTOR_DIR.is_dir():
        pytest.skip(MISSING_REASON)
    checked = 0
    for path in sorted(VECTOR_DIR.glob("inclusion/*/happy-path.json")):
        v = json.loads(path.read_text())
        idx, size = v["leafIdx"], v["treeSize"]
        if _b64(v["root"]) == RFC_ROOTS[size] and _b64(v["leafHash"]) == RFC_LEAF_HASHES[idx]:
            assert inclusion_proof(RFC_LEAF_HASHES, idx, size) == _proof(v["proof"]), path
            checked += 1
    for path in sorted(VECTOR_DIR.glob("consistency/*/happy-path.json")):
        v = json.loads(path.read_text())
        s1, s2 = v["size1"], v["size2"]
        if _b64(v["root1"]) == RFC_ROOTS[s1] and _b64(v["root2"]) == RFC_ROOTS[s2]:
            assert consistency_proof(RFC_LEAF_HASHES, s1, s2) == _proof(v["proof"]), path
            checked += 1
    assert checked >= 8


# ----------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------

PROPS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])

leaf_counts = st.integers(min_value=0, max_value=300)
seeds = st.binary(max_size=8)
arbitrary_leaves = st.lists(st.binary(max_size=40).map(leaf_hash), max_size=300)


@PROPS
@given(n=leaf_counts, seed=seeds)
def test_frontier_matches_batch_and_reference_for_every_prefix(n: int, seed: bytes) -> None:
    leaves = distinct_leaves(n, seed)
    frontier = MerkleFrontier()
    assert frontier.root() == root_from_leaf_hashes([]) == ref_mth([])
    for i, h in enumerate(leaves, start=1):
        frontier.append(h)
        want = ref_mth(leaves[:i])
        assert frontier.size == i
        assert len(frontier.nodes) == i.bit_count()
        assert frontier.root() == want
        assert root_from_leaf_hashes(leaves[:i]) == want
    bulk = MerkleFrontier()
    bulk.extend(iter(leaves))
    assert bulk == frontier


@PROPS
@given(leaves=arbitrary_leaves)
def test_roots_of_arbitrary_leaves(leaves: list[bytes]) -> None:
    """Leaves from arbitrary data, duplicates included: all three root computations agree."""
    frontier = MerkleFrontier()
    frontier.extend(leaves)
    assert frontier.root() == root_from_leaf_hashes(leaves) == ref_mth(leaves)


@PROPS
@given(n=leaf_counts, seed=seeds)
def test_frontier_dict_round_trip(n: int, seed: bytes) -> None:
    leaves = distinct_leaves(n, seed)
    frontier = MerkleFrontier()
    for h in leaves:
        frontier.append(h)
        d = frontier.to_dict()
        assert d == {"size": frontier.size, "nodes": [x.hex() for x in frontier.nodes]}
        again = MerkleFrontier.from_dict(json.loads(json.dumps(d)))
        assert again == frontier
        assert again.root() == frontier.root()
    # A restored frontier keeps growing exactly like the original.
    restored = MerkleFrontier.from_dict(frontier.to_dict())
    extra = distinct_leaves(5, seed + b"more")
    restored.extend(extra)
    assert restored.root() == ref_mth(leaves + extra)


def test_frontier_copy_is_independent() -> None:
    frontier = MerkleFrontier()
    frontier.extend(RFC_LEAF_HASHES[:5])
    twin = frontier.copy()
    twin.append(RFC_LEAF_HASHES[5])
    assert frontier.size == 5 and frontier.root() == RFC_ROOTS[5]
    assert twin.size == 6 and twin.root() == RFC_ROOTS[6]
    assert frontier != twin
    assert "size=5" in repr(frontier)


@PROPS
@given(n=st.integers(min_value=1, max_value=300), seed=seeds, data=st.data())
def test_inclusion_proofs_verify_and_detect_tampering(n: int, seed: bytes, data: st.DataObject) -> None:
    leaves = distinct_leaves(n, seed)
    root = root_from_leaf_hashes(leaves)
    bit = data.draw(st.integers(0, 255), label="bit")
    offset = data.draw(st.integers(1, max(1, n - 1)), label="offset to another index")
    for index in range(n):
        proof = inclusion_proof(leaves, index)
        verify_inclusion(leaves[index], index, n, proof, root)
        if n > 1:
            for other in {(index + 1) % n, (index + offset) % n, index ^ 1 if index ^ 1 < n else 0} - {index}:
                with pytest.raises(ProofError):
                    verify_inclusion(leaves[index], other, n, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(flip(leaves[index], bit), index, n, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, n, proof, flip(root, bit))
        if proof:
            j = (index + bit) % len(proof)
            bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], index, n, bad, root)
    # Proofs for a smaller tree drawn from the same (longer) list.
    size = data.draw(st.integers(1, n), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(leaves, index, size)
    assert proof == ref_path(index, leaves[:size])
    verify_inclusion(leaves[index], index, size, proof, ref_mth(leaves[:size]))


@PROPS
@given(n=st.integers(min_value=1, max_value=300), seed=seeds, data=st.data())
def test_consistency_proofs_verify_and_detect_tampering(n: int, seed: bytes, data: st.DataObject) -> None:
    leaves = distinct_leaves(n, seed)
    pairs = data.draw(
        st.lists(st.tuples(st.integers(1, n), st.integers(1, n)), min_size=1, max_size=12), label="pairs"
    )
    for a, b in [*pairs, (1, n), (n, n)]:
        size1, size2 = min(a, b), max(a, b)
        root1, root2 = ref_mth(leaves[:size1]), ref_mth(leaves[:size2])
        proof = consistency_proof(leaves, size1, size2)
        assert proof == ref_subproof(size1, leaves[:size2], True)
        verify_consistency(size1, size2, root1, root2, proof)
        bit = data.draw(st.integers(0, 255), label="bit")
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, flip(root1, bit), root2, proof)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, root1, flip(root2, bit), proof)
        if proof:
            j = data.draw(st.integers(0, len(proof) - 1), label="proof element")
            bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, root1, root2, bad)
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, root1, root2, proof[:-1])
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, root1, root2, [*proof, root1])


def test_consistency_every_pair_small_trees() -> None:
    leaves = distinct_leaves(40, b"pairs")
    roots = [ref_mth(leaves[:i]) for i in range(41)]
    for size2 in range(1, 41):
        for size1 in range(1, size2 + 1):
            proof = consistency_proof(leaves, size1, size2)
            verify_consistency(size1, size2, roots[size1], roots[size2], proof)
            if size1 != size2:
                with pytest.raises(ProofError):
                    verify_consistency(size1, size2, roots[size1], flip(roots[size2]), proof)
                with pytest.raises(ProofError):
                    verify_consistency(size1, size2, flip(roots[size1]), roots[size2], proof)


def test_proofs_accept_any_sequence() -> None:
    leaves = tuple(RFC_LEAF_HASHES)
    assert root_from_leaf_hashes(leaves) == RFC_ROOTS[8]
    assert inclusion_proof(leaves, 5) == KNOWN_INCLUSION[2][2]
    assert consistency_proof(leaves, 6) == KNOWN_CONSISTENCY[2][2]
    verify_inclusion(leaves[5], 5, 8, tuple(KNOWN_INCLUSION[2][2]), RFC_ROOTS[8])
    verify_consistency(6, 8, RFC_ROOTS[6], RFC_ROOTS[8], tuple(KNOWN_CONSISTENCY[2][2]))


@pytest.mark.slow
def test_large_tree() -> None:
    n = 300_007
    leaves = distinct_leaves(n, b"large")
    root = root_from_leaf_hashes(leaves)
    frontier = MerkleFrontier()
    frontier.extend(leaves)
    assert frontier.root() == root
    for index in (0, 1, 131_071, 262_144, n - 1):
        verify_inclusion(leaves[index], index, n, inclusion_proof(leaves, index), root)
    for size1 in (1, 131_072, 200_001, n):
        proof = consistency_proof(leaves, size1)
        verify_consistency(size1, n, root_from_leaf_hashes(leaves[:size1]), root, proof)


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------

H = RFC_LEAF_HASHES[0]


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33, "x" * 32, None, bytearray(32)])
def test_wrong_hash_values_are_rejected(bad: Any) -> None:
    with pytest.raises(ProofError):
        node_hash(bad, H)
    with pytest.raises(ProofError):
        node_hash(H, bad)
    with pytest.raises(ProofError):
        root_from_leaf_hashes([H, bad])
    with pytest.raises(ProofError):
        MerkleFrontier().append(bad)
    with pytest.raises(ProofError):
        inclusion_proof([H, bad], 0)
    with pytest.raises(ProofError):
        consistency_proof([H, bad], 1)
    with pytest.raises(ProofError):
        verify_inclusion(bad, 0, 1, [], H)
    with pytest.raises(ProofError):
        verify_inclusion(H, 0, 1, [], bad)
    with pytest.raises(ProofError):
        verify_inclusion(H, 0, 2, [bad], H)
    with pytest.raises(ProofError):
        verify_consistency(1, 2, bad, H, [H])
    with pytest.raises(ProofError):
        verify_consistency(1, 2, H, bad, [H])
    with pytest.raises(ProofError):
        verify_consistency(1, 2, H, H, [bad])


def test_frontier_extend_stops_at_bad_hash() -> None:
    frontier = MerkleFrontier()
    with pytest.raises(ProofError):
        frontier.extend([RFC_LEAF_HASHES[0], RFC_LEAF_HASHES[1], b"short", RFC_LEAF_HASHES[2]])
    assert frontier.size == 2
    assert frontier.root() == RFC_ROOTS[2]


@pytest.mark.parametrize(
    ("index", "size"),
    [(-1, None), (8, None), (0, 0), (0, -1), (0, 9), (3, 3), (True, None), (0, 2.0)],
)
def test_inclusion_proof_bad_arguments(index: Any, size: Any) -> None:
    with pytest.raises(ProofError):
        inclusion_proof(RFC_LEAF_HASHES, index, size)


@pytest.mark.parametrize(
    ("size1", "size2"), [(0, None), (-1, None), (0, 0), (5, 4), (1, 9), (1, -1), (2, 3.0)]
)
def test_consistency_proof_bad_arguments(size1: Any, size2: Any) -> None:
    with pytest.raises(ProofError):
        consistency_proof(RFC_LEAF_HASHES, size1, size2)


def test_consistency_proof_equal_sizes_is_empty() -> None:
    assert consistency_proof(RFC_LEAF_HASHES, 8) == []
    assert consistency_proof(RFC_LEAF_HASHES, 3, 3) == []


@pytest.mark.parametrize(
    ("index", "size", "proof", "message"),
    [
        (-1, 8, KNOWN_INCLUSION[1][2], "negative"),
        (0, -8, KNOWN_INCLUSION[1][2], "negative"),
        (8, 8, KNOWN_INCLUSION[1][2], "beyond"),
        (0, 0, [], "beyond"),
        (0, 8, KNOWN_INCLUSION[1][2][:2], "wrong inclusion proof length"),
        (0, 8, [*KNOWN_INCLUSION[1][2], H], "wrong inclusion proof length"),
        (0, 8, KNOWN_INCLUSION[2][2], "does not verify"),
    ],
)
def test_verify_inclusion_errors_name_the_failure(
    index: int, size: int, proof: list[bytes], message: str
) -> None:
    with pytest.raises(ProofError, match=message):
        verify_inclusion(RFC_LEAF_HASHES[0], index, size, proof, RFC_ROOTS[8])


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "message"),
    [
        (-1, 8, RFC_ROOTS[1], RFC_ROOTS[8], [], "negative"),
        (1, -8, RFC_ROOTS[1], RFC_ROOTS[8], [], "negative"),
        (8, 1, RFC_ROOTS[8], RFC_ROOTS[1], [], "must not exceed"),
        (0, 8, EMPTY_ROOT, RFC_ROOTS[8], [], "empty tree"),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], "empty tree"),
        (3, 3, RFC_ROOTS[3], RFC_ROOTS[3], [H], "not empty"),
        (3, 3, RFC_ROOTS[3], RFC_ROOTS[4], [], "roots differ"),
        (1, 8, RFC_ROOTS[1], RFC_ROOTS[8], [], "empty consistency proof"),
        (6, 8, RFC_ROOTS[6], RFC_ROOTS[8], KNOWN_CONSISTENCY[2][2][:2], "wrong consistency proof length"),
        (6, 8, RFC_ROOTS[5], RFC_ROOTS[8], KNOWN_CONSISTENCY[2][2], "root1"),
        (6, 8, RFC_ROOTS[6], RFC_ROOTS[7], KNOWN_CONSISTENCY[2][2], "root2"),
    ],
)
def test_verify_consistency_errors_name_the_failure(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes], message: str
) -> None:
    with pytest.raises(ProofError, match=message):
        verify_consistency(size1, size2, root1, root2, proof)


GOOD_NODE = "ab" * 32


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"size": 3, "nodes": [GOOD_NODE]}, "must have 2 node"),
        ({"size": 3, "nodes": [GOOD_NODE] * 3}, "must have 2 node"),
        ({"size": 0, "nodes": [GOOD_NODE]}, "must have 0 node"),
        ({"size": 4, "nodes": []}, "must have 1 node"),
        ({"size": 1, "nodes": ["ab" * 31]}, "32 bytes"),
        ({"size": 1, "nodes": ["zz" * 32]}, "not valid hex"),
        ({"size": 1, "nodes": [b"\x00" * 32]}, "hex string"),
        ({"size": 1, "nodes": GOOD_NODE}, "list"),
        ({"size": -1, "nodes": []}, "negative"),
        ({"size": "1", "nodes": [GOOD_NODE]}, "integer"),
        ({"size": True, "nodes": [GOOD_NODE]}, "integer"),
        ({"size": 1 << 64, "nodes": [GOOD_NODE]}, "2\\*\\*64"),
        ({"nodes": []}, "'size'"),
        ({"size": 0}, "'nodes'"),
        ([0, []], "mapping"),
    ],
)
def test_frontier_from_dict_rejects_bad_input(d: Any, message: str) -> None:
    with pytest.raises(ProofError, match=message):
        MerkleFrontier.from_dict(d)


def test_frontier_from_dict_accepts_maximal_size() -> None:
    size = (1 << 64) - 1
    frontier = MerkleFrontier.from_dict({"size": size, "nodes": [GOOD_NODE] * 64})
    assert frontier.size == size
    assert len(frontier.nodes) == 64
