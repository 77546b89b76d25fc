"""Checking chunks against a verified manifest (docs/format.md, "Chunks").

Chunks are independent, so :func:`verify_chunks` hashes several at once: hashlib releases the GIL
for large buffers, which makes threads enough to keep every core busy.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar
from dataclasses import dataclass
from pathlib import Path

from .files import chunk_path, list_chunk_files, open_nofollow
from ..errors import IntegrityError, UnsafeContentError
from ..crypto.hashing import READ_SIZE, Progress, hash_fd, new_hasher, no_progress
from ..formats.manifest import Chunk, FileEntry, Manifest
from ..trust import VerifiedManifest


T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ChunkReport:
    chunks: int
    bytes: int


def check_chunk_fd(fd: int, chunk: Chunk, algorithm: str, *, subject: str,
                   buffer: bytearray | None = None, progress: Progress = no_progress) -> None:
    """Raise :class:`IntegrityError` unless ``fd`` holds exactly ``chunk``'s bytes."""
    digest, seen = hash_fd(fd, algorithm, limit=chunk.size, buffer=buffer, progress=progress)
    if seen < chunk.size:
        raise IntegrityError(f"{subject} is truncated: {seen} of {chunk.size} bytes", subject=subject)
    if seen > chunk.size:
        raise IntegrityError(f"{subject} is longer than the {chunk.size} bytes the manifest declares", subject=subject)
    if digest != chunk.hash:
        raise IntegrityError(f"{subject} does not match its {algorithm} hash in the manifest", subject=subject)


def verify_chunk_file(path: Path, verified: VerifiedManifest) -> Chunk:
    """Check one chunk file on its own (the pipeline case: others may not have arrived yet).
    The file is identified by its name; a renamed chunk fails its hash check."""
    chunk = verified.manifest.chunk(path.name)
    if chunk is None:
        raise IntegrityError(f"{path.name} is not a chunk of this bundle", subject=path.name)
    subject = f"chunks/{path.name}"
    fd = open_nofollow(path)
    try:
        check_chunk_fd(fd, chunk, verified.manifest.hash_algorithm, subject=subject)
    finally:
        os.close(fd)
    return chunk


def verify_chunks(root: Path, verified: VerifiedManifest, *, progress: Progress = no_progress,
                  workers: int | None = None) -> ChunkReport:
    """Check that ``chunks/`` holds exactly the manifest's chunks, each with its size and hash."""
    m = verified.manifest
    check_chunk_names(root, m)
    local = threading.local()
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    def one(chunk: Chunk) -> None:
        if not hasattr(local, "buf"):
            local.buf = bytearray(READ_SIZE)
        fd = open_nofollow(chunk_path(root, chunk.name))
        try:
            check_chunk_fd(fd, chunk, m.hash_algorithm, subject=f"chunks/{chunk.name}", buffer=local.buf, progress=report)
        finally:
            os.close(fd)

    count = workers or min(len(m.chunks), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="gapship-verify") as pool:
        try:
            for _ in bounded_map(pool, one, m.chunks, window=4 * count):
                pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return ChunkReport(chunks=len(m.chunks), bytes=m.payload_size)


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], *, window: int) -> Iterator[R]:
    """``pool.map(fn, items)`` with at most ``window`` calls submitted at a time, results in order.
    ``Executor.map`` submits every call at once: at the 100,000-chunk cap its futures alone held
    about 140 MiB (docs/format.md, "Limits")."""
    pending: deque[Future[R]] = deque()
    for item in items:
        if len(pending) >= window:
            yield pending.popleft().result()
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()


def check_chunk_names(root: Path, manifest: Manifest) -> None:
    """Refuse missing and extra chunk files before hashing anything: ``chunks/`` must hold exactly
    the manifest's chunks (docs/format.md, "Chunks"). ``verify`` and ``install`` both call it."""
    present = set(list_chunk_files(root))
    expected = [c.name for c in manifest.chunks]
    for name in expected:
        if name not in present:
            raise IntegrityError(f"chunks/{name} is missing", subject=f"chunks/{name}")
    extra = sorted(present - set(expected))
    if extra:
        raise IntegrityError(f"chunks/{extra[0]} is not part of this bundle (extra chunk)", subject=f"chunks/{extra[0]}")


def read_small_files(bundle: Path, m: Manifest, entries: Sequence[FileEntry], *, cap: int) -> dict[str, bytes]:
    """The bytes of a few small files (the site policy, the dependency lock) straight from the chunks,
    before anything is extracted, each checked against its hash in the signed manifest.

    Only each file's own byte range is read, at its signed offset: the signed file hash is what makes
    those bytes trustworthy, so hashing the rest of the covering chunks would add nothing. This is not a
    check-then-use race (RAUC CVE-2020-25860): decisions are made on bytes equal to the signed ones,
    and what gets installed is not these bytes but the streamed payload, hashed again, chunk and file,
    as it is written (exit 3 if the media changed in between)."""
    out = {}
    for e in entries:
        if e.size > cap:
            raise UnsafeContentError(f"{e.path} is {e.size} bytes, over the {cap}-byte cap", subject=e.path)
        data = _read_range(bundle, m, e)
        hasher = new_hasher(m.hash_algorithm)
        hasher.update(data)
        if hasher.hexdigest() != e.hash:
            raise IntegrityError(f"file {e.path!r} does not match its {m.hash_algorithm} hash", subject=e.path)
        out[e.path] = data
    return out


def _read_range(bundle: Path, m: Manifest, entry: FileEntry) -> bytes:
    """The payload bytes [entry.offset, entry.end), read from the chunk files that hold them."""
    out = bytearray()
    pos = entry.offset
    while pos < entry.end:
        index = pos // m.chunk_size
        chunk, start = m.chunks[index], m.chunk_offset(index)
        want = min(entry.end, start + chunk.size) - pos
        fd = open_nofollow(chunk_path(bundle, chunk.name))
        try:
            piece = os.pread(fd, want, pos - start)
        finally:
            os.close(fd)
        if len(piece) != want:
            raise IntegrityError(f"chunks/{chunk.name} is truncated", subject=f"chunks/{chunk.name}")
        out += piece
        pos += want
    return bytes(out)
