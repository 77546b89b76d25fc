"""bundler/_payload.py: the stream is laid into pipeline buffers and every source file is read once.
A source that changes size under the builder is refused, and what was written is exactly a tar
stream whose chunk and file hashes the writer reports."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from gapship.bundler._payload import PayloadWriter
from gapship.installer import _pipeline
from gapship.installer.errors import UsageError
from gapship_testing import noise


def write(folder: Path, sources: dict[str, bytes], chunk_size: int, *, declared: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    (folder / "chunks").mkdir()
    writer = PayloadWriter(folder / "chunks", chunk_size=chunk_size, algorithm="sha256", mtime=1_700_000_000)
    try:
        for name, data in sources.items():
            src = folder / "src" / name
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            writer.add(src, f"models/m/{name}", (declared or {}).get(name, len(data)), 0o644)
        return writer.finish()
    finally:
        writer.abort()


@pytest.mark.parametrize("block", [512, 1000, 0])
def test_stream_chunks_and_hashes_are_what_was_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        block: int) -> None:
    if block:
        monkeypatch.setattr(_pipeline, "BLOCK_SIZE", block)
        monkeypatch.setattr(_pipeline, "DEFAULT_DEPTH", 2)
    sources = {"a": noise(3000, seed=1), "empty": b"", "b": noise(10_000, seed=2), "c": b"z"}
    payload = write(tmp_path, sources, chunk_size=1536)
    chunks = [(tmp_path / "chunks" / c.name).read_bytes() for c in payload.chunks]
    assert [c.name for c in payload.chunks] == sorted(p.name for p in (tmp_path / "chunks").iterdir())
    assert [len(c) for c in chunks[:-1]] == [1536] * (len(chunks) - 1)
    assert [hashlib.sha256(c).hexdigest() for c in chunks] == [c.hash for c in payload.chunks]
    stream = b"".join(chunks)
    assert len(stream) == payload.size
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"models/m/{n}" for n in sources]
        for (name, data), member, written in zip(sources.items(), members, payload.files):
            assert member.offset_data == written.offset
            assert stream[written.offset:written.offset + len(data)] == data
            assert written.hash == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("actual", "declared"), [(5000, 4999), (5000, 5001), (0, 1), (1, 0)])
def test_rejects_source_that_changed_size_while_bundled(tmp_path: Path, actual: int, declared: int) -> None:
    with pytest.raises(UsageError, match="changed size while it was being bundled") as info:
        write(tmp_path, {"w.bin": noise(actual, seed=3)}, chunk_size=1024, declared={"w.bin": declared})
    assert info.value.subject == str(tmp_path / "src" / "w.bin")


def test_rejects_unreadable_source(tmp_path: Path) -> None:
    (tmp_path / "chunks").mkdir()
    writer = PayloadWriter(tmp_path / "chunks", chunk_size=1024, algorithm="sha256", mtime=0)
    try:
        with pytest.raises(UsageError, match="cannot read"):
            writer.add(tmp_path / "missing", "models/m/missing", 10, 0o644)
    finally:
        writer.abort()
