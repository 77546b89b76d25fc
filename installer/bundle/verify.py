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
from dataclasses import dataclass, replace
from pathlib import Path

from .files import chunk_path, list_chunk_files, open_nofollow
from .source import source_for
from .parity import DATA, PARITY_KIND, Damage, damage, list_parity_files, parity_path
from ..errors import IntegrityError, UnsafeContentError
from ..crypto.hashing import READ_SIZE, Progress, hash_fd, new_hasher, no_progress
from ..formats.manifest import Chunk, FileEntry, Manifest
from ..formats.parity import PARITY, ParityChunk, ParityLayout
from ..trust import VerifiedManifest, VerifiedParity


T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ChunkReport:
    chunks: int
    bytes: int


# What can be wrong with a chunk (docs/cli.md, `verify`, "problems"). A file the manifest lists may be
# missing, shorter or longer than declared, not a regular file, or hold other bytes; a file it does
# not list is extra.
MISSING, TRUNCATED, OVERSIZED, DAMAGED, NOT_REGULAR, EXTRA = (
    "missing", "truncated", "oversized", "damaged", "not-regular", "extra")


@dataclass(frozen=True, slots=True)
class ChunkProblem:
    """One bad chunk, as ``verify --json`` lists it under ``problems``. Plain data, so that what a
    later check adds (whether parity can rebuild the chunk) is one more key. Small on purpose (the
    message is made when asked for): a transfer that lost every chunk makes 100,000 of them."""

    chunk: str  # "chunks/00003.bin"
    problem: str  # one of MISSING, TRUNCATED, OVERSIZED, DAMAGED, NOT_REGULAR, EXTRA
    index: int | None = None  # its place in the manifest's chunk list; None for an extra file
    expected_size: int | None = None
    size: int | None = None  # the bytes found, when a regular file was there
    expected_hash: str | None = None
    hash: str | None = None  # the hash of the bytes found, for a damaged chunk
    algorithm: str = ""  # the manifest's hash algorithm, for a damaged chunk's message
    detail: str = ""  # the refusal's own message, for a file that is not a regular file

    kind: str = DATA  # DATA (chunks/) or PARITY_KIND (parity/); index is then the layout's
    group: int | None = None  # its parity group, when the bundle has parity

    @property
    def message(self) -> str:
        """What an error about this chunk alone says (the words verify and install always used)."""
        where = "the manifest" if self.kind == DATA else "the parity layout"
        if self.problem == MISSING:
            return f"{self.chunk} is missing"
        if self.problem == EXTRA:
            return f"{self.chunk} is not part of this bundle (extra chunk)"
        if self.problem == TRUNCATED:
            return f"{self.chunk} is truncated: {self.size} of {self.expected_size} bytes"
        if self.problem == OVERSIZED:
            return f"{self.chunk} is longer than the {self.expected_size} bytes {where} declares"
        if self.problem == DAMAGED:
            return f"{self.chunk} does not match its {self.algorithm} hash in {where}"
        return self.detail

    def to_dict(self) -> dict[str, object]:
        """The ``problems`` entry. The message is left out: the first is ``error.message``, and the
        text mode prints them all."""
        return {"chunk": self.chunk, "problem": self.problem, "index": self.index, "expected_size": self.expected_size,
                "size": self.size, "expected_hash": self.expected_hash, "hash": self.hash, "kind": self.kind,
                "group": self.group}

    def error(self) -> IntegrityError:
        return IntegrityError(self.message, subject=self.chunk)


class ChunkProblems(IntegrityError):
    """Every bad chunk :func:`verify_chunks` found, in one pass. Message and subject are those of the
    first problem, the one error ``verify`` reported before it listed them all, so the exit code and
    the ``error`` object are unchanged; the list is :meth:`details` (docs/cli.md)."""

    def __init__(self, problems: Sequence[ChunkProblem], *, parity: ParityLayout | None = None) -> None:
        first = problems[0]
        self.damage: Damage | None = damage(problems, parity) if parity is not None else None
        hint = ""
        if self.damage is not None and self.damage.groups and self.damage.repairable:
            hint = "; the parity chunks can rebuild what is lost: run gapship repair"
        super().__init__(first.message + hint, subject=first.chunk)
        self.problems = tuple(problems)

    def details(self) -> dict[str, object]:
        # The problems themselves: the CLI's JSON writer asks each for its to_dict() as it writes it,
        # so 100,000 missing chunks never exist as 100,000 dicts at once.
        return {"problems": list(self.problems), "parity": self.damage.to_dict() if self.damage else None}

    def detail_lines(self) -> Iterator[str]:
        n = len(self.problems)
        if n >= 2:  # else the error line says it all
            for i, p in enumerate(self.problems, 1):
                yield f"bad chunk {i} of {n}: {p.message}"
        if self.damage is not None:
            for g in self.damage.groups:
                state = "repairable" if g.repairable else f"NOT repairable: {g.needed} more of its chunks needed"
                yield f"parity group {g.group}: {g.lost} of {g.k + g.m} chunks lost, {g.m} parity: {state}"


def check_chunk_fd(fd: int, chunk: Chunk, algorithm: str, *, subject: str,
                   buffer: bytearray | None = None, progress: Progress = no_progress) -> None:
    """Raise :class:`IntegrityError` unless ``fd`` holds exactly ``chunk``'s bytes."""
    problem = chunk_fd_problem(fd, chunk, algorithm, subject=subject, buffer=buffer, progress=progress)
    if problem is not None:
        raise problem.error()


def chunk_fd_problem(fd: int, chunk: Chunk, algorithm: str, *, subject: str, index: int | None = None,
                     buffer: bytearray | None = None, progress: Progress = no_progress) -> ChunkProblem | None:
    """What is wrong with the bytes of ``fd`` as ``chunk`` (its size, then its hash), or None."""
    digest, seen = hash_fd(fd, algorithm, limit=chunk.size, buffer=buffer, progress=progress)
    if seen < chunk.size:
        kind, size = TRUNCATED, seen
    elif seen > chunk.size:  # found by reading one byte past the size; the whole size is only reported
        kind, size = OVERSIZED, max(seen, os.fstat(fd).st_size)
    elif digest != chunk.hash:
        kind, size = DAMAGED, seen
    else:
        return None
    return ChunkProblem(subject, kind, index=index, expected_size=chunk.size, size=size, expected_hash=chunk.hash,
                        hash=digest if kind == DAMAGED else None, algorithm=algorithm)


def verify_chunk_file(path: Path, verified: VerifiedManifest, parity: VerifiedParity | None = None) -> Chunk:
    """Check one chunk file on its own (the pipeline case: others may not have arrived yet).
    The file is identified by its name; a renamed chunk fails its hash check. A file in a folder
    named ``parity`` is a parity chunk, checked against the signed ``parity``'s layout."""
    if path.parent.name == PARITY:
        return _verify_parity_file(path, verified, parity)
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


def _verify_parity_file(path: Path, verified: VerifiedManifest, parity: VerifiedParity | None) -> Chunk:
    subject = f"{PARITY}/{path.name}"
    if parity is None:
        raise IntegrityError(f"{subject}: this bundle has no signed parity layout", subject=subject)
    entry = parity.layout.parity_chunk(path.name)
    if entry is None:
        raise IntegrityError(f"{subject} is not a parity chunk of this bundle", subject=subject)
    chunk = as_chunk(entry)
    fd = open_nofollow(path)
    try:
        problem = chunk_fd_problem(fd, chunk, verified.manifest.hash_algorithm, subject=subject)
    finally:
        os.close(fd)
    if problem is not None:
        raise replace(problem, kind=PARITY_KIND, group=entry.group).error()
    return chunk


def as_chunk(entry: ParityChunk) -> Chunk:
    return Chunk(name=entry.name, size=entry.size, hash=entry.hash)


def verify_chunks(root: Path, verified: VerifiedManifest, *, progress: Progress = no_progress,
                  workers: int | None = None, parity: VerifiedParity | None = None) -> ChunkReport:
    """Check that ``chunks/`` holds exactly the manifest's chunks, each with its size and hash, and
    raise :class:`ChunkProblems` naming every bad chunk: one pass finds them all, so a transfer can
    ask again for all of them at once. Missing and extra files come first (the order in which
    :func:`check_chunk_names` refuses them), then the others in the manifest's order. With
    ``parity``, ``parity/`` is checked in the same pass against its layout, and the problems say
    which group each chunk is in and whether the parity can rebuild them."""
    problems = scan_chunks(root, verified, progress=progress, workers=workers, parity=parity)
    if problems:
        raise ChunkProblems(problems, parity=parity.layout if parity else None)
    m = verified.manifest
    return ChunkReport(chunks=len(m.chunks), bytes=m.payload_size)


def scan_chunks(root: Path, verified: VerifiedManifest, *, progress: Progress = no_progress,
                workers: int | None = None, parity: VerifiedParity | None = None) -> list[ChunkProblem]:
    """Every problem :func:`verify_chunks` reports, returned rather than raised (for repair)."""
    m = verified.manifest
    layout = parity.layout if parity else None
    problems = chunk_name_problems(root, m, layout)
    absent = {(p.kind, p.index) for p in problems if p.problem == MISSING}
    jobs = [(DATA, i) for i in range(len(m.chunks))]
    if layout is not None:
        jobs += [(PARITY_KIND, j) for j in range(len(layout.parity))]
    local = threading.local()
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    def one(job: tuple[str, int]) -> ChunkProblem | None:
        kind, index = job
        if job in absent:
            return None
        if kind == DATA:
            chunk, path, subject = m.chunks[index], chunk_path(root, m.chunks[index].name), f"chunks/{m.chunks[index].name}"
            group = layout.group_of(index) if layout else None
        else:
            assert layout is not None
            entry = layout.parity[index]
            chunk, path, subject, group = as_chunk(entry), parity_path(root, entry.name), f"{PARITY}/{entry.name}", entry.group
        if not hasattr(local, "buf"):
            local.buf = bytearray(READ_SIZE)
        try:
            fd = open_nofollow(path)
        except IntegrityError as e:  # a symlink, a directory, a FIFO... (HostError, e.g. EACCES, stops)
            problem = NOT_REGULAR if os.path.lexists(path) else MISSING
            return ChunkProblem(subject, problem, index=index, expected_size=chunk.size, expected_hash=chunk.hash,
                                detail=e.message, kind=kind, group=group)
        try:
            found = chunk_fd_problem(fd, chunk, m.hash_algorithm, subject=subject, index=index, buffer=local.buf,
                                     progress=report)
        finally:
            os.close(fd)
        return None if found is None else replace(found, kind=kind, group=group)

    count = workers or min(len(jobs), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="gapship-verify") as pool:
        try:
            problems += [p for p in bounded_map(pool, one, jobs, window=4 * count) if p is not None]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return problems


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
    the manifest's chunks (docs/format.md, "Chunks"). ``install`` calls it, and stops at the first
    (it streams); ``verify`` lists them all (:func:`chunk_name_problems`)."""
    problems = chunk_name_problems(root, manifest)
    if problems:
        raise problems[0].error()


def chunk_name_problems(root: Path, manifest: Manifest, layout: ParityLayout | None = None) -> list[ChunkProblem]:
    """The manifest's chunks missing from ``chunks/`` (in the manifest's order), then the files there
    that it does not list (sorted by name); with a parity ``layout``, then the same for ``parity/``."""
    present = set(list_chunk_files(root))
    problems = [ChunkProblem(f"chunks/{c.name}", MISSING, index=i, expected_size=c.size, expected_hash=c.hash,
                             group=layout.group_of(i) if layout else None)
                for i, c in enumerate(manifest.chunks) if c.name not in present]
    present.difference_update(c.name for c in manifest.chunks)
    problems += [ChunkProblem(f"chunks/{name}", EXTRA) for name in sorted(present)]
    if layout is None:
        return problems
    here = set(list_parity_files(root))
    problems += [ChunkProblem(f"{PARITY}/{p.name}", MISSING, index=j, expected_size=p.size, expected_hash=p.hash,
                              kind=PARITY_KIND, group=p.group)
                 for j, p in enumerate(layout.parity) if p.name not in here]
    here.difference_update(p.name for p in layout.parity)
    problems += [ChunkProblem(f"{PARITY}/{name}", EXTRA, kind=PARITY_KIND) for name in sorted(here)]
    return problems


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
        piece = source_for(bundle).read_range(index, chunk, pos - start, want)  # chunks/ or a registry
        if len(piece) != want:
            raise IntegrityError(f"chunks/{chunk.name} is truncated", subject=f"chunks/{chunk.name}")
        out += piece
        pos += want
    return bytes(out)
