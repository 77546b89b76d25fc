"""Where a bundle's chunks come from: a bundle directory, or a registry (docs/oci.md).

The installer reads a bundle's small files (``manifest.json``, ``signatures/``, ``roots/``,
``authorizations/``) from a directory, through the bounded readers of :mod:`.files`, and only its
chunks through a :class:`ChunkSource`. For a directory that is :class:`DirectorySource`; for an
``oci://`` reference, :mod:`gapship.installer.oci.transfer` writes the small files into a private
temporary directory (each blob checked against its digest) and attaches a registry source to it for
the chunks, which then stream from the registry into the same checks as chunk files: the signed size
and hash of each chunk, before any of its bytes count.

Why a table of attached sources rather than a parameter: the chunk readers sit deep in code that
takes a bundle path (the streaming extractor, the small-file reader, the site policy, the dependency
plan), and that code is being tuned by other work; the table keeps each of those call sites a
one-line change, and a directory nobody attached anything to reads as it always did.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ..errors import IntegrityError
from ..formats.manifest import Chunk, Manifest
from .files import chunk_path, open_nofollow


class ChunkSource(Protocol):
    """A bundle's chunks, by their place in the signed chunk list."""

    def open_chunk(self, index: int, chunk: Chunk) -> int:
        """A file descriptor at offset 0 of chunk ``index``'s bytes (the caller closes it, and checks
        the bytes against the signed size and hash); raise a :class:`~gapship.installer.errors.GapshipError`."""

    def check_names(self, manifest: Manifest) -> None:
        """Refuse, before any chunk is read, a source that lacks a chunk of ``manifest`` or holds extra ones."""

    def read_range(self, index: int, chunk: Chunk, offset: int, length: int) -> bytes:
        """``length`` bytes of chunk ``index`` from ``offset`` (the caller checks them against a signed hash)."""


class DirectorySource:
    """The chunks of a bundle directory, ``chunks/<name>``, opened without following symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open_chunk(self, index: int, chunk: Chunk) -> int:
        return open_nofollow(chunk_path(self.root, chunk.name))

    def check_names(self, manifest: Manifest) -> None:
        from .verify import check_chunk_names  # verify.py reads small files through this module

        check_chunk_names(self.root, manifest)

    def read_range(self, index: int, chunk: Chunk, offset: int, length: int) -> bytes:
        fd = open_nofollow(chunk_path(self.root, chunk.name))
        try:
            piece = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(piece) != length:
            raise IntegrityError(f"chunks/{chunk.name} is truncated", subject=f"chunks/{chunk.name}")
        return piece


_attached: dict[str, ChunkSource] = {}
_lock = threading.Lock()


def source_for(root: Path) -> ChunkSource:
    """The chunk source attached to the bundle directory ``root``, else its own ``chunks/``."""
    with _lock:
        found = _attached.get(os.path.abspath(root))
    return found if found is not None else DirectorySource(root)


@contextmanager
def attached(root: Path, source: ChunkSource) -> Iterator[Path]:
    """Read ``root``'s chunks from ``source`` while the block runs."""
    key = os.path.abspath(root)
    with _lock:
        if key in _attached:
            raise RuntimeError(f"a chunk source is already attached to {root}")
        _attached[key] = source
    try:
        yield root
    finally:
        with _lock:
            del _attached[key]
