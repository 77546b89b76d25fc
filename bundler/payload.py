"""Writing the payload: one pax tar stream cut into fixed-size chunks as it is produced
(docs/format.md, "Payload" and "Chunks").

:class:`PayloadWriter` lays the stream (tar headers, each source file's bytes, padding, the end of
the archive) into the buffers of a :class:`~gapship.installer.deploy.pipeline.Pipeline`, reading every source
file once, straight into a buffer. Stages see every buffer on their own threads: the file hashes,
the chunk hashes and the chunk files, so the two SHA-256 passes every byte needs and the writes run
on separate cores (docs/benchmarks.md, "Build"). Nothing here holds more than the pipeline's few
buffers in memory.

Who hashes a file (the design of issue 16; docs/benchmarks.md, "Build"):

- **Small files, in the reading thread.** A file of at most :data:`INLINE_MAX` bytes is hashed by
  the producer, piece by piece from the buffer it was just read into, before that buffer goes to
  any stage. On a stage thread each small file cost more than its hash: a Python step there and a
  hand-over of the GIL to and from the reading thread (20,000 files of 0.5-16 KiB: the payload took
  0.50 s against 0.62 s with the stage, medians of 5 alternating runs of the same bytes).
- **Larger files, in file-hash stages.** ``threads`` stages (:func:`file_hash_threads`) each see every
  buffer and hash the files given to them: each file goes to the stage with the fewest bytes given
  so far, which keeps their work even. hashlib releases the GIL on spans of 2 KiB and more,
  so on a machine with cores to spare, files that are near each other in the stream (within the
  pipeline's buffers) are hashed at once. A large file is still one sequential SHA-256 on one
  thread: SHA-256 cannot be split; the gain is across files, and the chunk hash, one sequential
  pass over the whole stream, stays a floor.
- The rule: ``min(cores - 1, 8)`` file-hash stages when the process may run on more than 2 cores,
  else 1: on 2 cores the chunk hash and the writer need the other core. ``GAPSHIP_HASH_THREADS``
  (1 to 64) in the environment, or ``hash_threads=`` here, overrides it (for tests, and for a
  release engineer sizing a build host).

Whoever hashes a file, it hashes the very bytes that go into the stream, read once (a buffer is
refilled only after every stage released it, so media that changes between two reads cannot slip
anything in: RAUC CVE-2020-25860), and the output, every chunk, offset and hash, is the same byte
for byte whatever the thread count: the threads only decide who computes a hash, never what goes
into it or in which order it is listed.
"""

from __future__ import annotations

import os
import tarfile
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..installer.deploy.pipeline import Block, Output, Pipeline, usable_cores
from ..installer.errors import UsageError
from ..installer.crypto.hashing import Progress, new_hasher, no_progress
from ..installer.formats.manifest import BLOCK, END_OF_ARCHIVE, MAX_CHUNKS, RECORD, Chunk, chunk_name, padded
from ..installer.kit import Refusal, open_regular


def member_header(path: str, size: int, mode: int, mtime: int) -> bytes:
    """The pax/ustar header block(s) for one regular file; deterministic for the same inputs.

    Byte for byte what ``tarfile.TarInfo.tobuf(format=PAX_FORMAT)`` writes for a regular file with
    uid and gid 0 and empty user and group names (docs/format.md, section 5.1), without building a
    TarInfo and its dicts per file: that was most of the per-file CPU time of a build with many small
    files. A path that UTF-8 cannot encode (lone surrogates) takes tarfile itself, which then writes a
    ``hdrcharset`` record; the bundler refuses such paths before it gets here anyway."""
    try:
        utf8 = path.encode("utf-8")
    except UnicodeEncodeError:
        return _tarfile_header(path, size, mode, mtime)
    records = []
    if len(utf8) != len(path) or len(path) > _NAME_FIELD:  # not ASCII, or too long: a pax "path" record
        records.append(_pax_record(b"path", utf8))
        name = path.encode("ascii", "replace")[:_NAME_FIELD]  # what tarfile puts in the ustar field
    else:
        name = utf8
    size_field, size_record = _number(size, b"size")
    mtime_field, mtime_record = _number(mtime, b"mtime")
    records += [r for r in (size_record, mtime_record) if r]
    member = _ustar(name, mode & 0o7777, size_field, mtime_field, _REGULAR)
    if not records:
        return member
    data = b"".join(records)
    return _ustar(_PAX_NAME, 0, b"%011o" % len(data), _ZERO_TIME, _PAX) + data + bytes(-len(data) % BLOCK) + member


_NAME_FIELD = 100
_REGULAR, _PAX = tarfile.REGTYPE, tarfile.XHDTYPE
_PAX_NAME = b"././@PaxHeader"  # the name tarfile gives every pax extended header
_ZERO_TIME = b"%011o" % 0
_NUMBER_LIMIT = 8**11  # 11 octal digits; tarfile moves larger (or negative) numbers to pax records
# The fields after the type flag are the same in every header gapship writes: no link name, the POSIX
# magic and version, no user or group names, no device numbers, no name prefix, and the block's tail.
_TAIL = bytes(100) + tarfile.POSIX_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
_OWNERS = b"0000000\0" * 2  # uid and gid 0
_TAIL_SUM = sum(_TAIL) + 8 * ord(" ")  # the checksum counts its own field as eight spaces


def _number(value: int, key: bytes) -> tuple[bytes, bytes]:
    """The 11-digit octal field and, when the value does not fit, the pax record tarfile adds."""
    if 0 <= value < _NUMBER_LIMIT:
        return b"%011o" % value, b""
    return _ZERO_TIME, _pax_record(key, b"%d" % value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """``"<length> <key>=<value>\\n"``, where the length counts its own digits (POSIX pax)."""
    rest = len(key) + len(value) + 3
    length = rest + len(str(rest))
    if len(str(length)) != len(str(rest)):  # adding the digits added a digit
        length = rest + len(str(length))
    return b"%d %s=%s\n" % (length, key, value)


def _ustar(name: bytes, mode: int, size: bytes, mtime: bytes, kind: bytes) -> bytes:
    head = b"".join((name, bytes(_NAME_FIELD - len(name)), b"%07o\0" % mode, _OWNERS, size, b"\0", mtime, b"\0"))
    checksum = sum(head) + kind[0] + _TAIL_SUM
    return b"".join((head, b"%06o\0 " % checksum, kind, _TAIL))


def _tarfile_header(path: str, size: int, mode: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


_ZEROS = memoryview(bytes(RECORD + END_OF_ARCHIVE))  # padding is sliced from here, never allocated


def padded_to(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


@dataclass(frozen=True)
class Payload:
    """What was written: ``offsets[i]`` and ``hashes[i]`` are where the i-th added file's data starts
    in the stream and its hash. Two flat sequences rather than an object per file, since a bundle may
    hold 200,000 files (docs/format.md, "Limits")."""

    size: int
    chunks: tuple[Chunk, ...]
    offsets: Sequence[int]
    hashes: Sequence[str]


class _FileHashes:
    """One file-hash stage: hashes the data span of each file given to it. The producer appends a
    span before any of its bytes are handed out, so every span a block touches is already queued
    when the block arrives; a span leaves the queue once hashed, so the queue stays as short as the
    pipeline. Empty files never come here (the producer hashes them: there is nothing to read)."""

    def __init__(self, algorithm: str) -> None:
        self.spans: deque[tuple[int, int]] = deque()  # appended by the producer, consumed here
        self.algorithm = algorithm
        self.hasher: Any = None
        self.digests: list[str] = []

    def feed(self, block: Block) -> None:
        pos, end = block.position, block.position + len(block.data)
        while self.spans:
            start, stop = self.spans[0]
            if start >= end:
                return
            if self.hasher is None:
                self.hasher = new_hasher(self.algorithm)
            self.hasher.update(block.data[max(start, pos) - pos:min(stop, end) - pos])
            if stop > end:
                return
            self.digests.append(self.hasher.hexdigest())
            self.hasher = None
            self.spans.popleft()


# Files up to this size are hashed by the reading thread (module doc). A bound chosen, not tuned: the
# many small files of a model (configs, tokenizer parts, the benchmark's 0.5-16 KiB) are all below it,
# and above it the hash itself (40 us or more with SHA-NI) is worth overlapping with the reading.
INLINE_MAX = 64 * 1024
MAX_HASH_THREADS = 64
HASH_THREADS_ENV = "GAPSHIP_HASH_THREADS"
_INLINE = 255  # in PayloadWriter._owners: hashed by the producer, not by a stage


def file_hash_threads(cores: int | None = None) -> int:
    """How many file-hash stages a build runs: ``GAPSHIP_HASH_THREADS`` when set, else
    ``min(cores - 1, 8)`` on more than 2 cores, else 1 (module doc)."""
    given = os.environ.get(HASH_THREADS_ENV)
    if given is not None:
        if not (given.isascii() and given.isdigit() and 1 <= int(given) <= MAX_HASH_THREADS):
            raise UsageError(f"{HASH_THREADS_ENV}={given!r} is not a whole number from 1 to {MAX_HASH_THREADS}",
                             subject=HASH_THREADS_ENV)
        return int(given)
    cores = usable_cores() if cores is None else cores
    return min(cores - 1, 8) if cores > 2 else 1


class _ChunkHashes:
    def __init__(self, chunk_size: int, algorithm: str) -> None:
        self.chunk_size = chunk_size
        self.algorithm = algorithm
        self.hasher: Any = None
        self.filled = 0
        self.done: list[tuple[str, int]] = []

    def feed(self, block: Block) -> None:
        data = block.data
        while len(data):
            if self.hasher is None:
                self.hasher, self.filled = new_hasher(self.algorithm), 0
            take = min(len(data), self.chunk_size - self.filled)
            self.hasher.update(data[:take])
            self.filled += take
            data = data[take:]
            if self.filled == self.chunk_size:
                self._close()

    def finish(self) -> list[tuple[str, int]]:
        if self.hasher is not None:
            self._close()
        return self.done

    def _close(self) -> None:
        self.done.append((self.hasher.hexdigest(), self.filled))
        self.hasher = None


class _ChunkFiles:
    """Writes ``folder/00000.bin``, ``00001.bin``, ... of ``chunk_size`` bytes each, through an
    :class:`~gapship.installer.deploy.pipeline.Output`: with O_DIRECT when chunks are large (no copy
    into the page cache, which on the benchmark's VM cost more CPU than a hash pass), else through
    the page cache with early write-back. :meth:`finish` then fsyncs every chunk, at the end rather
    than one by one, so this thread never waits on a flush while the hashes are still running."""

    def __init__(self, folder: Path, chunk_size: int) -> None:
        self.folder = folder
        self.chunk_size = chunk_size
        self.names: list[str] = []
        self.out = Output()
        self.filled = 0

    def feed(self, block: Block) -> None:
        data = block.data
        while len(data):
            if self.out.fd < 0:
                self._open()
            piece = data[:self.chunk_size - self.filled]
            data = data[len(piece):]
            self.filled += len(piece)
            self.out.write(piece)
            if self.filled == self.chunk_size:
                os.close(self.out.finish())

    def finish(self) -> None:
        if self.out.fd >= 0:
            os.close(self.out.finish())
        self.out.close()
        for name in self.names:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def abort(self) -> None:
        self.out.close()

    def _open(self) -> None:
        if len(self.names) >= MAX_CHUNKS:
            raise UsageError(f"the bundle needs more than {MAX_CHUNKS} chunks of {self.chunk_size} bytes; "
                             "give a larger --chunk-size", subject="--chunk-size")
        name = chunk_name(len(self.names))
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.names.append(name)
        self.filled = 0
        self.out.start(fd, self.chunk_size)


def _refuse_source(r: Refusal) -> Exception:
    """A model source that is no longer a regular file: the words collect_sources uses."""
    if r.reason == "symlink":
        return UsageError(f"{r.path} is a symlink; bundles carry regular files only", subject=str(r.path))
    if r.reason == "not-regular":
        return UsageError(f"{r.path} is not a regular file", subject=str(r.path))
    return UsageError(f"cannot read {r.path}: {r.strerror}", subject=str(r.path))


class PayloadWriter:
    """Produces the stream: ``add`` each file in payload order, then ``finish``. On an error, call
    ``abort`` and discard the folder."""

    def __init__(self, folder: Path, *, chunk_size: int, algorithm: str, mtime: int,
                 progress: Progress = no_progress, hash_threads: int | None = None) -> None:
        threads = file_hash_threads() if hash_threads is None else hash_threads
        if not 1 <= threads <= MAX_HASH_THREADS:
            raise ValueError(f"hash_threads={threads} is outside 1..{MAX_HASH_THREADS}")
        self.mtime = mtime
        self.progress = progress
        self.algorithm = algorithm
        self.position = 0  # bytes of the stream laid out so far
        self._offsets = array("q")  # where every file's data starts, in order (8 bytes per file)
        # Who hashed each file, in order (1 byte per file): a stage's index, or _INLINE.
        self._owners = array("B")
        self._inline: list[str] = []  # the producer's digests, in order
        self._file_hashes = [_FileHashes(algorithm) for _ in range(threads)]
        self._given = [0] * threads  # bytes given to each file-hash stage so far
        self._chunk_hashes = _ChunkHashes(chunk_size, algorithm)
        self._chunk_files = _ChunkFiles(folder, chunk_size)
        self._pipeline = Pipeline((*self._file_hashes, self._chunk_hashes, self._chunk_files), name="gapship-build")
        self._slot: Any = None
        self._view = memoryview(b"")
        self._fill = 0
        self._block_start = 0
        self._extra = bytearray(1)  # see _read

    def add(self, source: str | Path, path: str, size: int, mode: int) -> None:
        """Header, then the file's bytes read once (hashed and chunked from the same buffer), then padding."""
        self._put(member_header(path, size, mode, self.mtime))
        self._offsets.append(self.position)
        hasher = self._start_file(size)
        # Through the kit: a source swapped for a FIFO since it was walked is refused at once instead
        # of blocking the build on a writer that never comes (a symlink is refused too, as walked).
        fd, _ = open_regular(Path(source), refuse=_refuse_source)
        try:
            seen, more = self._read(fd, size, hasher)
        finally:
            os.close(fd)
        if seen != size or more:
            raise UsageError(f"{source} changed size while it was being bundled", subject=str(source))
        if hasher is not None:
            self._inline.append(hasher.hexdigest())
        self._put(_ZEROS[:padded(self.position) - self.position])

    def add_bytes(self, data: bytes, path: str, mode: int) -> None:
        """Like :meth:`add`, for a file made by the build itself (the SBOM, docs/sbom.md)."""
        self.add_pieces((data,), len(data), path, mode)

    def add_pieces(self, pieces: Iterable[bytes], size: int, path: str, mode: int) -> None:
        """Like :meth:`add_bytes`, for a file of ``size`` bytes given a piece at a time (the SBOM at the
        file cap: never whole in memory). Pieces adding up to another size are a bug: refused."""
        self._put(member_header(path, size, mode, self.mtime))
        self._offsets.append(self.position)
        hasher = self._start_file(size)
        seen = 0
        for piece in pieces:
            seen += len(piece)
            if seen > size:
                break
            if hasher is not None:
                hasher.update(piece)
            self._put(piece)
        if seen != size:
            raise AssertionError(f"{path}: its pieces are not the {size} bytes announced")
        if hasher is not None:
            self._inline.append(hasher.hexdigest())
        self.progress(size)
        self._put(_ZEROS[:padded(self.position) - self.position])

    def position_offsets(self) -> Sequence[int]:
        """Where each file added so far starts in the stream."""
        return self._offsets

    def hashes_so_far(self) -> list[str]:
        """The hash of every file added so far, in order: waits for the file-hash stages to catch up
        (once per build, before the SBOM, which lists them, is added)."""
        self._submit()
        self._pipeline.drain()
        if self._pipeline.failed():
            self._pipeline.close()
        return self._merged()

    def _merged(self) -> list[str]:
        """Every file's digest in payload order, each taken from whoever hashed it (see _owners)."""
        assert not any(stage.spans for stage in self._file_hashes), "a file-hash stage is behind"
        if not self._inline and len(self._file_hashes) == 1:
            return self._file_hashes[0].digests
        sources = [iter(stage.digests) for stage in self._file_hashes]
        inline = iter(self._inline)
        return [next(inline) if owner == _INLINE else next(sources[owner]) for owner in self._owners]

    def finish(self) -> Payload:
        """Two zero blocks, then zeros to a whole tar record, as tar(1) writes; then wait for the
        stages, fsync the chunks, and return what was written."""
        self._put(_ZEROS[:padded(self.position) - self.position])
        end = self.position + END_OF_ARCHIVE
        self._put(_ZEROS[:padded_to(end, RECORD) - self.position])
        self._submit()
        self._pipeline.close()
        self._chunk_files.finish()
        chunks = tuple(Chunk(name=name, size=size, hash=digest)
                       for name, (digest, size) in zip(self._chunk_files.names, self._chunk_hashes.finish()))
        return Payload(size=self.position, chunks=chunks, offsets=self._offsets, hashes=self._merged())

    def abort(self) -> None:
        self._pipeline.abort()
        self._chunk_files.abort()

    # -- who hashes a file (module doc) ------------------------------------------------------------

    def _start_file(self, size: int) -> Any:
        """A hasher when the producer hashes this file itself (a small one), else None, the file's
        span having gone to a file-hash stage."""
        if size <= INLINE_MAX:
            self._owners.append(_INLINE)
            return new_hasher(self.algorithm)
        self._give(size)
        return None

    def _give(self, size: int) -> None:
        """Queue the span of the file that starts here with the stage given the fewest bytes so far."""
        given = self._given
        stage = 0 if len(given) == 1 else given.index(min(given))
        given[stage] += size
        self._owners.append(stage)
        self._file_hashes[stage].spans.append((self.position, self.position + size))

    # -- laying bytes into buffers ---------------------------------------------------------------

    def _room(self) -> int:
        if self._slot is None:
            self._slot, self._view = self._pipeline.acquire()
            self._fill, self._block_start = 0, self.position
        return len(self._view) - self._fill

    def _advance(self, n: int) -> None:
        self._fill += n
        self.position += n
        if self._fill == len(self._view):
            self._submit()

    def _put(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            n = min(len(view), self._room())
            self._view[self._fill:self._fill + n] = view[:n]
            view = view[n:]
            self._advance(n)

    def _read(self, fd: int, size: int, hasher: Any = None) -> tuple[int, bool]:
        """Read up to ``size`` bytes of ``fd`` into the stream: how many came, and whether the file
        held more; with a ``hasher``, hash each piece from the buffer just read into, before the
        buffer can go to the stages (a byte more than ``size`` is never hashed). The read that asks
        for the last bytes also asks for one byte more, into a byte of its own, so a file that grew
        is caught without a syscall more per file: a read of a regular file that returns fewer bytes
        than asked has reached the end of the file (read(2); local filesystems do not return short
        reads for signals). Like the separate one-byte read it replaces, it is a check at one
        moment: the bundle holds the bytes and hash of what was read."""
        seen = 0
        while True:
            want = min(self._room(), size - seen)
            last = want == size - seen
            target = self._view[self._fill:self._fill + want]
            n = os.readv(fd, [target, self._extra] if last else [target])
            if n == 0:
                return seen, False
            took = min(n, want)
            seen += took
            if hasher is not None:
                hasher.update(target[:took])
            self._advance(took)
            self.progress(took)
            if n > want:
                return seen, True
            if last and n == want:
                return seen, False

    def _submit(self) -> None:
        if self._slot is not None:
            if self._pipeline.failed():
                self._pipeline.close()  # raises the stage's error now rather than after the whole stream
            self._pipeline.submit(self._slot, Block(self._view[:self._fill], self._block_start, 0, False))
            self._slot = None


assert RECORD % BLOCK == 0
