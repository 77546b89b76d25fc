"""Systematic Reed-Solomon over GF(2^8), byte for byte zfec's (docs/format.md, section 12.3).

Two implementations of one code. :class:`ZfecCodec` calls zfec (the ``gapship[parity]`` extra: C,
releases the GIL, well over 1 GB/s per core); it is what ``parity``, ``build --parity`` and
``repair`` use. :class:`ReferenceCodec` is the specification made executable, in pure Python
(``bytes.translate`` for a multiplication by a constant, big-integer XOR for the sums): the tests
hold zfec to it, so that the format section describes the bytes zfec writes, and the benchmark
measures it (``benchmarks/parity.py``). Neither decides anything: every rebuilt chunk is checked
against its signed hash before it is written (:mod:`.repair`).

The code: field GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d) and generator 2. For
``k`` data blocks and ``n`` blocks in all, V is the n x k Vandermonde matrix V[r][c] = x_r ** c with
x_0 = 0 and x_r = 2 ** (r - 1) for r >= 1 (0 ** 0 = 1); the encoding matrix is E = V * inverse(V[:k]),
whose top k rows are the identity. Block r is the sum over c of E[r][c] * data[c], byte position by
byte position, so blocks k .. n-1 are the parity blocks and any k blocks give back the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

from ..errors import HostError

MAX_BLOCKS = 256  # k + m, zfec's limit (one byte per block number)
POLYNOMIAL = 0x11D
EXTRA = "gapship[parity]"


def _tables() -> tuple[list[int], list[int]]:
    exp, log = [0] * 510, [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= POLYNOMIAL
    for i in range(255, 510):
        exp[i] = exp[i - 255]
    return exp, log


_EXP, _LOG = _tables()


def gf_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


Matrix = list[list[int]]


def invert(matrix: Matrix) -> Matrix:
    """Gauss-Jordan inversion over GF(2^8); ValueError for a singular matrix."""
    n = len(matrix)
    a = [row[:] + [1 if i == j else 0 for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col]), None)
        if pivot is None:
            raise ValueError("singular matrix")
        a[col], a[pivot] = a[pivot], a[col]
        inv = gf_inv(a[col][col])
        a[col] = [gf_mul(inv, v) for v in a[col]]
        for r in range(n):
            if r != col and a[r][col]:
                f = a[r][col]
                a[r] = [v ^ gf_mul(f, p) for v, p in zip(a[r], a[col])]
    return [row[n:] for row in a]


def matmul(a: Matrix, b: Matrix) -> Matrix:
    out = []
    for row in a:
        acc = [0] * len(b[0])
        for x, brow in zip(row, b):
            if x:
                acc = [v ^ gf_mul(x, y) for v, y in zip(acc, brow)]
        out.append(acc)
    return out


@lru_cache(maxsize=64)
def encoding_matrix(k: int, n: int) -> tuple[tuple[int, ...], ...]:
    """zfec's ``fec_new(k, n)`` encoding matrix: n rows of k coefficients, the top k the identity."""
    check_parameters(k, n - k)
    points = [0] + [_EXP[r] for r in range(n - 1)]
    vandermonde = [[1 if c == 0 else (0 if x == 0 else _EXP[(_LOG[x] * c) % 255]) for c in range(k)]
                   for x in points]
    return tuple(tuple(row) for row in matmul(vandermonde, invert(vandermonde[:k])))


def check_parameters(k: int, m: int) -> None:
    if k < 1 or m < 1 or k + m > MAX_BLOCKS:
        raise ValueError(f"k={k}, m={m}: need k >= 1, m >= 1, k + m <= {MAX_BLOCKS}")


class Codec(Protocol):
    """One (k, k + m) code. Blocks are equal-length buffers; block numbers 0..k-1 are data."""

    def encode(self, data: Sequence[bytes | memoryview]) -> list[bytes]:
        """The m parity blocks of k data blocks."""

    def decode(self, blocks: Sequence[bytes | memoryview], numbers: Sequence[int]) -> list[bytes]:
        """The k data blocks, from any k distinct blocks and their block numbers."""


def _mul_table(c: int) -> bytes:
    return bytes(gf_mul(c, v) for v in range(256))


_MUL = [_mul_table(c) for c in range(256)]


def _combine(coefficients: Sequence[int], blocks: Sequence[bytes | memoryview]) -> bytes:
    size = len(blocks[0])
    acc = 0
    for c, block in zip(coefficients, blocks):
        if c:
            acc ^= int.from_bytes(bytes(block).translate(_MUL[c]), "little")
    return acc.to_bytes(size, "little")


class ReferenceCodec:
    """The code of docs/format.md 12.3 in pure Python (a few hundred MB/s at most): tests and benchmarks."""

    def __init__(self, k: int, m: int) -> None:
        self.k, self.m = k, m
        self.matrix = encoding_matrix(k, k + m)

    def encode(self, data: Sequence[bytes | memoryview]) -> list[bytes]:
        return [_combine(self.matrix[r], data) for r in range(self.k, self.k + self.m)]

    def decode(self, blocks: Sequence[bytes | memoryview], numbers: Sequence[int]) -> list[bytes]:
        inverse = invert([list(self.matrix[n]) for n in numbers])
        return [_combine(row, blocks) for row in inverse]


class ZfecCodec:
    """The same code through zfec (``gapship[parity]``)."""

    def __init__(self, k: int, m: int) -> None:
        import zfec  # type: ignore[import-untyped]  # no type hints (C extension)

        check_parameters(k, m)
        self.k, self.m = k, m
        self._encoder = zfec.Encoder(k, k + m)
        self._decoder = zfec.Decoder(k, k + m)
        self._parity = tuple(range(k, k + m))

    def encode(self, data: Sequence[bytes | memoryview]) -> list[bytes]:
        return [bytes(b) for b in self._encoder.encode(list(data), self._parity)]

    def decode(self, blocks: Sequence[bytes | memoryview], numbers: Sequence[int]) -> list[bytes]:
        return [bytes(b) for b in self._decoder.decode(list(blocks), list(numbers))]


def have_zfec() -> bool:
    try:
        import zfec  # noqa: F401
    except ImportError:
        return False
    return True


def codec(k: int, m: int, *, what: str) -> Codec:
    """zfec's codec, or a one-line refusal naming the extra (verify never needs it: parity chunks
    are checked by hash)."""
    if not have_zfec():
        raise HostError(f"{what} needs zfec: install {EXTRA}", subject="zfec")
    return ZfecCodec(k, m)
