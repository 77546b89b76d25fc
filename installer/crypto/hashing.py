"""Named hash algorithms and streaming helpers.

The manifest names its algorithm (docs/format.md, "hash_algorithm"); only FIPS 180-4 hashes are
accepted. Reads are large (:data:`READ_SIZE`) because hashlib releases the GIL for big buffers,
which lets the verifier hash several chunks at once on separate cores.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable

HASH_ALGORITHMS = ("sha256", "sha384", "sha512")
READ_SIZE = 4 * 1024 * 1024

Progress = Callable[[int], None]
"""A callback told how many more bytes were processed; only the CLI turns it into a progress bar."""


def no_progress(_n: int) -> None:
    return None


def new_hasher(algorithm: str) -> hashlib._Hash:
    if algorithm not in HASH_ALGORITHMS:
        raise ValueError(f"unsupported hash algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def hash_constructor(algorithm: str) -> Callable[..., hashlib._Hash]:
    """hashlib's own constructor for ``algorithm`` (``hashlib.sha256``...): for code that makes a
    hasher per file, where :func:`new_hasher`'s lookup shows."""
    new_hasher(algorithm)  # refuses what is not in HASH_ALGORITHMS
    constructor: Callable[..., hashlib._Hash] = getattr(hashlib, algorithm)
    return constructor


@functools.cache  # the manifest parser asks once for each file
def digest_hex_length(algorithm: str) -> int:
    return new_hasher(algorithm).digest_size * 2


def hash_fd(fd: int, algorithm: str, *, limit: int, buffer: bytearray | None = None,
            progress: Progress = no_progress) -> tuple[str, int]:
    """Hash up to ``limit + 1`` bytes from ``fd``; return the hex digest of the first ``limit`` bytes and
    how many bytes were actually there (``limit + 1`` means the source is longer than expected).

    Reading one byte past ``limit`` is how an extended chunk is caught without trusting ``stat``.
    """
    hasher = new_hasher(algorithm)
    buf = buffer if buffer is not None else bytearray(READ_SIZE)
    view = memoryview(buf)
    seen = 0
    while seen <= limit:
        want = min(len(buf), limit + 1 - seen)
        n = os.readv(fd, [view[:want]])
        if n == 0:
            break
        take = min(n, limit - seen)
        hasher.update(view[:take])
        seen += n
        progress(take)
    return hasher.hexdigest(), seen
