"""Write a small file so that a reader sees the old bytes or the new ones, never a mix, even across a
power cut: write a temporary file beside it, fsync it, rename it over the target, fsync the directory."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import HostError
from ..kit import Refusal, read_optional
from .fs import write_all


@contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, replace: bool = True) -> Iterator[BinaryIO]:
    """A new file for ``path``, written through the yielded file object: on a clean exit it is
    flushed, given ``mode`` (not left to the umask), fsynced and renamed over ``path`` (or, with
    ``replace=False``, linked to it, which fails with FileExistsError rather than overwrite), then the
    folder is fsynced. On any error the temporary file goes and ``path`` is as it was. Raises
    OSError: callers name the file in their own words."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_private(path: Path, data: bytes) -> None:
    """A new file ``path`` holding ``data`` (a private key), mode 0600 from its creation, its folder
    made 0700 when missing; never over an existing file or through a link (O_EXCL, O_NOFOLLOW);
    fsynced. Raises OSError: callers name the file in their own words."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """``data`` into ``path`` by :func:`atomic_file`; an OSError is the host's (exit 7, naming it)."""
    try:
        with atomic_file(path, mode=mode) as f:
            f.write(data)
    except OSError as e:
        raise HostError(f"cannot write {path}: {e.strerror}", subject=str(path)) from None


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
