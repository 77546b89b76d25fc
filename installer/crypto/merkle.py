"""RFC 6962 / RFC 9162 Merkle tree hashing: leaf and node hashes, tree heads, inclusion and
consistency proofs and their verification (docs/audit.md, "The tree").

Pure functions over SHA-256. Proofs are computed from a :data:`NodeSource`, a callable that returns
the hash of one *complete* subtree: ``get(level, index)`` is the hash over leaves
``[index * 2**level, (index + 1) * 2**level)``. The log's node store (installer/host/tlog.py) keeps
exactly those, so a proof reads O(log n) hashes and never the whole log.

Written here rather than taken from a library: the trusted base must verify proofs, the algorithms
are a few dozen lines of RFC 9162 section 2.1, and no maintained pure-Python package implements
both proof kinds over an external node store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeSource = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof that does not verify, or asks for sizes that make no sense. The caller names the record
    or checkpoint (installer/host/tlog.py wraps it into an IntegrityError)."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d) (RFC 6962 section 2.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right) (RFC 6962 section 2.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(get: NodeSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) where ``start`` is aligned as RFC 6962's recursion leaves it (a multiple of the
    largest power of two not above ``end - start``): complete subtrees come from ``get``."""
    n = end - start
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return get(n.bit_length() - 1, start // n)
    k = _split(n)
    return node_hash(subtree_hash(get, start, start + k), subtree_hash(get, start + k, end))


def root(get: NodeSource, size: int) -> bytes:
    """The tree head MTH(D[0:size])."""
    return subtree_hash(get, 0, size)


def inclusion_proof(get: NodeSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) (RFC 6962 section 2.1.1), leaf side first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    return _path(get, index, 0, size)


def _path(get: NodeSource, m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return _path(get, m, start, start + k) + [subtree_hash(get, start + k, end)]
    return _path(get, m - k, start + k, end) + [subtree_hash(get, start, start + k)]


def consistency_proof(get: NodeSource, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[0:new]) (RFC 6962 section 2.1.2); empty when ``old`` is 0 or equals ``new``."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    return _subproof(get, old, 0, new, True)


def _subproof(get: NodeSource, m: int, start: int, end: int, whole: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if whole else [subtree_hash(get, start, end)]
    k = _split(n)
    if m <= k:
        return _subproof(get, m, start, start + k, whole) + [subtree_hash(get, start + k, end)]
    return _subproof(get, m - k, start + k, end, False) + [subtree_hash(get, start, start + k)]


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` and the leaf hash ``leaf`` imply (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes) -> None:
    """Return if ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of ``size`` with that root;
    raise :class:`ProofError` otherwise."""
    if root_from_inclusion(leaf, index, size, proof) != expected_root:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the tree head of size {size}")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Return if ``proof`` shows the tree of size ``old`` with ``old_root`` is a prefix of the tree of size
    ``new`` with ``new_root`` (RFC 9162 section 2.1.4.2); raise :class:`ProofError` otherwise."""
    if not 0 <= old <= new:
        raise ProofError(f"size {new} is smaller than the earlier size {old}: the log was cut")
    if old == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return
    if old == new:
        if proof or old_root != new_root:
            raise ProofError(f"two different tree heads for size {old}: a fork")
        return
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node of the path
        path.insert(0, old_root)
    if not path:
        raise ProofError("empty consistency proof")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError(f"the log's first {old} records are not those of the earlier tree head: rewritten or forked")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the tree head of size {new}")


def frontier(get: NodeSource, size: int) -> list[bytes]:
    """The complete subtrees that make up D[0:size], largest first (one per bit set in ``size``): what a
    verifier needs, with the leaves after ``size``, to compute every later tree head."""
    out: list[bytes] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append(get(level, start >> level))
            start += 1 << level
    return out


def fold_frontier(size: int, hashes: Sequence[bytes]) -> bytes:
    """MTH(D[0:size]) from its :func:`frontier`."""
    if len(hashes) != bin(size).count("1"):
        raise ProofError(f"a tree of size {size} has {bin(size).count('1')} frontier hashes, not {len(hashes)}")
    if not hashes:
        return EMPTY_ROOT
    r = hashes[-1]
    for h in reversed(hashes[:-1]):
        r = node_hash(h, r)
    return r


class Extender:
    """Extends a tree of known frontier leaf by leaf and tells the tree head at any size: how a verifier
    with only the accepted checkpoint's frontier and the records after it checks the later heads."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ProofError(f"a tree of size {size} has {bin(size).count('1')} frontier hashes, not {len(hashes)}")
        self.size = size
        # (level, hash) pairs, largest first: the compact range [0, size)
        self._stack: list[tuple[int, bytes]] = []
        levels = [lv for lv in range(size.bit_length() - 1, -1, -1) if size >> lv & 1]
        self._stack = list(zip(levels, hashes))

    def add(self, leaf: bytes) -> None:
        level, h = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            h = node_hash(self._stack.pop()[1], h)
            level += 1
        self._stack.append((level, h))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            r = node_hash(h, r)
        return r


def memory_source(leaves: Sequence[bytes]) -> NodeSource:
    """A :data:`NodeSource` over leaf hashes held in memory (tests, small verifiers)."""
    levels: list[list[bytes]] = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])

    def get(level: int, index: int) -> bytes:
        return levels[level][index]

    return get
