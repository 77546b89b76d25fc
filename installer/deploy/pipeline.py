"""One ordered stream of buffers, handed to several stages that run at once (docs/benchmarks.md).

Building and installing do three expensive things to every payload byte: hash it into its chunk's
hash, hash it into its file's hash, and write it. SHA-256 is sequential within one hash, so the way
to use more than one core is to give each of those jobs its own thread: hashlib and os.write
release the GIL on large buffers. The producer (the calling thread) reads the stream in order into
a small, fixed pool of buffers; every stage sees every block, in order. A buffer is refilled only
after every stage has released it, so the bytes a stage hashes are the very bytes another stage
writes: nothing is read twice from the media, so media that changes between two reads cannot slip
anything in (RAUC CVE-2020-25860). Memory is ``depth * size`` bytes, however large the payload.

Errors: once any stage has raised, the stages stop processing (they keep releasing buffers so the
producer cannot hang), except those marked ``keep_going``; the producer stops at its next
:meth:`Pipeline.failed` check. :meth:`Pipeline.close` raises the error with the lowest ``(tag, rank, position)``, so a
caller can make a damaged chunk win over whatever the damage looked like further down the stream.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..host.fs import write_all

# Buffers of 1 MiB: large enough that hashlib and os.write release the GIL and syscalls are few, small
# enough that the stages read a buffer while it is still in the CPU caches. Measured on the
# benchmark (docs/benchmarks.md): with 4 MiB buffers the writer spent 2-3x the kernel CPU time per
# byte. Sixteen of them (16 MiB in all) let a stage that stalls briefly (a write waiting on the disk)
# fall behind without stopping the others.
BLOCK_SIZE = 1024 * 1024
DEFAULT_DEPTH = 16


@dataclass(frozen=True)
class Block:
    """``data`` starts at ``position`` in the stream; ``tag`` is the caller's unit (a chunk index);
    ``last`` says this is the last block of that unit; ``lane`` which of the caller's interleaved
    sub-streams it belongs to (the install's lanes: installer/deploy/extract.py)."""

    data: memoryview
    position: int
    tag: int
    last: bool
    lane: int = 0


class Stage(Protocol):
    def feed(self, block: Block) -> None: ...


@dataclass(frozen=True)
class StageError:
    tag: int
    rank: int
    position: int
    error: BaseException


class _Slot:
    """A buffer and how many stages still hold it. The buffer is an anonymous mapping, so it starts
    on a page boundary: a writer can hand its slices to O_DIRECT writes (:class:`Output`)."""

    __slots__ = ("buffer", "holders")

    def __init__(self, size: int) -> None:
        self.buffer = mmap.mmap(-1, size)
        self.holders = 0


_STOP = None


class Pipeline:
    """Run ``stages`` on their own threads; ``ranks[i]`` orders stage ``i``'s errors and
    ``keep_going[i]`` keeps it running after another stage failed (see module doc)."""

    def __init__(self, stages: Sequence[Stage], *, size: int | None = None, depth: int | None = None,
                 ranks: Sequence[int] | None = None, keep_going: Sequence[bool] | None = None,
                 name: str = "gapship") -> None:
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for _ in range(depth or DEFAULT_DEPTH):
            self._free.put(_Slot(size or BLOCK_SIZE))
        self._lock = threading.Lock()
        self._errors: list[StageError] = []
        self._queues: list[queue.SimpleQueue[tuple[_Slot | None, Block] | None]] = []
        self._threads: list[threading.Thread] = []
        for i, stage in enumerate(stages):
            q: queue.SimpleQueue[tuple[_Slot | None, Block] | None] = queue.SimpleQueue()
            rank = ranks[i] if ranks is not None else i
            going = keep_going[i] if keep_going is not None else False
            t = threading.Thread(target=self._run, args=(stage, q, rank, going), name=f"{name}-{i}", daemon=True)
            self._queues.append(q)
            self._threads.append(t)
            t.start()
        self._closed = False

    # -- producer side ---------------------------------------------------------------------------

    def acquire(self) -> tuple[_Slot, memoryview]:
        """A free buffer to fill (blocks while every buffer is in use). Stage errors never stop a
        stage thread; should one die anyway (a bug), this raises instead of waiting forever."""
        while True:
            try:
                slot = self._free.get(timeout=1.0)
            except queue.Empty:
                if not all(t.is_alive() for t in self._threads):
                    raise RuntimeError("a gapship pipeline stage stopped unexpectedly") from None
                continue
            return slot, memoryview(slot.buffer)

    def submit(self, slot: _Slot | None, block: Block, *, to: Sequence[int] | None = None) -> None:
        """Hand ``block`` (a view into ``slot``'s buffer, or into bytes the caller keeps alive) to
        every stage, or to the stages numbered in ``to``; ``slot`` returns to the pool when the last
        of them releases it."""
        queues = self._queues if to is None else [self._queues[i] for i in to]
        if slot is not None:
            slot.holders = len(queues)
        for q in queues:
            q.put((slot, block))

    def release(self, slot: _Slot) -> None:
        """Give back a buffer that was acquired but not submitted."""
        self._free.put(slot)

    def drain(self, depth: int | None = None) -> None:
        """Wait until every stage has seen every block submitted so far (all buffers are free again).
        The producer must hold no buffer; ``depth`` is the one given to the constructor."""
        slots = [self.acquire()[0] for _ in range(depth or DEFAULT_DEPTH)]
        for slot in slots:
            self._free.put(slot)

    def failed(self) -> bool:
        return bool(self._errors)

    def record(self, error: BaseException, *, tag: int, rank: int, position: int) -> None:
        """An error found by the producer itself (e.g. a truncated chunk)."""
        with self._lock:
            self._errors.append(StageError(tag, rank, position, error))

    def first_error(self) -> StageError | None:
        """The error :meth:`close` raises, with where it was found (None while there is none)."""
        with self._lock:
            return min(self._errors, key=lambda e: (e.tag, e.rank, e.position)) if self._errors else None

    def close(self) -> None:
        """Wait for every stage to finish; raise the first error (lowest tag, rank, position)."""
        if not self._closed:
            self._closed = True
            for q in self._queues:
                q.put(_STOP)
            for t in self._threads:
                t.join()
        first = self.first_error()
        if first is not None:
            raise first.error

    def abort(self) -> None:
        """Stop the stages without raising (used when the producer itself fails)."""
        try:
            self.close()
        except BaseException:
            pass

    # -- stage threads ---------------------------------------------------------------------------

    def _run(self, stage: Stage, q: queue.SimpleQueue[tuple[_Slot | None, Block] | None], rank: int,
             keep_going: bool) -> None:
        broken = False
        while True:
            item = q.get()
            if item is None:
                return
            slot, block = item
            if not broken and (keep_going or not self._errors):
                try:
                    stage.feed(block)
                except BaseException as e:  # noqa: BLE001 - handed to the producer by close()
                    broken = True
                    self.record(e, tag=block.tag, rank=rank, position=block.position)
            if slot is not None:
                self._release(slot)

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.holders -= 1
            done = slot.holders == 0
        if done:
            self._free.put(slot)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as taskset or a cgroup cpuset set it),
    for sizing the threads of a build or an unpack."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- early write-back --------------------------------------------------------------------------------

# Measured on the 2 GiB benchmark: with it, the final syncfs of an install took 0.6-0.8 s instead of
# 2.3 s, and the install 4.0 s instead of 4.5 s; the build's final fsyncs 1.5 s instead of 2.1-2.4 s.
WRITEBACK_WINDOW = 32 * 1024 * 1024
_MAX_PENDING = 8  # windows queued for the flusher; past that, leave it to the kernel (never wait)
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _syncfs() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class Flusher:
    """Starts the disk writing a large file's finished stretches while the rest is still being
    hashed and written, so that the final flush (syncfs or fsync, which stays the only durability
    guarantee) has little left to do. Linux sync_file_range(2) with SYNC_FILE_RANGE_WRITE, called on
    a thread of its own with a dup of the writer's descriptor: submitting write-back can block, and
    the writer must never wait for the disk. A no-op where the call does not exist; its errors are
    ignored, as the final flush reports them: syncfs reports a write-back error only on descriptors
    opened before it, so the install opens the one of its final syncfs before it writes anything
    (install.py, ``_Flush``).

    Small files (:meth:`wrote_small`) are too many for a call each: after every ``window`` bytes of
    them, the same thread runs one syncfs(2) of their filesystem, at most one waiting at a time, so
    the disk writes them while the rest are still being made. Measured on the benchmark's 20,000
    small files (162 MiB): the final syncfs took 0.01-0.02 s instead of 0.15-0.22 s, the
    extraction about 0.05 s longer, 0.64-0.77 s for both instead of 0.71-0.97 s (three runs each, on
    a loaded machine); the whole install, seven alternating runs on a quiet one, 1.03 s median
    against 1.05 s without: a small gain, kept because it costs nothing elsewhere."""

    _call = _sync_file_range()
    _call_fs = _syncfs()

    def __init__(self, window: int | None = None) -> None:
        self.window = window or WRITEBACK_WINDOW
        self.start = 0  # of the current file, the first byte not yet handed to the flusher
        self.small = 0  # bytes of small files written since the last syncfs was asked for
        self._fs_pending = False  # a syncfs is queued or running
        self.enabled = self._call is not None
        self._slots = threading.BoundedSemaphore(_MAX_PENDING)
        self._queue: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def new_file(self) -> None:
        self.start = 0

    def wrote(self, fd: int, end: int) -> None:
        """The current file (``fd``) now holds its first ``end`` bytes."""
        if not self.enabled or end - self.start < self.window or not self._slots.acquire(blocking=False):
            return
        self._submit((os.dup(fd), self.start, end - self.start))
        self.start = end

    def wrote_small(self, dir_fd: int, n: int) -> None:
        """``n`` more bytes went into a small file on the filesystem of the directory ``dir_fd``."""
        self.small += n
        if self.small < self.window or self._call_fs is None:
            return
        self.small = 0
        if not self._fs_pending:
            self._fs_pending = True
            self._submit((os.dup(dir_fd), -1, 0))

    def _submit(self, item: tuple[int, int, int]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gapship-flush", daemon=True)
            self._thread.start()
        self._queue.put(item)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fd, offset, length = item
            try:
                if offset < 0:
                    self._call_fs(fd)
                else:
                    self._call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(fd)
                if offset < 0:
                    self._fs_pending = False
                else:
                    self._slots.release()


# -- writing a file from the pipeline's buffers ------------------------------------------------------

# Files at least this large are written with O_DIRECT: straight from the pipeline's buffer to the
# disk, with no copy into the page cache. Measured by hand on this machine kind (2026-12-04): 2 GiB
# written by one dd with oflag=direct bs=1M took 1.35 s and 0.24 CPU-s, through the page cache and
# then fsync 6.6 s and 3.6 CPU-s; in the install, the page-cache writer used 0.5 to 1.5 CPU-s of a
# 2-core machine that the hashes needed (the install's figures: docs/benchmarks.md, "Large install"). Smaller files stay buffered: each direct write waits for
# the disk, and one syncfs at the end flushes thousands of small files at once.
DIRECT_MIN = 8 * 1024 * 1024
# O_DIRECT wants the memory, the file offset and the length aligned to the device's logical block,
# 512 bytes on the disks seen here. Tar puts every file's data at a multiple of 512 in the stream and
# the buffers start on page boundaries, so every piece but a file's last is aligned. A filesystem
# that wants more (or refuses O_DIRECT, as tmpfs does) answers EINVAL, and the file, and every file
# after it, is written through the page cache instead.
DIRECT_ALIGN = 512


def _address(piece: memoryview) -> int | None:
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(piece))
    except (TypeError, ValueError):  # read-only or empty
        return None


class Output:
    """One file at a time, written in order from the pipeline's blocks: large files with O_DIRECT
    where the filesystem takes it, the rest (and any unaligned tail) through the page cache, with
    the :class:`Flusher` starting their write-back early. Durability is still the caller's final
    flush (syncfs or fsync): O_DIRECT skips the page cache, not the disk's own cache or the
    file's metadata."""

    def __init__(self) -> None:
        self.fd = -1
        self.written = 0
        self.direct = False
        self.direct_works = hasattr(os, "O_DIRECT")
        self.flusher = Flusher()

    def start(self, fd: int, size: int) -> None:
        """Write the file ``fd`` (just created, empty) of ``size`` bytes from now on."""
        self.fd, self.written, self.direct = fd, 0, False
        self.flusher.new_file()
        if self.direct_works and size >= DIRECT_MIN:
            self.direct = self._set_direct(True)

    def write(self, piece: memoryview) -> None:
        if self.direct:
            head = len(piece) - len(piece) % DIRECT_ALIGN
            address = _address(piece)
            if head and address is not None and address % DIRECT_ALIGN == 0 and self.written % DIRECT_ALIGN == 0:
                piece = piece[head:] if self._write_direct(piece[:head]) else piece
            if len(piece):  # unaligned (a file's last piece): the page cache, for the rest of the file
                self._set_direct(False)
                self.direct = False
        if len(piece):
            self.written += len(piece)
            write_all(self.fd, piece)
            self.flusher.wrote(self.fd, self.written)

    def finish(self) -> int:
        """The descriptor of the file just written, no longer this writer's."""
        fd, self.fd = self.fd, -1
        return fd

    def close(self) -> None:
        self.flusher.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _write_direct(self, piece: memoryview) -> bool:
        """Write all of ``piece`` with O_DIRECT, or nothing (False: the filesystem refused the
        alignment, and the file goes on through the page cache). A short write, which only a full
        disk gives, raises when the next write fails, as any write would."""
        try:
            n = os.write(self.fd, piece)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.direct_works = False  # an alignment this filesystem does not take: no more tries
            return False
        self.written += n
        self.flusher.start = self.written  # nothing there for the flusher to start
        if n < len(piece):
            self._set_direct(False)
            self.direct = False
            rest = piece[n:]
            self.written += len(rest)
            write_all(self.fd, rest)
        return True

    def _set_direct(self, on: bool) -> bool:
        """Turn O_DIRECT on or off for the open file; whether it changed."""
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.direct_works = False
            return False
        return True

