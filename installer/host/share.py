"""Versions that share identical files (docs/site-admin.md, "Versions that share files").

:func:`share_file` gives a new version's file the bytes of an installed one, in the cheapest way
the filesystem allows, and checks them against the hash of the new signed manifest before the file
is used:

1. **reflink** (``ioctl(FICLONE)``: btrfs, XFS, bcachefs, ...): the new file is a private copy that
   shares the old one's extents until either is written. The clone is hashed, so what is checked is
   exactly what the new version holds.
2. **hard link**, when the filesystem has no reflinks: the new name is a second link to the installed
   inode. A hard-linked file is read-only (its mode without write bits: 0444 or 0555), so that writing
   through one version's name cannot silently change the other's: the inode is made read-only while it
   has its one link, hashed through the same descriptor, then linked, and the link is checked to be
   that very inode. Only a file whose mode is the new manifest's (up to those write bits), owned by
   the user installing or root and writable by nobody else, is linked.
3. **copy**, otherwise (another filesystem, too many links, a mode that differs): the bytes are read
   once, hashed and written.

``GAPSHIP_SHARE=copy`` in the environment turns reflinks and hard links off: every file is then an
independent copy (a site that wants no shared inodes; the benchmark's "copies" case).

A source that does not match the hash raises :class:`IntegrityError` and leaves nothing at the target.
What removing the older version later means: a hard link keeps the inode (and its bytes) alive as
long as one name is left; a reflink's extents stay as long as one file refers to them; a copy is
independent. In all three cases the remaining version keeps its bytes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..crypto.hashing import READ_SIZE, new_hasher
from ..deploy.pipeline import Flusher
from ..errors import IntegrityError
from .strict import UNSAFE_BITS, installer_uid

REFLINK, HARDLINK, COPY = "reflink", "hardlink", "copy"
METHODS = (REFLINK, HARDLINK, COPY)
FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
# A filesystem without reflinks answers one of these; anything else is a real error.
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM,
                         errno.EBADF})
_NO_HARDLINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES, errno.ENOTSUP})


def read_only(mode: int) -> int:
    """The mode a shared (hard-linked) file has: its manifest mode without write bits."""
    return mode & ~WRITE_BITS


@dataclass
class ShareCounts:
    """How a version's files came from installed ones (the receipt's ``shared``)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METHODS, 0))

    def add(self, method: str) -> None:
        self.counts[method] += 1

    def to_dict(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass(frozen=True)
class Want:
    """What the new version's file must be, from its signed manifest."""

    path: str  # as the manifest names it, for messages
    hash: str
    size: int
    mode: int
    algorithm: str


def copies_only() -> bool:
    """``GAPSHIP_SHARE=copy``: the site wants independent copies (module docstring)."""
    return os.environ.get("GAPSHIP_SHARE", "") == COPY


def share_file(source: Path, target: Path, want: Want, *, copy: bool = True, hardlink: bool = True) -> str | None:
    """Create ``target`` (which must not exist) with the bytes of the installed file ``source``,
    checked against ``want``; return the method used. With ``copy=False``, return None instead of
    copying (the caller already holds verified bytes). Raise :class:`IntegrityError` (exit 3) when
    ``source`` is not a regular file of ``want``'s size and hash."""
    fd = _open_source(source, want)
    links = not copies_only()
    try:
        if links and _reflink(fd, target, want):
            return REFLINK
        if links and hardlink and _hardlink(fd, source, target, want):
            return HARDLINK
        if not copy:
            return None
        _copy(fd, target, want)
        return COPY
    finally:
        os.close(fd)


def _differs(want: Want, source: Path, problem: str) -> IntegrityError:
    return IntegrityError(f"{want.path}: the installed {source} {problem}; refusing to use it", subject=str(source),
                          hint="the installed version was changed on disk: install its bundle again, or a full bundle")


def _open_source(source: Path, want: Want) -> int:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise _differs(want, source, f"cannot be read ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != want.size:
        os.close(fd)
        raise _differs(want, source, f"is not a regular file of {want.size} bytes")
    return fd


def _create(target: Path) -> int:
    return os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _hash_fd(fd: int, want: Want, *, out: int = -1, flusher: Flusher | None = None) -> str:
    """The hash of ``fd`` from its start, ``want.size`` bytes and one past; each block also written to
    ``out``, whose finished stretches ``flusher`` starts writing to disk (as the extract's writer does)."""
    hasher = new_hasher(want.algorithm)
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    seen = 0
    while True:
        n = os.preadv(fd, [view], seen)
        if n == 0:
            break
        hasher.update(view[:n])
        if out >= 0:
            piece = view[:n]
            while len(piece):
                piece = piece[os.write(out, piece):]
            if flusher is not None:
                flusher.wrote(out, seen + n)
        seen += n
        if seen > want.size:
            break
    return hasher.hexdigest() if seen == want.size else ""


def _reflink(fd: int, target: Path, want: Want) -> bool:
    out = _create(target)
    try:
        try:
            fcntl.ioctl(out, FICLONE, fd)
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
            os.close(out)
            out = -1
            target.unlink()
            return False
        if _hash_fd(out, want) != want.hash:  # the clone is ours: hashing it checks what the version holds
            raise IntegrityError(f"{want.path}: the installed file it was cloned from does not match its "
                                 f"{want.algorithm} hash in the signed manifest; refusing to use it", subject=want.path)
        os.fchmod(out, want.mode)
        return True
    except BaseException:
        if out >= 0:
            target.unlink(missing_ok=True)
        raise
    finally:
        if out >= 0:
            os.close(out)


def _hardlink(fd: int, source: Path, target: Path, want: Want) -> bool:
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if read_only(mode) != read_only(want.mode) or st.st_uid not in (installer_uid(), 0) or mode & UNSAFE_BITS:
        return False
    if mode & WRITE_BITS:
        if st.st_nlink != 1:
            return False  # a writable inode with other names is not ours to change
        os.fchmod(fd, read_only(mode))
    if _hash_fd(fd, want) != want.hash:
        raise _differs(want, source, f"does not match its {want.algorithm} hash in the signed manifest")
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_HARDLINK:
            return False
        raise
    now = os.lstat(target)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):  # the name was swapped after it was hashed
        target.unlink()
        return False
    return True


def _copy(fd: int, target: Path, want: Want) -> None:
    out = _create(target)
    flusher = Flusher()  # so that the install's final syncfs has little left to write
    try:
        try:
            digest = _hash_fd(fd, want, out=out, flusher=flusher)
        finally:
            flusher.close()
        if digest != want.hash:
            raise IntegrityError(f"{want.path}: the installed file it is copied from does not match its "
                                 f"{want.algorithm} hash in the signed manifest; refusing to use it", subject=want.path)
        os.fchmod(out, want.mode)
    except BaseException:
        os.close(out)
        target.unlink(missing_ok=True)
        raise
    os.close(out)
