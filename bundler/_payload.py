"""Writing the payload: one pax tar stream cut into fixed-size chunks as it is produced
(docs/format.md, "Payload" and "Chunks"). Nothing here holds more than one read buffer in memory."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..installer.hashing import new_hasher
from ..installer.errors import UsageError
from ..installer.manifest import BLOCK, END_OF_ARCHIVE, MAX_CHUNKS, RECORD, Chunk, chunk_name, padded


@dataclass
class ChunkWriter:
    """A write-only stream that lands in ``folder/00000.bin``, ``00001.bin``, ... of ``chunk_size``."""

    folder: Path
    chunk_size: int
    algorithm: str
    position: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    _fd: int = -1
    _filled: int = 0
    _hasher: object = None

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            if self._fd < 0:
                self._open()
            take = min(len(view), self.chunk_size - self._filled)
            piece = view[:take]
            self._hasher.update(piece)  # type: ignore[attr-defined]
            while len(piece):
                n = os.write(self._fd, piece)
                piece = piece[n:]
            self._filled += take
            self.position += take
            view = view[take:]
            if self._filled == self.chunk_size:
                self._close()

    def finish(self) -> list[Chunk]:
        if self._fd >= 0:
            self._close()
        return self.chunks

    def _open(self) -> None:
        if len(self.chunks) >= MAX_CHUNKS:
            raise UsageError(f"the bundle needs more than {MAX_CHUNKS} chunks of {self.chunk_size} bytes; "
                             "give a larger --chunk-size", subject="--chunk-size")
        name = chunk_name(len(self.chunks))
        self._fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._hasher = new_hasher(self.algorithm)
        self._filled = 0

    def _close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        digest = self._hasher.hexdigest()  # type: ignore[attr-defined]
        self.chunks.append(Chunk(name=chunk_name(len(self.chunks)), size=self._filled, hash=digest))

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def member_header(path: str, size: int, mode: int, mtime: int) -> bytes:
    """The pax/ustar header block(s) for one regular file; deterministic for the same inputs."""
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def pad_to_block(writer: ChunkWriter) -> None:
    gap = padded(writer.position) - writer.position
    if gap:
        writer.write(bytes(gap))


def end_archive(writer: ChunkWriter) -> None:
    """Two zero blocks, then zeros to a whole tar record, as tar(1) writes."""
    pad_to_block(writer)
    end = writer.position + END_OF_ARCHIVE
    writer.write(bytes(padded_to(end, RECORD) - writer.position))


def padded_to(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


assert RECORD % BLOCK == 0
