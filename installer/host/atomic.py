"""Write a small file so that a reader sees the old bytes or the new ones, never a mix, even across a
power cut: write a temporary file beside it, fsync it, rename it over the target, fsync the directory."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ..errors import HostError
from ..kit import Refusal, read_optional


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.tmp-")
    except OSError as e:
        raise HostError(f"cannot write {path}: {e.strerror}", subject=str(path)) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise HostError(f"cannot write {path}: {e.strerror}", subject=str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # some filesystems cannot fsync a directory; nothing more to do
            raise
    finally:
        os.close(fd)


def read_small(path: Path, cap: int, *, what: str) -> bytes | None:
    """The bytes of ``path`` (at most ``cap``), or None when it does not exist.

    For the host's own files (state, trust directory): a symlink is followed, as it always was (the
    directory is the administrator's, and whoever can plant a link there could write the file); a
    FIFO, device or directory is refused instead of hanging or being read without end."""
    def refuse(r: Refusal) -> Exception:
        if r.reason == "too-large":
            return HostError(f"{what} {path} is larger than the {cap}-byte cap", subject=str(path))
        if r.reason == "not-regular" and r.kind != "directory":
            return HostError(f"{what} {path} {r.strerror}", subject=str(path))
        return HostError(f"cannot read {what} {path}: {r.strerror}", subject=str(path))

    return read_optional(path, cap=cap, refuse=refuse, follow_symlinks=True)
