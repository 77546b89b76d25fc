"""Streaming the payload into a staging directory (docs/format.md, "Installing").

One pass over the chunks, in order. Every byte read is hashed into its chunk's hash and, when it is
file data, into that file's hash and written to the staging file from the same buffer: the installer
hashes what it writes, so media that changes between reads cannot slip in unverified bytes
(RAUC CVE-2020-25860). Layout comes from the signed manifest alone; tar headers are only compared.
An error found inside a chunk is reported only after that chunk's hash was checked, so a damaged
chunk is reported as damage (exit 3), not as whatever the damage looked like.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._tarstream import check_header_region, is_zero
from .bundle import chunk_path, open_nofollow
from .errors import GapshipError, HostError, IntegrityError, UnsafeContentError
from .hashing import READ_SIZE, Progress, new_hasher, no_progress
from .manifest import FileEntry, Manifest, padded

HEADER, DATA, ZEROS = "header", "data", "zeros"


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    kind: str
    file: FileEntry | None = None


def plan(manifest: Manifest) -> list[Segment]:
    """Cut the payload [0, payload_size) into header, data and zero-padding segments."""
    out: list[Segment] = []
    cursor = 0
    for f in manifest.files():
        out.append(Segment(cursor, f.offset, HEADER, f))
        if f.size:
            out.append(Segment(f.offset, f.end, DATA, f))
        cursor = padded(f.end)
        if cursor > f.end:
            out.append(Segment(f.end, cursor, ZEROS, f))
    out.append(Segment(cursor, manifest.payload_size, ZEROS))
    return out


@dataclass
class _Sink:
    """Receives the payload in order and turns it into files under ``root``."""

    root: Path
    algorithm: str
    segments: list[Segment]
    index: int = 0
    header: bytearray = field(default_factory=bytearray)
    fd: int = -1
    hasher: object = None
    select: Callable[[FileEntry], bool] | None = None

    def feed(self, data: memoryview, pos: int) -> None:
        while len(data):
            seg = self.segments[self.index]
            take = min(len(data), seg.end - pos)
            self._consume(seg, data[:take], pos + take == seg.end)
            data, pos = data[take:], pos + take
            if pos == seg.end:
                self.index += 1

    def _consume(self, seg: Segment, piece: memoryview, last: bool) -> None:
        if seg.kind == HEADER:
            assert seg.file is not None
            self.header += piece
            if last:
                check_header_region(bytes(self.header), seg.file)
                self.header.clear()
                self._open(seg.file)
        elif seg.kind == DATA:
            assert seg.file is not None
            self._write(seg.file, piece)
            if last:
                self._close(seg.file)
        elif not is_zero(piece):
            where = f"after {seg.file.path!r}" if seg.file else "at the end of the archive"
            raise UnsafeContentError(f"unexpected non-zero bytes in the tar stream {where}", subject=seg.file.path if seg.file else "payload")

    def _open(self, f: FileEntry) -> None:
        if self.select is None or self.select(f):  # a file not selected is hashed, never written
            target = self.root / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.hasher = new_hasher(self.algorithm)
        if f.size == 0:
            self._close(f)

    def _write(self, f: FileEntry, piece: memoryview) -> None:
        self.hasher.update(piece)  # type: ignore[attr-defined]
        while len(piece) and self.fd >= 0:
            n = os.write(self.fd, piece)
            piece = piece[n:]

    def _close(self, f: FileEntry) -> None:
        digest = self.hasher.hexdigest()  # type: ignore[attr-defined]
        if self.fd >= 0:
            os.fchmod(self.fd, f.mode)
            os.close(self.fd)
            self.fd = -1
        if digest != f.hash:
            raise IntegrityError(f"file {f.path!r} does not match its {self.algorithm} hash", subject=f.path)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def extract_payload(bundle: Path, manifest: Manifest, root: Path, *, progress: Progress = no_progress,
                    select: Callable[[FileEntry], bool] | None = None) -> None:
    """Write every file of ``manifest`` under ``root`` (an empty private directory), or raise.
    With ``select``, only the files it accepts are written; the others are still read, checked
    (header, hash) and hashed into their chunk, so the chunk checks are unchanged."""
    sink = _Sink(root=root, algorithm=manifest.hash_algorithm, segments=plan(manifest), select=select)
    buf = bytearray(READ_SIZE)
    try:
        for i, chunk in enumerate(manifest.chunks):
            _stream_chunk(bundle, manifest, i, sink, buf, progress)
    except OSError as e:
        raise _host_error(e, root) from None
    finally:
        sink.abort()


def _stream_chunk(bundle: Path, m: Manifest, index: int, sink: _Sink, buf: bytearray, progress: Progress) -> None:
    chunk = m.chunks[index]
    subject = f"chunks/{chunk.name}"
    fd = open_nofollow(chunk_path(bundle, chunk.name))
    hasher = new_hasher(m.hash_algorithm)
    view = memoryview(buf)
    pos, seen, pending = m.chunk_offset(index), 0, None
    try:
        while seen <= chunk.size:
            n = os.readv(fd, [view[: min(len(buf), chunk.size + 1 - seen)]])
            if n == 0:
                break
            take = min(n, chunk.size - seen)
            block = view[:take]
            hasher.update(block)
            if pending is None:
                try:
                    sink.feed(block, pos + seen)
                except GapshipError as e:
                    pending = e  # report after the chunk's own hash is known
            seen += n
            progress(take)
    finally:
        os.close(fd)
    if seen < chunk.size:
        raise IntegrityError(f"{subject} is truncated: {seen} of {chunk.size} bytes", subject=subject)
    if seen > chunk.size:
        raise IntegrityError(f"{subject} is longer than the {chunk.size} bytes the manifest declares", subject=subject)
    if hasher.hexdigest() != chunk.hash:
        raise IntegrityError(f"{subject} does not match its {m.hash_algorithm} hash in the manifest", subject=subject)
    if pending is not None:
        raise pending


def _host_error(e: OSError, root: Path) -> GapshipError:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return HostError(f"disk full while installing into {root.parent}", subject=str(root.parent))
    if e.errno == errno.EFBIG:
        return HostError(f"file size limit reached while installing into {root.parent}", subject=str(root.parent))
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HostError(f"cannot write under {root.parent}: {e.strerror}", subject=str(root.parent))
    return HostError(f"cannot install into {root.parent}: {e.strerror}", subject=str(root.parent))
