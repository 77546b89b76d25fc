"""Streaming the payload into a staging directory (docs/format.md, "Installing").

One pass over the chunks, in order, through a :class:`~.pipeline.Pipeline` of three stages that
each see every block read, on their own threads (docs/benchmarks.md has the measurements):

- the chunk check hashes each byte into its chunk's hash and compares it at the chunk's end;
- the stream check compares each tar header region with the manifest, hashes each file byte into
  its file's hash and compares it at the file's end, and refuses non-zero padding;
- the writer creates each file in staging, where the signed manifest says, and writes its bytes.

All three read the same buffer, which is not refilled until all three are done with it: the
installer hashes what it writes, so media that changes between reads cannot slip in unverified
bytes (RAUC CVE-2020-25860). Layout comes from the signed manifest alone; tar headers are only
compared. Nothing becomes visible before every check passed: the staging directory is renamed into
place by the caller only after :func:`extract_payload` returned, and removed on any error.

Why the file hash is still checked although every byte written is already covered by a verified
chunk hash: against an outside attacker it adds nothing (a file that passes its chunk hashes but not
its file hash would take a SHA-256 second preimage, or a signer who signed an inconsistent
manifest), but it is the one end-to-end check of this module's own mapping of chunk bytes to file
bytes (offsets, segment boundaries, buffers shared between threads). It runs on its own core,
beside the chunk hash, so it costs little wall time.

An error found inside a chunk is reported only after that chunk's hash was checked, so a damaged
chunk is reported as damage (exit 3), not as whatever the damage looked like: errors are ranked by
(chunk, kind), and a chunk's own size and hash errors come first.
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
from ..bundle.source import source_for
from ..errors import GapshipError, HostError, IntegrityError, UnsafeContentError
from ..crypto.hashing import Progress, new_hasher, no_progress
from ..formats.manifest import BLOCK, END_OF_ARCHIVE, RECORD, FileEntry, Manifest, padded

HEADER, DATA, ZEROS = "header", "data", "zeros"
# Padding is compared with this in C: a zero segment is at most one block of file padding, or the
# end of the archive (docs/format.md "Offsets, header regions and the end of the archive"), both
# shorter; anything longer simply falls back to the slow is_zero.
_ZEROS = bytes(END_OF_ARCHIVE + RECORD + BLOCK)
# Error ranks within one chunk: its size, then its hash, then anything its bytes turned out to hold,
# then the host's own trouble (a full disk) while writing them.
SIZE_RANK, HASH_RANK, CONTENT_RANK, HOST_RANK = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Segment:
    start: int
    end: int
    kind: str
    file: FileEntry | None = None


def plan(manifest: Manifest) -> Iterator[Segment]:
    """Cut the payload [0, payload_size) into header, data and zero-padding segments, in order.

    A generator, not a list: each stage walks its own, so memory does not grow with the number of
    files (a list held three segment objects per file, 82 MiB at the 200,000-file cap)."""
    cursor = 0
    for f in manifest.payload_files():
        yield Segment(cursor, f.offset, HEADER, f)
        if f.size:
            yield Segment(f.offset, f.end, DATA, f)
        cursor = padded(f.end)
        if cursor > f.end:
            yield Segment(f.end, cursor, ZEROS, f)
    yield Segment(cursor, manifest.payload_size, ZEROS)


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


class _ChunkCheck:
    """Each chunk's bytes into its hash; compared when the chunk's last block arrives."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.hasher: Any = None

    def feed(self, block: Block) -> None:
        if self.hasher is None:
            self.hasher = new_hasher(self.manifest.hash_algorithm)
        self.hasher.update(block.data)
        if block.last:
            chunk = self.manifest.chunks[block.tag]
            digest, self.hasher = self.hasher.hexdigest(), None
            if digest != chunk.hash:
                subject = f"chunks/{chunk.name}"
                raise IntegrityError(f"{subject} does not match its {self.manifest.hash_algorithm} hash in the manifest",
                                     subject=subject)


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
    """Everything the payload's bytes must prove, apart from chunk hashes: each tar header region
    declares exactly its manifest entry, each file's bytes match its hash, padding is zero."""

    def __init__(self, segments: Iterator[Segment], algorithm: str) -> None:
        self.cursor = _Cursor(segments)
        self.algorithm = algorithm
        self.header = bytearray()
        self.headers = _HeaderCheck()
        self.hasher: Any = None

    def feed(self, block: Block) -> None:
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

    def __init__(self, root: Path, segments: Iterator[Segment], select: Callable[[FileEntry], bool] | None) -> None:
        self.root = root
        self.select = select
        self.cursor = _Cursor(segments)
        self.dirs: set[str] = set()
        self.dir_name: str | None = None
        self.dir_fd = -1  # the directory files are being created in: a short path walk per file
        self.fd = -1
        # large files with O_DIRECT from the pipeline's page-aligned buffers (no page-cache copy), the
        # rest through the page cache with early write-back (pipeline.Output)
        self.out = Output()

    def feed(self, block: Block) -> None:
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
        self.fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=self.dir_fd)
        self.out.start(self.fd, f.size)
        if f.size == 0:
            self._close(f)

    def _write(self, piece: memoryview) -> None:
        if self.fd < 0:
            return
        self.out.write(piece)

    def _close(self, f: FileEntry) -> None:
        if self.fd < 0:
            return
        os.fchmod(self.fd, f.mode)
        os.close(self.out.finish())
        self.fd = -1

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
        self.out.close()  # closes the open file, if any
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
        self.fd = self.dir_fd = -1


def extract_payload(bundle: Path, manifest: Manifest, root: Path, *, progress: Progress = no_progress,
                    select: Callable[[FileEntry], bool] | None = None) -> None:
    """Write every file of ``manifest`` under ``root`` (an empty private directory), or raise.
    With ``select``, only the files it accepts are written; the others are still read, checked
    (header, hash) and hashed into their chunk, so the chunk checks are unchanged."""
    writer = _Writer(root, plan(manifest), select)
    stages = (_ChunkCheck(manifest), _StreamCheck(plan(manifest), manifest.hash_algorithm), writer)
    pipeline = Pipeline(stages, ranks=(HASH_RANK, CONTENT_RANK, HOST_RANK), keep_going=(True, False, False),
                        name="gapship-install")
    try:
        for index in range(len(manifest.chunks)):
            try:
                _read_chunk(bundle, manifest, index, pipeline, progress)
            except GapshipError as e:  # a missing or unreadable chunk: ranked like its size
                pipeline.record(e, tag=index, rank=SIZE_RANK, position=manifest.chunk_offset(index))
            if pipeline.failed():
                break
        pipeline.close()
    except OSError as e:
        raise _host_error(e, root) from None
    finally:
        pipeline.abort()
        writer.abort()


def _read_chunk(bundle: Path, m: Manifest, index: int, pipeline: Pipeline, progress: Progress) -> None:
    """Read chunk ``index`` into the pipeline, all of it even after a stage failed, so that its own
    hash is known before anything its bytes caused is reported."""
    chunk = m.chunks[index]
    subject = f"chunks/{chunk.name}"
    start = m.chunk_offset(index)
    fd = source_for(bundle).open_chunk(index, chunk)  # chunks/ or a registry (bundle/source.py)
    try:
        seen = 0
        while seen < chunk.size:
            slot, view = pipeline.acquire()
            n = os.readv(fd, [view[: min(len(view), chunk.size - seen)]])
            if n == 0:
                pipeline.release(slot)
                pipeline.record(IntegrityError(f"{subject} is truncated: {seen} of {chunk.size} bytes", subject=subject),
                                tag=index, rank=SIZE_RANK, position=start + seen)
                return
            last = seen + n == chunk.size
            if last and os.read(fd, 1):  # one byte past the declared end: the chunk was extended
                pipeline.record(IntegrityError(f"{subject} is longer than the {chunk.size} bytes the manifest declares",
                                               subject=subject), tag=index, rank=SIZE_RANK, position=start + seen)
            pipeline.submit(slot, Block(view[:n], start + seen, index, last))
            seen += n
            progress(n)
    finally:
        os.close(fd)


def _host_error(e: OSError, root: Path) -> GapshipError:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return HostError(f"disk full while installing into {root.parent}", subject=str(root.parent))
    if e.errno == errno.EFBIG:
        return HostError(f"file size limit reached while installing into {root.parent}", subject=str(root.parent))
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HostError(f"cannot write under {root.parent}: {e.strerror}", subject=str(root.parent))
    return HostError(f"cannot install into {root.parent}: {e.strerror}", subject=str(root.parent))
