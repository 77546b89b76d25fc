"""The fan-out pipeline under build and install: bounded memory, order, and errors that neither hang
the producer nor get lost."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gapship.installer.deploy.pipeline import Block, Flusher, Pipeline


class Recorder:
    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.buffers: set[int] = set()

    def feed(self, block: Block) -> None:
        self.seen.append(bytes(block.data))
        self.buffers.add(id(block.data.obj))


class Failing:
    def __init__(self, at: int, error: BaseException) -> None:
        self.at, self.error, self.calls = at, error, 0

    def feed(self, block: Block) -> None:
        self.calls += 1
        if block.position == self.at:
            raise self.error


def produce(pipeline: Pipeline, count: int, size: int = 8, tag_every: int = 1) -> list[bytes]:
    sent = []
    for i in range(count):
        slot, view = pipeline.acquire()
        data = bytes([i % 251]) * size
        view[:size] = data
        pipeline.submit(slot, Block(view[:size], i * size, i // tag_every, True))
        sent.append(data)
    return sent


def test_every_stage_sees_every_block_in_order() -> None:
    stages = [Recorder(), Recorder(), Recorder()]
    pipeline = Pipeline(stages, size=16, depth=3)
    sent = produce(pipeline, 200)
    pipeline.close()
    assert all(s.seen == sent for s in stages)


def test_never_holds_more_than_depth_buffers() -> None:
    stage = Recorder()
    pipeline = Pipeline([stage, Recorder()], size=16, depth=4)
    produce(pipeline, 100)
    pipeline.close()
    assert len(stage.buffers) == 4


def test_a_buffer_is_not_refilled_while_a_stage_still_reads_it() -> None:
    """The bytes a slow stage sees are the bytes that were submitted, not a later refill: the
    install's "hash what you write" rests on this."""
    gate = threading.Event()

    class Slow(Recorder):
        def feed(self, block: Block) -> None:
            gate.wait()
            super().feed(block)

    slow = Slow()
    pipeline = Pipeline([slow, Recorder()], size=16, depth=2)
    producer = threading.Thread(target=lambda: sent.extend(produce(pipeline, 50)))
    sent: list[bytes] = []
    producer.start()
    producer.join(timeout=0.5)
    assert producer.is_alive()  # blocked: both buffers are held by the slow stage
    gate.set()
    producer.join()
    pipeline.close()
    assert slow.seen == sent


def test_failed_stage_does_not_hang_the_producer_and_its_error_is_raised() -> None:
    failing = Failing(at=8 * 3, error=ValueError("boom"))
    pipeline = Pipeline([failing, Recorder()], size=8, depth=2)
    produce(pipeline, 100)  # far more blocks than buffers
    assert pipeline.failed()
    with pytest.raises(ValueError, match="boom"):
        pipeline.close()
    assert failing.calls == 4  # it stopped at its own error


def test_lowest_tag_then_rank_then_position_wins() -> None:
    late = Failing(at=8 * 9, error=ValueError("tag 1, rank 0"))
    early = Failing(at=8 * 5, error=ValueError("tag 1, rank 1"))
    first = Failing(at=8 * 4, error=ValueError("tag 0, rank 2"))
    pipeline = Pipeline([late, early, first], size=8, depth=2, ranks=(0, 1, 2), keep_going=(True, True, True))
    produce(pipeline, 12, tag_every=5)  # tags: blocks 0-4 -> 0, 5-9 -> 1, 10-11 -> 2
    with pytest.raises(ValueError, match="tag 0, rank 2"):
        pipeline.close()

    late, early = Failing(at=8 * 9, error=ValueError("low rank")), Failing(at=8 * 5, error=ValueError("high rank"))
    pipeline = Pipeline([late, early], size=8, depth=2, ranks=(0, 1), keep_going=(True, True))
    produce(pipeline, 12, tag_every=5)
    with pytest.raises(ValueError, match="^low rank"):
        pipeline.close()


def test_other_stages_stop_after_a_failure_unless_told_to_keep_going() -> None:
    """The install's writer must not go on writing after a check failed; its chunk check must go on
    to the end of the chunk so that the damage can be named."""
    stopping, going = Recorder(), Recorder()
    pipeline = Pipeline([Failing(at=0, error=ValueError("first block")), stopping, going], size=8, depth=2,
                        keep_going=(False, False, True))
    produce(pipeline, 50)
    with pytest.raises(ValueError):
        pipeline.close()
    # Block 2 reuses block 0's buffer, released only after the failure was recorded.
    assert len(stopping.seen) <= 2
    assert len(going.seen) == 50


def test_producer_error_is_ranked_with_the_stages() -> None:
    pipeline = Pipeline([Failing(at=8 * 7, error=ValueError("stage"))], size=8, depth=2, ranks=(1,))
    produce(pipeline, 10)
    pipeline.record(KeyError("producer"), tag=7, rank=0, position=8 * 7)
    with pytest.raises(KeyError, match="producer"):
        pipeline.close()


def test_flusher_leaves_no_descriptor_behind_and_never_blocks_the_writer(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    flusher = Flusher(window=4096)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        flusher.new_file()
        written = 0
        for _ in range(100):  # far more windows than may be pending: the extra ones are skipped
            written += os.write(fd, b"x" * 5000)
            flusher.wrote(fd, written)
        flusher.close()
    finally:
        os.close(fd)
    assert (tmp_path / "f").stat().st_size == 500_000
    assert set(os.listdir("/proc/self/fd")) == before


def test_flusher_starts_write_back_of_small_files_with_one_syncfs_at_a_time(tmp_path: Path) -> None:
    """Each window of small-file bytes asks for a syncfs of their filesystem on the flusher's thread;
    while one is queued or running, the next windows ask for none; no descriptor is left behind."""
    calls: list[int] = []
    real = Flusher._call_fs
    assert real is not None, "syncfs(2) is there on Linux"
    running = threading.Event()
    release = threading.Event()

    def syncfs(fd: int) -> int:
        calls.append(fd)
        running.set()
        release.wait(10)
        return int(real(fd))

    class Counting(Flusher):
        _call_fs = staticmethod(syncfs)

    before = set(os.listdir("/proc/self/fd"))
    flusher = Counting(window=4096)
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(10):
            fd = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=folder)
            os.write(fd, b"x" * 5000)
            os.close(fd)
            flusher.wrote_small(folder, 5000)  # a window each time
            assert running.wait(10)
        assert len(calls) == 1  # the first is still running: the other nine asked for nothing
        release.set()
        flusher.close()
        flusher.wrote_small(folder, 5000)  # after it finished, a window asks again
        flusher.close()
    finally:
        os.close(folder)
    assert len(calls) == 2
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_producer_does_not_hang_if_a_stage_thread_dies() -> None:
    """A bug that kills a stage thread outside its feed() must fail the run, not hang it."""
    pipeline = Pipeline([Recorder()], size=8, depth=1)
    pipeline._queues[0].put(object())  # type: ignore[arg-type]  # not unpackable: the thread dies
    with pytest.raises(RuntimeError, match="stage stopped unexpectedly"):
        produce(pipeline, 5)


# -- Output: large files with O_DIRECT, the rest through the page cache ---------------------------


def _pieces(data: bytes, cuts: list[int]) -> list[memoryview]:
    """``data`` copied into a page-aligned mapping (as the pipeline's buffers are), cut at ``cuts``."""
    import mmap

    buffer = mmap.mmap(-1, max(len(data), 1))
    buffer[:len(data)] = data
    view, out, start = memoryview(buffer), [], 0
    for end in [*cuts, len(data)]:
        out.append(view[start:end])
        start = end
    return out


def _output_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


@pytest.mark.parametrize("cuts", [[], [512], [4096, 8192], [1000], [512, 1536, 1537]])
def test_output_writes_exact_bytes_direct_where_aligned(cuts: list[int], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from gapship.installer.deploy import pipeline as _pipeline

    monkeypatch.setattr(_pipeline, "DIRECT_MIN", 1)
    data = os.urandom(3 * 4096 + 77)
    out = _pipeline.Output()
    path = tmp_path / "f.bin"
    out.start(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), len(data))
    if not out.direct:
        pytest.skip("this filesystem refuses O_DIRECT")
    for piece in _pieces(data, cuts):
        was_direct = out.direct
        out.write(piece)
        assert out.direct == (was_direct and len(piece) % 512 == 0)  # an unaligned piece ends direct writing
    assert not _output_flags(out.fd) & os.O_DIRECT  # the unaligned tail went through the page cache
    os.close(out.finish())
    out.close()
    assert path.read_bytes() == data


def test_output_falls_back_to_the_page_cache_where_o_direct_is_refused(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """tmpfs and some other filesystems refuse O_DIRECT (EINVAL): the file is written all the same."""
    import errno
    import fcntl

    from gapship.installer.deploy import pipeline as _pipeline

    real = fcntl.fcntl

    def refuse_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(_pipeline, "DIRECT_MIN", 1)
    monkeypatch.setattr(_pipeline.fcntl, "fcntl", refuse_direct)
    data = os.urandom(8192)
    out = _pipeline.Output()
    path = tmp_path / "f.bin"
    out.start(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), len(data))
    assert not out.direct and not out.direct_works
    for piece in _pieces(data, [4096]):
        out.write(piece)
    os.close(out.finish())
    out.close()
    assert path.read_bytes() == data


def test_output_keeps_small_files_in_the_page_cache(tmp_path: Path) -> None:
    from gapship.installer.deploy.pipeline import DIRECT_MIN, Output

    out = Output()
    out.start(os.open(tmp_path / "small", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), DIRECT_MIN - 1)
    assert not out.direct
    os.close(out.finish())
    out.close()
