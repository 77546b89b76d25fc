"""RFC 6962 / RFC 9162 Merkle hashing and proofs, checked against the certificate-transparency test
vectors (the leaves, roots and proofs of CT's merkle_tree_test, also used by Trillian)."""

from __future__ import annotations

import itertools

import pytest

from gapship.installer.crypto import merkle
from gapship.installer.crypto.merkle import ProofError

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
H = bytes.fromhex
INCLUSION = [
    (0, 1, []),
    (0, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 3, [H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
]
SOURCE = merkle.memory_source([merkle.leaf_hash(d) for d in LEAVES])


def test_empty_tree_head_is_sha256_of_nothing() -> None:
    assert merkle.root(SOURCE, 0).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("size", range(1, 9))
def test_tree_heads_match_the_vectors(size: int) -> None:
    assert merkle.root(SOURCE, size) == ROOTS[size - 1]
    assert merkle.fold_frontier(size, merkle.frontier(SOURCE, size)) == ROOTS[size - 1]
    ext = merkle.Extender()
    for d in LEAVES[:size]:
        ext.add(merkle.leaf_hash(d))
    assert ext.root() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_vectors(index: int, size: int, proof: list[bytes]) -> None:
    assert merkle.inclusion_proof(SOURCE, index, size) == proof
    merkle.verify_inclusion(merkle.leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_vectors(old: int, new: int, proof: list[bytes]) -> None:
    assert merkle.consistency_proof(SOURCE, old, new) == proof
    merkle.verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


def test_every_proof_in_trees_up_to_33_leaves_verifies() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(33)]
    get = merkle.memory_source(leaves)
    for size in range(1, 34):
        head = merkle.root(get, size)
        for i in range(size):
            merkle.verify_inclusion(leaves[i], i, size, merkle.inclusion_proof(get, i, size), head)
        for old in range(1, size + 1):
            merkle.verify_consistency(old, size, merkle.root(get, old), head, merkle.consistency_proof(get, old, size))


def test_rejects_inclusion_proof_of_another_leaf() -> None:
    proof = merkle.inclusion_proof(SOURCE, 5, 8)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(merkle.leaf_hash(LEAVES[4]), 5, 8, proof, ROOTS[7])


def test_rejects_inclusion_proof_with_a_node_flipped_dropped_or_added() -> None:
    proof = merkle.inclusion_proof(SOURCE, 5, 8)
    leaf = merkle.leaf_hash(LEAVES[5])
    for bad in ([bytes(32)] + proof[1:], proof[:-1], proof + [bytes(32)]):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaf, 5, 8, bad, ROOTS[7])


def test_rejects_consistency_with_a_rewritten_old_tree() -> None:
    other = merkle.memory_source([merkle.leaf_hash(b"rewritten")] + [merkle.leaf_hash(d) for d in LEAVES[1:]])
    proof = merkle.consistency_proof(other, 3, 8)
    with pytest.raises(ProofError, match="rewritten or forked"):
        merkle.verify_consistency(3, 8, ROOTS[2], merkle.root(other, 8), proof)


def test_rejects_truncation_and_equal_size_fork() -> None:
    with pytest.raises(ProofError, match="cut"):
        merkle.verify_consistency(8, 5, ROOTS[7], ROOTS[4], [])
    with pytest.raises(ProofError, match="fork"):
        merkle.verify_consistency(5, 5, ROOTS[4], ROOTS[5], [])


def test_rejects_consistency_proof_mutations() -> None:
    for old, new in itertools.product(range(1, 8), range(2, 9)):
        if old >= new:
            continue
        proof = merkle.consistency_proof(SOURCE, old, new)
        for i in range(len(proof)):
            bad = proof[:i] + [bytes(32)] + proof[i + 1:]
            with pytest.raises(ProofError):
                merkle.verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], bad)
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof[:-1])
