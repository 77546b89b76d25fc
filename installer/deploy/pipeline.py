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
producer cannot hang), except those marked ``keep_going`` (the install's chunk check, which must
still reach the end of the chunk it is in); the producer stops at its next :meth:`Pipeline.failed`
check. :meth:`Pipeline.close` raises the error with the lowest ``(tag, rank, position)``, so a
caller can make a damaged chunk win over whatever the damage looked like further down the stream.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Buffers of 1 MiB: large enough that hashlib and os.write release the GIL and syscalls are few, small
# enough that the three stages read a buffer while it is still in the CPU caches. Measured on the
# benchmark (docs/benchmarks.md): with 4 MiB buffers the writer spent 2-3x the kernel CPU time per
# byte. Sixteen of them (16 MiB in all) let a stage that stalls briefly (a write waiting on the disk)
# fall behind without stopping the others.
BLOCK_SIZE = 1024 * 1024
DEFAULT_DEPTH = 16


@dataclass(frozen=True)
class Block:
    """``data`` starts at ``position`` in the stream; ``tag`` is the caller's unit (a chunk index);
    ``last`` says this is the last block of that unit."""

    data: memoryview
    position: int
    tag: int
    last: bool


class Stage(Protocol):
    def feed(self, block: Block) -> None: ...


@dataclass(frozen=True)
class StageError:
    tag: int
    rank: int
    position: int
    error: BaseException


class _Slot:
    """A buffer and how many stages still hold it."""

    __slots__ = ("buffer", "holders")

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
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

    def submit(self, slot: _Slot | None, block: Block) -> None:
        """Hand ``block`` (a view into ``slot``'s buffer, or into bytes the caller keeps alive) to
        every stage; ``slot`` returns to the pool when the last stage releases it."""
        if slot is not None:
            slot.holders = len(self._queues)
        for q in self._queues:
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

    def close(self) -> None:
        """Wait for every stage to finish; raise the first error (lowest tag, rank, position)."""
        if not self._closed:
            self._closed = True
            for q in self._queues:
                q.put(_STOP)
            for t in self._threads:
                t.join()
        if self._errors:
            first = min(self._errors, key=lambda e: (e.tag, e.rank, e.position))
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


class Flusher:
    """Starts the disk writing a large file's finished stretches while the rest is still being
    hashed and written, so that the final flush (syncfs or fsync, which stays the only durability
    guarantee) has little left to do. Linux sync_file_range(2) with SYNC_FILE_RANGE_WRITE, called on
    a thread of its own with a dup of the writer's descriptor: submitting write-back can block, and
    the writer must never wait for the disk. A no-op where the call does not exist; its errors are
    ignored, as the final flush reports them."""

    _call = _sync_file_range()

    def __init__(self, window: int | None = None) -> None:
        self.window = window or WRITEBACK_WINDOW
        self.start = 0  # of the current file, the first byte not yet handed to the flusher
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
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gapship-flush", daemon=True)
            self._thread.start()
        self._queue.put((os.dup(fd), self.start, end - self.start))
        self.start = end

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fd, offset, length = item
            try:
                self._call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(fd)
                self._slots.release()
