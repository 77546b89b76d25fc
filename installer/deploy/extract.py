"""Streaming the payload into a staging directory (docs/format.md, "Installing").

One pass over the chunks, in order, through a :class:`~.pipeline.Pipeline` of two stages that
each see every block read, on their own threads (docs/benchmarks.md has the measurements):

- the chunk check hashes each byte into its chunk's hash and compares it at the chunk's end;
- the extraction compares each tar header region with the manifest, hashes each file byte into
  its file's hash and compares it at the file's end, refuses non-zero padding, and creates each
  file in staging, where the signed manifest says, and writes its bytes (:class:`_Extract`).

Both read the same buffer, which is not refilled until both are done with it: the installer
hashes what it writes, so media that changes between reads cannot slip in unverified bytes (RAUC
CVE-2020-25860). Layout comes from the signed manifest alone; tar headers are only compared.
Nothing becomes visible before every check passed: the staging directory is renamed into place by
the caller only after :func:`extract_payload` returned, and removed on any error.

Why the file hash is still checked although every byte written is already covered by a verified
chunk hash: against an outside attacker it adds nothing (a file that passes its chunk hashes but not
its file hash would take a SHA-256 second preimage, or a signer who signed an inconsistent
manifest), but it is the one end-to-end check of this module's own mapping of chunk bytes to file
bytes (offsets, segment boundaries, buffers shared between threads). It runs on its own thread,
beside the chunk hash.

An error found inside a chunk is reported only after that chunk's hash was checked, so a damaged
chunk is reported as damage (exit 3), not as whatever the damage looked like: errors are ranked by
(chunk, kind), and a chunk's own size and hash errors come first.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .pipeline import DIRECT_MIN, Block, Flusher, Output, Pipeline
from .tarstream import check_header_region, is_zero
from ..bundle.source import source_for
from ..errors import GapshipError, HostError, IntegrityError, UnsafeContentError
from ..crypto.hashing import Progress, hash_constructor, new_hasher, no_progress
from ..host.fs import creation_mask, write_all
from ..formats.manifest import BLOCK, END_OF_ARCHIVE, RECORD, FileEntry, Manifest, padded

HEADER, DATA, ZEROS = "header", "data", "zeros"
# Padding is compared with this in C: a zero segment is at most one block of file padding, or the
# end of the archive (docs/format.md "Offsets, header regions and the end of the archive"), both
# shorter; anything longer simply falls back to the slow is_zero.
_ZEROS = bytes(END_OF_ARCHIVE + RECORD + BLOCK)
# Error ranks within one chunk: its size, then its hash, then anything its bytes turned out to hold,
# then the host's own trouble (a full disk) while writing them.
SIZE_RANK, HASH_RANK, CONTENT_RANK, HOST_RANK = 0, 1, 2, 3
# Staging is private and new: a file is created, never opened; a link in its place is refused.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


class _Extract:
    """Everything the payload's bytes must prove apart from chunk hashes (each tar header region
    declares exactly its manifest entry, each file's bytes match its hash, padding is zero), and
    the files they make under ``root``, where the signed manifest lays them out.

    The checks and the writes are one stage, on one thread. They were two, on two threads; on a
    small-file install both are mostly per-file Python, so the GIL ran them one after the other
    anyway, and each write's return waited for the other thread to give the GIL back (measured on
    the benchmark's 20,000 files: 0.80 s as two stages, 0.67 s as one, before the fast path below).

    A file whose header region, data and padding all lie inside the block at hand (every small
    file, nearly always) takes the fast path: checked whole, then created, written and closed in
    one go, so nothing is written before its header and hash passed. A file crossing a block is
    walked piece by piece: its bytes are written as they arrive and its hash is compared at its
    end; a failed check removes the whole staging directory (the module docstring), so that is as
    safe. Files of :data:`~.pipeline.DIRECT_MIN` bytes and more are checked here and written by
    :class:`_LargeWriter`. A host error (disk full, quota) is recorded with
    :data:`HOST_RANK` through ``record`` and stops this stage, as any error does; the chunk check
    still hashes the chunk to its end, so a damaged chunk wins over what the damage caused."""

    def __init__(self, manifest: Manifest, root: Path, select: Callable[[FileEntry], bool] | None,
                 record: Callable[[BaseException, Block], None]) -> None:
        self.files = manifest.payload_files()
        self.payload_size = manifest.payload_size
        self.algorithm = manifest.hash_algorithm
        self.root, self.select, self.record = root, select, record
        self.headers = _HeaderCheck()
        self.header = bytearray()
        self.hasher: Any = None
        self.file: FileEntry | None = None
        self.kind, self.end = ZEROS, 0  # the segment the stream is in, and where it ends
        self.writing = True  # until a host error
        self.dirs: set[str] = set()
        self.dir_name: str | None = None
        self.dir_fd = -1  # the directory files are being created in: a short path walk per file
        self.fd = -1
        self.umask = creation_mask(root)  # staging is new: its folders inherit whatever it has
        self.new_hash = hash_constructor(self.algorithm)
        self.flusher = Flusher()  # starts the write-back of the small files early
        self._next_file()

    def _next_file(self) -> None:
        """The header region of the next file starts at ``self.end`` (or the end of the archive)."""
        self.file = next(self.files, None)
        if self.file is None:
            self.kind, self.end = ZEROS, self.payload_size
        else:
            self.kind, self.end = HEADER, self.file.offset

    def feed(self, block: Block) -> None:
        data, pos = block.data, block.position
        i, size = 0, len(data)
        while i < size:
            f = self.file
            if self.kind == HEADER and f is not None and not self.header:
                stop = padded(f.end)
                if stop - pos <= size - i:
                    self._whole(block, f, data[i:i + stop - pos], f.offset - pos)
                    i, pos = i + stop - pos, stop
                    self._next_file()
                    continue
            take = min(size - i, self.end - pos)
            piece = data[i:i + take]
            i, pos = i + take, pos + take
            done = pos == self.end
            if self.kind == DATA:
                assert f is not None
                self.hasher.update(piece)
                if self.fd >= 0:
                    self._write(block, piece)
                if done:
                    self._check_hash(f, self.hasher.hexdigest())
                    self.hasher = None
                    self._close(block, f)
                    self._after_data(f)
            elif self.kind == HEADER:
                assert f is not None
                self.header += piece
                if done:
                    self.headers.check(bytes(self.header), f)
                    self.header.clear()
                    self._open(block, f)
                    if f.size:
                        self.kind, self.end, self.hasher = DATA, f.end, self.new_hash()
                    else:
                        self._check_hash(f, self.new_hash().hexdigest())
                        self._close(block, f)
                        self._after_data(f)
            else:
                if piece != _ZEROS[:len(piece)] and not is_zero(piece):
                    where = f"after {f.path!r}" if f else "at the end of the archive"
                    raise UnsafeContentError(f"unexpected non-zero bytes in the tar stream {where}",
                                             subject=f.path if f else "payload")
                if done and f is not None:
                    self._next_file()

    def _after_data(self, f: FileEntry) -> None:
        if padded(f.end) > f.end:
            self.kind, self.end = ZEROS, padded(f.end)
        else:
            self._next_file()

    def _whole(self, block: Block, f: FileEntry, record: memoryview, data_at: int) -> None:
        """One file's header region, data and padding, all in ``record``: check, then write. The
        small-file path, so it avoids what it can per file (measured: docs/benchmarks.md)."""
        self.headers.check(bytes(record[:data_at]), f)
        body = record[data_at:data_at + f.size]
        self._check_hash(f, self.new_hash(body).hexdigest())
        pad = record[data_at + f.size:]
        if pad != _ZEROS[:len(pad)]:  # at most one block of padding, never longer than _ZEROS
            raise UnsafeContentError(f"unexpected non-zero bytes in the tar stream after {f.path!r}", subject=f.path)
        if not self._writes(f):
            return
        try:
            fd = self._create(f)
            try:
                written = os.write(fd, body)
                if written < f.size:
                    write_all(fd, body[written:])
                self.flusher.wrote_small(self.dir_fd, f.size)
                if f.mode & self.umask:
                    os.fchmod(fd, f.mode)
            finally:
                os.close(fd)
        except OSError as e:
            self._host_error(e, block)

    def _check_hash(self, f: FileEntry, digest: str) -> None:
        if digest != f.hash:
            raise IntegrityError(f"file {f.path!r} does not match its {self.algorithm} hash", subject=f.path)

    # -- writing (an OSError is the host's: recorded with HOST_RANK, and this stage stops) -------------

    def _writes(self, f: FileEntry) -> bool:
        """Whether this stage writes ``f``: not after a host error, not a file the site does not
        enable (checked, never written), not a large one (:class:`_LargeWriter`'s)."""
        return self.writing and f.size < DIRECT_MIN and (self.select is None or self.select(f))

    def _create(self, f: FileEntry) -> int:
        """A new file for ``f`` in staging. Created with its final mode where neither the umask nor a
        default ACL can change it (``self.umask``, host.fs.creation_mask; staging is private), else
        0600, and the caller sets the mode when it closes the file: one syscall fewer per file in the
        common case."""
        parent, _, name = f.path.rpartition("/")
        if parent != self.dir_name:
            self._enter(parent)
        return os.open(name, _CREATE, 0o600 if f.mode & self.umask else f.mode, dir_fd=self.dir_fd)

    def _open(self, block: Block, f: FileEntry) -> None:
        if not self._writes(f):
            return
        try:
            self.fd = self._create(f)
        except OSError as e:
            self._host_error(e, block)

    def _write(self, block: Block, piece: memoryview) -> None:
        try:
            write_all(self.fd, piece)
            self.flusher.wrote_small(self.dir_fd, len(piece))
        except OSError as e:
            self._host_error(e, block)

    def _close(self, block: Block, f: FileEntry) -> None:
        if self.fd < 0:
            return
        try:
            if f.mode & self.umask:
                os.fchmod(self.fd, f.mode)
            fd, self.fd = self.fd, -1
            os.close(fd)
        except OSError as e:
            self._host_error(e, block)

    def _host_error(self, e: OSError, block: Block) -> None:
        self.record(e, block)
        self.writing = False
        if self.fd >= 0:
            os.close(self.fd)
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
        self.flusher.close()
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1


class _LargeWriter:
    """The files of :data:`~.pipeline.DIRECT_MIN` bytes and more, written on a thread of their own
    with O_DIRECT from the pipeline's page-aligned buffers (no page-cache copy; pipeline.Output).
    A direct write waits for the disk: on the extraction's thread it would stall the file hash for
    as long (each 1 MiB block is about as long to write as to hash), so these are the one writing
    that gets its own stage. It decides nothing, like the extraction's writes: the checks run
    beside it, and a failed check removes the whole staging directory."""

    def __init__(self, files: Iterator[FileEntry], root: Path, select: Callable[[FileEntry], bool] | None) -> None:
        self.files, self.root, self.select = files, root, select
        self.file = next(self.files, None)
        self.fd = -1  # of self.file, once its first byte arrived (-1 too for a file not written)
        self.out = Output()

    def feed(self, block: Block) -> None:
        data, pos = block.data, block.position
        end = pos + len(data)
        while (f := self.file) is not None and f.offset < end:
            start, stop = max(f.offset, pos), min(f.end, end)
            if start == f.offset:
                self._open(f)
            if self.fd >= 0:
                self.out.write(data[start - pos:stop - pos])
            if stop < f.end:
                return
            if self.fd >= 0:
                os.fchmod(self.fd, f.mode)
                os.close(self.out.finish())
                self.fd = -1
            self.file = next(self.files, None)

    def _open(self, f: FileEntry) -> None:
        if self.select is not None and not self.select(f):
            return
        path = self.root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)  # race-free beside the extraction's own mkdirs
        self.fd = os.open(path, _CREATE, 0o600)
        self.out.start(self.fd, f.size)

    def abort(self) -> None:
        self.out.close()  # closes the open file, if any
        self.fd = -1


def extract_payload(bundle: Path, manifest: Manifest, root: Path, *, progress: Progress = no_progress,
                    select: Callable[[FileEntry], bool] | None = None) -> None:
    """Write every file of ``manifest`` under ``root`` (an empty private directory), or raise.
    With ``select``, only the files it accepts are written; the others are still read, checked
    (header, hash) and hashed into their chunk, so the chunk checks are unchanged."""
    pipeline: Pipeline | None = None

    def host_error(e: BaseException, block: Block) -> None:
        assert pipeline is not None
        pipeline.record(e, tag=block.tag, rank=HOST_RANK, position=block.position)

    writer = _Extract(manifest, root, select, host_error)
    large = _LargeWriter(manifest.payload_files(min_size=DIRECT_MIN), root, select)
    stages: tuple[Any, ...] = (_ChunkCheck(manifest), writer)
    if large.file is not None:
        stages += (large,)
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
        large.abort()


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
