"""Streaming the payload into a staging directory (docs/format.md, "Installing").

One pass over the chunks, in order, through a :class:`~.pipeline.Pipeline` of two stages that each
see every block read, on their own threads (docs/benchmarks.md has the measurements):

- the stream check compares each tar header region with the manifest, hashes each file byte into
  its file's hash and compares it at the file's end, and refuses non-zero padding;
- the writer creates each file in staging, where the signed manifest says, and writes its bytes.

Both read the same buffer, which is not refilled until both are done with it: the installer hashes
what it writes, so media that changes between reads cannot slip in unverified bytes (RAUC
CVE-2020-25860). Layout comes from the signed manifest alone; tar headers are only compared.
Nothing becomes visible before every check passed: the staging directory is renamed into place by
the caller only after :func:`extract_payload` returned, and removed on any error.

Which hash is checked on the way in: the file hashes, and not the chunk hashes, as one SHA-256 pass.
Every byte that an install makes visible is a file byte, and each file's hash, from the signed
manifest, is checked over the very buffers that were written; the file hash is also the stronger of
the two, since it is what a release approves (a build that changes a file and signs chunk hashes
to match is refused by it alone: tests/security/test_transfer.py). The bytes that never reach the
disk are checked too: each tar header region against the manifest's entry (section 5.1; headers are
only compared, never obeyed, and the region's place and length come from the manifest) and every
byte of padding and of the end of the archive against zero. So a chunk hash would add no check of
what is installed. It stays the unit of transfer: ``gapship verify``, repair and parity check
chunks, and so does this module when something fails (next paragraph). Measured on the 2 GiB
benchmark (docs/benchmarks.md, "Large install"), the second SHA-256 pass was 1.3 of the install's
3.6 CPU-seconds and kept the install CPU-bound on two cores at about half of the durable write limit.

A failed install reports a damaged chunk as damage (exit 3), whatever the damage looked like to the
stream check (a header that no longer matches, exit 6; a file hash, exit 3 naming the file): once
a stage has failed, the chunks up to the one being read are hashed again from the bundle (that read
only picks the message; the install is refused either way), and the first whose size or hash is
wrong is what is reported. Of problems in different chunks, the earliest in the payload wins.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pipeline import Block, Output, Pipeline
from .tarstream import check_header_region, is_zero
from ..bundle.files import chunk_path, open_nofollow
from ..errors import GapshipError, HostError, IntegrityError, UnsafeContentError
from ..crypto.hashing import READ_SIZE, Progress, hash_fd, new_hasher, no_progress
from ..formats.manifest import BLOCK, END_OF_ARCHIVE, RECORD, FileEntry, Manifest, padded

HEADER, DATA, ZEROS = "header", "data", "zeros"
# Padding is compared with this in C: a zero segment is at most one block of file padding, or the
# end of the archive (docs/format.md "Offsets, header regions and the end of the archive"), both
# shorter; anything longer simply falls back to the slow is_zero.
_ZEROS = bytes(END_OF_ARCHIVE + RECORD + BLOCK)
# Error ranks within one chunk: its size, then anything its bytes turned out to hold, then the host's
# own trouble (a full disk) while writing them. A chunk's hash, checked only after a failure
# (_damaged_chunk), outranks them all.
SIZE_RANK, CONTENT_RANK, HOST_RANK = 0, 2, 3


@dataclass(frozen=True, slots=True)
class Segment:
    start: int
    end: int
    kind: str
    file: FileEntry | None = None


def plan(manifest: Manifest, only: list[Run] | None = None) -> Iterator[Segment]:
    """Cut the payload [0, payload_size) into header, data and zero-padding segments, in order;
    with ``only`` (one lane's runs, in order), just the segments inside those runs.

    A generator, not a list: each stage walks its own, so memory does not grow with the number of
    files (a list held three segment objects per file, 82 MiB at the 200,000-file cap)."""
    pending = iter(only) if only is not None else None
    run = next(pending, None) if pending is not None else None
    cursor = 0
    for f in manifest.payload_files():
        if pending is not None:  # a file's segments start at its header region: the cursor
            while run is not None and cursor >= run.end:
                run = next(pending, None)
            if run is None:
                return
            if cursor < run.start:
                cursor = padded(f.end)
                continue
        yield Segment(cursor, f.offset, HEADER, f)
        if f.size:
            yield Segment(f.offset, f.end, DATA, f)
        cursor = padded(f.end)
        if cursor > f.end:
            yield Segment(f.end, cursor, ZEROS, f)
    if pending is not None:  # the end of the archive: in the last run
        while run is not None and cursor >= run.end:
            run = next(pending, None)
        if run is None or cursor < run.start:
            return
    yield Segment(cursor, manifest.payload_size, ZEROS)


# -- lanes: the payload cut into runs of whole files, read interleaved so that files hash in parallel --

# SHA-256 is sequential within one file, so one stream check is one core, whatever the machine has:
# on the 2 GiB benchmark the file hashes alone took 1.3 to 1.6 s, more than the disk needs to take the
# bytes durably. So the payload is cut, at file boundaries, into runs: each file of at least RUN_MIN
# bytes is a run of its own, and the smaller files between them share one. The runs are dealt to
# LANES lanes (the one with the fewest bytes so far takes the next run). Each lane has its own
# stream check and writer, on their own threads, and the producer reads a block of each lane in
# turn: two large files are hashed and written at once, each byte still read once, into one pool of
# buffers. A run holds whole files, headers and padding included, so every check of a lane sees all
# it needs. Small files stay in one lane: their cost is per file, in Python, under one GIL, and two
# lanes of them measured slower (0.94-0.97 s against 0.86-0.89 s for 20,000 files).
RUN_MIN = 32 * 1024 * 1024
LANES = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class Run:
    start: int
    end: int
    lane: int


def runs(manifest: Manifest, lanes: int) -> list[Run]:
    """The payload [0, payload_size) cut before and after every file of at least RUN_MIN bytes
    (at its header region and at the end of its padding), each run given to the lane with the fewest
    bytes so far."""
    cuts, cursor, large = [0], 0, False
    for f in manifest.payload_files():
        if (large or f.size >= RUN_MIN) and cursor > cuts[-1]:
            cuts.append(cursor)
        large = f.size >= RUN_MIN
        cursor = padded(f.end)
    cuts.append(manifest.payload_size)
    load = [0] * lanes
    out = []
    for start, end in zip(cuts, cuts[1:]):
        lane = min(range(lanes), key=lambda k: load[k])
        load[lane] += end - start
        out.append(Run(start, end, lane))
    return out


class _Cursor:
    """Walks the segment plan in step with the blocks of the stream (each stage has its own)."""

    def __init__(self, segments: Iterator[Segment]) -> None:
        self.segments = segments
        self.segment: Segment | None = next(segments)

    def pieces(self, data: memoryview, pos: int) -> Iterator[tuple[Segment, memoryview, bool]]:
        """(segment, the part of ``data`` inside it, whether that part ends the segment)."""
        start, size = 0, len(data)
        while start < size:
            seg = self.segment
            if seg is None:  # the chunks add up to payload_size (Manifest checks it): a bug, never input
                raise RuntimeError("the payload stream ran past the end of its plan")
            take = min(size - start, seg.end - pos)
            done = pos + take == seg.end
            yield seg, data[start:start + take], done
            start, pos = start + take, pos + take
            if done:
                self.segment = next(self.segments, None)


class _HeaderCheck:
    """:func:`check_header_region`, with a shortcut for the common case, measured at about a sixth
    of its cost (a full parse through tarfile is most of the per-file time of a small-file install).

    Once a region that is a single ustar block without a name prefix has passed the full check, it
    becomes the template. A later region is accepted without parsing only if it is byte for byte
    the template with the name, mode and size fields set to exactly the bytes a ustar writer puts
    there for the expected entry (NUL-padded name, ``%07o``, ``%011o``) and the checksum fixed to
    match. Every other byte (type, magic, owner, times, link name, prefix) is one the full check
    already accepted, so such a region declares exactly the expected path, mode and size, which is
    all the full check asks; anything else, including every pax header, takes the full check. The
    shortcut relies on the full check judging each field on its own: if it ever relates fields to
    each other, drop the shortcut."""

    _NAME, _MODE, _SIZE, _SUM = (0, 100), (100, 108), (124, 136), (148, 156)

    def __init__(self) -> None:
        self.template: bytes | None = None
        self.base = 0  # the template's byte sum without the four fields, checksum counted as spaces

    def check(self, region: bytes, f: FileEntry) -> None:
        if self.template is not None and len(region) == BLOCK and region == self._expected(f):
            return
        check_header_region(region, f)
        if len(region) == BLOCK and not any(region[345:500]):  # one ustar block, empty prefix field
            self.template = region
            self.base = sum(region) - sum(region[0:108]) - sum(region[124:136]) - sum(region[148:156]) + 8 * 32

    def _expected(self, f: FileEntry) -> bytes | None:
        t = self.template
        name = f.path.encode("utf-8")
        if t is None or len(name) >= 100 or f.size >= 8**11:
            return None
        mode, size = b"%07o\0" % f.mode, b"%011o\0" % f.size
        checksum = self.base + sum(name) + sum(mode) + sum(size)
        return b"".join((name.ljust(100, b"\0"), mode, t[108:124], size, t[136:148],
                         b"%06o\0 " % checksum, t[156:]))


class _StreamCheck:
    """Everything one lane's bytes must prove: each tar header region declares exactly its manifest
    entry, each file's bytes match its hash, padding is zero."""

    def __init__(self, segments: Iterator[Segment], algorithm: str, lane: int = 0) -> None:
        self.lane = lane
        self.cursor = _Cursor(segments)
        self.algorithm = algorithm
        self.header = bytearray()
        self.headers = _HeaderCheck()
        self.hasher: Any = None

    def feed(self, block: Block) -> None:
        if block.lane != self.lane:
            return
        for seg, piece, done in self.cursor.pieces(block.data, block.position):
            if seg.kind == DATA:
                if self.hasher is None:
                    self.hasher = new_hasher(self.algorithm)
                self.hasher.update(piece)
                if done:
                    assert seg.file is not None
                    self._check_hash(seg.file, self.hasher.hexdigest())
                    self.hasher = None
            elif seg.kind == HEADER:
                assert seg.file is not None
                self.header += piece
                if done:
                    self.headers.check(bytes(self.header), seg.file)
                    self.header.clear()
                    if seg.file.size == 0:
                        self._check_hash(seg.file, new_hasher(self.algorithm).hexdigest())
            elif piece != _ZEROS[:len(piece)] and not is_zero(piece):
                where = f"after {seg.file.path!r}" if seg.file else "at the end of the archive"
                raise UnsafeContentError(f"unexpected non-zero bytes in the tar stream {where}",
                                         subject=seg.file.path if seg.file else "payload")

    def _check_hash(self, f: FileEntry, digest: str) -> None:
        if digest != f.hash:
            raise IntegrityError(f"file {f.path!r} does not match its {self.algorithm} hash", subject=f.path)


class _Writer:
    """Turns the stream into files under ``root``, as the manifest lays them out. It decides
    nothing: the checks run beside it (:class:`_StreamCheck`), and a failed check removes the whole
    staging directory, so a file may be created before its header region was compared."""

    def __init__(self, root: Path, segments: Iterator[Segment], select: Callable[[FileEntry], bool] | None,
                 lane: int = 0) -> None:
        self.lane = lane
        self.root = root
        self.select = select
        self.cursor = _Cursor(segments)
        self.dirs: set[str] = set()
        self.dir_name: str | None = None
        self.dir_fd = -1  # the directory files are being created in: a short path walk per file
        self.out = Output()  # the open file, if any (large ones written with O_DIRECT)

    def feed(self, block: Block) -> None:
        if block.lane != self.lane:
            return
        for seg, piece, done in self.cursor.pieces(block.data, block.position):
            if seg.kind == DATA:
                self._write(piece)
                if done:
                    assert seg.file is not None
                    self._close(seg.file)
            elif seg.kind == HEADER and done:
                assert seg.file is not None
                self._open(seg.file)

    def _open(self, f: FileEntry) -> None:
        if self.select is not None and not self.select(f):  # a file not selected is checked, never written
            return
        parent, _, name = f.path.rpartition("/")
        if parent != self.dir_name:
            self._enter(parent)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.dir_fd)
        self.out.start(fd, f.size)
        if f.size == 0:
            self._close(f)

    def _write(self, piece: memoryview) -> None:
        if self.out.fd >= 0:
            self.out.write(piece)

    def _close(self, f: FileEntry) -> None:
        if self.out.fd < 0:
            return
        fd = self.out.finish()
        try:
            os.fchmod(fd, f.mode)
        finally:
            os.close(fd)

    def _enter(self, parent: str) -> None:
        """Make ``parent`` the directory new files go into (the manifest's paths are already checked
        to stay inside the root; staging is private, so nothing else can have put a link there)."""
        path = self.root / parent
        if parent not in self.dirs:  # one mkdir per directory, not one per file
            path.mkdir(parents=True, exist_ok=True)
            self.dirs.add(parent)
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
        self.dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.dir_name = parent

    def abort(self) -> None:
        """Close whatever is open (after success too)."""
        self.out.close()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def extract_payload(bundle: Path, manifest: Manifest, root: Path, *, progress: Progress = no_progress,
                    select: Callable[[FileEntry], bool] | None = None) -> None:
    """Write every file of ``manifest`` under ``root`` (an empty private directory), or raise.
    With ``select``, only the files it accepts are written; the others are still read and checked
    (header, hash), so what is refused does not depend on the site."""
    cut = runs(manifest, LANES)
    lanes = sorted({r.lane for r in cut})
    checks = [_StreamCheck(plan(manifest, [r for r in cut if r.lane == k]), manifest.hash_algorithm, k)
              for k in lanes]
    writers = [_Writer(root, plan(manifest, [r for r in cut if r.lane == k]), select, k) for k in lanes]
    # The checks keep going after another lane failed: an earlier problem in their lane must still be
    # found, so that the first problem in the payload is the one reported (the producer stops each lane
    # at the failure's position).
    pipeline = Pipeline([*checks, *writers], ranks=[CONTENT_RANK] * len(checks) + [HOST_RANK] * len(writers),
                        keep_going=[True] * len(checks) + [False] * len(writers), name="gapship-install")
    readers = [_LaneReader(bundle, manifest, [r for r in cut if r.lane == k], k, pipeline, progress,
                           to=(i, len(checks) + i)) for i, k in enumerate(lanes)]
    try:
        try:
            _interleave(readers, pipeline)
        finally:
            for reader in readers:
                reader.close()
        pipeline.close()
    except (GapshipError, OSError) as e:
        first = pipeline.first_error()
        if first is not None:
            # A chunk with a size error is itself the damage; before it, any damaged chunk wins.
            damaged = _damaged_chunk(bundle, manifest, until=first.tag + (first.rank != SIZE_RANK))
            if damaged is not None:
                raise damaged from None
        if isinstance(e, OSError):
            raise _host_error(e, root) from None
        raise
    finally:
        pipeline.abort()
        for writer in writers:
            writer.abort()


def _interleave(readers: list[_LaneReader], pipeline: Pipeline) -> None:
    """A block of each lane in turn. Once something failed, a lane goes on only while it is still
    before the failure in the payload: whatever it finds there is the earlier problem."""
    active = list(readers)
    while active:
        for reader in list(active):
            if not reader.step():
                active.remove(reader)
        first = pipeline.first_error()
        if first is not None:
            active = [r for r in active if r.position < first.position]


def open_chunk(bundle: Path, m: Manifest, index: int) -> int:
    """A read-only descriptor on chunk ``index``'s bytes: the one place the install gets a chunk from
    (a missing chunk, a symlink or a special file is refused as damage, exit 3)."""
    return open_nofollow(chunk_path(bundle, m.chunks[index].name))


class _LaneReader:
    """Reads one lane's runs, a block at a time, never across a chunk's end or a run's end. A chunk
    shorter or longer than declared is recorded as that chunk's damage; the lane then stops."""

    def __init__(self, bundle: Path, m: Manifest, lane_runs: list[Run], lane: int, pipeline: Pipeline,
                 progress: Progress, *, to: tuple[int, int]) -> None:
        self.bundle, self.m, self.lane, self.pipeline, self.progress = bundle, m, lane, pipeline, progress
        self.to = to  # this lane's stream check and writer: no other stage sees its blocks
        self.runs = iter(lane_runs)
        run = next(self.runs)
        self.position, self.end = run.start, run.end
        self.index, self.fd = -1, -1  # the chunk open for reading

    def step(self) -> bool:
        """Read and hand out one block; False when the lane is done (or stopped by damage)."""
        if self.position >= self.end:
            run = next(self.runs, None)
            if run is None:
                return False
            self.position, self.end = run.start, run.end
        m = self.m
        index = self.position // m.chunk_size
        start = m.chunk_offset(index)
        size = m.chunks[index].size
        if index != self.index and not self._open(index):
            return False
        slot, view = self.pipeline.acquire()
        want = min(len(view), self.end - self.position, start + size - self.position)
        inside = self.position - start
        n = os.preadv(self.fd, [view[:want]], inside)
        if n < want:
            self.pipeline.release(slot)
            return self._damage(index, f"is truncated: {os.fstat(self.fd).st_size} of {size} bytes", inside + n)
        last = inside + n == size
        if last and os.pread(self.fd, 1, size):  # one byte past the declared end: the chunk was extended
            self._damage(index, f"is longer than the {size} bytes the manifest declares", size)
        self.pipeline.submit(slot, Block(view[:n], self.position, index, last, self.lane), to=self.to)
        self.position += n
        self.progress(n)
        return True

    def _open(self, index: int) -> bool:
        self.close()
        try:
            self.fd = open_chunk(self.bundle, self.m, index)
        except GapshipError as e:  # a missing or unreadable chunk: ranked like its size
            self.pipeline.record(e, tag=index, rank=SIZE_RANK, position=self.position)
            return False
        self.index = index
        return True

    def _damage(self, index: int, what: str, inside: int) -> bool:
        subject = f"chunks/{self.m.chunks[index].name}"
        self.pipeline.record(IntegrityError(f"{subject} {what}", subject=subject), tag=index, rank=SIZE_RANK,
                             position=self.m.chunk_offset(index) + inside)
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd, self.index = -1, -1


def _damaged_chunk(bundle: Path, m: Manifest, *, until: int) -> GapshipError | None:
    """After a failure: the first of chunks ``0 .. until - 1`` whose size or hash is wrong, as the
    error to report (module docstring), or None when they are all intact."""
    buffer = bytearray(READ_SIZE)
    for index in range(min(until, len(m.chunks))):
        chunk = m.chunks[index]
        subject = f"chunks/{chunk.name}"
        try:
            fd = open_chunk(bundle, m, index)
        except GapshipError as e:
            return e
        try:
            digest, seen = hash_fd(fd, m.hash_algorithm, limit=chunk.size, buffer=buffer)
        finally:
            os.close(fd)
        if seen < chunk.size:
            return IntegrityError(f"{subject} is truncated: {seen} of {chunk.size} bytes", subject=subject)
        if seen > chunk.size:
            return IntegrityError(f"{subject} is longer than the {chunk.size} bytes the manifest declares",
                                  subject=subject)
        if digest != chunk.hash:
            return IntegrityError(f"{subject} does not match its {m.hash_algorithm} hash in the manifest",
                                  subject=subject)
    return None


def _host_error(e: OSError, root: Path) -> GapshipError:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return HostError(f"disk full while installing into {root.parent}", subject=str(root.parent))
    if e.errno == errno.EFBIG:
        return HostError(f"file size limit reached while installing into {root.parent}", subject=str(root.parent))
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HostError(f"cannot write under {root.parent}: {e.strerror}", subject=str(root.parent))
    return HostError(f"cannot install into {root.parent}: {e.strerror}", subject=str(root.parent))
